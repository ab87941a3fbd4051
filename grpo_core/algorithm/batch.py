"""Padded tensors for one batch of rollouts (B = P * G completions, in group order).

Layout: prompts are LEFT-padded to the longest prompt, completions RIGHT-padded to the
longest completion, so every completion starts at the same column and the completion
region is simply the last T columns: per-token tensors (`completion_mask`, log-probs,
advantages' token weights) are all `(B, T)` and line up with `input_ids[:, -T:]` with no
per-row offsets. Position ids are recomputed from the attention mask by
`grpo_core.algorithm.logprobs`, so the left padding does not change what the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class RolloutBatch:
    input_ids: Tensor  # (B, L) long: [left-padded prompt | right-padded completion]
    attention_mask: Tensor  # (B, L) long
    completion_mask: Tensor  # (B, T) float: 1 on real completion tokens
    advantages: Tensor  # (B,) float32
    sampler_logp: Optional[Tensor]  # (B, T) float32 log-probs reported by the sampler, or None
    truncated: Tensor  # (B,) bool: hit the token budget without a stop

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_len(self) -> int:
        return self.completion_mask.shape[1]

    def to(self, device: torch.device | str) -> "RolloutBatch":
        move = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return RolloutBatch(**move)

    def rows(self, index: Tensor) -> "RolloutBatch":
        """A micro-batch: the given rows, with all-padding columns trimmed on both sides
        (padding costs compute). Completion columns are only trimmed on the right, so any
        other `(B, T)` tensor `x` of this batch lines up with `x[index][:, :sub.completion_len]`."""
        sub = _take(self, index)
        left, width = _live_prompt_columns(sub), _live_completion_width(sub)
        t = sub.completion_len
        keep = slice(left, sub.input_ids.shape[1] - (t - width))
        return replace(sub, input_ids=sub.input_ids[:, keep],
                       attention_mask=sub.attention_mask[:, keep],
                       completion_mask=sub.completion_mask[:, :width],
                       sampler_logp=None if sub.sampler_logp is None else sub.sampler_logp[:, :width])


def prompt_chunks(batch: RolloutBatch, rows: Tensor, size: int) -> list[Tensor]:
    """`rows` (indices, in order) cut into micro-batches of at most `size` rows that never mix
    two prompts: runs of consecutive rows with the same prompt (a group's G samples), each
    split into pieces of `size`. Such a micro-batch can run its prompt once
    (`grpo_core.algorithm.logprobs`, `share_prompt`)."""
    if rows.numel() == 0:
        return []
    prompt_cols = batch.input_ids.shape[1] - batch.completion_len
    ids = batch.input_ids[rows, :prompt_cols]
    mask = batch.attention_mask[rows, :prompt_cols]
    same = ((ids[1:] == ids[:-1]) & (mask[1:] == mask[:-1])).all(dim=1)  # (n - 1,)
    starts = [0, *(torch.nonzero(~same).flatten() + 1).tolist(), rows.numel()]
    return [piece for a, b in zip(starts, starts[1:]) for piece in rows[a:b].split(size)]


def _take(batch: RolloutBatch, index: Tensor) -> RolloutBatch:
    return RolloutBatch(**{k: (v[index] if isinstance(v, Tensor) else v) for k, v in vars(batch).items()})


def _live_prompt_columns(batch: RolloutBatch) -> int:
    """Leading columns that are padding in every row (kept >= 0, never into completions)."""
    prompt_cols = batch.input_ids.shape[1] - batch.completion_len
    live = batch.attention_mask[:, :prompt_cols].any(dim=0).nonzero()
    return int(live[0]) if len(live) else prompt_cols - 1


def _live_completion_width(batch: RolloutBatch) -> int:
    """Completion columns up to the last real token of any row (>= 1)."""
    live = batch.completion_mask.any(dim=0).nonzero()
    return int(live[-1]) + 1 if len(live) else 1


def build_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                advantages: Tensor | Sequence[float], *,
                sampler_logprobs: Optional[Sequence[Sequence[float]]] = None,
                truncated: Tensor | Sequence[bool] | None = None, pad_id: int) -> RolloutBatch:
    """Token id lists -> a padded `RolloutBatch` (see the module doc for the layout).

    prompt_ids[i] (non-empty) and completion_ids[i] are row i's tokens; advantages `(B,)`;
    sampler_logprobs[i] has one value per completion token; truncated `(B,)` (default: none).
    """
    b = len(prompt_ids)
    if len(completion_ids) != b:
        raise ValueError(f"{b} prompts but {len(completion_ids)} completions")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    lp = max(len(p) for p in prompt_ids)
    t = max(1, max((len(c) for c in completion_ids), default=1))
    input_ids = torch.full((b, lp + t), pad_id, dtype=torch.long)
    attention = torch.zeros((b, lp + t), dtype=torch.long)
    cmask = torch.zeros((b, t), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, lp - len(p):lp] = torch.as_tensor(p, dtype=torch.long)
        input_ids[i, lp:lp + len(c)] = torch.as_tensor(c, dtype=torch.long)
        attention[i, lp - len(p):lp + len(c)] = 1
        cmask[i, :len(c)] = 1.0
    adv = torch.as_tensor(advantages, dtype=torch.float32).reshape(-1)
    if adv.shape[0] != b:
        raise ValueError(f"{b} rows but {adv.shape[0]} advantages")
    trunc = (torch.zeros(b, dtype=torch.bool) if truncated is None
             else torch.as_tensor(truncated, dtype=torch.bool).reshape(-1))
    return RolloutBatch(input_ids, attention, cmask, adv,
                        _pad_logprobs(sampler_logprobs, completion_ids, t), trunc)


def _pad_logprobs(values, completion_ids, t: int) -> Optional[Tensor]:
    if values is None:
        return None
    out = torch.zeros((len(completion_ids), t), dtype=torch.float32)
    for i, (v, c) in enumerate(zip(values, completion_ids)):
        if len(v) != len(c):
            raise ValueError(f"row {i}: {len(v)} sampler log-probs for {len(c)} completion tokens")
        out[i, :len(v)] = torch.as_tensor(v, dtype=torch.float32)
    return out
