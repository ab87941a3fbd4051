"""Shared helpers for the benchmarks: machine load, peak RSS of child processes, medians,
scratch projects that run `grpo` as a user does (own params.yaml, MLflow sqlite, PREFECT_HOME).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "GX_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PYTHONWARNINGS": "ignore"}


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: every figure carries them)."""
    return [round(x, 2) for x in os.getloadavg()]


def data_dir() -> str:
    d = os.environ.get("GRPO_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not Path(d, "gsm8k").is_dir():
        sys.exit(f"bench: no GSM8K data at {d} (set GRPO_DATA_DIR)")
    return d


def project_env(root: Path) -> dict[str, str]:
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(root / ".prefect"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # each run starts its own temporary server
    return env


def run_child(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None,
              timeout: float | None = None) -> dict:
    """Run one measured process; -> {"rc", "seconds", "peak_rss_gb"}. Peak RSS comes from
    wait4's rusage of that child alone (maxrss of the largest process in its tree is not
    summed: a child's own children are reported through it only when waited for)."""
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    finally:
        if log:
            out.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "seconds": time.perf_counter() - start,
            "peak_rss_gb": usage.ru_maxrss / 1024 ** 2}  # ru_maxrss is KiB on Linux


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def save_json(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    return path


def self_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
