"""One GRPO iteration's data plumbing, between the rollout engine and the update step.

draw P prompts -> (engine samples G each) -> rewards (P, G) -> advantages (P, G)
-> optional zero-variance group filter (DAPO) -> a flat (B = sum of group sizes) update batch. With
dynamic sampling (DAPO, arXiv 2503.14476, section 3.2) further prompts are drawn and sampled
until P groups have reward variance (`informative_groups`, `refill_count`, `concat_results`).

Pure functions of their inputs: no Prefect, MLflow or files, so the flow stays thin and the
plumbing is tested on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from grpo_core.algorithm.adaptive import cells, group_sizes, pad_groups
from grpo_core.algorithm.advantages import group_advantages, zero_variance_groups
from grpo_core.rewards.answers import extract_number_answer, to_number
from grpo_core.algorithm.batch import RolloutBatch, build_batch
from grpo_core.rewards.functions import score

if TYPE_CHECKING:
    from grpo_core.rollout import RolloutResult


def draw_prompts(mixture: pd.DataFrame, iteration: int, count: int, seed: int) -> pd.DataFrame:
    """Rows for 1-based `iteration` when every iteration draws `count`: positions
    `(iteration - 1) * count` on of the run's prompt stream (`draw_prompts_at`)."""
    return draw_prompts_at(mixture, (iteration - 1) * count, count, seed)


def draw_prompts_at(mixture: pd.DataFrame, start: int, count: int, seed: int) -> pd.DataFrame:
    """Rows at positions [start, start + count) of the run's prompt stream: consecutive slices
    of one fixed shuffled order, wrapping around (a fresh shuffle per pass). A function of
    (seed, start) only, so a resumed run that restores its position in the stream draws
    exactly what an uninterrupted run would have drawn."""
    n = len(mixture)
    orders: dict[int, np.ndarray] = {}  # one permutation per pass touched (usually one)
    picks = []
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        picks.append(orders[epoch][pos])
    return mixture.iloc[picks].reset_index(drop=True)


def concat_results(results: Sequence) -> "RolloutResult":
    """Rollouts of consecutive prompt lists as one: each `prompt_index` (and skipped or
    truncated index) is shifted by the prompts before it, so it indexes the lists joined."""
    from dataclasses import replace

    from grpo_core.rollout import RolloutResult

    groups, skipped, truncated, offset = [], [], [], 0
    for r in results:
        groups += [replace(g, prompt_index=g.prompt_index + offset) for g in r.groups]
        skipped += [i + offset for i in r.skipped]
        truncated += [i + offset for i in r.truncated]
        offset += r.num_prompts
    return RolloutResult(tuple(groups), offset, tuple(skipped), tuple(truncated),
                         sum(r.seconds for r in results))


def informative_groups(rewards: Tensor, want: int | None = None,
                       valid: Tensor | None = None) -> Tensor:
    """`(P, G)` rewards -> `(P,)` bool: the groups with reward variance (the only ones with a
    learning signal), at most the first `want` of them in draw order (None: all). valid:
    `(P, G)` bool for groups of different sizes (None: all cells)."""
    informative = ~zero_variance_groups(rewards, valid)  # (P,)
    if want is None:
        return informative
    return informative & (informative.long().cumsum(0) <= want)


def refill_count(want: int, informative: int, drawn: int, most: int) -> int:
    """Prompts to draw in the next dynamic-sampling round: the informative groups still
    missing, divided by the share of drawn prompts that were informative so far (so that one
    round is expected to fill the batch), between 1 and `most` prompts. No informative group
    yet: `most`."""
    missing = want - informative
    if missing <= 0:
        return 0
    if informative == 0:
        return most
    return max(1, min(most, -(-missing * drawn // informative)))  # ceil(missing / share)


def merged_reward_metrics(parts: Sequence[dict[str, float]], rewards: Tensor,
                          per_fn: dict[str, Tensor], valid: Tensor | None = None) -> dict[str, float]:
    """The reward metrics of several scored rounds as if scored at once: failure and time-out
    counts add up, means and spreads are over every completion. rewards: (P, G) joined;
    valid: its `(P, G)` cells that hold a completion (None: all)."""
    counts = {k: sum(m.get(k, 0.0) for m in parts) for m in parts for k in m
              if k.endswith(("/failures", "/timeouts"))}
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    flat = rewards[valid].double()
    if not flat.numel():
        return counts
    return {**counts, **{f"reward/{k}/mean": float(v[valid].double().mean()) for k, v in per_fn.items()},
            "reward/total/mean": float(flat.mean()),
            "reward/total/std": float(flat.std(unbiased=False)),  # numpy's, as `score` gives
            "reward/total/min": float(flat.min()), "reward/total/max": float(flat.max())}


def rollout_metrics(result) -> dict[str, float]:
    """The engine's own counts and throughput, plus completion length and truncation."""
    lengths = [len(c.token_ids) for g in result.groups for c in g.completions]
    metrics = result.metrics()
    metrics.update({
        "completion/length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "completion/length_max": float(max(lengths, default=0)),
        "completion/truncated_frac": 1.0 - metrics["rollout/stop_rate"] if lengths else 0.0,
        "completion/cross_prompt_answer_frac": cross_prompt_answer_frac(result.groups),
    })
    return metrics


def cross_prompt_answer_frac(groups) -> float:
    """The share of completions whose final number is also the final number of a completion
    to ANOTHER prompt in the batch. Different problems share small answers now and then, and
    a completion cut off mid-way is scored by its last number, so the level depends on the
    setup (higher when many samples are cut off; the levels seen are in docs/experiments.md).
    Watch the trend: a value rising to 1 says the policy answers one number whatever the
    question; a weak policy can earn more exact-match reward by guessing the commonest answer
    than by reasoning (a learning run on 2-step GSM8K problems drifted to '#### 10' for every
    question, and this value with it). Completions without a number count in the denominator
    only."""
    by_prompt = [[_number_key(c.text) for c in g.completions] for g in groups]
    prompts_of: dict = {}
    for p, keys in enumerate(by_prompt):
        for key in keys:
            if key is not None:
                prompts_of.setdefault(key, set()).add(p)
    total = sum(len(keys) for keys in by_prompt)
    shared = sum(1 for keys in by_prompt for key in keys
                 if key is not None and len(prompts_of[key]) > 1)
    return shared / total if total else 0.0


def _number_key(text: str):
    """A completion's final answer as an exact number ('10', '10.0', '$10' are one key)."""
    answer = extract_number_answer(text)
    return to_number(answer) if answer is not None else None


def score_groups(result, rows: pd.DataFrame, *, weights: dict[str, float], time_limit_s: float,
                 max_new_tokens: int, width: int | None = None,
                 **context) -> tuple[Tensor, dict[str, Tensor], dict]:
    """Rewards of every completion, shaped by group.

    rows: the drawn prompts (processed schema), indexed by `Group.prompt_index`; context's
    `prompts`, if given, is one per row too. Reward functions get all of them per completion.
    Returns (total (P', W), {function: (P', W)}, metrics) over the P' kept groups, W = `width`
    (default: the largest group); a group of n_p < W completions fills its first n_p cells
    and 0 the rest (`adaptive.valid_mask` says which).
    """
    groups = result.groups
    sizes = group_sizes(result)  # (P',)
    if width is None:
        width = int(sizes.max()) if len(groups) else 0

    def each(values: Sequence) -> list:  # one value per prompt -> one per completion
        return [values[grp.prompt_index] for grp in groups for _ in grp.completions]

    texts = [c.text for grp in groups for c in grp.completions]
    counts = [len(c.token_ids) for grp in groups for c in grp.completions]
    if context.get("prompts") is not None:
        context["prompts"] = each(list(context["prompts"]))
    if "checker" in rows:  # processed rows always name their checker (`accuracy` needs it)
        context["checkers"] = each(rows["checker"].tolist())
    total, per_fn, metrics = score(
        texts, answers=each(rows["answer"].tolist()), sources=each(rows["source"].tolist()),
        questions=each(rows["question"].tolist()), solutions=each(rows["solution"].tolist()),
        token_counts=counts, max_new_tokens=max_new_tokens, weights=weights,
        time_limit_s=time_limit_s, **context)
    rewards = pad_groups(total, sizes, width)  # (P', W)
    per = {k: pad_groups(v, sizes, width) for k, v in per_fn.items()}
    flat = torch.as_tensor(total, dtype=torch.float32)
    if flat.numel():
        metrics.update({"reward/total/min": float(flat.min()), "reward/total/max": float(flat.max())})
    return rewards, per, metrics


def advantages_for(rewards: Tensor, mode: str, eps: float,
                   valid: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """rewards (P, G) -> (advantages (P, G), metrics over the valid cells)."""
    adv = group_advantages(rewards, mode=mode, eps=eps, valid=valid)  # (P, G)
    flat = adv.reshape(-1) if valid is None else adv[valid]
    zero = zero_variance_groups(rewards, valid)  # (P,)
    return adv, {
        "advantage/mean": float(flat.mean()) if flat.numel() else 0.0,
        "advantage/std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "advantage/abs_mean": float(flat.abs().mean()) if flat.numel() else 0.0,
        "advantage/zero_groups_frac": float(zero.float().mean()) if zero.numel() else 0.0,
    }


def update_batch(result, advantages: Tensor, *, pad_id: int, keep: Tensor | None = None,
                 use_sampler_logprobs: bool = False) -> RolloutBatch | None:
    """The flat update batch of the kept groups (keep: (P,) bool; None keeps all).
    Row order is group-major: row p * G + i is completion i of group p. None if empty."""
    prompt_ids, completion_ids, logps, truncated, adv = [], [], [], [], []
    for p, grp in enumerate(result.groups):
        if keep is not None and not bool(keep[p]):
            continue
        for i, c in enumerate(grp.completions):
            prompt_ids.append(list(grp.prompt_ids))
            completion_ids.append(list(c.token_ids))
            logps.append(list(c.logprobs))
            truncated.append(c.finish_reason == "length")
            adv.append(float(advantages[p, i]))
    if not prompt_ids:
        return None
    return build_batch(prompt_ids, completion_ids, adv, pad_id=pad_id, truncated=truncated,
                       sampler_logprobs=logps if use_sampler_logprobs else None)


def record_columns(result, rewards: Tensor, per_fn: dict[str, Tensor],
                   advantages: Tensor) -> dict[str, Sequence[float]]:
    """Flat columns (group-major, like the rollout records: each group's completions in
    order) to fill into the records frame; `(P, W)` cells past a group's size are skipped."""
    valid = cells(result, rewards.shape[1])  # (P, W)
    cols = {"reward": rewards[valid].tolist(), "advantage": advantages[valid].tolist()}
    cols.update({f"reward_{k}": v[valid].tolist() for k, v in per_fn.items()})
    return cols
