"""The LM head's log-softmax statistics, eager and compiled (torch.compile, real Inductor)."""

from __future__ import annotations

import logging

import pytest
import torch

from grpo_core.algorithm import head_stats
from grpo_core.algorithm.head_stats import logits_logp


def _values_and_grads(fn, logits, targets, temperature, cap):
    x = logits.detach().clone().requires_grad_()
    logp, entropy = fn(x, targets, temperature, cap, True)
    (logp * torch.linspace(-1, 1, logp.numel())).sum().backward()
    return logp.detach(), entropy, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_stats_equal_the_eager_ones(dtype):
    """Values, entropy and the logits' gradient of the compiled kernel match eager, for chunks
    of several lengths and temperatures, a soft cap, and rows of another length than the
    first call's (one graph for all: dynamic shapes, the temperature an input)."""
    compiled = head_stats.head_stats("cpu", fused=True)
    assert compiled is not logits_logp  # g++ is on these machines: really compiled
    g = torch.Generator().manual_seed(0)
    for rows, temperature, cap in [(7, 1.0, None), (5, 0.7, None), (3, 0.9, 30.0)]:
        logits = (torch.randn(rows, 300, generator=g) * 4).to(dtype)
        targets = torch.randint(0, 300, (rows,), generator=g)
        got = _values_and_grads(compiled, logits, targets, temperature, cap)
        want = _values_and_grads(logits_logp, logits, targets, temperature, cap)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert not got[1].requires_grad


def test_without_entropy_and_no_grad():
    compiled = head_stats.head_stats("cpu", fused=True)
    logits = torch.randn(4, 50)
    targets = torch.tensor([0, 1, 2, 49])
    with torch.no_grad():
        logp, entropy = compiled(logits, targets, 0.8, None, False)
    assert entropy.numel() == 0
    want = (logits / 0.8).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(logp, want)


def test_no_compiler_falls_back_to_eager_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr(head_stats.shutil, "which", lambda name: None)
    head_stats._compiled.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=head_stats.__name__):
            assert head_stats.head_stats("cpu", fused=True) is logits_logp
        assert "no C++ compiler" in caplog.text and "runs eager" in caplog.text
    finally:
        head_stats._compiled.cache_clear()
    assert head_stats.head_stats("cpu", fused=False) is logits_logp
