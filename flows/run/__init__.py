"""A training run's process-side parts, around the Prefect tasks of `flows.train`:

- `live`: the long-lived objects (learner, engine, tracker) in the registry `LIVE`, and
  opening, restarting the engine of, and closing a run;
- `inputs`: what the run reads (processed files, mixture, evaluation sets, worked examples,
  the pass-rate filter, the prompt renderer, the engine's options);
- `values`: the typed values the tasks return and take, and how they pass through Prefect;
- `evaluation`: the quick and final evaluations on the live engine;
- `writers`: what the run writes (records, resume state, MLflow logs, checkpoints, the final
  model);
- `console`: the budget, the progress bar and the printed headline.
"""
