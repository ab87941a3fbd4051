"""The values the training tasks hand each other pass through Prefect untouched: never hashed
(cache keys), pickled or JSON-encoded (result store), copied, or walked looking for futures (a
Python call per token of a rollout), and no result is persisted. A real Prefect flow on the
session's server, with the task options and the calling convention of the training flow; the
other ranks of a torchrun job call the plain functions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.settings import (PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT,
                              temporary_settings)
from prefect.tasks import Task

from flows.run.values import THIN, call
from grpo_core.parallel import distributed

TOUCHED: list[str] = []  # what was done to a sealed value; Prefect may swallow the error


def _refuse(what: str):
    TOUCHED.append(what)
    raise TypeError(f"a task value was {what}")


class Unpicklable:
    """Refuses to be pickled or copied (what a result store or a cache key would do)."""

    def __reduce_ex__(self, protocol):
        _refuse("pickled")

    def __copy__(self):
        _refuse("copied")

    def __deepcopy__(self, memo):
        _refuse("copied")


class Payload(Unpicklable, list):
    """Items that refuse to be iterated (walked), pickled or copied."""

    def __iter__(self):
        _refuse("walked")


@dataclass(frozen=True, eq=False)
class Sealed(Unpicklable):
    """A stand-in for a rollout or a scored batch that refuses everything but being passed on.
    JSON encoders reach its payload (`dataclasses.asdict` iterates it) and trip there."""

    payload: Payload

    def __hash__(self):
        _refuse("hashed")


IN_TASK_RUN: list[bool] = []


@task(name="make", **THIN)
def make(key: str, iteration: int) -> Sealed:
    IN_TASK_RUN.append(TaskRunContext.get() is not None)
    return Sealed(Payload([key, iteration]))


@task(name="pass-on", retries=1, **THIN)
def pass_on(key: str, value: Sealed, metrics: dict[str, float], *, quick: bool) -> Sealed:
    IN_TASK_RUN.append(TaskRunContext.get() is not None)
    assert key == "k" and metrics == {"m": 1.0} and quick is True
    return value


def two_stages() -> tuple[Sealed, Sealed]:
    made = call(make, "k", 1)
    return made, call(pass_on, "k", made, {"m": 1.0}, quick=True)


@pytest.fixture(autouse=True)
def _fresh():
    TOUCHED.clear()
    IN_TASK_RUN.clear()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_task_values_go_through_prefect_untouched_and_unpersisted(tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    storage = tmp_path / "results"
    # Persisting by default, as a deployment may be set up: only the tasks' own options keep
    # Prefect from hashing the inputs into a cache key and pickling the result.
    settings = {PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}

    @flow(name="sealed-values", persist_result=False)  # the flow's own result is not at issue
    def sealed_flow() -> bool:
        made, passed = two_stages()
        return passed is made and list.__len__(made.payload) == 2

    with temporary_settings(updates=settings):
        state = sealed_flow(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() is True, "the value arrived as the very object the first task made"
    assert TOUCHED == [], f"Prefect touched a task value: {TOUCHED}"
    assert IN_TASK_RUN == [True, True], "on rank 0 each stage is a Prefect task run"
    assert not storage.exists() or not any(storage.iterdir()), "a result was persisted"
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}
    assert sorted(by_name) == ["make", "pass-on"]
    for r in runs:
        assert r.state.is_completed() and r.state.data is None, f"{r.name}: a stored result"
    # not walked, yet linked: the UI draws the value's edge from the task that returned it
    assert [i.id for i in by_name["pass-on"].task_inputs["value"]] == [by_name["make"].id]


def test_other_ranks_call_the_plain_functions(monkeypatch):
    """Under torchrun only rank 0 runs the Prefect flow; the others run the task functions."""
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    made, passed = two_stages()
    assert passed is made and TOUCHED == []
    assert IN_TASK_RUN == [False, False]


def test_every_flow_task_keeps_prefect_away_from_its_values():
    import flows.evaluate
    import flows.pipeline
    import flows.train

    tasks = [obj for module in (flows.train, flows.evaluate, flows.pipeline)
             for obj in vars(module).values() if isinstance(obj, Task)]
    assert {"rollout", "reward", "update", "log", "evaluate"} <= {t.name for t in tasks}
    for t in tasks:
        assert t.cache_policy is NO_CACHE and t.persist_result is False, t.name
