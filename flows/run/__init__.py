"""A training run's process-side parts, around the Prefect tasks of `flows.train`:

- `live`: the long-lived objects (learner, engine, tracker) in the registry `LIVE`, and
  opening, restarting the engine of, and closing a run;
- `inputs`: what the run reads (processed files, mixture, evaluation sets, worked examples,
  the pass-rate filter, the prompt renderer, the engine's options);
- `values`: the typed values the tasks return and take, and how they pass through Prefect;
- `sampling`: drawing and sampling an iteration's prompts, and dynamic sampling's refill;
- `scoring`: the reward functions on a rollout (or some of its prompts), failures reported;
- `growth`: adaptive group size, more samples for the groups without reward variance;
- `evaluation`: the quick and final evaluations on the live engine;
- `writers`: what the run writes (records, resume state, MLflow logs, checkpoints, the final
  model);
- `console`: the budget, the progress bar and the printed headline.
"""
