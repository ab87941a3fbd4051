"""Chunked completion log-probs vs the naive full log-softmax and vs unpadded forwards; the
padded batch layout."""

from __future__ import annotations

import pytest
import torch

from grpo_core.algorithm.batch import build_batch
from grpo_core.algorithm.logprobs import naive_token_logprobs, token_logprobs

PROMPTS = [[1, 40, 41], [1, 50, 51, 52, 53], [1], [1, 60, 61, 62, 63, 64, 65]]
COMPLETIONS = [[70, 71, 72, 73], [80], [90, 91, 92, 93, 94, 95], [100, 101, 102]]


@pytest.fixture
def batch():
    return build_batch(PROMPTS, COMPLETIONS, [1.0, -1.0, 0.5, -0.5], pad_id=0,
                       sampler_logprobs=[[-0.1] * len(c) for c in COMPLETIONS],
                       truncated=[False, True, False, False])


def test_build_batch_layout(batch):
    # prompts left-padded to 7, completions right-padded to 6: completions start at column 7
    assert batch.input_ids.shape == (4, 13) and batch.completion_mask.shape == (4, 6)
    assert batch.input_ids[0].tolist() == [0, 0, 0, 0, 1, 40, 41, 70, 71, 72, 73, 0, 0]
    assert batch.attention_mask[0].tolist() == [0] * 4 + [1] * 7 + [0] * 2
    assert batch.completion_mask[1].tolist() == [1, 0, 0, 0, 0, 0]
    assert batch.input_ids[2, 6:].tolist() == [1, 90, 91, 92, 93, 94, 95]
    assert batch.sampler_logp[0].tolist() == pytest.approx([-0.1] * 4 + [0.0, 0.0])
    assert batch.truncated.tolist() == [False, True, False, False]


def test_rows_trims_padding_columns(batch):
    sub = batch.rows(torch.tensor([0, 1]))
    # longest prompt among rows 0-1 is 5, longest completion 4
    assert sub.input_ids.shape == (2, 9) and sub.completion_mask.shape == (2, 4)
    assert sub.input_ids[0].tolist() == [0, 0, 1, 40, 41, 70, 71, 72, 73]
    assert sub.advantages.tolist() == [1.0, -1.0]


def test_build_batch_errors():
    with pytest.raises(ValueError, match="at least one token"):
        build_batch([[]], [[5]], [0.0], pad_id=0)
    with pytest.raises(ValueError, match="row 0: 1 sampler log-probs for 2"):
        build_batch([[1]], [[5, 6]], [0.0], pad_id=0, sampler_logprobs=[[-1.0]])
    with pytest.raises(ValueError, match="2 rows but 1 advantages"):
        build_batch([[1], [1]], [[5], [6]], [0.0], pad_id=0)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_unpadded_forward(tiny_llama, batch, chunk, temperature):
    logp = token_logprobs(tiny_llama, batch.input_ids, batch.attention_mask,
                         batch.completion_mask, temperature=temperature, chunk_tokens=chunk)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        logits = tiny_llama(torch.tensor([p + c])).logits[0, len(p) - 1:-1] / temperature
        expected = logits.log_softmax(-1).gather(1, torch.tensor(c).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(logp[i, :len(c)], expected, atol=2e-6, rtol=1e-5)
        assert (logp[i, len(c):] == 0).all()


def test_chunked_equals_naive_values_grads_entropy(tiny_llama, batch):
    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    logp, entropy = token_logprobs(tiny_llama, *args, temperature=0.8, with_entropy=True,
                                   chunk_tokens=3)
    (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)).sum().backward()
    chunked_grads = [p.grad.clone() for p in tiny_llama.parameters()]
    tiny_llama.zero_grad()
    naive = naive_token_logprobs(tiny_llama, *args, temperature=0.8)
    (naive * torch.linspace(-1, 1, naive.numel()).reshape(naive.shape)).sum().backward()
    torch.testing.assert_close(logp, naive, atol=2e-6, rtol=1e-5)
    for got, want in zip(chunked_grads, (p.grad for p in tiny_llama.parameters())):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # entropy of the tempered distribution at each completion token
        logits = tiny_llama(batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=(batch.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
        lp = (logits[:, 6:12] / 0.8).log_softmax(-1)
        want = -(lp.exp() * lp).sum(-1) * batch.completion_mask
    torch.testing.assert_close(entropy, want, atol=1e-5, rtol=1e-5)
    assert not entropy.requires_grad


def test_no_grad_mode_and_empty_mask(tiny_llama, batch):
    with torch.no_grad():
        logp = token_logprobs(tiny_llama, batch.input_ids, batch.attention_mask,
                              torch.zeros_like(batch.completion_mask))
    assert logp.shape == (4, 6) and (logp == 0).all()


def group_batch():
    """Two groups of three samples: rows 0-2 share one prompt, rows 3-5 another (of another
    length, so the batch has left padding), completions of 1-4 tokens (right padding)."""
    prompts = [[1, 5, 9, 33, 7]] * 3 + [[1, 40, 41]] * 3
    completions = [[4, 5, 6], [7, 8], [9, 10, 11, 12], [13], [14, 15], [16, 17, 18]]
    return build_batch(prompts, completions, torch.tensor([1.0, -1, 0.5, -0.5, 2, -2]), pad_id=0)


def test_prompt_chunks_never_mix_prompts():
    from grpo_core.algorithm.batch import prompt_chunks

    b = group_batch()
    assert [c.tolist() for c in prompt_chunks(b, torch.arange(6), 2)] == [[0, 1], [2], [3, 4], [5]]
    assert [c.tolist() for c in prompt_chunks(b, torch.tensor([0, 2, 3]), 8)] == [[0, 2], [3]]
    assert prompt_chunks(b, torch.arange(0), 8) == []


def backbone_input_shapes(model):
    """-> (a list that records the shape of every backbone call's input_ids, its hook)."""
    shapes = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    return shapes, hook


def test_shared_prompt_forward_equals_the_per_row_forward(tiny_llama):
    """Values, gradients and entropy of a group's micro-batch with its prompt run once equal
    the plain forward's; the backbone then sees the prompt once (1 row), not per sample."""
    from grpo_core.algorithm.batch import prompt_chunks

    b = group_batch()
    results = {}
    for share in (False, True):
        tiny_llama.zero_grad()
        rows_seen, hook = backbone_input_shapes(tiny_llama)
        total, ents = 0.0, []
        for idx in prompt_chunks(b, torch.arange(6), 8):
            mb = b.rows(idx)
            logp, ent = token_logprobs(tiny_llama, mb.input_ids, mb.attention_mask,
                                       mb.completion_mask, with_entropy=True, temperature=0.7,
                                       share_prompt=share)
            total = total + (logp * mb.advantages[:, None]).sum()
            ents.append(ent)
        hook.remove()
        total.backward()
        results[share] = (float(total.detach()), [p.grad.clone() for p in tiny_llama.parameters()],
                          ents, rows_seen)
    plain, shared = results[False], results[True]
    assert shared[0] == pytest.approx(plain[0], rel=1e-5)
    for a, c in zip(plain[1], shared[1]):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    for a, c in zip(plain[2], shared[2]):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    assert plain[3] == [(3, 9), (3, 6)]  # prompt + longest completion, per row
    # prompt once, then the completions; a one-token completion needs only the prompt's pass
    assert shared[3] == [(1, 5), (3, 3), (1, 3), (2, 2)]


def test_completion_pass_runs_rows_of_similar_length_together(tiny_llama):
    """One long sample among short ones: the completion pass runs the long row alone at its
    width and the short rows at theirs, and values and gradients still equal the per-row
    forward's (the columns a short row does not run are padding it never reads)."""
    long, short = list(range(10, 50)), [[51, 52], [53], [54, 55], [56, 57], [58, 59]]
    b = build_batch([[1, 5, 9]] * 6, [long, *short], torch.tensor([1.0, -1, 0.5, -0.5, 2, -2]),
                    pad_id=0)
    results = {}
    for share in (False, True):
        tiny_llama.zero_grad()
        rows_seen, hook = backbone_input_shapes(tiny_llama)
        logp = token_logprobs(tiny_llama, b.input_ids, b.attention_mask, b.completion_mask,
                              share_prompt=share)
        hook.remove()
        (logp * b.advantages[:, None]).sum().backward()
        results[share] = (logp.detach(), [p.grad.clone() for p in tiny_llama.parameters()],
                          rows_seen)
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    for a, c in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    assert results[False][2] == [(6, 43)]
    # the prompt, the long row, the two-token rows ([53] needs only the prompt's pass)
    assert results[True][2] == [(1, 3), (1, 39), (4, 1)]


def test_length_buckets_is_the_cheapest_split():
    """Against every split of the rows sorted by width (2^(n-1) of them): the buckets cover
    each row once, and their padded tokens plus the per-pass cost are the least."""
    import itertools

    from grpo_core.algorithm.logprobs import BUCKET_COST_TOKENS, length_buckets

    def cost(buckets):
        return sum(len(rows) * (w - 1) + (BUCKET_COST_TOKENS if w > 1 else 0)
                   for rows, w in buckets)

    gen = torch.Generator().manual_seed(0)
    for widths in ([128, 40, 40, 38, 120, 35, 0, 1], [5] * 8, [1, 1], [128],
                   *(torch.randint(0, 129, (8,), generator=gen).tolist() for _ in range(20))):
        buckets = length_buckets(widths)
        assert sorted(r for rows, _ in buckets for r in rows) == list(range(len(widths)))
        assert all(w == max(1, *(widths[r] for r in rows)) for rows, w in buckets)
        w = sorted((max(x, 1) for x in widths), reverse=True)
        best = min(cost([([0] * (b - a), w[a]) for a, b in zip((0, *cuts), (*cuts, len(w)))])
                   for k in range(len(w)) for cuts in itertools.combinations(range(1, len(w)), k))
        assert cost(buckets) == best, widths
    assert length_buckets([128, 20, 20, 20, 20, 20, 20, 20]) == [([0], 128), ([1, 2, 3, 4, 5, 6, 7], 20)]


def test_shared_prompt_forward_under_gradient_checkpointing(tiny_llama_factory):
    """With HF gradient checkpointing both passes are checkpointed, the completion pass reading
    the prompt's keys/values from a read-only cache: values and gradients equal the plain
    forward's, and a decoder layer runs 4 times per micro-batch (prompt, completions, and
    each replayed once in backward)."""
    from grpo_core.algorithm.batch import prompt_chunks

    model = tiny_llama_factory()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    b = group_batch()
    idx = prompt_chunks(b, torch.arange(6), 8)[0]
    mb = b.rows(idx)
    results = {}
    for share in (False, True):
        model.zero_grad()
        calls = []
        hook = model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        logp = token_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                              share_prompt=share)
        (logp * mb.advantages[:, None]).sum().backward()
        hook.remove()
        results[share] = (logp.detach(), [p.grad.clone() for p in model.parameters()], len(calls))
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-4)
    for a, c in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    assert results[False][2] == 2 and results[True][2] == 4
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert not any("_can_checkpoint_with_cache" in layer.__dict__ for layer in model.model.layers)


def test_checkpointed_shared_prompt_keeps_no_weight_casts(tiny_llama_factory):
    """Under gradient checkpointing and bfloat16 autocast, what the forward keeps for backward
    is inputs and a few boundary tensors, not the bfloat16 casts of the decoder weights that
    an un-checkpointed prompt pass would save (2 bytes a weight): the memory checkpointing
    promises, with the prompt run once per group."""
    from grpo_core.algorithm.batch import prompt_chunks

    model = tiny_llama_factory(hidden_size=256, intermediate_size=512)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    mb = group_batch()
    mb = mb.rows(prompt_chunks(mb, torch.arange(6), 8)[0])
    layer_cast_bytes = 2 * sum(p.numel() for p in model.model.layers.parameters())
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    for share in (True, False):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            logp = token_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                                  share_prompt=share)
        logp.sum().backward()
        assert sum(saved) < layer_cast_bytes / 4, (share, sum(saved), layer_cast_bytes)


class _Wrapped(torch.nn.Module):
    """A head that is not a plain linear layer: called as it is, so autocast casts its weight."""

    def __init__(self, inner: torch.nn.Linear):
        super().__init__()
        self.inner = inner

    def forward(self, hidden):
        return self.inner(hidden)


def _head_casts_and_grads(model, mb, grad: bool):
    """Casts of the LM head's `(V, H)` weight to bfloat16 in one call (and its replays in
    backward), the log-probs and the gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shape = tuple(model.get_input_embeddings().weight.shape)  # tied: the head's weight
    casts = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and tuple(out.shape) == shape \
                    and out.dtype == torch.bfloat16:  # not the gradient's cast back to float32
                casts.append(out.dtype)
            return out

    model.zero_grad(set_to_none=True)
    with Count(), torch.set_grad_enabled(grad):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp = token_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                                  chunk_tokens=2, share_prompt=True)
        if grad:
            (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)).sum().backward()
    return casts, logp.detach(), [p.grad for p in model.parameters()]


def test_lm_head_weight_is_cast_once_per_call(tiny_llama_factory):
    """Under bfloat16 autocast the LM head's weight is cast once per call, not once per chunk
    and again per chunk replayed in backward, and the log-probs and gradients are exactly those
    of autocast casting it at every chunk (the head wrapped, so it is called as it is).
    Without gradients the model is frozen, as the reference is: autocast caches its casts only
    for weights that require grad."""
    mb = group_batch()
    mb = mb.rows(torch.arange(3))  # one group: 9 completion tokens, 5 chunks of 2
    for grad in (False, True):
        model = tiny_llama_factory().requires_grad_(grad)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        casts, logp, grads = _head_casts_and_grads(model, mb, grad)
        assert casts == [torch.bfloat16], (grad, casts)
        model.lm_head = _Wrapped(model.lm_head)
        casts_per_chunk, want_logp, want_grads = _head_casts_and_grads(model, mb, grad)
        assert len(casts_per_chunk) > 1  # the check can tell one cast from many
        assert torch.equal(logp, want_logp)
        for got, want in zip(grads, want_grads):
            assert (got is None and want is None) or torch.equal(got, want)


def test_fused_head_equals_the_eager_one_under_autocast(tiny_llama_factory):
    """`fused` (the head's log-softmax compiled) gives the eager log-probs and gradients, in
    the update's setting: bfloat16 autocast, checkpointed chunks, the shared prompt."""
    mb = group_batch()
    mb = mb.rows(torch.arange(3))
    results = []
    for fused in (False, True):
        model = tiny_llama_factory()
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, entropy = token_logprobs(model, mb.input_ids, mb.attention_mask,
                                           mb.completion_mask, temperature=0.7, chunk_tokens=4,
                                           with_entropy=True, share_prompt=True, fused=fused)
        (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)).sum().backward()
        results.append((logp.detach(), entropy, [p.grad for p in model.parameters()]))
    (lp0, ent0, grads0), (lp1, ent1, grads1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ent1, ent0, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads1, grads0):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
