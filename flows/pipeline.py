"""The whole pipeline as one Prefect flow: prepare -> validate -> checkpoint -> train (with
its evaluations). This is what `make run` runs on the embedded defaults.

A validation failure stops the flow before the checkpoint stage; its summary (dataset,
expectation, rows, example ids) is printed and the flow run ends Failed with one line.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from grpo_core.config import Config, load_config
from grpo_core.errors import UserError

THIN = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="prepare", **THIN)
def prepare_task(params: str, overrides: list[str]) -> dict[str, str]:
    from flows.prepare import run

    paths, _ = run(load_config(params, overrides))
    return {k: str(v) for k, v in paths.items()}


@task(name="validate", **THIN)
def validate_task(params: str, overrides: list[str]) -> str:
    from flows.validate import run
    from grpo_core.data.validation import summary

    cfg = load_config(params, overrides)
    report, ok = run(cfg)
    if not ok:
        print(summary(report), file=sys.stderr)
        raise UserError(f"data validation failed: {report['failed_expectations']} expectations "
                        f"(report {cfg.validate_.report}); nothing was trained")
    return cfg.validate_.report


@task(name="checkpoint", **THIN)
def checkpoint_task(params: str, overrides: list[str]) -> str:
    from grpo_core.checkpoints.sft import materialize

    c = load_config(params, overrides).checkpoint
    return str(materialize(c.source, c.output_dir, trust_remote_code=c.trust_remote_code))


@flow(name="grpo-pipeline")
def pipeline_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Every stage end to end; returns the final evaluation metrics."""
    from flows.train import train_flow

    overrides = list(overrides or [])
    prepare_task(params, overrides)
    validate_task(params, overrides)
    checkpoint_task(params, overrides)
    return train_flow(params, overrides)


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo pipeline`: run everything, print the results and where to look at them."""
    from flows.evaluate import format_table
    from flows.tracking import tracking_uri

    results = pipeline_flow(args.params, args.overrides)
    print(format_table(_by_dataset(results)))
    print(f"\nevaluation: {cfg.evaluate.output}   final model: {cfg.train.output_dir}/final")
    print(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri "
          f"{tracking_uri(cfg.tracking.mlflow_tracking_uri)} --host 127.0.0.1")
    return 0


def _by_dataset(flat: dict[str, float]) -> dict[str, dict]:
    """{"eval/gsm8k/pass_at_4": x} -> {"gsm8k": {"pass@4": x}} (breakdowns left out)."""
    out: dict[str, dict] = {}
    for key, value in flat.items():
        _, name, metric = key.split("/", 2)
        if "/" not in metric:
            out.setdefault(name, {})[metric.replace("_at_", "@")] = value
    return out
