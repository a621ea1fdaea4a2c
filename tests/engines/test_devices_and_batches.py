"""The dtype `auto` picks for a device, and how a request's images are split into batches."""

from __future__ import annotations

from pathlib import Path

import torch

from sdapi.engines.devices import choose_dtype, cpu_has_native_bf16
from sdapi.engines.primitives import chunk


def test_auto_dtype(tmp_path: Path):
    assert choose_dtype("auto", "cuda") == torch.float16
    assert choose_dtype("auto", "cpu", native_bf16=True) == torch.bfloat16
    assert choose_dtype("auto", "cpu", native_bf16=False) == torch.float32
    assert choose_dtype("float32", "cuda") == torch.float32
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_has_native_bf16(cpuinfo)
    # AVX-512 BF16 without AMX measured slower than fp32: auto stays fp32 there.
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_chunk():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([7], 4) == [[7]]
