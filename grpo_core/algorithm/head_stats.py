"""The LM head's log-softmax statistics: from a chunk of logits to the targets' log-probs.

logits `(N, V)` -> log pi(target) `(N,)` float32 and the entropy `(N,)` (a detached metric).
Eager, this is a float32 copy of the logits, the temperature's multiply and logsumexp's max,
subtract, exp and sum: six passes over `(N, V)` forward, about as many again in backward, and
the entropy's softmax. With `fused`, `torch.compile` (Inductor: C++ on CPU, Triton on GPU)
fuses them into a few reads of the logits forward and one read and one write backward. Either
way the logsumexp is accumulated in float32. For SmolLM2-135M (V = 49152) on 2 cores one
chunk of 256 tokens, forward and backward with the head's matrix products, took 294 ms eager
and 177 ms compiled (docs/benchmarks.md, Update step). Compiling costs about 5 s once per
process; where no compiler is found the eager version runs, with one line that says so.
"""

from __future__ import annotations

import functools
import logging
import shutil
from typing import Callable, Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

Stats = Callable[[Tensor, Tensor, float, Optional[float], bool], tuple[Tensor, Tensor]]


def logits_logp(logits: Tensor, targets: Tensor, temperature: float, cap: Optional[float],
                with_entropy: bool) -> tuple[Tensor, Tensor]:
    """logits `(N, V)` (any float dtype), targets `(N,)` -> logp `(N,)` float32 under
    softmax(softcap(logits) / temperature), and the entropy `(N,)` (detached; empty without
    `with_entropy`)."""
    return _logp(logits, targets, 1.0 / temperature, cap, with_entropy)


def _logp(logits: Tensor, targets: Tensor, scale: float | Tensor, cap: Optional[float],
          with_entropy: bool) -> tuple[Tensor, Tensor]:
    x = logits.float()  # float32 for an accurate logsumexp
    if cap:
        x = torch.tanh(x / cap) * cap
    if not (isinstance(scale, float) and scale == 1.0):  # eager: skip an (N, V) pass at T = 1
        x = x * scale
    lse = torch.logsumexp(x, dim=-1)  # (N,)
    logp = x.gather(1, targets.unsqueeze(1)).squeeze(1) - lse
    if not with_entropy:
        return logp, logp.new_zeros(0)
    x = x.detach()  # entropy is a metric, never differentiated
    return logp, lse.detach() - (torch.softmax(x, dim=-1) * x).sum(dim=-1)


def head_stats(device_type: str, fused: bool) -> Stats:
    """`logits_logp`, compiled when `fused` and a compiler for `device_type` is here."""
    return _compiled(device_type) if fused else logits_logp


@functools.cache
def _compiled(device_type: str) -> Stats:
    missing = _missing_compiler(device_type)
    if missing:
        log.warning("train.fused_logprobs: %s, so the LM head's log-softmax runs eager "
                    "(slower, same values)", missing)
        return logits_logp
    # dynamic shapes: one graph for every chunk length; the temperature is a tensor, so a new
    # value is an input, not a recompile
    compiled = torch.compile(_logp, dynamic=True)

    def stats(logits: Tensor, targets: Tensor, temperature: float, cap: Optional[float],
              with_entropy: bool) -> tuple[Tensor, Tensor]:
        scale = torch.tensor(1.0 / temperature, dtype=torch.float32, device=logits.device)
        return compiled(logits, targets, scale, cap, with_entropy)
    return stats


def _missing_compiler(device_type: str) -> Optional[str]:
    """Why torch.compile cannot build kernels for `device_type` here (None: it can)."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    if device_type == "cpu":
        found = any(shutil.which(c) for c in ("g++", "clang++", "c++"))
        return None if found else "no C++ compiler (g++ or clang++) on PATH"
    return f"no compiled kernels for device {device_type!r}"
