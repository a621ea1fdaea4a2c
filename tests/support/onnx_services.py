"""An ONNX export of a model with one LoRA merged, served beside the same model on torch: what the ONNX parity tests
of every family compare."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export.exporter import LoraArgument, export_model
from tests.support.services import InProcessService, in_process


@contextlib.contextmanager
def onnx_beside_torch(
    tmp_path_factory: pytest.TempPathFactory, name: str, model: Path, lora: Path, weight: float, **config: Any
) -> Iterator[tuple[Path, InProcessService, InProcessService]]:
    """Export `model` with `lora` (in its LoRA folder) merged at `weight`, then yield the export, a service on it
    (engine auto, float32) and a torch-only service on `model`, both with `config` and the LoRA folder."""
    export = tmp_path_factory.mktemp(f"{name}-exports") / "onnx"
    export_model(str(model), export, [LoraArgument(lora, weight)], progress=None)
    common = {"loras": {"dir": str(lora.parent)}, **config}
    with (
        in_process(
            tmp_path_factory.mktemp(f"{name}-onnx"),
            model,
            model={"dtype": "float32", "onnx_path": str(export)},
            **common,
        ) as onnx,
        in_process(
            tmp_path_factory.mktemp(f"{name}-torch"),
            model,
            model={"dtype": "float32", "engine": "torch"},
            **common,
        ) as torch_service,
    ):
        yield export, onnx, torch_service
