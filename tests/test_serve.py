"""`grpo serve --cron`: a deployment with a cron schedule on a real Prefect server (127.0.0.1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.pipeline_support import BIN, grpo_env, run_grpo

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, seconds: float, what: str):
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_cron_deployment_on_a_real_server(tmp_path: Path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = grpo_env(tmp_path)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    serve = None
    try:
        _wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180,
                  "the Prefect server")
        serve = subprocess.Popen([str(BIN / "grpo"), "serve", "--cron", "0 3 * * *",
                                  "--name", "nightly-test"], cwd=tmp_path,
                                 env={**env, "PREFECT_API_URL": api},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)

        def deployment():
            r = httpx.get(f"{api}/deployments/name/grpo-pipeline/nightly-test", timeout=5)
            return r.json() if r.status_code == 200 else None

        dep = _wait_for(deployment, 240, "the deployment")
        crons = [s["schedule"].get("cron") for s in dep["schedules"]]
        assert crons == ["0 3 * * *"]
        assert dep["parameters"]["overrides"] == []
        assert serve.poll() is None, "serve keeps running to execute the scheduled runs"
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)


def test_serve_errors_are_one_line(tmp_path: Path):
    out = run_grpo(tmp_path, "serve", "--cron", "every night")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "grpo: error: --cron 'every night': not a valid cron expression "
        "(five fields: minute hour day-of-month month day-of-week)")
    out = run_grpo(tmp_path, "serve", "--cron", "0 3 * * *")
    assert out.returncode == 2
    assert "grpo serve needs a Prefect server: run `prefect server start --host 127.0.0.1`" in (
        out.stderr)
