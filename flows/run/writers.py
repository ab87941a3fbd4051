"""What a training run writes: the rollout records, the resume state, the per-iteration MLflow
logs and the history file DVC plots, the checkpoints and the final model.

Under torchrun the writers run on rank 0 only (`main_only`, or every rank calls and rank 0
writes where the call is collective), and the rollout records of every rank are gathered to
rank 0, which writes them.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pandas as pd

from flows.run.live import LiveRun
from flows.tracking import advantage_figure
from grpo_core.parallel import distributed

HISTORY_KEYS = ("reward/total/mean", "reward/total/std", "completion/length_mean",
                "completion/truncated_frac", "completion/cross_prompt_answer_frac", "update/kl",
                "time/iteration_s")


def write_records(run: LiveRun, iteration: int, rows: pd.DataFrame, prompts: list[str],
                  result) -> Path:
    """The iteration's rollout records (every rank's groups, written by rank 0); their path."""
    from grpo_core.rollout.records import records_path, to_frame, write_records as write

    frame = to_frame(iteration, rows["id"].tolist(), prompts, result)
    shard = distributed.shard_range(run.cfg.rollout.prompts_per_iteration)
    frame["prompt_index"] += shard.start  # index into the iteration's P prompts
    frames = distributed.gather_to_main(frame)  # rank 0 writes every rank's groups
    if frames is None:
        return records_path(run.cfg.rollout.output_dir, iteration)
    return write(pd.concat(frames, ignore_index=True), run.cfg.rollout.output_dir, iteration)


def fill_records(run: LiveRun, iteration: int, records: Path,
                 columns: dict[str, list[float]]) -> None:
    """Add per-completion columns (rewards, advantages) to the records; collective."""
    from grpo_core.rollout.records import write_records as write

    parts = distributed.gather_to_main(columns)  # rank order = the records' row order
    if parts is None:
        return
    columns = {k: [v for part in parts for v in part[k]] for k in columns}
    frame = pd.read_parquet(records)
    for name, values in columns.items():
        frame[name] = values
    write(frame, run.cfg.rollout.output_dir, iteration)


def report_reward_failures(run: LiveRun, metrics: dict[str, float], errors: dict[str, str],
                           scored: int) -> None:
    """Warn (console and an MLflow tag `reward.<name>.failure`) the first time a reward
    function fails and when its failure rate crosses reward.failure_warn_rate; the watch
    stops the run past reward.failure_stop_rate."""
    counts = {name: (scored, int(metrics.get(f"reward/{name}/failures", 0)))
              for name in run.cfg.reward.functions}
    for name, line in run.reward_watch.observe(counts, errors):
        print(f"warning: {line}", file=sys.stderr)
        if run.tracker is not None:
            key = re.sub(r"[^\w./ -]", "_", name)  # MLflow's tag-key characters
            run.tracker.set_tags({f"reward.{key}.failure": line[:5000]})


def save_resume_state(run: LiveRun, iteration: int) -> Path | None:
    """Every rank calls it (FSDP2 gathers the state collectively); rank 0 writes."""
    from grpo_core.checkpoints.resume import save_state

    state = run.learner.state_dict()
    if not distributed.is_main():
        return None
    meta = {"iteration": iteration, "run_id": run.tracker.run_id, "history": run.history,
            "config": run.cfg.flat(),  # the recipe a resume must match (continuity)
            "prompt_cursor": run.cursor}  # dynamic sampling draws a varying number
    return save_state(run.out_dir / "resume", state, meta)


@distributed.main_only()
def log_iteration(run: LiveRun, iteration: int, metrics: dict[str, float], *, records: Path,
                  advantages) -> None:
    """The advantage histogram (of every rank's groups) and the sample table from `records`,
    then the metrics at step = iteration (the metric batch is one transaction: its presence
    marks the step as logged), and the history file that DVC plots. A step MLflow already has
    is not logged again."""
    run.history = [h for h in run.history if h["iteration"] < iteration]
    run.history.append({"iteration": iteration, **{k: metrics.get(k) for k in HISTORY_KEYS}})
    write_history(run.history, Path("metrics") / "train_history.csv")
    last = run.tracker.last_step("reward/total/mean")
    if last is not None and last >= iteration:
        return
    _log_advantages(run, iteration, records, advantages)
    run.tracker.log_metrics(metrics, step=iteration)


def _log_advantages(run: LiveRun, iteration: int, records: Path, advantages) -> None:
    import matplotlib.pyplot as plt

    fig = advantage_figure(advantages, iteration)
    run.tracker.log_figure(fig, f"advantages/iter_{iteration:05d}.png")
    plt.close(fig)
    table = pd.read_parquet(records).head(run.cfg.tracking.sample_table_rows)
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
