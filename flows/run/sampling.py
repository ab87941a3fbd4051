"""Drawing and sampling the prompts of an iteration, and DAPO's dynamic sampling (the rounds
of further prompts that refill a batch short of informative groups), below the training
flow's rollout and refill tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch

from flows.run import writers
from flows.run.growth import grow
from flows.run.live import generate
from flows.run.scoring import score_part
from flows.run.values import Rollout
from grpo_core.algorithm.adaptive import cells
from grpo_core.algorithm.experience import (concat_results, draw_prompts_at, informative_groups,
                                            merged_reward_metrics, refill_count, rollout_metrics)
from grpo_core.parallel import distributed

if TYPE_CHECKING:
    from flows.run.live import LiveRun
    from flows.run.values import ScoredBatch


def sample(run: "LiveRun", iteration: int, count: int, round_: int = 0) -> Rollout:
    """`count` prompts from the run's position in its prompt stream (advanced once they are
    sampled, so a retried task draws the same ones), G completions each (G_min with adaptive
    group size: `rollout.min_group_size`); no records yet."""
    cfg = run.cfg.rollout
    rows = draw_prompts_at(run.mixture, run.cursor, count, run.cfg.data.seed)
    rows = rows.iloc[distributed.shard_range(len(rows))].reset_index(drop=True)  # whole groups
    prompts = run.render(rows["question"].tolist())
    result = generate(run, prompts, cfg.min_group_size or cfg.group_size,
                      run.sampling(iteration, round_))
    run.cursor += count
    return Rollout(iteration, rows, prompts, result, None, part_metrics(result, 1))


def refill(run: "LiveRun", rollout: Rollout, scored: "ScoredBatch"):
    """While fewer than P groups have reward variance, draw more prompts from the stream (as
    many as the informative share so far says will fill the batch, at most 4 P a round),
    sample and score them (and grow their groups, with adaptive group size), for up to
    rollout.refill_rounds rounds. -> (one rollout of everything drawn, its records rewritten;
    rewards (P_drawn, G); {function: (P_drawn, G)}; reward metrics as if scored at once)."""
    want = run.cfg.rollout.prompts_per_iteration
    parts, scores = [rollout], [(scored.rewards, scored.per_function, scored.metrics)]
    informative = int(informative_groups(scored.rewards, valid=scored.valid).sum())
    drawn = len(rollout.rows)
    for round_ in range(1, run.cfg.rollout.refill_rounds + 1):
        count = refill_count(want, informative, drawn, most=4 * want)
        if count == 0:
            break
        extra = sample(run, rollout.iteration, count, round_)
        rewards, per_fn, metrics = score_part(run, extra.rows, extra.prompts, extra.result)
        if run.cfg.rollout.min_group_size:
            extra, rewards, per_fn, metrics = grow(run, extra, rewards, per_fn, metrics, round_)
        parts.append(extra)
        scores.append((rewards, per_fn, metrics))
        valid = cells(extra.result, rewards.shape[1])
        informative += int(informative_groups(rewards, valid=valid).sum())
        drawn += count
    merged = joined(run, parts)
    rewards = torch.cat([r for r, _, _ in scores])  # (P_drawn, G)
    per_fn = {k: torch.cat([p[k] for _, p, _ in scores]) for k in scores[0][1]}
    valid = cells(merged.result, rewards.shape[1])
    return merged, rewards, per_fn, merged_reward_metrics([m for _, _, m in scores], rewards,
                                                          per_fn, valid)


def joined(run: "LiveRun", parts: list[Rollout]) -> Rollout:
    """The rounds of one iteration as one rollout, with its records rewritten."""
    first = parts[0]
    rows = pd.concat([p.rows for p in parts], ignore_index=True)
    prompts = [q for p in parts for q in p.prompts]
    result = concat_results([p.result for p in parts])
    records = writers.write_records(run, first.iteration, rows, prompts, result)
    growth = {k: sum(p.metrics.get(k, 0.0) for p in parts)
              for k in ("rollout/growth_samples", "rollout/growth_calls") if k in first.metrics}
    return Rollout(first.iteration, rows, prompts, result, records,
                   part_metrics(result, len(parts)) | growth)


def part_metrics(result, rounds: int) -> dict[str, float]:
    """The metrics of a rollout's parts, in `rounds` dynamic-sampling rounds."""
    return rollout_metrics(result) | {"time/rollout_s": result.seconds,
                                      "rollout/rounds": float(rounds),
                                      "rollout/prompts_drawn": float(result.num_prompts)}
