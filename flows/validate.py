"""`grpo validate`: Great Expectations suites over the processed datasets.

Writes the JSON report (validate.report, a DVC metric) and, in validate.data_docs, GX Data Docs
HTML plus a self-contained summary.html.
On failure it prints what failed and stops with exit status 2, so nothing trains on bad data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.prepare import eval_splits, processed_paths, train_splits
from grpo_core.config import Config
from grpo_core.errors import UserError


def run(cfg: Config) -> tuple[dict, bool]:
    from grpo_core.data import validation

    train = processed_paths(cfg, train_splits(cfg))
    evals = processed_paths(cfg, eval_splits(cfg))
    v = cfg.validate_
    report, ok = validation.validate(
        {**train, **evals}, train_names=list(train), eval_names=list(evals),
        min_chars=v.min_question_chars, max_chars=v.max_question_chars,
        sample_rows=v.sample_rows, docs_dir=Path(v.data_docs) if v.data_docs else None)
    validation.write_report(report, v.report)
    if v.data_docs:
        validation.write_html(report, Path(v.data_docs) / "summary.html")
    return report, ok


def checked(cfg: Config) -> str:
    """Run the suites; the one line saying they passed, else the failures printed and a
    UserError (nothing downstream may run on data that failed)."""
    from grpo_core.data.validation import summary

    report, ok = run(cfg)
    docs = f", Data Docs {report['data_docs']}" if report.get("data_docs") else ""
    if not ok:
        print(summary(report), file=sys.stderr)
        raise UserError(f"data validation failed: {report['failed_expectations']} expectations "
                        f"(report {cfg.validate_.report}{docs})")
    rows = ", ".join(f"{k} {d['rows']}" for k, d in report["datasets"].items())
    return f"validation passed: {rows} rows (report {cfg.validate_.report}{docs})"


def cli(cfg: Config, args: argparse.Namespace) -> int:
    print(checked(cfg))
    return 0
