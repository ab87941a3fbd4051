"""`grpo checkpoint`: materialise the configured SFT source as a safetensors HF directory."""

from __future__ import annotations

import argparse

from grpo_core.checkpoints.sft import materialize, read_marker
from grpo_core.config import Config


def cli(cfg: Config, args: argparse.Namespace) -> int:
    c = cfg.checkpoint
    out = materialize(c.source, c.output_dir, trust_remote_code=c.trust_remote_code)
    marker = read_marker(out) or {}
    print(f"sft checkpoint: {out} (source {c.source}, chat template "
          f"{marker.get('chat_template', '?')})")
    return 0
