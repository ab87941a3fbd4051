"""What this machine computes fast: the answer behind every `auto` dtype setting.

bfloat16 is only fast where the hardware multiplies it natively: CUDA GPUs, and x86 CPUs with
AVX512-BF16 or AMX. Elsewhere PyTorch and vLLM emulate it, and emulated bfloat16 matmuls
and generation are slower than float32, so `auto` picks float32 there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises a bfloat16 matrix instruction (Linux /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags")
             for flag in line.partition(":")[2].split()}
    return bool(flags & BF16_CPU_FLAGS)


def fast_dtype() -> str:
    """The fastest of bfloat16 and float32 here: bfloat16 when it is native, else float32."""
    return "bfloat16" if torch.cuda.is_available() or cpu_has_native_bf16() else "float32"


def resolve_dtype(name: str) -> str:
    """A configured dtype name, with 'auto' replaced by `fast_dtype()`."""
    return fast_dtype() if name == "auto" else name


def autocast_enabled(mode: str, device: torch.device) -> bool:
    """Whether a `train.autocast` setting (auto | bfloat16 | float32) means bfloat16 autocast
    on `device`: always for bfloat16, for auto where bfloat16 is native."""
    native = device.type == "cuda" or cpu_has_native_bf16()
    return mode == "bfloat16" or (mode == "auto" and native)
