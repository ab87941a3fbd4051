"""Adaptive group size: spend samples on the prompts whose groups have no signal yet.

Every prompt first gets G_min completions. A group whose rewards are all equal has zero
advantages, so its samples teach nothing; a few more samples may break the tie (a hard
problem solved once, an easy one missed once). Such groups grow, doubling their size round by
round (at most to G_max), while the iteration's sample budget lasts; groups with reward
variance stop growing. Groups are then of different sizes n_p: they stay one `(P, G_max)`
tensor with a `valid` mask (cell (p, i) holds completion i of prompt p for i < n_p), which the
advantages (`group_advantages(..., valid=)`) and the flat update batch respect exactly.

In the update each completion counts once, whatever its group's size (the flat batch of
`experience.update_batch`): a grown group weighs in proportion to its samples, as it would
had it been sampled at that size. Its advantages have the same scale as any group's.

Pure functions of tensors and the engine's result types: the flow (`flows.run.growth`) asks
the engine for the extra samples and scores them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from grpo_core.algorithm.advantages import zero_variance_groups

if TYPE_CHECKING:
    from grpo_core.rollout import RolloutResult


def group_sizes(result: "RolloutResult") -> Tensor:
    """`(P,)` long: the completions each kept group holds."""
    return torch.tensor([len(g.completions) for g in result.groups], dtype=torch.long)


def valid_mask(sizes: Tensor, width: int) -> Tensor:
    """`(P,)` sizes -> `(P, width)` bool: True in the first n_p cells of row p."""
    return torch.arange(width).unsqueeze(0) < sizes.unsqueeze(1)


def cells(result: "RolloutResult", width: int) -> Tensor:
    """`(P, width)` bool: the cells of the result's groups that hold a completion."""
    return valid_mask(group_sizes(result), width)


def pad_groups(flat: Sequence[float], sizes: Tensor, width: int) -> Tensor:
    """Group-major flat values (n_0 of group 0, then n_1 of group 1, ...) -> `(P, width)`
    float32, 0 in the cells past each group's size."""
    out = torch.zeros((len(sizes), width), dtype=torch.float32)
    out[valid_mask(sizes, width)] = torch.as_tensor(list(flat), dtype=torch.float32)
    return out


def growth(rewards: Tensor, valid: Tensor, most: int, budget: int | None) -> Tensor:
    """`(P, W)` rewards and valid -> `(P,)` long: completions to add to each group this round.

    A group with no reward variance and fewer than `most` (G_max) completions doubles, capped
    at `most`; the others get 0. `budget`: the completions the groups may hold in all after
    this round (None: no bound but `most`); when the doublings exceed what is left, groups are
    served in draw order and the last one served may get fewer.
    """
    sizes = valid.sum(dim=1)  # (P,)
    flat = zero_variance_groups(rewards, valid)  # (P,)
    extra = torch.where(flat, torch.minimum(sizes, most - sizes), 0).clamp(min=0)  # (P,)
    if budget is None:
        return extra
    left = max(budget - int(sizes.sum()), 0)
    before = extra.cumsum(0) - extra  # (P,) completions granted to the groups drawn earlier
    return (left - before).clamp(min=0).minimum(extra)


def extend(values: Tensor, valid: Tensor, rows: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """Place `new` `(k, c)` values after the last valid cell of each of `rows` `(k,)` of a
    `(P, W)` tensor; returns the new (values, valid). The rows must have room for c more."""
    if rows.numel() == 0:
        return values, valid
    start = valid.sum(dim=1)[rows]  # (k,)
    cols = start.unsqueeze(1) + torch.arange(new.shape[1]).unsqueeze(0)  # (k, c)
    if int(cols.max()) >= values.shape[1]:
        raise ValueError(f"no room: a group would hold {int(cols.max()) + 1} > {values.shape[1]}")
    at = (rows.unsqueeze(1).expand_as(cols), cols)
    values, valid = values.clone(), valid.clone()
    values[at] = new.to(values.dtype)
    valid[at] = True
    return values, valid


def append_completions(result: "RolloutResult", extra: "RolloutResult",
                       rows: Sequence[int]) -> "RolloutResult":
    """`result` with the completions `extra` sampled for its prompt j appended to `result`'s
    group rows[j] (extra was sampled for those groups' prompts, every one kept again: they
    were kept the first time); its seconds add up."""
    if len(extra.groups) != len(rows):
        raise RuntimeError(f"{len(rows)} groups to grow but the engine returned {len(extra.groups)}")
    groups = list(result.groups)
    for grown in extra.groups:
        p = rows[grown.prompt_index]
        groups[p] = replace(groups[p], completions=groups[p].completions + grown.completions)
    return replace(result, groups=tuple(groups), seconds=result.seconds + extra.seconds)
