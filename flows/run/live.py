"""The long-lived objects of a training run, kept in this process and looked up by key.

The policy and its optimizer (the learner), the rollout engine and the MLflow tracker live as
long as the run and do not pass through Prefect: tasks receive the run's key and find them in
`LIVE`. What one task makes for the next (rollouts, scores, metrics) is returned instead
(`flows.run.values`).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flows.run.inputs import (engine_options, load_data, processed_files, prompt_renderer,
                              training_rows)
from flows.tracking import Tracker, provenance_tags, tracking_uri
from grpo_core.config import Config
from grpo_core.data.prompts import PromptRenderer
from grpo_core.parallel import distributed

LIVE: dict[str, "LiveRun"] = {}


@dataclass
class LiveRun:
    key: str
    cfg: Config
    sft_dir: Path
    tokenizer: Any
    learner: Any
    engine: Any
    tracker: Tracker
    mixture: pd.DataFrame
    eval_sets: dict[str, pd.DataFrame]
    render: PromptRenderer  # questions -> prompts, for the rollouts and the evaluations
    start_iteration: int = 1
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def last_iteration(self) -> int:
        """The last iteration logged (the history is rebuilt on resume)."""
        return self.history[-1]["iteration"] if self.history else 0

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)

    def sampling(self, iteration: int):
        """Rollout sampling; the seed is a function of (seed, iteration), so a resumed run
        asks the engine for the same stream an uninterrupted run would have."""
        from grpo_core.rollout import SamplingSettings

        r = self.cfg.rollout
        return SamplingSettings(temperature=r.temperature, top_p=r.top_p,
                                max_new_tokens=r.max_new_tokens, stop=tuple(r.stop),
                                seed=r.seed * 1_000_003 + iteration)


def open_run(cfg: Config, *, resume: bool) -> LiveRun:
    """Load data, tokenizer, policy and engine; restore the resume state when asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_core.algorithm.learner import Learner
    from grpo_core.algorithm.optim import UpdateHyper
    from grpo_core.checkpoints.resume import load_state
    from grpo_core.checkpoints.sft import materialize
    from grpo_core.rewards.functions import check_functions
    from grpo_core.rollout import make_engine

    check_functions(list(cfg.reward.functions), cfg.reward.reward_model)  # fail before loading
    mixture, eval_sets, few_shot = load_data(cfg)
    mixture = training_rows(cfg, mixture)
    with distributed.main_first():  # rank 0 writes the directory, the other ranks reuse it
        sft = materialize(cfg.checkpoint.source, cfg.checkpoint.output_dir,
                          trust_remote_code=cfg.checkpoint.trust_remote_code)
    torch.manual_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    policy = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    policy = policy.to(distributed.device())  # cuda:LOCAL_RANK on GPU (per rank), else CPU
    hyper = UpdateHyper.from_sections(cfg.algorithm.model_dump(), cfg.train.model_dump(),
                                      temperature=cfg.rollout.temperature,
                                      max_completion_len=cfg.rollout.max_new_tokens)
    learner = Learner(policy, hyper)
    start, run_id, history = 1, None, []
    if resume:
        state, meta = load_state(Path(cfg.train.output_dir) / "resume")
        learner.load_state_dict(state)
        start, run_id, history = meta["iteration"] + 1, meta["run_id"], meta.get("history", [])
    engine = make_engine(cfg.rollout.engine, sft, **engine_options(cfg))
    if resume:
        engine.update_weights(learner.sync_weights())
    t, tracker = cfg.tracking, None
    if distributed.is_main():  # one MLflow run per job, however many ranks
        tracker = Tracker(tracking_uri(t.mlflow_tracking_uri), t.experiment, run_name=t.run_name,
                          resume_run_id=run_id)
        tracker.log_params({**cfg.flat(), "data.train_problems": len(mixture)})
        tracker.set_tags(provenance_tags(processed_files(cfg)))
    run = LiveRun(uuid.uuid4().hex, cfg, Path(sft), tokenizer, learner, engine, tracker, mixture,
                  eval_sets, prompt_renderer(cfg, tokenizer, few_shot), start_iteration=start,
                  history=history)
    LIVE[run.key] = run
    return run


def restart_engine(run: LiveRun) -> None:
    """Replace a failed engine by a fresh one carrying the current policy weights."""
    from grpo_core.rollout import make_engine

    with contextlib.suppress(Exception):
        run.engine.close()
    run.engine = make_engine(run.cfg.rollout.engine, run.sft_dir, **engine_options(run.cfg))
    run.engine.update_weights(run.learner.sync_weights())


def close_run(run: LiveRun, status: str) -> None:
    with contextlib.suppress(Exception):
        run.engine.close()
    with contextlib.suppress(Exception):
        run.tracker.finish(status)
    LIVE.pop(run.key, None)
