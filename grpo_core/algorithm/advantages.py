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

Groups of different sizes (adaptive group size, `grpo_core.algorithm.adaptive`) stay one
`(P, G_max)` tensor with a `valid` mask: group p holds n_p completions in its first n_p cells,
and every statistic above (mean, std, median, leave-one-out, the batch std) is over valid cells
only, so a ragged group's advantages are exactly those of a group of n_p on its own.

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

AdvantageFn = Callable[[Tensor, Tensor, float], Tensor]  # (rewards, valid (P, G), eps) -> (P, G)


def _count(valid: Tensor) -> Tensor:
    return valid.sum(dim=1, keepdim=True)  # (P, 1) completions in each group


def _mean(rewards: Tensor, valid: Tensor) -> Tensor:
    return (rewards * valid).sum(dim=1, keepdim=True) / _count(valid)  # (P, 1)


def _std(rewards: Tensor, valid: Tensor) -> Tensor:
    """`(P, 1)` Bessel-corrected std of each group's valid cells (n_p >= 2)."""
    squares = ((rewards - _mean(rewards, valid)) ** 2 * valid).sum(dim=1, keepdim=True)
    return (squares / (_count(valid) - 1)).sqrt()


def _grpo(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    return (rewards - _mean(rewards, valid)) / (_std(rewards, valid) + eps)


def _dr_grpo(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    return rewards - _mean(rewards, valid)


def _rloo(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    total = (rewards * valid).sum(dim=1, keepdim=True)  # (P, 1)
    others = (total - rewards) / (_count(valid) - 1)  # (P, G) mean of the other n_p - 1
    return rewards - others


def _batch_std(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    return (rewards - _mean(rewards, valid)) / (rewards[valid].std() + eps)


def _group_median(rewards: Tensor, valid: Tensor) -> Tensor:
    """`(P, G)` -> `(P, 1)`: the mean of the two middle sorted valid values (the same value
    twice for odd n_p), as `statistics.median`; ties and their order do not matter. Invalid
    cells sort last (+inf), so positions (n_p - 1) // 2 and n_p // 2 are the middle ones."""
    n = _count(valid)  # (P, 1)
    ordered = torch.where(valid, rewards, torch.inf).sort(dim=1).values  # (P, G)
    low, high = ordered.gather(1, (n - 1) // 2), ordered.gather(1, n // 2)  # (P, 1) each
    return (low + high) / 2


def _median(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    return rewards - _group_median(rewards, valid)


def _median_std(rewards: Tensor, valid: Tensor, eps: float) -> Tensor:
    # the Bessel-corrected group std, as in `_grpo`
    return (rewards - _group_median(rewards, valid)) / (_std(rewards, valid) + eps)


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


def zero_variance_groups(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """`(P, G)` rewards -> `(P,)` bool: True where every (valid) completion got the same reward."""
    valid = _valid(rewards, valid)
    _check(rewards, valid)
    return ((rewards == rewards[:, :1]) | ~valid).all(dim=1)


def group_advantages(rewards: Tensor, mode: str = "grpo", eps: float = 1e-6,
                     valid: Tensor | None = None) -> Tensor:
    """`(P, G)` rewards -> `(P, G)` advantages (float32 or the rewards' float dtype).

    `valid`: `(P, G)` bool, the cells that hold a completion, for groups of different sizes
    n_p (adaptive group size: a `(P, G_max)` tensor). Each group's statistics are over its
    n_p valid cells only, so a ragged group gets exactly what a group of n_p would; invalid
    cells get 0 (their rewards are ignored). None: every cell is valid. A group's first cell
    must be valid (completions fill a row from the left). All-equal groups get exactly 0.
    Raises ValueError for an unknown mode or a group of fewer than 2 completions, and
    UserError for NaN/inf rewards (a reward function's bug the user can fix), naming the
    first bad cell.
    """
    fn = ADVANTAGES.get(mode)
    if fn is None:
        raise ValueError(f"unknown advantage mode {mode!r}; choose one of {sorted(ADVANTAGES)}")
    valid = _valid(rewards, valid)
    _check(rewards, valid)
    fewest = int(valid.sum(dim=1).min()) if rewards.shape[0] else rewards.shape[1]
    if fewest < 2:
        raise ValueError(f"advantages need at least 2 completions per prompt, got G={fewest}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))  # padding cannot leak
    flat = ((rewards == rewards[:, :1]) | ~valid).all(dim=1, keepdim=True)  # (P, 1)
    return torch.where(flat | ~valid, torch.zeros_like(rewards), fn(rewards, valid, eps))


def _valid(rewards: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    if valid.shape != rewards.shape:
        raise ValueError(f"valid must match rewards {tuple(rewards.shape)}, got {tuple(valid.shape)}")
    return valid.bool()


def _check(rewards: Tensor, valid: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards.shape)}")
    if rewards.shape[0] and not bool(valid[:, 0].all()):
        raise ValueError("every group's first cell must be valid (completions fill from the left)")
    bad = ~torch.isfinite(rewards.float()) & valid
    if bad.any():
        p, g = (int(i) for i in bad.nonzero()[0])
        raise UserError(f"reward is {rewards[p, g].item()} for prompt {p}, completion {g} "
                        f"({int(bad.sum())} non-finite rewards in all): fix the reward function")
