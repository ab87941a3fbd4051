"""Helpers for the pipeline tests: a tiny params.yaml and running `grpo` as a user does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

# Every metric the training flow must log at every iteration (issue 6's list).
ITERATION_METRICS = [
    "reward/total/mean", "reward/total/std", "reward/total/min", "reward/total/max",
    "reward/gsm8k_accuracy/mean", "reward/format/mean",
    "advantage/mean", "advantage/std", "advantage/abs_mean", "advantage/zero_groups_frac",
    "update/kl", "update/clip_frac_low", "update/clip_frac_high", "update/ratio_mean",
    "update/ratio_min", "update/ratio_max", "update/entropy", "update/lr", "update/grad_norm",
    "completion/length_mean", "completion/length_max", "completion/truncated_frac",
    "completion/cross_prompt_answer_frac",
    "rollout/tokens_per_s", "time/rollout_s", "time/reward_s", "time/reference_s",
    "time/update_s", "time/sync_s", "time/iteration_s",
]


def tiny_params(root: Path, sft_dir: Path, data_dir: Path, *, engine: str = "vllm",
                iterations: int = 2, **sections) -> Path:
    """A params.yaml for seconds-long runs: 2 prompts x 2 samples x 12 tokens per iteration."""
    params = {
        "data": {"dir": str(data_dir), "train": [{"name": "gsm8k", "split": "train", "rows": 16}]},
        "checkpoint": {"source": str(sft_dir)},
        "rollout": {"engine": engine, "prompts_per_iteration": 2, "group_size": 2,
                    "max_new_tokens": 12, "cpu_kv_cache_gib": 0.25, "dtype": "float32"},
        "reward": {"functions": {"gsm8k_accuracy": 1.0, "format": 0.5}},
        "algorithm": {"beta": 0.04},
        "train": {"iterations": iterations, "checkpoint_every": 1, "micro_batch_size": 2,
                  "learning_rate": 1e-4, "autocast": "float32", "max_minutes": None,
                  "resume_every": 5},
        "evaluate": {"datasets": [{"name": "gsm8k", "split": "test", "rows": 3},
                                  {"name": "math500", "split": "test", "rows": 3}],
                     "max_new_tokens": 12, "samples": 2, "quick_rows": 2, "final_rows": 25},
        "tracking": {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                     "experiment": "tiny"},
    }
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    # on top of the repository's params.yaml, so every key is spelled out (dvc.yaml needs them)
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in params.items():
        full[name].update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


# A user reward function (by dotted path in params.yaml) that varies with the text, so even a
# random tiny model gets a learning signal: the fraction of vowels among letters.
VARIETY_REWARD = """
def vowels(completions, **_):
    letters = [[ch for ch in c.lower() if ch.isalpha()] for c in completions]
    return [sum(ch in "aeiou" for ch in l) / max(len(l), 1) for l in letters]
"""


def grpo_env(root: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect"), "PYTHONWARNINGS": "ignore",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(root)}  # user reward modules written into the project folder
    return env  # with the `prefect_server` fixture, PREFECT_API_URL points at its server


def run_grpo(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "grpo"), *args], cwd=root, env=grpo_env(root),
                          capture_output=True, text=True, timeout=timeout)


def kill_at_rollout(root: Path, iteration: int, *args: str) -> None:
    """Start `grpo train [args]` and SIGKILL its process group once iteration `iteration`'s
    rollouts are written (the iterations before it are logged)."""
    proc = subprocess.Popen([str(BIN / "grpo"), "train", *args], cwd=root, env=grpo_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    rollouts = root / "rollouts" / f"iter_{iteration:05d}.parquet"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if rollouts.is_file():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "training ended before it could be killed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds: float, what: str):
    """Poll `check` until it returns something truthy; connection errors count as not yet."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            found = check()
            if found:
                return found
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process group started with start_new_session=True."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    """A real Prefect server on 127.0.0.1 (a free port); returns (process, API URL)."""
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=home, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 240,
                 "the Prefect server")
    except AssertionError:
        stop(proc)
        raise
    return proc, api
