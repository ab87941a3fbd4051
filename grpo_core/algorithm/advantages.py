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


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "batch_std": _batch_std,
}


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
