"""Per-token log-probabilities of completion tokens under a causal LM, memory-lean.

Layout (see `grpo_core.algorithm.batch`): the completion tokens are the LAST `T` columns of
`input_ids` (prompts left-padded, completions right-padded), and `completion_mask (B, T)`
marks the real ones. The logit that predicts column `L - T + t` sits at column
`L - T + t - 1`, so one slice of the backbone's hidden states covers every completion token.

Why not `model(...).logits.log_softmax(-1)`: with vocabularies of 50k-150k, a float32
`(B, L, V)` log-softmax for 32 x 400 tokens is gigabytes, twice over with its gradient. Here
the backbone runs once, the hidden states of the real completion tokens are gathered
(padding costs nothing), and the LM head + logsumexp + gather run in chunks of tokens under
activation checkpointing, so at most one chunk's `(N, V)` logits is alive, forward or
backward. Logits are divided by the sampling temperature so that the trainer scores the
distribution the sampler drew from (vLLM applies the temperature before sampling).
Position ids are derived from the attention mask: left padding must not shift positions
(the sampler saw the prompt unpadded).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache

from grpo_core.algorithm.head_stats import Stats, head_stats

DEFAULT_CHUNK_TOKENS = 256  # (256, V) float32 logits: 50 MB at V = 49k


def position_ids_for(attention_mask: Tensor) -> Tensor:
    """`(B, L)` mask -> `(B, L)` positions counting only real tokens (0 on left padding)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _head_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Optional[float]]:
    """(backbone, lm_head, final logit softcap or None) of a transformers causal LM
    (or a peft wrapper of one)."""
    backbone = model.get_decoder()
    head = model.get_output_embeddings()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return backbone, head, cap


def _cast_head(head: nn.Module, device_type: str) -> Callable[[Tensor], Tensor]:
    """The LM head as a function of the hidden states, its weight cast to the autocast dtype
    once. Autocast would cast it on every call: once per chunk without gradients, and once per
    chunk again when a checkpointed chunk replays in backward (the cast it caches lives only as
    long as the forward's autocast context). The vocabulary-wide weight is the largest in a
    small model: 49152 x 576 for SmolLM2-135M, tens of milliseconds a cast on 2 cores. With
    gradients the cast stays in the graph, so the weight's gradient is what autocast gives.
    Any head other than a plain linear layer (a LoRA-wrapped one, say) is called as it is."""
    if type(head) is not nn.Linear or not torch.is_autocast_enabled(device_type):
        return head
    dtype = torch.get_autocast_dtype(device_type)
    weight = head.weight.to(dtype)
    bias = None if head.bias is None else head.bias.to(dtype)
    return lambda hidden: nn.functional.linear(hidden.to(dtype), weight, bias)


def _chunk_logp(hidden: Tensor, targets: Tensor, head: Callable[[Tensor], Tensor],
                stats: Stats, temperature: float, cap: Optional[float],
                with_entropy: bool) -> tuple[Tensor, Tensor]:
    """hidden `(N, H)`, targets `(N,)` -> logp `(N,)` float32, entropy `(N,)` (or empty)."""
    return stats(head(hidden), targets, temperature, cap, with_entropy)


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   completion_mask: Tensor, *, temperature: float = 1.0,
                   with_entropy: bool = False, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                   share_prompt: bool = False,
                   fused: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log pi(o_t | q, o_<t) for the completion tokens.

    input_ids, attention_mask: `(B, L)`; completion_mask: `(B, T)`, aligned with the last T
    columns of input_ids. Returns logp `(B, T)` float32 (0 where the mask is 0), and with
    `with_entropy` also the per-token entropy `(B, T)` (detached, 0 where masked).
    Differentiable when grad is enabled. `share_prompt`: when every row has the same unpadded
    prompt (a micro-batch from one group), run the prompt once (`_shared_prompt_hidden`).
    `fused`: the head's log-softmax compiled (`grpo_core.algorithm.head_stats`).
    """
    b, length = input_ids.shape
    t = completion_mask.shape[1]
    if t >= length:
        raise ValueError(f"need at least one prompt token: input is {length} wide, completions {t}")
    backbone, head, cap = _head_parts(model)
    if share_prompt and b > 1 and _one_prompt(input_ids, attention_mask, length - t):
        hidden = _shared_prompt_hidden(backbone, input_ids, length - t, _widths(completion_mask))
    else:
        out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_for(attention_mask), use_cache=False)
        hidden = out[0][:, length - t - 1:length - 1]  # (B, T, H): states that predict completions
    on = completion_mask.bool()  # (B, T)
    picked = hidden[on]  # (N, H), only real completion tokens
    targets = input_ids[:, length - t:][on]  # (N,)
    logp_parts, ent_parts = [], []
    head = _cast_head(head, picked.device.type)
    stats = head_stats(picked.device.type, fused)
    use_ckpt = torch.is_grad_enabled() and picked.requires_grad
    for start in range(0, picked.shape[0], chunk_tokens):
        args = (picked[start:start + chunk_tokens], targets[start:start + chunk_tokens], head,
                stats, temperature, cap, with_entropy)
        if use_ckpt:  # keep only the chunk's hidden states; recompute logits in backward
            lp, ent = checkpoint(_chunk_logp, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logp(*args)
        logp_parts.append(lp)
        ent_parts.append(ent)
    logp = _scatter(logp_parts, on, hidden)
    if not with_entropy:
        return logp
    return logp, _scatter(ent_parts, on, hidden).detach()


def _one_prompt(input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> bool:
    """True when all rows carry the same prompt with no padding in it."""
    prompt = input_ids[:, :prompt_len]
    return bool(attention_mask[:, :prompt_len].all()) and bool((prompt == prompt[:1]).all())


def _shared_prompt_hidden(backbone: nn.Module, input_ids: Tensor, prompt_len: int,
                          widths: list[int]) -> Tensor:
    """The `(B, T, H)` hidden states that predict the completion tokens, with the shared
    prompt run ONCE: its keys/values (still in the autograd graph, so gradients from every
    completion flow back through them) are repeated over the rows, and only the completion
    columns run per row. A group's G completions share one prompt, so the prompt's share of
    the forward and backward cost drops by a factor of G.

    `widths[i]`: row i's completion columns up to its last real token. The completion pass
    runs on rows of similar width together (`length_buckets`), each bucket cut to its own
    width, so a group whose longest sample is truncated does not pay that width for its
    short ones; the columns a row does not run stay zero. Right padding inside a bucket needs
    no mask: causal attention never lets a real token see a later pad.

    Under gradient checkpointing (HF's, per decoder layer) both passes recompute in backward.
    The prompt pass, one row, is checkpointed as a whole: it keeps only its keys/values and
    last hidden state, not its activations or the bfloat16 casts of every weight that autocast
    would save for its backward (2 bytes a weight). The completion passes are checkpointed per
    layer and read the prompt's keys/values from a read-only cache, so a layer's replay in
    backward sees the same inputs."""
    length = input_ids.shape[1]
    prompt_ids = input_ids[:1, :prompt_len]
    if torch.is_grad_enabled() and _checkpointing(backbone):
        prompt = checkpoint(_prompt_pass, backbone, prompt_ids, use_reentrant=False)
    else:
        prompt = _prompt_pass(backbone, prompt_ids)
    t = length - prompt_len
    buckets = length_buckets(widths)
    parts = [_completion_pass(backbone, input_ids[rows, prompt_len:prompt_len + width - 1],
                              prompt, prompt_len, t) for rows, width in buckets]
    order = torch.tensor([r for rows, _ in buckets for r in rows], device=input_ids.device)
    return torch.cat(parts)[torch.argsort(order)]


def _completion_pass(backbone: nn.Module, tokens: Tensor, prompt: tuple, prompt_len: int,
                     t: int) -> Tensor:
    """Completion tokens `(n, w - 1)` (0..w-2) after the prompt's cache -> the hidden states
    `(n, t, H)` that predict completion tokens 0..w-1, zero beyond."""
    last, keys, values = prompt
    n = tokens.shape[0]
    hidden = last.expand(n, -1, -1)  # (n, 1, H): predicts completion token 0
    if tokens.shape[1]:
        cache = _PromptCache()
        for layer, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, layer)
        cache.batch_repeat_interleave(n)
        cache.read_only = True
        positions = torch.arange(prompt_len, prompt_len + tokens.shape[1], device=tokens.device)
        with _layers_set(backbone, _can_checkpoint_with_cache=True):  # reads, never writes: safe
            out = backbone(input_ids=tokens, past_key_values=cache, use_cache=False,
                           position_ids=positions.expand(n, -1))
        hidden = torch.cat([hidden, out[0]], dim=1)
    return nn.functional.pad(hidden, (0, 0, 0, t - hidden.shape[1]))


# What one more completion pass costs, in padded tokens: each pass replays every layer and adds
# every weight's gradient into float32, and its matrix products are smaller. Measured for
# SmolLM2-135M on 2 cores under bfloat16 autocast (docs/benchmarks.md): 0.29 s a pass against
# ~2.6 ms a token with gradients, 51 ms against ~0.6 ms without, about 100 tokens either way.
BUCKET_COST_TOKENS = 96


def length_buckets(widths: list[int]) -> list[tuple[list[int], int]]:
    """Rows grouped for the completion pass: `(rows, width)` pairs covering every row once,
    minimising the padded tokens `sum(len(rows) * (width - 1))` plus `BUCKET_COST_TOKENS` a
    pass. Exact: the best split of the rows sorted by width (a shortest path over cut points)."""
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    w = [max(widths[i], 1) for i in order]  # a row with no real token still yields column 0
    n = len(w)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: rows order[:j] bucketed
        for i in range(j):  # bucket order[i:j], as wide as its widest row, order[i]
            cost = best[i] + (j - i) * (w[i] - 1) + (BUCKET_COST_TOKENS if w[i] > 1 else 0)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j:
        i = cut[j]
        buckets.append((order[i:j], w[i]))
        j = i
    return buckets[::-1]


def _widths(completion_mask: Tensor) -> list[int]:
    """`(B, T)` mask -> each row's columns up to its last real token (0 for none)."""
    t = completion_mask.shape[1]
    on = completion_mask.bool()
    last = t - on.flip(1).to(torch.int8).argmax(dim=1)  # (B,): 1 + index of the last True
    return torch.where(on.any(dim=1), last, 0).tolist()


def _prompt_pass(backbone: nn.Module, prompt_ids: Tensor
                 ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One prompt `(1, P)` through the backbone -> its last hidden state `(1, 1, H)` and
    every layer's keys and values `(1, heads, P, head_dim)`."""
    cache = DynamicCache()
    with _layers_set(backbone, gradient_checkpointing=False):  # HF would drop the cache
        out = backbone(input_ids=prompt_ids, use_cache=True, past_key_values=cache)
    return (out[0][:, -1:], tuple(layer.keys for layer in cache.layers),
            tuple(layer.values for layer in cache.layers))


def _checkpointing(backbone: nn.Module) -> bool:
    """Whether the backbone's decoder layers recompute their activations in backward (as HF
    decides it: checkpointing on, and in training mode)."""
    return any(m.gradient_checkpointing and m.training for m in _checkpoint_layers(backbone))


class _PromptCache(DynamicCache):
    """Written by the prompt pass; once `read_only`, a layer's call returns the prompt's
    keys/values followed by its own without storing them, so calling it again (a checkpoint
    replay) returns the same tensors."""

    read_only = False

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args,
               **kwargs) -> tuple[Tensor, Tensor]:
        if not self.read_only:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return (torch.cat([layer.keys, key_states], dim=-2),
                torch.cat([layer.values, value_states], dim=-2))


@contextlib.contextmanager
def _layers_set(backbone: nn.Module, **values) -> Iterator[None]:
    """Set attributes on the backbone's checkpointable decoder layers for the duration."""
    layers = _checkpoint_layers(backbone)
    saved = [{k: m.__dict__[k] for k in values if k in m.__dict__} for m in layers]
    try:
        for m in layers:
            for k, v in values.items():
                setattr(m, k, v)
        yield
    finally:
        for m, before in zip(layers, saved):
            for k in values:
                if k in before:
                    setattr(m, k, before[k])
                else:
                    m.__dict__.pop(k, None)


def _checkpoint_layers(backbone: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in backbone.modules() if isinstance(m, GradientCheckpointingLayer)]


class TokenLogprobs(nn.Module):
    """`token_logprobs(lm, ...)` as a module call. FSDP2 gathers a module's parameters in its
    forward hooks; `token_logprobs` calls the backbone and the LM head separately, so under
    FSDP2 it must run inside the forward of a wrapped root (`grpo_core.parallel.sharding`)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor,
                **options) -> Tensor | tuple[Tensor, Tensor]:
        return token_logprobs(self.lm, input_ids, attention_mask, completion_mask, **options)


def _scatter(parts: list[Tensor], on: Tensor, like: Tensor) -> Tensor:
    """Put `(N,)` values back into a zero `(B, T)` float32 tensor at the mask's positions."""
    out = torch.zeros(on.shape, dtype=torch.float32, device=like.device)
    if parts:
        out = out.masked_scatter(on, torch.cat(parts))
    return out


def naive_token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         completion_mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Reference: full `(B, T, V)` float32 log-softmax. For tests and the benchmark only."""
    length, t = input_ids.shape[1], completion_mask.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_for(attention_mask), use_cache=False).logits
    logits = logits[:, length - t - 1:length - 1].float() / temperature  # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(2, input_ids[:, length - t:].unsqueeze(2)).squeeze(2)  # (B, T)
    return picked * completion_mask.to(picked.dtype)
