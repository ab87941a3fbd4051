"""The live objects of a training run, kept in this process and looked up by key.

Prefect tasks receive the key; this module opens a run (fresh or resumed), and does the
I/O around the update step: resume state, MLflow logging, checkpoints, the final model and
the live evaluation. Under torchrun, the writers run on rank 0 only (`main_only`), and the
rollout records of every rank are gathered to rank 0, which writes them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flows.tracking import Tracker, advantage_figure, provenance_tags, tracking_uri
from grpo_core.parallel import distributed
from grpo_core.config import Config
from grpo_core.errors import UserError

LIVE: dict[str, "LiveRun"] = {}
HISTORY_KEYS = ("reward/total/mean", "reward/total/std", "completion/length_mean",
                "completion/truncated_frac", "completion/cross_prompt_answer_frac", "update/kl",
                "time/iteration_s")


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
    few_shot: list[tuple[str, str]]
    start_iteration: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)

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

    def render(self, questions: list[str]) -> list[str]:
        from grpo_core.data.prompts import render_prompts

        p = self.cfg.data.prompt
        return render_prompts(self.tokenizer, questions, system=p.system,
                              instruction=p.instruction, few_shot=self.few_shot)

    def sampling(self, iteration: int):
        """Rollout sampling; the seed is a function of (seed, iteration), so a resumed run
        asks the engine for the same stream an uninterrupted run would have."""
        from grpo_core.rollout import SamplingSettings

        r = self.cfg.rollout
        return SamplingSettings(temperature=r.temperature, top_p=r.top_p,
                                max_new_tokens=r.max_new_tokens, stop=tuple(r.stop),
                                seed=r.seed * 1_000_003 + iteration)

    def records_path(self, iteration: int) -> Path:
        return Path(self.cfg.rollout.output_dir) / f"iter_{iteration:05d}.parquet"

    def write_records(self, iteration: int) -> Path:
        from grpo_core.rollout.records import to_frame, write_records

        s = self.scratch
        frame = to_frame(iteration, s["rows"]["id"].tolist(), s["prompts"], s["result"])
        shard = distributed.shard_range(self.cfg.rollout.prompts_per_iteration)
        frame["prompt_index"] += shard.start  # index into the iteration's P prompts
        frames = distributed.gather_to_main(frame)  # rank 0 writes every rank's groups
        if frames is None:
            return self.records_path(iteration)
        return write_records(pd.concat(frames, ignore_index=True), self.cfg.rollout.output_dir,
                             iteration)

    def fill_records(self, iteration: int, columns: dict[str, list[float]]) -> None:
        from grpo_core.rollout.records import write_records

        parts = distributed.gather_to_main(columns)  # rank order = the records' row order
        if parts is None:
            return
        columns = {k: [v for part in parts for v in part[k]] for k in columns}
        frame = pd.read_parquet(self.records_path(iteration))
        for name, values in columns.items():
            frame[name] = values
        write_records(frame, self.cfg.rollout.output_dir, iteration)


def open_run(cfg: Config, *, resume: bool) -> LiveRun:
    """Load data, tokenizer, policy and engine; restore the resume state when asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_core.checkpoints.sft import materialize
    from grpo_core.algorithm.optim import UpdateHyper
    from grpo_core.rewards.functions import check_functions
    from grpo_core.rollout import make_engine
    from grpo_core.checkpoints.resume import load_state
    from grpo_core.algorithm.learner import Learner

    check_functions(list(cfg.reward.functions), cfg.reward.reward_model)  # fail before loading
    mixture, eval_sets, few_shot = _load_data(cfg)
    mixture = _training_rows(cfg, mixture)
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
    engine = make_engine(cfg.rollout.engine, sft, **_engine_options(cfg))
    if resume:
        engine.update_weights(learner.sync_weights())
    t, tracker = cfg.tracking, None
    if distributed.is_main():  # one MLflow run per job, however many ranks
        tracker = Tracker(tracking_uri(t.mlflow_tracking_uri), t.experiment, run_name=t.run_name,
                          resume_run_id=run_id)
        tracker.log_params({**cfg.flat(), "data.train_problems": len(mixture)})
        tracker.set_tags(provenance_tags(_processed_files(cfg)))
    run = LiveRun(uuid.uuid4().hex, cfg, Path(sft), tokenizer, learner, engine, tracker, mixture,
                  eval_sets, few_shot, start_iteration=start, history=history)
    LIVE[run.key] = run
    return run


def _engine_options(cfg: Config) -> dict[str, Any]:
    """The engine's keyword arguments. The context holds the longest prompt plus the longer of
    the rollout's and the evaluation's completions (one engine serves both in training)."""
    from grpo_core.rollout import kv_cache_tokens

    r = cfg.rollout
    longest = r.max_prompt_tokens + max(r.max_new_tokens, cfg.evaluate.max_new_tokens)
    batch = kv_cache_tokens(r.prompts_per_iteration, r.group_size, r.max_prompt_tokens,
                            r.max_new_tokens)
    return dict(dtype=r.dtype, seed=r.seed, max_prompt_tokens=r.max_prompt_tokens,
                overlong_prompts=r.overlong_prompts, cpu_kv_cache_gib=r.cpu_kv_cache_gib,
                gpu_memory_utilization=r.gpu_memory_utilization,
                tensor_parallel_size=r.tensor_parallel_size, sleep_mode=r.sleep_mode,
                max_model_len=longest, kv_cache_tokens=batch)


def restart_engine(run: LiveRun) -> None:
    """Replace a failed engine by a fresh one carrying the current policy weights."""
    from grpo_core.rollout import make_engine

    with contextlib.suppress(Exception):
        run.engine.close()
    run.engine = make_engine(run.cfg.rollout.engine, run.sft_dir, **_engine_options(run.cfg))
    run.engine.update_weights(run.learner.sync_weights())


def _processed_files(cfg: Config) -> dict[str, Path]:
    """Every processed file the run reads: the training mixture's and the evaluation's."""
    from flows.prepare import eval_splits, processed_paths, train_splits

    return processed_paths(cfg, train_splits(cfg) + eval_splits(cfg))


def _load_data(cfg: Config):
    """(training mixture, {eval name: rows}, few-shot pairs) from the processed files."""
    from grpo_core.data.sources import (MixturePart, describe_limits, load_processed, processed_name,
                                training_mixture, within_difficulty)
    from grpo_core.data.prompts import few_shot_examples

    files = _processed_files(cfg)
    frames = {name: load_processed(path) for name, path in files.items()}
    parts = [MixturePart(processed_name(s.name, s.split), s.rows, s.max_steps, s.max_level)
             for s in cfg.data.train]
    mixture = training_mixture(frames, parts, cfg.data.seed)
    evals = {}
    for s in cfg.evaluate.datasets:
        part = MixturePart(processed_name(s.name, s.split), None, s.max_steps, s.max_level)
        frame = within_difficulty(frames[part.key], part)
        if frame.empty:
            raise UserError(f"evaluate.datasets: {part.key} has 0 rows{describe_limits(part)}")
        evals[s.name] = frame.head(s.rows) if s.rows is not None else frame
    k = cfg.data.prompt.few_shot
    shots = (few_shot_examples(mixture["question"].tolist(), mixture["solution"].tolist(), k)
             if k else [])
    return mixture, evals, shots


def _training_rows(cfg: Config, mixture: pd.DataFrame) -> pd.DataFrame:
    """The mixture, less what `data.pass_rates` filters out. Applied after `_load_data` chose
    the worked examples, so the prompt stays the one the rates were measured with; evaluation
    never reads the earlier rollouts."""
    from grpo_core.data.pass_rates import filter_mixture

    f = cfg.data.pass_rates
    if f is None:
        return mixture
    kept, said = filter_mixture(mixture, f.rollouts, reward=f.reward, min_rate=f.min_rate,
                                max_rate=f.max_rate, min_samples=f.min_samples,
                                own_rollouts=cfg.rollout.output_dir)
    if distributed.is_main():
        print(said, file=sys.stderr)
    return kept


def save_resume_state(run: LiveRun, iteration: int) -> Path | None:
    """Every rank calls it (FSDP2 gathers the state collectively); rank 0 writes."""
    from grpo_core.checkpoints.resume import save_state

    state = run.learner.state_dict()
    if not distributed.is_main():
        return None
    meta = {"iteration": iteration, "run_id": run.tracker.run_id, "history": run.history}
    return save_state(run.out_dir / "resume", state, meta)


@distributed.main_only()
def log_iteration(run: LiveRun, iteration: int, metrics: dict[str, float]) -> None:
    """The advantage histogram and sample table, then the metrics at step = iteration (the
    metric batch is one transaction: its presence marks the step as logged), and the history
    file that DVC plots. A step MLflow already has is not logged again."""
    run.history = [h for h in run.history if h["iteration"] < iteration]
    run.history.append({"iteration": iteration, **{k: metrics.get(k) for k in HISTORY_KEYS}})
    write_history(run.history, Path("metrics") / "train_history.csv")
    last = run.tracker.last_step("reward/total/mean")
    if last is not None and last >= iteration:
        return
    if "advantages" in run.scratch:
        _log_advantages(run, iteration)
    run.tracker.log_metrics(metrics, step=iteration)


def _log_advantages(run: LiveRun, iteration: int) -> None:
    import matplotlib.pyplot as plt

    adv = run.scratch.get("advantages_all", run.scratch["advantages"])  # all ranks' groups
    fig = advantage_figure(adv, iteration)
    run.tracker.log_figure(fig, f"advantages/iter_{iteration:05d}.png")
    plt.close(fig)
    table = pd.read_parquet(run.records_path(iteration)).head(run.cfg.tracking.sample_table_rows)
    keep = [c for c in ("prompt_id", "completion", "reward", "advantage") if c in table]
    run.tracker.log_table(table[keep], f"samples/iter_{iteration:05d}.json")


def write_history(history: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", *HISTORY_KEYS])
        writer.writeheader()
        writer.writerows(history)


def save_checkpoint(run: LiveRun, iteration: int) -> Path | None:
    """Every rank calls it (FSDP2 gathers the weights collectively); rank 0 writes and logs."""
    out = run.learner.save_pretrained(run.out_dir / "checkpoints" / f"iter_{iteration:05d}",
                                      tokenizer=run.tokenizer)
    if not distributed.is_main():
        return None
    run.tracker.log_dir(out, f"checkpoints/iter_{iteration:05d}")
    return Path(out)


def save_final(run: LiveRun) -> Path | None:
    """The final policy as a plain HF directory (also an MLflow artifact), the train summary
    metric file and the reward-curve PNG. Every rank calls it; rank 0 writes."""
    from flows.plots import reward_curve_png

    out = Path(run.learner.save_pretrained(run.out_dir / "final", tokenizer=run.tokenizer))
    if not distributed.is_main():
        return None
    run.tracker.log_dir(out, "model")
    last = run.history[-1] if run.history else {}
    summary = {"iterations_planned": run.cfg.train.iterations, **last}
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/train.json").write_text(json.dumps(summary, indent=2))
    png = reward_curve_png(run.history, Path("plots") / "reward.png")
    run.tracker.log_file(png, "plots")
    return out


@distributed.main_only(dict)
def evaluate_live(run: LiveRun, iteration: int, *, quick: bool) -> dict:
    """Evaluate the live engine (it holds the current weights). Quick: the first
    `evaluate.quick_rows` problems, greedy, logged as `eval_quick/...`; final: the first
    `evaluate.final_rows` (None: all configured rows), with sampling when `evaluate.samples` > 1,
    logged as `eval/...` and written to `evaluate.output`."""
    from flows.evaluate import evaluate_sets, flat_metrics, write_results

    e = run.cfg.evaluate
    rows = e.quick_rows if quick else e.final_rows
    sets = {n: f.head(rows) for n, f in run.eval_sets.items()} if rows else run.eval_sets
    results = evaluate_sets(run.engine, run.render, sets, max_new_tokens=e.max_new_tokens,
                            samples=1 if quick else e.samples, temperature=e.temperature,
                            time_limit_s=run.cfg.reward.timeout_s, seed=run.cfg.rollout.seed)
    prefix = "eval_quick" if quick else "eval"
    run.tracker.log_metrics(flat_metrics(results, prefix), step=iteration)
    if not quick:
        path = write_results(results, e.output)
        run.tracker.log_file(path, "eval")
    return flat_metrics(results, prefix)


class Budget:
    """A wall-clock budget in minutes (None: unlimited), counted from this process's start
    of training (a resumed run gets a fresh budget)."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def close_run(run: LiveRun, status: str) -> None:
    with contextlib.suppress(Exception):
        run.engine.close()
    with contextlib.suppress(Exception):
        run.tracker.finish(status)
    LIVE.pop(run.key, None)


@contextlib.contextmanager
def progress(run: LiveRun, total: int):
    """A tqdm bar over iterations with the ETA and the latest reward."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=run.start_iteration - 1, desc="GRPO", unit="it",
               dynamic_ncols=True, disable=not distributed.is_main())

    class Bar:
        @staticmethod
        def update(metrics: dict[str, float]) -> None:
            bar.set_postfix(reward=f"{metrics.get('reward/total/mean', 0.0):.3f}",
                            len=f"{metrics.get('completion/length_mean', 0.0):.0f}")
            bar.update(1)

    try:
        yield Bar()
    finally:
        bar.close()


def headline(results: dict) -> dict:
    """The numbers a person looks at first."""
    return {k: round(v, 4) for k, v in results.items() if k.endswith("accuracy") or "_at_" in k}

