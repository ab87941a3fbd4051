"""The `auto` dtype choice: bfloat16 only where the hardware multiplies it natively."""

import pytest
import torch

from grpo_core.parallel import hardware


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512_vnni", False),
    ("fpu avx512f avx512_bf16", True),
    ("fpu amx_bf16 amx_tile", True),
])
def test_cpu_bf16_is_read_from_the_flags_line(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Xeon avx512_bf16 in a name\nflags\t\t: {flags}\n")
    assert hardware.cpu_has_native_bf16(str(info)) is native


def test_missing_cpuinfo_means_no_native_bf16(tmp_path):
    assert hardware.cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_auto_resolves_to_this_machines_fast_dtype_and_explicit_names_pass(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_dtype("auto") == "float32"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve_dtype("auto") == "bfloat16"
    assert hardware.resolve_dtype("float16") == "float16"
