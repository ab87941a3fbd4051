"""Gates on every iteration's rollouts: Great Expectations suites over the records one
iteration wrote (`grpo_core.rollout.records`, its `reward`, `reward_<function>` and `advantage`
columns filled), run before its update. Each check runs on the table whose rows it is about:

- completions (one row per record), hard: each reward column finite and inside what the
  reward functions can score (`grpo_core.rewards.ranges`; a function that declares no range:
  finite only), advantages finite, `completion_tokens` <= max_new_tokens and `prompt_tokens`
  <= max_prompt_tokens;
- groups (one row per prompt), hard: the advantages sum to 0, `|sum A| <= tol * max(1,
  sum |A|)` (relative, since batch_std and grpo scale a group by 1 / std), for the advantage
  modes with a mean baseline (`grpo_core.algorithm.advantages.ZERO_SUM`); a median baseline
  does not centre the group, so those modes skip it;
- the iteration (one row), soft: the shares of its completions that were cut off, empty, or
  ended on a number that also ends another prompt's completion (`cross_prompt_answer_frac`,
  the flow's own metric), each at most its limit.

A hard failure says the iteration must not train (the caller stops the run); a soft one is a
warning. `reward_hacking` compares successive quick evaluations with the training reward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from statistics import mean
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd

from grpo_core.algorithm.experience import cross_prompt_answer_frac
from grpo_core.rewards.ranges import Range
from grpo_core.rollout import Completion, Group

FINITE = (-sys.float_info.max, sys.float_info.max)  # Between catches inf; NotBeNull, NaN


def _truncated(records: pd.DataFrame) -> float:
    return float((records["finish_reason"] == "length").mean())


def _empty(records: pd.DataFrame) -> float:
    return float((~records["completion"].fillna("").str.contains(r"\S")).mean())


def _cross_prompt(records: pd.DataFrame) -> float:
    groups = [Group(int(p), (), tuple(Completion((), str(t), (), "stop") for t in texts))
              for p, texts in records.groupby("prompt_index", sort=False)["completion"]]
    return cross_prompt_answer_frac(groups)


# The soft checks: share -> (its value over an iteration's records, what it counts)
SHARES: dict[str, tuple[Callable[[pd.DataFrame], float], str]] = {
    "truncated_frac": (_truncated, "were cut off at rollout.max_new_tokens"),
    "empty_frac": (_empty, "were empty"),
    "cross_prompt_answer_frac": (_cross_prompt, "ended on a number that also ends a completion "
                                                "of another prompt (one guess for all?)"),
}


@dataclass(frozen=True)
class Limits:
    """What one iteration's records must satisfy (plain values, from the config)."""

    reward_ranges: Mapping[str, Optional[Range]]  # reward column -> what it scores (None: any)
    max_new_tokens: int
    max_prompt_tokens: int
    advantage_sum_tol: Optional[float]  # None: the advantage mode does not centre its groups
    max_shares: Mapping[str, float]  # SHARES name -> the most it may be


@dataclass(frozen=True)
class Verdict:
    hard: tuple[str, ...]  # one phrase per failed hard check; empty: the iteration may train
    soft: dict[str, tuple[float, float]]  # share -> (observed, limit), for those over it
    metrics: dict[str, float]  # gate/<share>, gate/advantage_sum_error (the worst group's)


def check(records: pd.DataFrame, limits: Limits, sample_rows: int = 2) -> Verdict:
    """Run the three suites in one ephemeral GX context over `records` (one row per
    completion, group-major, as `grpo_core.rollout.records` writes them)."""
    from grpo_core.data.validation import Runner

    runner = Runner(sample_rows, None)
    completions = records.assign(id=records["prompt_id"].astype(str) + "#"
                                 + records["sample_index"].astype(str))
    groups, shares = group_table(records), share_table(records)
    hard = _failed(runner.run("completions", completions, completion_suite(limits)),
                   len(completions), "completions")
    if limits.advantage_sum_tol is not None:
        tol = limits.advantage_sum_tol
        hard += _failed(runner.run("groups", groups, [_between(
            "advantage_sum_error", 0.0, tol,
            f"advantages not summing to 0 (|sum| / max(1, sum |A|) over {tol:g})")]),
            len(groups), "groups")
    over = [r["check"] for r in runner.run("iteration", shares, [
        _between(name, 0.0, limits.max_shares[name], name) for name in SHARES]) if not r["success"]]
    metrics = {f"gate/{name}": float(shares[name].iloc[0]) for name in SHARES}
    worst = groups["advantage_sum_error"].max()  # NaN: no group, or only non-finite ones
    metrics["gate/advantage_sum_error"] = float(worst) if pd.notna(worst) else 0.0
    return Verdict(tuple(hard), {name: (metrics[f"gate/{name}"], limits.max_shares[name])
                                 for name in over}, metrics)


def _failed(results: list[dict], rows: int, unit: str) -> list[str]:
    return [_phrase(r, rows, unit) for r in results if not r["success"]]


def completion_suite(limits: Limits) -> list:
    """The per-completion expectations, each naming its check in `meta`."""
    suite = []
    for column, scored in limits.reward_ranges.items():
        low, high = (max(scored[0], FINITE[0]), min(scored[1], FINITE[1])) if scored else FINITE
        what = (f"{column} outside [{scored[0]:g}, {scored[1]:g}] (what the reward functions "
                f"can score)" if scored else f"{column} infinite")
        suite += [_not_null(column), _between(column, low, high, what)]
    suite += [_not_null("advantage"), _between("advantage", *FINITE, "advantage infinite"),
              _between("completion_tokens", 0, limits.max_new_tokens,
                       f"completion_tokens over rollout.max_new_tokens={limits.max_new_tokens}"),
              _between("prompt_tokens", 0, limits.max_prompt_tokens,
                       f"prompt_tokens over rollout.max_prompt_tokens={limits.max_prompt_tokens}")]
    return suite


def group_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per group (prompt_index): `advantage_sum_error` = |sum A| / max(1, sum |A|)."""
    frame = records.assign(abs_advantage=records["advantage"].abs())
    by = frame.groupby("prompt_index", sort=False)
    sums = by[["advantage", "abs_advantage"]].sum()
    error = sums["advantage"].abs() / np.maximum(1.0, sums["abs_advantage"])
    return pd.DataFrame({"id": by["prompt_id"].first().astype(str).to_numpy(),
                         "advantage_sum_error": error.to_numpy(dtype=float)})


def share_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row: each SHARES value over the iteration's completions (0 when there are none)."""
    row = {name: share(records) if len(records) else 0.0 for name, (share, _) in SHARES.items()}
    return pd.DataFrame([{"id": "iteration", **row}])


def _not_null(column: str):
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToNotBeNull(column=column, meta={"check": f"{column} NaN"})


def _between(column: str, low: float, high: float, check: str):
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high,
                                             meta={"check": check})


def _phrase(result: dict, rows: int, unit: str) -> str:
    """'reward outside [0, 1] (...) in 4 of 4 completions (e.g. q1#0 = 5)'."""
    if result.get("error"):
        return f"{result['check']}: not checked ({result['error']})"
    pairs = [f"{i} = {v:g}" if isinstance(v, (int, float)) else f"{i} = {v}"
             for i, v in zip(result["example_ids"], result.get("example_values") or [])]
    examples = f" (e.g. {', '.join(pairs)})" if pairs else ""
    return f"{result['check']} in {result['unexpected_count']} of {rows} {unit}{examples}"


def reward_hacking(train: Mapping[int, float], evals: Mapping[int, float]) -> Optional[str]:
    """What to say, if anything, when the mean training reward rose while the quick
    evaluation fell. train: {iteration: mean training reward}; evals: {iteration: quick
    evaluation score}. The last two evaluations e1 < e2 are compared, and the training reward
    over (e0, e1] with that over (e1, e2] (e0: the evaluation before e1, else 0)."""
    steps = sorted(evals)
    if len(steps) < 2:
        return None
    e0, e1, e2 = ([0, *steps][-3:])
    before = [v for i, v in train.items() if e0 < i <= e1]
    after = [v for i, v in train.items() if e1 < i <= e2]
    if not before or not after or not (mean(after) > mean(before) and evals[e2] < evals[e1]):
        return None
    return (f"training reward rose {mean(before):.3g} -> {mean(after):.3g} (mean over iterations "
            f"{e0 + 1}-{e1} -> {e1 + 1}-{e2}) while the quick evaluation fell "
            f"{evals[e1]:.3g} -> {evals[e2]:.3g} (iteration {e1} -> {e2}): reward hacking? "
            f"look at the rollouts' completions")
