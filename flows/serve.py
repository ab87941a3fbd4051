"""`grpo serve --cron "0 3 * * *"`: register the pipeline as a Prefect deployment with a cron
schedule on a Prefect server and serve it (this process runs the scheduled flow runs).

Schedules need a real server: `prefect server start --host 127.0.0.1`, then
`export PREFECT_API_URL=http://127.0.0.1:4200/api` before `grpo serve`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from grpo_core.config import Config
from grpo_core.errors import UserError


def check_cron(expression: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expression)
    except ValueError:
        raise UserError(f"--cron {expression!r}: not a valid cron expression "
                        "(five fields: minute hour day-of-month month day-of-week)") from None
    return expression


def cli(cfg: Config, args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline_flow

    cron = check_cron(args.cron)
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("grpo serve needs a Prefect server: run `prefect server start --host "
                        "127.0.0.1` and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    params = str(Path(args.params).resolve()) if Path(args.params).exists() else args.params
    print(f"serving deployment grpo-pipeline/{args.name} on cron {cron!r}; Ctrl-C stops")
    # limit=1: this runner starts a scheduled run only when the previous one has ended (the
    # later run waits, Scheduled, instead of interleaving with it); a run started any other
    # way meets the output folder's lock (flows/run/lock.py)
    pipeline_flow.serve(name=args.name, cron=cron, limit=1,
                        parameters={"params": params, "overrides": list(args.overrides)})
    return 0
