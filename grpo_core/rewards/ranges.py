"""Declared reward ranges: what a reward function can return, so that the rollout gate
(`grpo_core.rollout.gates`) can tell a broken score from a surprising one.

A function declares its range as an attribute, `fn.reward_range = (low, high)`: the built-ins
in their registry entries (`bounded`, `grpo_core.rewards.functions.REWARDS`), a user function
the same way or not at all (then only finiteness is checked; a reward model's logit has no
range either). A failed call scores 0 (`functions.score`), so 0 is always a possible score.
The weighted total's range is the sum of each term's, a negative weight swapping the ends.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

from grpo_core.errors import UserError

Range = tuple[float, float]  # (low, high), either end may be infinite


def bounded(fn: Callable, low: float, high: float) -> Callable:
    """Declare `fn`'s range (in place) and return it: for a registry entry."""
    fn.reward_range = (float(low), float(high))
    return fn


def scored_range(name: str, fn: Callable) -> Optional[Range]:
    """What `fn` can score: its declared range widened to 0 (a failed call's score); None
    when it declares none. A declaration that is not (low, high), low <= high -> UserError."""
    declared = getattr(fn, "reward_range", None)
    if declared is None:
        return None
    try:
        low, high = (float(v) for v in declared)
    except (TypeError, ValueError):
        raise UserError(f"reward function {name}: reward_range must be (low, high), got "
                        f"{declared!r}") from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise UserError(f"reward function {name}: reward_range must have low <= high, got "
                        f"{declared!r}")
    return min(low, 0.0), max(high, 0.0)


def total_range(ranges: Mapping[str, Optional[Range]], weights: Mapping[str, float]
                ) -> Optional[Range]:
    """The range of sum(weight * function) over `weights`; None if a weighted function has
    no range. A zero weight adds exactly 0 (even to an infinite end)."""
    terms = {name: w for name, w in weights.items() if w != 0}
    if any(ranges.get(name) is None for name in terms):
        return None
    ends = [(w * ranges[name][0], w * ranges[name][1]) for name, w in terms.items()]
    return sum(min(e) for e in ends), sum(max(e) for e in ends)
