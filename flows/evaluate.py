"""Evaluation on GSM8K and MATH: greedy pass@1, sampled pass@k / maj@k, MATH by level and
subject. `grpo evaluate --checkpoint DIR` runs it on its own (full sets by default, or
`evaluate.datasets[*].rows`); the training run calls `score_sets` with its live engine
(`flows.run.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from prefect import flow, task

from flows.run.inputs import load_data, prompt_renderer, start_engine
from flows.run.values import THIN
from grpo_core.config import Config, load_config
from grpo_core.checkpoints.sft import check_model_dir


def score_sets(engine, render, sets: dict, *, max_new_tokens: int, samples: int,
               temperature: float, time_limit_s: float, seed: int
               ) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """({name: metrics}, {name: per-problem records}) for each {name: processed rows}: the
    records are what a paired before/after comparison needs."""
    from tqdm.auto import tqdm

    from grpo_core.evaluation.metrics import evaluate_frame

    results, records = {}, {}
    for name, frame in tqdm(sets.items(), desc="evaluate", unit="set", leave=False):
        results[name], records[name] = evaluate_frame(
            engine, render(frame["question"].tolist()), frame, max_new_tokens=max_new_tokens,
            samples=samples, temperature=temperature, time_limit_s=time_limit_s, seed=seed)
    return results, records


def eval_settings(cfg: Config, *, quick: bool = False) -> dict:
    """The decoding of an evaluation, as `score_sets` takes it: the same for the starting
    checkpoint and the trained policy, in training and in `grpo evaluate`."""
    e = cfg.evaluate
    return dict(max_new_tokens=e.max_new_tokens, samples=1 if quick else e.samples,
                temperature=e.temperature, time_limit_s=cfg.reward.timeout_s,
                seed=cfg.rollout.seed)


def flat_metrics(results: dict[str, dict], prefix: str) -> dict[str, float]:
    """{"eval/gsm8k/accuracy": ..., "eval/math500/level_3/accuracy": ...} for MLflow, whose
    metric names may not contain "@": pass@k is logged as pass_at_k."""
    out = {}
    for name, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, dict):  # by_level / by_subject
                for label, sub in value.items():
                    group = f"{key.removeprefix('by_')}_{_metric_word(label)}"
                    out[f"{prefix}/{name}/{group}/accuracy"] = sub["accuracy"]
            else:
                out[f"{prefix}/{name}/{key.replace('@', '_at_')}"] = value
    return out


def by_dataset(flat: dict[str, float]) -> dict[str, dict]:
    """{"eval/gsm8k/pass_at_4": x} -> {"gsm8k": {"pass@4": x}} (breakdowns left out)."""
    out: dict[str, dict] = {}
    for key, value in flat.items():
        _, name, metric = key.split("/", 2)
        if "/" not in metric:
            out.setdefault(name, {})[metric.replace("_at_", "@")] = value
    return out


def _metric_word(label: str) -> str:
    """A label usable in an MLflow metric name: "Counting & Probability" ->
    "Counting_and_Probability" (MLflow allows letters, digits, _ - . : / and spaces)."""
    return re.sub(r"[^\w.\-]+", "_", str(label).replace("&", "and")).strip("_")


def write_results(results: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(p)
    return p


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one line per dataset, then MATH's level and subject breakdowns."""
    cols = sorted({k for m in results.values() for k in m if "@" in k})
    lines = [f"{'dataset':<12}{'n':>6}{'accuracy':>10}" + "".join(f"{c:>10}" for c in cols)]
    for name, m in results.items():
        lines.append(f"{name:<12}{int(m['count']):>6}{m['accuracy']:>10.3f}"
                     + "".join(f"{m.get(c, float('nan')):>10.3f}" for c in cols))
    for name, m in results.items():
        for key in ("by_level", "by_subject"):
            for label, sub in (m.get(key) or {}).items():
                lines.append(f"  {name} {key[3:]} {label:<24}{int(sub['count']):>5}"
                             f"{sub['accuracy']:>8.3f}")
    return "\n".join(lines)


@task(name="evaluate-checkpoint", **THIN)
def evaluate_checkpoint(params: str, overrides: list[str], checkpoint: str
                        ) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """(metrics, per-problem records) of one saved model on the configured sets."""
    from transformers import AutoTokenizer

    cfg = load_config(params, overrides)
    check_model_dir(Path(checkpoint), checkpoint)
    _, sets, shots = load_data(cfg)
    render = prompt_renderer(cfg, AutoTokenizer.from_pretrained(checkpoint), shots)
    engine = start_engine(cfg, checkpoint)
    try:
        return score_sets(engine, render, sets, **eval_settings(cfg))
    finally:
        engine.close()


@flow(name="grpo-evaluate")
def evaluate_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                  checkpoint: str = "models/grpo/final", baseline: str | None = None) -> dict:
    """Evaluate `checkpoint`; with `baseline`, evaluate it on the same problems too and add
    the paired before -> after comparison to each set's metrics."""
    from flows.comparison import attach, compare_sets

    overrides = overrides or []
    results, records = evaluate_checkpoint(params, overrides, checkpoint)
    if baseline is not None:
        _, before = evaluate_checkpoint(params, overrides, baseline)
        results = attach(results, compare_sets(before, records))
    write_results(results, load_config(params, overrides).evaluate.output)
    return results


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo evaluate [--checkpoint DIR] [--baseline DIR]`: evaluate a saved model (and
    compare it with a baseline model), print a table, write JSON."""
    from flows.comparison import from_results, table
    from flows.prefect_server import temporary_server
    from flows.run.inputs import check_processed

    # before the flow starts Prefect's server: a wrong path is a one-line error at once
    check_processed(cfg, evaluate_only=True)
    for flag, where in (("--checkpoint", args.checkpoint), ("--baseline", args.baseline)):
        if where is not None:
            check_model_dir(Path(where), f"{flag} {where}")
    with temporary_server():
        results = evaluate_flow(args.params, args.overrides, checkpoint=args.checkpoint,
                                baseline=args.baseline)
    print(format_table(results))
    if args.baseline is not None:
        print(f"\n{args.checkpoint} against {args.baseline}:\n{table(from_results(results))}")
    print(f"results written to {cfg.evaluate.output}")
    return 0
