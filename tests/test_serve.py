"""`grpo serve --cron`: a deployment with a cron schedule on a real Prefect server (127.0.0.1)."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.pipeline_support import BIN, grpo_env, run_grpo, stop, tiny_params, wait_for

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


def test_scheduled_runs_that_overlap_queue_behind_each_other(tmp_path: Path, prefect_server: str,
                                                              tiny_sft_dir, data_dir):
    api = prefect_server
    tiny_params(tmp_path, tiny_sft_dir, data_dir, engine="hf", iterations=1,
                evaluate={"baseline": False, "datasets": [{"name": "gsm8k", "split": "test",
                                                           "rows": 2}], "final_rows": 2},
                promote={"enabled": False})
    serve = subprocess.Popen([str(BIN / "grpo"), "serve", "--cron", "0 3 1 1 *",
                              "--name", "overlap-test"], cwd=tmp_path, env=grpo_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        dep = wait_for(lambda: _deployment(api, "overlap-test"), 240, "the deployment")
        ids = [_create_run(api, dep["id"]) for _ in range(2)]  # both due now

        def ended():
            runs = [httpx.get(f"{api}/flow_runs/{i}", timeout=5).json() for i in ids]
            return runs if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
                               for r in runs) else None

        first, second = sorted(wait_for(ended, 600, "both runs"),
                               key=lambda r: r["start_time"])
        assert [first["state"]["type"], second["state"]["type"]] == ["COMPLETED"] * 2
        assert _at(second["start_time"]) >= _at(first["end_time"]), "the runs overlapped"
    finally:
        stop(serve)


def _create_run(api: str, deployment_id: str) -> str:
    """A flow run of the deployment, due now. The server's sqlite store can answer 5xx while the
    serving process writes to it on 2 loaded cores (a CI run met one); those are retried, any
    other answer fails with its body."""
    def post():
        r = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={}, timeout=10)
        if r.status_code >= 500:
            return None
        assert r.status_code == 201, f"create_flow_run answered {r.status_code}: {r.text}"
        return r.json()["id"]

    return wait_for(post, 60, "a flow run of the deployment")


def _deployment(api: str, name: str):
    r = httpx.get(f"{api}/deployments/name/grpo-pipeline/{name}", timeout=5)
    return r.json() if r.status_code == 200 else None


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
