"""A rollout engine that dies mid-run is rebuilt with the current policy weights, and the
rollout task's Prefect retry succeeds (real Prefect flow, real HF engine, tiny model)."""

from __future__ import annotations

import pytest
import torch
from prefect import flow

from tests.pipeline_support import run_grpo, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_dead_engine_is_rebuilt_and_the_rollout_retried(tmp_path, monkeypatch, tiny_sft_dir,
                                                        data_dir):
    from flows.run.live import close_run, open_run
    from flows.train import rollout_task
    from grpo_core.config import load_config

    tiny_params(tmp_path, tiny_sft_dir, data_dir, engine="hf")
    assert run_grpo(tmp_path, "prepare").returncode == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    run = open_run(load_config(tmp_path / "params.yaml"), resume=False)
    try:
        with torch.no_grad():  # the policy moved on since the engine was built
            run.learner.model.model.embed_tokens.weight.mul_(1.5)
        dead = run.engine
        dead.close()  # the engine dies: its next generate raises

        @flow
        def one_rollout():
            return rollout_task(run.key, 1)

        rollout = one_rollout()
        assert run.engine is not dead, "a new engine replaced the dead one"
        want = run.learner.model.model.embed_tokens.weight
        got = run.engine.model.model.embed_tokens.weight
        assert torch.equal(got, want), "the new engine carries the current policy weights"
        assert str(rollout.records).endswith("iter_00001.parquet")
        assert len(rollout.result.groups) == 2
    finally:
        close_run(run, "FINISHED")


def test_a_user_error_is_not_retried_and_anything_else_is():
    from prefect import task

    from flows.run.values import THIN
    from grpo_core.errors import UserError

    calls = {"user": 0, "other": 0}

    @task(retries=2, retry_delay_seconds=0, **THIN)
    def fails(kind: str) -> int:
        calls[kind] += 1
        if calls[kind] < 3:
            raise UserError("a mistake in params.yaml") if kind == "user" else RuntimeError("flaky")
        return calls[kind]

    @flow
    def both():
        with pytest.raises(UserError):
            fails("user")
        return fails("other")

    assert both() == 3  # the passing failure retried twice, then it succeeded
    assert calls["user"] == 1  # the same input fails the same way: no retry
