"""Scoring the completions of a rollout (or of some of its prompts) with the run's reward
functions, with failing functions reported (`writers.report_reward_failures`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.run import writers
from grpo_core.algorithm.experience import score_groups

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from flows.run.live import LiveRun
    from grpo_core.rollout import RolloutResult


def score_part(run: "LiveRun", rows: "pd.DataFrame", prompts: list[str], result: "RolloutResult"
               ) -> tuple["Tensor", dict[str, "Tensor"], dict[str, float]]:
    """(rewards (P', W), {function: (P', W)}, metrics) of `result`'s groups, W the run's
    group_size (a group holding fewer completions fills its first cells: adaptive group size).
    rows and prompts: one per prompt `result` was sampled for (`Group.prompt_index`)."""
    cfg = run.cfg
    errors: dict[str, str] = {}  # each failing function's first failure
    rewards, per_fn, metrics = score_groups(
        result, rows, weights=dict(cfg.reward.functions), time_limit_s=cfg.reward.timeout_s,
        max_new_tokens=cfg.rollout.max_new_tokens, width=cfg.rollout.group_size,
        overlong_buffer=cfg.reward.overlong_buffer, prompts=prompts,
        answer_format=cfg.reward.answer_format, reward_model_dir=cfg.reward.reward_model,
        reward_model_batch_size=cfg.reward.reward_model_batch_size, errors=errors)
    scored = sum(len(g.completions) for g in result.groups)
    writers.report_reward_failures(run, metrics, errors, scored)
    return rewards, per_fn, metrics
