"""The whole pipeline as one Prefect flow: prepare -> validate -> checkpoint -> train (with
its evaluations). This is what `make run` runs on the embedded defaults.

A validation failure stops the flow before the checkpoint stage; its summary (dataset,
expectation, rows, example ids) is printed and the flow run ends Failed with one line.
"""

from __future__ import annotations

import argparse

from prefect import flow, task

from flows.run.values import THIN
from grpo_core.config import Config, load_config


@task(name="prepare", **THIN)
def prepare_task(params: str, overrides: list[str]) -> dict[str, str]:
    from flows.prepare import run, said

    paths, metrics = run(load_config(params, overrides))
    print("\n".join(said(paths, metrics)))
    return {k: str(v) for k, v in paths.items()}


@task(name="validate", **THIN)
def validate_task(params: str, overrides: list[str]) -> str:
    from flows.validate import checked

    cfg = load_config(params, overrides)
    print(checked(cfg))
    return cfg.validate_.report


@task(name="checkpoint", **THIN)
def checkpoint_task(params: str, overrides: list[str]) -> str:
    from flows.checkpoint import materialized

    out, line = materialized(load_config(params, overrides))
    print(line)
    return str(out)


@flow(name="grpo-pipeline")
def pipeline_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Every stage end to end; returns the final evaluation metrics."""
    from prefect.runtime import flow_run

    from flows.train import output_lock, train_flow

    overrides = list(overrides or [])
    # from the first stage on: a second pipeline must not rewrite the data under a running one
    with output_lock(load_config(params, overrides), f"Prefect flow run {flow_run.name!r}"):
        prepare_task(params, overrides)
        validate_task(params, overrides)
        checkpoint_task(params, overrides)
        return train_flow(params, overrides)


def cli(cfg: Config, args: argparse.Namespace) -> int:
    """`grpo pipeline`: run everything, print the results and where to look at them."""
    from flows.evaluate import by_dataset, format_table
    from flows.tracking import tracking_uri, ui_lines
    from flows.train import print_comparison, run_context

    with run_context(cfg):
        results = pipeline_flow(args.params, args.overrides)
    print(format_table(by_dataset(results)))
    print_comparison(results)
    print(f"\nevaluation: {cfg.evaluate.output}   final model: {cfg.train.output_dir}/final")
    print(ui_lines(tracking_uri(cfg.tracking.mlflow_tracking_uri), cfg.tracking.experiment))
    return 0
