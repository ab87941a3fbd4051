"""The values the training tasks hand each other, and how they pass through Prefect.

A task returns one of these; the flow body hands it to the next task, so `train_flow` shows
what flows from stage to stage. They hold frames, tensors and the engine's token lists, so
Prefect must never hash, persist or walk them: every task takes `THIN` (no cache key, no
result store), and `call` wraps each argument in Prefect's `opaque`, which stops Prefect from
walking a value's contents looking for futures (one Python call per token of every completion,
twice a task) while it still links the value to the task run that returned it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from flows import signals
from grpo_core.errors import UserError
from grpo_core.parallel import distributed

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from grpo_core.rollout import RolloutResult

def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect's retry condition for every task: retry what may be passing (an engine that
    died, a locked sqlite), never a user's mistake, which fails the same way each time and
    would only delay its one-line error."""
    return not isinstance(state.data, UserError)


THIN = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_user_error)


@dataclass(frozen=True, eq=False)
class Rollout:
    """One iteration's sampled groups on this rank (its share of the P prompts)."""

    iteration: int
    rows: "pd.DataFrame"  # the drawn problems, processed schema, one per prompt
    prompts: list[str]  # the rendered prompts, one per row
    result: "RolloutResult"  # the engine's groups; Group.prompt_index indexes `rows`
    records: Path | None  # the iteration's rollout records (rank 0 writes every rank's
    # groups); None for a dynamic-sampling round not yet joined to its iteration's rollout
    metrics: dict[str, float]  # the engine's counts, completion lengths, time/rollout_s


@dataclass(frozen=True, eq=False)
class ScoredBatch:
    """The rollout's rewards and group advantages."""

    rewards: "Tensor"  # (P', G) this rank's kept groups
    per_function: dict[str, "Tensor"]  # {reward function: (P', G)}
    advantages: "Tensor"  # (P', G) this rank's groups
    advantages_all: "Tensor"  # (B,) every rank's, one per completion, in rank and group order
    metrics: dict[str, float]  # reward/..., advantage/..., time/reward_s
    valid: "Tensor"  # (P', G) bool: the cells holding a completion (all, unless groups grew)


def call(task_obj, *args: Any, **kwargs: Any):
    """A task as a Prefect task run on rank 0, its arguments `opaque` to Prefect; the plain
    function on the other ranks (one flow run per job: no task runs there). A Ctrl-C or
    SIGTERM that Prefect swallowed ends the run here, before the next task."""
    signals.raise_pending()
    if not distributed.is_main():
        return task_obj.fn(*args, **kwargs)
    return task_obj(*(opaque(a) for a in args), **{k: opaque(v) for k, v in kwargs.items()})
