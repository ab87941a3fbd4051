"""The GRPO objective as pure tensor functions: per-token loss, then a named reduction.

Per token (DeepSeekMath, arXiv 2402.03300, eq. 3):

    loss_t = -min(rho_t * A, clip(rho_t, 1 - clip_low, 1 + clip_high) * A) + beta * k3_t

with rho_t = exp(logp_t - old_logp_t) and k3 the unbiased, always non-negative KL estimator
exp(ref - logp) - (ref - logp) - 1 (eq. 4, Schulman's "k3").

Departures and additions, each from a later paper:
- `clip_low != clip_high` is DAPO's clip-higher (arXiv 2503.14476): a wider upper range lets
  low-probability tokens grow.
- `ratio_level="sequence"` is GSPO (arXiv 2507.18071): one ratio per sequence, the exp of the
  length-normalised sum of token log-ratios, shared by all its tokens.
- `is_weight` multiplies the policy-gradient term of each token (not the KL term): the
  truncated importance weight that corrects for the sampler/trainer mismatch (TIS, Yao et al.
  2025, "Your efficient RL framework secretly brings you off-policy RL training").
- Reductions (`AGGREGATIONS`): the paper's `seq_mean_token_mean` (1/G sum_i 1/|o_i| sum_t)
  biases toward short correct and long wrong answers; `token_mean` (DAPO) and
  `seq_mean_token_sum_norm` (Dr. GRPO, arXiv 2503.20783) remove that length bias. Each
  reduction is a set of per-token weights computed over the whole batch (`token_weights`),
  so micro-batches that sum `loss * weights` reproduce the full-batch loss and gradient
  exactly. A row with no unmasked token (a completion dropped by `mask_truncated`) adds zero
  loss in every mode; whether it still counts in the normaliser depends on the mode:
  `token_mean` counts tokens, so it adds nothing; `seq_mean_token_mean` skips it (its
  1/|o_i| is undefined); `seq_mean_token_sum_norm` counts it, because Dr. GRPO's normaliser
  is a constant, every completion of the batch times the generation budget, B * max_len (as
  in TRL, `size(0) * max_completion_length`, and verl), so that a token's weight does not
  depend on what else the batch holds.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

WeightFn = Callable[[Tensor, Optional[int]], Tensor]  # (mask (B, T), max_len) -> (B, T)


def token_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: `(B, T)` -> `(B, T)`, >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def _token_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    return log_ratio


def _sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    seq = (log_ratio * mask).sum(dim=1, keepdim=True) / lengths  # (B, 1)
    return seq.expand_as(log_ratio)  # (B, T): every token of sequence i shares rho_i


RATIO_LEVELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                ref_logp: Optional[Tensor] = None, beta: float = 0.0, clip_low: float = 0.2,
                clip_high: float = 0.2, ratio_level: str = "token",
                is_weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Unreduced clipped-surrogate loss.

    logp, old_logp, ref_logp, mask, is_weight: `(B, T)` over completion tokens;
    advantages: `(B,)`. Returns the `(B, T)` loss (exactly 0 where mask is 0) and detached
    metrics over unmasked tokens: clip_frac_low / clip_frac_high (fraction of tokens where
    the lower / upper clip bound is the active branch), ratio_mean/min/max, kl (mean k3, 0
    when no reference is given).
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio_level {ratio_level!r}; choose one of {sorted(RATIO_LEVELS)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    mask = mask.to(logp.dtype)
    log_ratio = RATIO_LEVELS[ratio_level](logp - old_logp, mask)  # (B, T)
    # Clamp before exp: a huge log-ratio would give inf * 0 = NaN on masked tokens.
    ratio = torch.exp(log_ratio.clamp(max=20.0))  # (B, T)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (B, 1)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(-ratio * adv, -clipped * adv)  # (B, T) = -min(rho A, clip(rho) A)
    if is_weight is not None:
        pg = pg * is_weight
    kl = token_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = (pg + beta * kl) * mask if beta > 0 else pg * mask
    return loss, _metrics(ratio.detach(), adv.detach(), kl.detach(), mask, clip_low, clip_high)


def _metrics(ratio: Tensor, adv: Tensor, kl: Tensor, mask: Tensor, clip_low: float,
             clip_high: float) -> dict[str, Tensor]:
    on = mask > 0  # (B, T)
    n = on.sum().clamp(min=1)
    low = (ratio < 1.0 - clip_low) & (adv < 0) & on
    high = (ratio > 1.0 + clip_high) & (adv > 0) & on
    big = torch.finfo(ratio.dtype).max
    return {
        "clip_frac_low": low.sum() / n,
        "clip_frac_high": high.sum() / n,
        "ratio_mean": (ratio * mask).sum() / n,
        "ratio_min": torch.where(on, ratio, big).min() if on.any() else ratio.new_tensor(1.0),
        "ratio_max": torch.where(on, ratio, -big).max() if on.any() else ratio.new_tensor(1.0),
        "kl": (kl * mask).sum() / n,
    }


# ----------------------------------------------------------------------------- reductions
def _nonempty_rows(mask: Tensor) -> Tensor:
    """Number of sequences with at least one unmasked token (>= 1)."""
    return (mask.sum(dim=1) > 0).sum().clamp(min=1).to(mask.dtype)


def _seq_mean_token_mean(mask: Tensor, max_len: Optional[int]) -> Tensor:
    """1 / (S * |o_i|) per token, S = rows with >= 1 unmasked token: an empty row has no
    1/|o_i| to average, so it is not one of the sequences averaged over."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return mask / lengths / _nonempty_rows(mask)


def _token_mean(mask: Tensor, max_len: Optional[int]) -> Tensor:
    return mask / mask.sum().clamp(min=1)


def _seq_mean_token_sum_norm(mask: Tensor, max_len: Optional[int]) -> Tensor:
    """1 / (B * max_len) per unmasked token, B = EVERY row of the batch: a fully masked row
    adds zero loss but counts in B, so masking a row (mask_truncated) leaves the weights of
    the others unchanged; dividing by the rows left would enlarge their step instead."""
    length = mask.shape[1] if max_len is None else max_len
    return mask / (max(mask.shape[0], 1) * length)


AGGREGATIONS: dict[str, WeightFn] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def token_weights(mask: Tensor, mode: str, max_len: Optional[int] = None) -> Tensor:
    """`(B, T)` mask -> `(B, T)` weights with `aggregate(loss) == (loss * weights).sum()`.

    Computed once over the whole batch, then sliced per micro-batch: that is what makes
    gradient accumulation equal the full-batch gradient for every mode (and, with the
    counts all-reduced, the sharded one: `grpo_core.parallel.distributed`). `max_len` is Dr.
    GRPO's constant (the generation budget); None uses the mask's width T.
    """
    fn = AGGREGATIONS.get(mode)
    if fn is None:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    mask = mask.float() if not mask.is_floating_point() else mask
    return fn(mask, max_len)


def aggregate(loss: Tensor, mask: Tensor, mode: str, max_len: Optional[int] = None) -> Tensor:
    """Reduce a `(B, T)` per-token loss to a scalar with the named mode (see module doc)."""
    return (loss * token_weights(mask, mode, max_len).to(loss.dtype)).sum()
