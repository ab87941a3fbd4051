"""The long-lived objects of a training run, kept in this process and looked up by key.

The policy and its optimizer (the learner), the rollout engine and the MLflow tracker live as
long as the run and do not pass through Prefect: tasks receive the run's key and find them in
`LIVE`. What one task makes for the next (rollouts, scores, metrics) is returned instead
(`flows.run.values`).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flows.run.inputs import (check_prompts_fit, load_data, processed_files, prompt_renderer,
                              start_engine, training_rows)
from flows.tracking import Tracker, provenance_tags, tracking_uri
from grpo_core.config import Config
from grpo_core.data.prompts import PromptRenderer
from grpo_core.rewards.failures import FailureWatch
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
    skipped_iterations: int = 0  # iterations none of whose prompts fit the prompt limit
    reward_watch: Any = None  # grpo_core.rewards.failures.FailureWatch, over the whole run
    gate_said: set[str] = field(default_factory=set)  # the rollout-gate warnings given
    history: list[dict[str, float]] = field(default_factory=list)
    cursor: int = 0  # the next position in the run's prompt stream (draw_prompts_at)

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

    def sampling(self, iteration: int, round_: int = 0, call: int = 0):
        """Rollout sampling; the seed is a function of (seed, iteration, dynamic-sampling
        round, adaptive-growth call within the round: 0 is the round's first sampling), so a
        resumed run asks the engine for the same stream an uninterrupted run would have."""
        from grpo_core.rollout import SamplingSettings

        r = self.cfg.rollout
        return SamplingSettings(temperature=r.temperature, top_p=r.top_p,
                                max_new_tokens=r.max_new_tokens, stop=tuple(r.stop),
                                seed=r.seed * 1_000_003 + iteration + 7_919_000 * round_
                                + 104_729 * call)


@dataclass
class ResumePoint:
    """Where a run starts: iteration 1 of a new MLflow run, or after a saved state."""
    start: int = 1
    run_id: str | None = None
    history: list = field(default_factory=list)
    changes: list = field(default_factory=list)  # allowed recipe changes (key, old, new)
    cursor: int | None = None  # the saved position in the prompt stream (None: before it)


def open_run(cfg: Config, *, resume: bool, allow_changes: tuple[str, ...] = ()) -> LiveRun:
    """Load data, tokenizer, policy and engine; restore the resume state when asked. Every
    check comes before anything is replaced: a run refused leaves the directory as it was."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_core.algorithm.learner import Learner
    from grpo_core.algorithm.optim import UpdateHyper
    from grpo_core.checkpoints.sft import materialize
    from grpo_core.rewards.functions import check_functions

    check_functions(list(cfg.reward.functions), cfg.reward.reward_model)  # fail before loading
    changes = resumable_changes(cfg, allow_changes) if resume else []
    mixture, eval_sets, few_shot = load_data(cfg)
    mixture = training_rows(cfg, mixture)
    with distributed.main_first():  # rank 0 writes the directory, the other ranks reuse it
        sft = materialize(cfg.checkpoint.source, cfg.checkpoint.output_dir,
                          trust_remote_code=cfg.checkpoint.trust_remote_code)
    torch.manual_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    render = prompt_renderer(cfg, tokenizer, few_shot)
    check_prompts_fit(cfg, tokenizer, render, mixture)  # before the slow loading
    policy = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    policy = policy.to(distributed.device())  # cuda:LOCAL_RANK on GPU (per rank), else CPU
    hyper = UpdateHyper.from_sections(cfg.algorithm.model_dump(), cfg.train.model_dump(),
                                      temperature=cfg.rollout.temperature,
                                      max_completion_len=cfg.rollout.max_new_tokens)
    learner = Learner(policy, hyper)
    point = restore(cfg, learner, changes) if resume else fresh_start(cfg)
    engine = start_engine(cfg, sft)
    if resume:
        engine.update_weights(learner.sync_weights())
    tracker = open_tracker(cfg, point, len(mixture))
    run = LiveRun(uuid.uuid4().hex, cfg, Path(sft), tokenizer, learner, engine, tracker, mixture,
                  eval_sets, render, start_iteration=point.start, history=point.history,
                  cursor=_cursor(cfg, point))
    run.reward_watch = FailureWatch(cfg.reward.failure_warn_rate, cfg.reward.failure_stop_rate)
    LIVE[run.key] = run
    return run


def _cursor(cfg: Config, point: ResumePoint) -> int:
    """Where the run is in its prompt stream: the saved position, else (a new run, or a state
    saved before positions were) P prompts per iteration before this one."""
    if point.cursor is not None:
        return int(point.cursor)
    return (point.start - 1) * cfg.rollout.prompts_per_iteration


def resumable_changes(cfg: Config, allow_changes: tuple[str, ...]) -> list:
    """The allowed recipe changes, if `--resume` may continue the saved state; else the
    one-line reason it cannot (no state, a finished run, an older run's state, a change of
    recipe the user did not allow, a damaged meta.json)."""
    from grpo_core.checkpoints import continuity
    from grpo_core.checkpoints.resume import clean_temporaries, read_meta

    state_dir = Path(cfg.train.output_dir) / "resume"
    clean_temporaries(state_dir)
    meta = read_meta(state_dir)
    continuity.check_resumable(continuity.read_marker(cfg.train.output_dir), meta, state_dir)
    now = cfg.flat()
    return continuity.allowed_changes(continuity.recipe_changes(meta.get("config"), now),
                                      allow_changes, now)


def restore(cfg: Config, learner, changes: list) -> ResumePoint:
    """Load the saved state into the learner (and the Python/NumPy RNG)."""
    from grpo_core.checkpoints.resume import load_state

    state, meta = load_state(Path(cfg.train.output_dir) / "resume")
    learner.load_state_dict(state)
    return ResumePoint(meta["iteration"] + 1, meta["run_id"], meta.get("history", []), changes,
                       meta.get("prompt_cursor"))


def fresh_start(cfg: Config) -> ResumePoint:
    """A new run replaces the previous run's resume state (saying so if that run was
    interrupted, since its progress is then given up)."""
    from grpo_core.checkpoints.continuity import read_marker
    from grpo_core.checkpoints.resume import discard_state, read_meta

    state_dir = Path(cfg.train.output_dir) / "resume"
    if distributed.is_main():
        marker, meta = read_marker(cfg.train.output_dir), read_meta(state_dir)
        if meta is not None and marker and marker["status"] != "FINISHED":
            print(f"starting a new run: the state of interrupted run {marker['run_id']} "
                  f"(iteration {meta['iteration']}) is discarded", file=sys.stderr)
        discard_state(state_dir)
    distributed.barrier()
    return ResumePoint()


def open_tracker(cfg: Config, point: ResumePoint, train_problems: int) -> Tracker | None:
    """The job's MLflow run (rank 0 only), marked as the owner of train.output_dir; a
    resumed run records each recipe change it was allowed."""
    from grpo_core.checkpoints.continuity import describe, write_marker

    if not distributed.is_main():
        return None
    t = cfg.tracking
    tracker = Tracker(tracking_uri(t.mlflow_tracking_uri), t.experiment, run_name=t.run_name,
                      resume_run_id=point.run_id)
    tracker.log_params({**cfg.flat(), "data.train_problems": train_problems})
    tracker.set_tags(provenance_tags(processed_files(cfg)))
    tracker.set_tags({f"resumed_at_{point.start}.{key}": describe((key, old, new))
                      for key, old, new in point.changes})
    write_marker(cfg.train.output_dir, tracker.run_id, "RUNNING", point.start - 1)
    return tracker


def generate(run: LiveRun, prompts: list[str], n: int, sampling):
    """The engine's `n` completions for each prompt. An engine that fails is replaced by a
    fresh one (`restart_engine`) before the error goes on, so the task's retry finds one."""
    try:
        return run.engine.generate(prompts, n, sampling)
    except Exception:
        restart_engine(run)  # a fresh engine with the current policy weights
        raise


def restart_engine(run: LiveRun) -> None:
    """Replace a failed engine by a fresh one carrying the current policy weights."""
    with contextlib.suppress(Exception):
        run.engine.close()
    run.engine = start_engine(run.cfg, run.sft_dir)
    run.engine.update_weights(run.learner.sync_weights())


def close_run(run: LiveRun, status: str) -> None:
    from grpo_core.checkpoints.continuity import write_marker

    with contextlib.suppress(Exception):
        run.engine.close()
    if run.tracker is not None:
        with contextlib.suppress(Exception):
            run.tracker.finish(status)
        write_marker(run.out_dir, run.tracker.run_id, status, run.last_iteration)
    LIVE.pop(run.key, None)
