"""`grpo checkpoint`: materialise the configured SFT source as a safetensors HF directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from grpo_core.checkpoints.sft import materialize, read_marker
from grpo_core.config import Config


def materialized(cfg: Config) -> tuple[Path, str]:
    """(the SFT directory, the line saying what it holds)."""
    c = cfg.checkpoint
    out = materialize(c.source, c.output_dir, trust_remote_code=c.trust_remote_code)
    marker = read_marker(out) or {}
    return out, (f"sft checkpoint: {out} (source {c.source}, chat template "
                 f"{marker.get('chat_template', '?')})")


def cli(cfg: Config, args: argparse.Namespace) -> int:
    print(materialized(cfg)[1])
    return 0
