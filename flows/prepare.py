"""`grpo prepare`: every dataset split the run uses -> data/processed/<name>_<split>.parquet
(+ manifest.json).

Thin glue: the datasets are the training mixture's and the evaluation's splits. GSM8K and MATH
come from data.dir, else $GRPO_DATA_DIR, else the Hugging Face hub; arithmetic is generated;
a data.custom dataset comes from its own files (or its hub id).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

from grpo_core.data import sources as data
from grpo_core.config import Config


def data_dir(cfg: Config) -> Optional[str]:
    return cfg.data.dir or os.environ.get("GRPO_DATA_DIR") or None


def train_splits(cfg: Config) -> list[tuple[str, str]]:
    return [(d.name, d.split) for d in cfg.data.train]


def eval_splits(cfg: Config) -> list[tuple[str, str]]:
    return [(d.name, d.split) for d in cfg.evaluate.datasets]


def processed_paths(cfg: Config, splits: list[tuple[str, str]]) -> dict[str, Path]:
    """{"gsm8k_train": data/processed/gsm8k_train.parquet, ...} for the given splits."""
    out = Path(cfg.data.processed_dir)
    return {data.processed_name(n, s): out / f"{data.processed_name(n, s)}.parquet"
            for n, s in splits}


def sources(cfg: Config) -> dict[str, data.Source]:
    """The built-in datasets and the user's own (data.custom), by name."""
    from grpo_core.data.custom import UserDataset, user_sources

    mine = {name: UserDataset(**spec.model_dump()) for name, spec in cfg.data.custom.items()}
    return {**data.SOURCES, **user_sources(mine)}


def run(cfg: Config) -> tuple[dict[str, Path], dict]:
    train = train_splits(cfg)
    paths, metrics = data.prepare(data_dir(cfg), cfg.data.processed_dir, train + eval_splits(cfg),
                                  decontaminate=train if cfg.data.decontaminate else (),
                                  sources=sources(cfg))
    manifest = Path(cfg.data.processed_dir) / "manifest.json"
    manifest.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return paths, metrics


def said(paths: dict[str, Path], metrics: dict) -> list[str]:
    """One line per processed split: rows, where, and what was dropped."""
    lines = []
    for key, path in paths.items():
        m = metrics[key]
        dropped = [f"{m[k]} {label}" for k, label in (("dropped_no_answer", "without an answer"),
                                                      ("dropped_overlap", "shared with eval"))
                   if m.get(k)]
        note = f" (dropped {', '.join(dropped)})" if dropped else ""
        lines.append(f"{key}: {m['rows']} rows -> {path}{note}")
    return lines


def cli(cfg: Config, args: argparse.Namespace) -> int:
    print("\n".join(said(*run(cfg))))
    return 0
