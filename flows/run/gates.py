"""The training run's rollout gates (`grpo_core.rollout.gates`, settings `gates`).

Each iteration's filled rollout records are checked on rank 0 between its scores and its
update. A hard failure stops every rank there with one line (a UserError: exit 2; the run tag
`gate.failure`): the iteration is neither trained on nor saved, and its records stay for a
look. A soft one warns once a run per kind, as a failing reward function does
(`writers.report_reward_failures`): on the console and in the tag `gate.<share>`; every
iteration logs `gate/<share>` and `gate/advantage_sum_error`. At each quick evaluation the
reward-hacking watch compares it with the previous one (tag `gate.reward_hacking`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from statistics import mean

from flows.run.live import LiveRun
from flows.run.values import Rollout, ScoredBatch
from grpo_core.config import Config
from grpo_core.errors import UserError
from grpo_core.parallel import distributed


def gated(run: LiveRun, rollout: Rollout, scored: ScoredBatch) -> ScoredBatch:
    """`scored` with the gate's metrics, if the iteration may train; else the UserError that
    ends the run (on every rank: they agree). Collective."""
    if not run.cfg.gates.enabled:
        return scored
    start = time.perf_counter()
    verdict = check_records(run.cfg, rollout.records) if distributed.is_main() else None
    if distributed.any_rank(verdict is not None and bool(verdict.hard)):
        stop(run, rollout, verdict)
    if verdict is None:
        return scored
    warn(run, rollout.iteration, verdict.soft)
    metrics = {**scored.metrics, **verdict.metrics, "time/gate_s": time.perf_counter() - start}
    return replace(scored, metrics=metrics)


def check_records(cfg: Config, records):
    """The gate's verdict on one iteration's records file (every rank's groups)."""
    import pandas as pd

    from grpo_core.rollout.gates import check

    return check(pd.read_parquet(records), limits(cfg))


def limits(cfg: Config):
    """The config's gate limits as plain values: each reward column's range (the total's from
    the weights), the token budgets, the advantage tolerance where the mode centres groups."""
    from grpo_core.algorithm.advantages import ZERO_SUM
    from grpo_core.rewards.functions import resolve
    from grpo_core.rewards.ranges import scored_range, total_range
    from grpo_core.rollout.gates import SHARES, Limits

    g, weights = cfg.gates, dict(cfg.reward.functions)
    ranges = {name: scored_range(name, resolve(name)) for name in weights}
    return Limits(
        reward_ranges={"reward": total_range(ranges, weights),
                       **{f"reward_{name}": r for name, r in ranges.items()}},
        max_new_tokens=cfg.rollout.max_new_tokens, max_prompt_tokens=cfg.rollout.max_prompt_tokens,
        advantage_sum_tol=g.advantage_sum_tol if cfg.algorithm.advantage in ZERO_SUM else None,
        max_shares={name: getattr(g, f"max_{name}") for name in SHARES})


def stop(run: LiveRun, rollout: Rollout, verdict) -> None:
    """Raise the one line (rank 0 says what failed; the other ranks, that it did)."""
    it = rollout.iteration
    if verdict is None:
        raise UserError(f"rollout gate: iteration {it} failed on rank 0 (its error says why)")
    line = (f"rollout gate: iteration {it} stopped before its update: {'; '.join(verdict.hard)} "
            f"(records {rollout.records}; settings `gates`)")
    if run.tracker is not None:
        run.tracker.set_tags({"gate.failure": line[:5000]})
    raise UserError(line)


def warn(run: LiveRun, iteration: int, over: dict[str, tuple[float, float]]) -> None:
    """The first time each share is over its limit in this run: a warning and a tag."""
    from grpo_core.rollout.gates import SHARES

    for name, (value, limit) in over.items():
        if name not in run.gate_said:
            say(run, name, f"rollout gate: {value:.0%} of iteration {iteration}'s completions "
                           f"{SHARES[name][1]} (gates.max_{name}={limit:g}); said once, "
                           f"logged as gate/{name} every iteration")


def say(run: LiveRun, kind: str, line: str) -> None:
    run.gate_said.add(kind)
    print(f"warning: {line}", file=sys.stderr)
    if run.tracker is not None:
        run.tracker.set_tags({f"gate.{kind}": line[:5000]})


@distributed.main_only()
def watch_reward_hacking(run: LiveRun, metrics: dict[str, float]) -> None:
    """After an iteration with a quick evaluation is logged: warn (once a run) when the
    training reward rose while the quick evaluation (the mean accuracy over its sets) fell."""
    from grpo_core.rollout.gates import reward_hacking

    g = run.cfg.gates
    keys = [f"eval_quick/{name}/accuracy" for name in run.eval_sets]
    if not (g.enabled and g.warn_reward_hacking and any(k in metrics for k in keys)) or (
            "reward_hacking" in run.gate_said):
        return
    per_key = [run.tracker.history(k) for k in keys]  # MLflow's: those before a resume too
    steps = set.intersection(*(set(h) for h in per_key))
    evals = {step: mean(h[step] for h in per_key) for step in steps}
    train = {h["iteration"]: h["reward/total/mean"] for h in run.history
             if h.get("reward/total/mean") is not None}
    line = reward_hacking(train, evals)
    if line:
        say(run, "reward_hacking", f"rollout gate: {line}")
