"""The process-environment switches, in one place: `quiet.env` (telemetry off, patient
start-up), `offline.env` (no hub access) and `terse.env` (library logs off the console).
The Makefile includes the first two, so `make`, CI, the `grpo` CLI, the tests and the
benchmarks agree on one list; `terse.env` is the CLI's default, undone by `--verbose`."""

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
TERSE: dict[str, str] = read_env_file(_HERE / "terse.env")


def apply_defaults(*, offline: bool, terse: bool = False) -> None:
    """Set each switch the environment does not set already (the user's value wins)."""
    chosen = {**QUIET, **(OFFLINE if offline else {}), **(TERSE if terse else {})}
    for key, value in chosen.items():
        os.environ.setdefault(key, value)
    if terse:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """What an environment variable cannot reach: Python warnings that vLLM's own code
    triggers (deprecated torch names it uses) say nothing a user can act on, and vLLM logs
    a warning at import, before it reads VLLM_LOGGING_LEVEL. Other modules' warnings show."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"vllm\.")
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
