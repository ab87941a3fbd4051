"""Evaluation on GSM8K and MATH: greedy pass@1, sampled pass@k / maj@k, MATH by level and
subject. `grpo evaluate --checkpoint DIR` runs it on its own (full sets by default, or
`evaluate.datasets[*].rows`); the training flow calls `evaluate_sets` with its live engine.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from grpo_core.config import Config, load_config
from grpo_core.errors import UserError


def evaluate_sets(engine, render, sets: dict, *, max_new_tokens: int, samples: int,
                  temperature: float, time_limit_s: float, seed: int) -> dict[str, dict]:
    """{dataset name: metrics} for each {name: processed rows} with prompts from `render`."""
    from tqdm.auto import tqdm

    from grpo_core.evaluation.metrics import evaluate_frame

    results = {}
    for name, frame in tqdm(sets.items(), desc="evaluate", unit="set", leave=False):
        metrics, _ = evaluate_frame(engine, render(frame["question"].tolist()), frame,
                                    max_new_tokens=max_new_tokens, samples=samples,
                                    temperature=temperature, time_limit_s=time_limit_s, seed=seed)
        results[name] = metrics
    return results


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


@task(name="evaluate-checkpoint", cache_policy=NO_CACHE, persist_result=False)
def evaluate_checkpoint(params: str, overrides: list[str], checkpoint: str) -> dict:
    from transformers import AutoTokenizer

    from grpo_core.data.prompts import render_prompts
    from grpo_core.rollout import make_engine
    from flows.session import _engine_options, _load_data

    cfg = load_config(params, overrides)
    if not (Path(checkpoint) / "config.json").is_file():
        raise UserError(f"--checkpoint {checkpoint}: not a model directory (no config.json)")
    _, sets, shots = _load_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    p = cfg.data.prompt

    def render(questions):
        return render_prompts(tokenizer, questions, system=p.system, instruction=p.instruction,
                              few_shot=shots)

    engine = make_engine(cfg.rollout.engine, checkpoint, **_engine_options(cfg))
    try:
        e = cfg.evaluate
        return evaluate_sets(engine, render, sets, max_new_tokens=e.max_new_tokens,
                             samples=e.samples, temperature=e.temperature,
                             time_limit_s=cfg.reward.timeout_s, seed=cfg.rollout.seed)
    finally:
        engine.close()


@flow(name="grpo-evaluate")
def evaluate_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                  checkpoint: str = "models/grpo/final") -> dict:
    results = evaluate_checkpoint(params, overrides or [], checkpoint)
    cfg = load_config(params, overrides or [])
    write_results(results, cfg.evaluate.output)
    return results


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo evaluate [--checkpoint DIR]`: evaluate a saved model, print a table, write JSON."""
    results = evaluate_flow(args.params, args.overrides, checkpoint=args.checkpoint)
    print(format_table(results))
    print(f"results written to {cfg.evaluate.output}")
    return 0
