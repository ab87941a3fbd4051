"""Group-relative advantages: rewards `(P, G)` -> advantages `(P, G)`.

P prompts, G completions per prompt; the grouping lives in the shape (never a flat list
plus an implicit view). Modes, registered by name in `ADVANTAGES`:

- `grpo`: (r - group mean) / (group std + eps), the outcome-supervision advantage of
  DeepSeekMath (arXiv 2402.03300, section 4.1.2). The std is the Bessel-corrected sample
  std (what `torch.std` and the paper's reference implementations use).
- `dr_grpo`: r - group mean. Dr. GRPO (arXiv 2503.20783) drops the std division, which
  up-weights groups with small reward spread (too easy or too hard questions).
- `rloo`: r_i - mean of the other G-1 rewards (leave-one-out baseline; Ahmadian et al.,
  arXiv 2402.14740). Equals G/(G-1) * (r - group mean).
- `batch_std`: (r - group mean) / (std over the whole batch + eps): group baseline, batch
  scale (the "batch" normalisation of arXiv 2508.08221).
- `median`: r - group median, and `median_std`: (r - group median) / (group std + eps):
  `dr_grpo` and `grpo` with the group median as baseline, which one outlying reward (a
  reward model's spike, a partial credit far from the rest) cannot drag. The median is the
  statistical one: for even G the mean of the two middle values (`torch.median` returns the
  lower one, which biases the baseline down and, for G = 2, gives the worse completion
  exactly 0). Ties need no rule: the median is a value, whichever tied completion sorts
  first, and every completion whose reward equals it gets exactly 0. With 0/1 rewards the
  median is the majority reward: the majority gets exactly 0 and only the minority a
  signal (an even split gives +-0.5, as the mean does). `median_std` divides by the same
  Bessel-corrected group std as `grpo`, not by a robust scale such as the MAD: the MAD is 0
  whenever more than half the group shares one reward (the common case for verifier
  rewards), which would make the advantage (r - median) / eps; the std is 0 only in
  all-equal groups, which get 0 anyway (below).

Departure from the paper: a group whose rewards are all equal gets exactly 0 advantage
(the formula gives 0/eps, which is 0 only up to rounding of the mean); such groups carry no
learning signal. `zero_variance_groups` finds them for DAPO's dynamic-sampling filter
(arXiv 2503.14476, section 3.2). NaN or infinite rewards are rejected: they would silently
poison every advantage of their group.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from grpo_core.errors import UserError

AdvantageFn = Callable[[Tensor, float], Tensor]  # (rewards (P, G), eps) -> (P, G)


def _grpo(rewards: Tensor, eps: float) -> Tensor:
    mean = rewards.mean(dim=1, keepdim=True)  # (P, 1)
    std = rewards.std(dim=1, keepdim=True)  # (P, 1), Bessel-corrected
    return (rewards - mean) / (std + eps)


def _dr_grpo(rewards: Tensor, eps: float) -> Tensor:
    return rewards - rewards.mean(dim=1, keepdim=True)


def _rloo(rewards: Tensor, eps: float) -> Tensor:
    g = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)  # (P, G)
    return rewards - others


def _batch_std(rewards: Tensor, eps: float) -> Tensor:
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (P, G)
    return centred / (rewards.std() + eps)


def _group_median(rewards: Tensor) -> Tensor:
    """`(P, G)` -> `(P, 1)`: the mean of the two middle sorted values (the same value twice
    for odd G), as `statistics.median`; ties and their order do not matter."""
    g = rewards.shape[1]
    ordered = rewards.sort(dim=1).values  # (P, G)
    return (ordered[:, (g - 1) // 2] + ordered[:, g // 2]).unsqueeze(1) / 2  # (P, 1)


def _median(rewards: Tensor, eps: float) -> Tensor:
    return rewards - _group_median(rewards)


def _median_std(rewards: Tensor, eps: float) -> Tensor:
    std = rewards.std(dim=1, keepdim=True)  # (P, 1), Bessel-corrected, as in `_grpo`
    return (rewards - _group_median(rewards)) / (std + eps)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "batch_std": _batch_std,
    "median": _median,
    "median_std": _median_std,
}

# The modes whose advantages sum to 0 in every group, which the rollout gate checks: a mean
# baseline centres the group (grpo, dr_grpo, batch_std; rloo = G/(G-1) * (r - mean)), whatever
# the scale. A median baseline does not: sum(r - median) = G * (mean - median).
ZERO_SUM: frozenset[str] = frozenset({"grpo", "dr_grpo", "rloo", "batch_std"})


def zero_variance_groups(rewards: Tensor) -> Tensor:
    """`(P, G)` rewards -> `(P,)` bool: True where every completion got the same reward."""
    _check(rewards)
    return (rewards == rewards[:, :1]).all(dim=1)


def group_advantages(rewards: Tensor, mode: str = "grpo", eps: float = 1e-6) -> Tensor:
    """`(P, G)` rewards -> `(P, G)` advantages (float32 or the rewards' float dtype).

    All-equal groups get exactly 0. Raises ValueError for an unknown mode and UserError for
    NaN/inf rewards (a reward function's bug the user can fix), naming the first bad cell.
    """
    fn = ADVANTAGES.get(mode)
    if fn is None:
        raise ValueError(f"unknown advantage mode {mode!r}; choose one of {sorted(ADVANTAGES)}")
    _check(rewards)
    if rewards.shape[1] < 2:
        raise ValueError(f"advantages need at least 2 completions per prompt, got G={rewards.shape[1]}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # (P, 1)
    return torch.where(flat, torch.zeros_like(rewards), fn(rewards, eps))


def _check(rewards: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards.shape)}")
    bad = ~torch.isfinite(rewards.float())
    if bad.any():
        p, g = (int(i) for i in bad.nonzero()[0])
        raise UserError(f"reward is {rewards[p, g].item()} for prompt {p}, completion {g} "
                        f"({int(bad.sum())} non-finite rewards in all): fix the reward function")
