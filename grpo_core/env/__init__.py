"""The process-environment switches, in one place: `quiet.env` (telemetry off, patient
start-up) and `offline.env` (no hub access). The Makefile includes the same two files, so
`make`, CI, the `grpo` CLI, the tests and the benchmarks agree on one list."""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a switch file (blank lines and `#` comments skipped)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


QUIET: dict[str, str] = read_env_file(_HERE / "quiet.env")
OFFLINE: dict[str, str] = read_env_file(_HERE / "offline.env")


def apply_defaults(*, offline: bool) -> None:
    """Set each switch the environment does not set already (the user's value wins)."""
    for key, value in {**QUIET, **(OFFLINE if offline else {})}.items():
        os.environ.setdefault(key, value)
