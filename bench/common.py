"""Shared helpers for the benchmarks: machine load, peak RSS of child processes, medians,
scratch projects that run `grpo` as a user does (own params.yaml, MLflow sqlite, PREFECT_HOME).
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO))

from grpo_core.env import OFFLINE as HUB_OFFLINE, QUIET  # noqa: E402

# every switch of `make` (grpo_core/env), and library warnings kept out of the figures' output
OFFLINE = {**QUIET, **HUB_OFFLINE, "PYTHONWARNINGS": "ignore"}


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


def tree_rss_bytes(root_pid: int) -> int:
    """Summed RSS of a process and all its descendants, from /proc (0 if it is gone)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_child(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None,
              timeout: float | None = None) -> dict:
    """Run one measured process; -> {"rc", "seconds", "peak_rss_gb", "peak_tree_rss_gb",
    "rss_trace"}. peak_rss_gb: wait4's ru_maxrss (the largest single process of the tree);
    peak_tree_rss_gb: the summed RSS of the process and its descendants, polled from /proc
    every 0.5 s; rss_trace: (unix time, tree GB) every 5 s and at each new peak, to line up
    with the child's log."""
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    tree_peak, trace = 0, []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = tree_rss_bytes(proc.pid)
            if now > tree_peak or not trace or time.time() - trace[-1][0] >= 5:
                trace.append((round(time.time(), 1), round(now / 1024 ** 3, 3)))
            tree_peak = max(tree_peak, now)
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
    finally:
        if log:
            out.close()
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - start,
            "peak_rss_gb": usage.ru_maxrss / 1024 ** 2,  # ru_maxrss is KiB on Linux
            "peak_tree_rss_gb": tree_peak / 1024 ** 3, "rss_trace": trace}


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def add_repeats_option(parser, *, quick: bool) -> None:
    """--repeats N, the runs of each case the benchmarks take the median of: at least 1,
    default 3 (1 under --quick where the benchmark has it: a smoke run). Read it back with
    `repeats_of(args)`."""
    def at_least_one(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        return value

    parser.add_argument("--repeats", type=at_least_one, default=None,
                        help="runs of each case (default 3" + ("; --quick: 1)" if quick else ")"))


def repeats_of(args) -> int:
    """--repeats as given, else 1 under --quick, else 3."""
    if args.repeats is not None:
        return args.repeats
    return 1 if getattr(args, "quick", False) else 3


def timed_runs(fn, repeats: int) -> tuple[object, list[float]]:
    """Call `fn()` `repeats` times -> (the last call's value, each call's wall-clock seconds).
    The benchmarks report the median: the first call of a process pays one-time set-up
    (kernel selection, allocator growth, lazy imports) that a long run does not."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - start)
    return value, seconds


def save_json(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    return path


def self_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def mlflow_history(root: Path, experiment: str, prefixes: tuple[str, ...]) -> dict[str, list]:
    """{metric: [(step, value), ...]} of the newest run of `experiment` in root/mlflow.db,
    for the metrics whose name starts with one of `prefixes`."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if key.startswith(prefixes)}


def grpo_project(root: Path, params: dict, *args: str, log_name: str = "train") -> dict:
    """Write root/params.yaml, run `grpo prepare`, then `grpo train --no-eval ARGS` as a
    measured child; -> run_child's figures. Exits with the log's path on failure."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(root)
    for name, cmd in (("prepare", ["prepare"]), (log_name, ["train", "--no-eval", *args])):
        res = run_child([str(BIN / "grpo"), *cmd], root, env, log=root / f"{name}.log")
        if res["rc"]:
            sys.exit(f"grpo {cmd[0]} failed: see {root / (name + '.log')}")
    return res
