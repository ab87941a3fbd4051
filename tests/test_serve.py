"""`grpo serve --cron`: a deployment with a cron schedule on a real Prefect server (127.0.0.1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.pipeline_support import BIN, grpo_env, run_grpo, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_cron_deployment_on_a_real_server(tmp_path: Path, prefect_server: str):
    api = prefect_server  # `prefect server start --host 127.0.0.1`, started once per session
    serve = subprocess.Popen([str(BIN / "grpo"), "serve", "--cron", "0 3 * * *",
                              "--name", "nightly-test"], cwd=tmp_path, env=grpo_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        def deployment():
            r = httpx.get(f"{api}/deployments/name/grpo-pipeline/nightly-test", timeout=5)
            return r.json() if r.status_code == 200 else None

        dep = wait_for(deployment, 240, "the deployment")
        crons = [s["schedule"].get("cron") for s in dep["schedules"]]
        assert crons == ["0 3 * * *"]
        assert dep["parameters"]["overrides"] == []
        assert serve.poll() is None, "serve keeps running to execute the scheduled runs"
    finally:
        stop(serve)


def test_serve_errors_are_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    out = run_grpo(tmp_path, "serve", "--cron", "every night")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "grpo: error: --cron 'every night': not a valid cron expression "
        "(five fields: minute hour day-of-month month day-of-week)")
    out = run_grpo(tmp_path, "serve", "--cron", "0 3 * * *")
    assert out.returncode == 2
    assert "grpo serve needs a Prefect server: run `prefect server start --host 127.0.0.1`" in (
        out.stderr)
