"""Adaptive group size in the flow (`rollout.min_group_size`): the groups of a scored part of
an iteration that have no reward variance get more samples, doubling up to group_size within
`rollout.samples_per_prompt`, and only the new completions are scored. The rule and the
ragged `(P, G_max)` layout are `grpo_core.algorithm.adaptive`'s."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from flows.run.live import generate
from flows.run.scoring import score_part
from grpo_core.algorithm.adaptive import append_completions, cells, extend, growth
from grpo_core.algorithm.experience import merged_reward_metrics

if TYPE_CHECKING:
    from torch import Tensor

    from flows.run.live import LiveRun
    from flows.run.values import Rollout


def grow(run: "LiveRun", part: "Rollout", rewards: "Tensor", per_fn: dict[str, "Tensor"],
         metrics: dict[str, float], round_: int = 0):
    """-> (part with its groups grown, rewards (P', G_max), per_fn, metrics as if the grown
    groups had been scored at once, plus rollout/growth_samples and rollout/growth_calls).
    Each engine call has its own seed (iteration, dynamic-sampling round, call), so a resumed
    or retried iteration samples exactly the same completions."""
    cfg = run.cfg.rollout
    budget = (None if cfg.samples_per_prompt is None
              else int(cfg.samples_per_prompt * len(part.rows)))
    result, scored, calls = part.result, [metrics], 0
    valid = cells(result, cfg.group_size)  # (P', G_max)
    start = int(valid.sum())
    while True:
        extra = growth(rewards, valid, cfg.group_size, budget)  # (P',)
        if not bool(extra.any()):
            break
        for count in sorted(set(extra.tolist()) - {0}, reverse=True):
            targets = (extra == count).nonzero().flatten()  # (k,) groups, in draw order
            prompt_of = [result.groups[int(p)].prompt_index for p in targets]
            prompts = [part.prompts[i] for i in prompt_of]
            calls += 1
            got = generate(run, prompts, count, run.sampling(part.iteration, round_, calls))
            rows = part.rows.iloc[prompt_of].reset_index(drop=True)
            new, new_per_fn, new_metrics = score_part(run, rows, prompts, got)  # (k, G_max)
            result = append_completions(result, got, targets.tolist())
            per_fn = {k: extend(v, valid, targets, new_per_fn[k][:, :count])[0]
                      for k, v in per_fn.items()}
            rewards, valid = extend(rewards, valid, targets, new[:, :count])
            scored.append(new_metrics)
    merged = merged_reward_metrics(scored, rewards, per_fn, valid)
    counts = {"rollout/growth_samples": float(int(valid.sum()) - start),
              "rollout/growth_calls": float(calls)}
    grown = replace(part, result=result, metrics={**part.metrics, **counts})
    return grown, rewards, per_fn, {**metrics, **merged}
