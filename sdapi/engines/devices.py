"""Choosing the device and dtype the models run in: once per process, at start-up (choose_placement), then handed
to every engine, the model pool and the neural upscalers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU feature flag (Linux /proc/cpuinfo) of the AMX bf16 tile unit. Only AMX makes bf16 pay off: measured on the
# SD 1.5 UNet, bf16 is about 3x faster than fp32 on Sapphire Rapids (AMX), but on a CPU with AVX-512 BF16 and no
# AMX it was slower (11.8 s vs 9.2 s per step, docs/benchmarks.md).
_FAST_BF16_FLAGS = {"amx_bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has AMX bf16, the only CPU bf16 path measured faster than fp32 for the UNet."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_FAST_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def choose_device(setting: str) -> str:
    """`auto` picks CUDA when a GPU is visible, else the CPU; `cuda:N` names one GPU (one worker per GPU)."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def choose_dtype(setting: str, device: str, native_bf16: bool | None = None) -> torch.dtype:
    """`auto`: fp16 on CUDA; bf16 on a CPU with AMX (about 3x fp32 for the SD 1.5 UNet); else fp32."""
    if setting != "auto":
        return DTYPES[setting]
    if device.startswith("cuda"):
        return torch.float16
    if cpu_has_native_bf16() if native_bf16 is None else native_bf16:
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Placement:
    """Where and in what precision this process runs its models."""

    device: str  # cpu, cuda, cuda:N
    dtype: torch.dtype

    @property
    def on_cpu_in_bf16(self) -> bool:
        return self.device == "cpu" and self.dtype == torch.bfloat16


def choose_placement(device: str, dtype: str) -> Placement:
    """The device and dtype the settings (`model.device`, `model.dtype`) mean on this machine."""
    chosen = choose_device(device)
    return Placement(chosen, choose_dtype(dtype, chosen))
