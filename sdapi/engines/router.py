"""Routing each request to the ONNX engine or the torch engine (model.engine auto | onnx).

The card's "torch fallback for schedulers and LoRA swaps": a request whose LoRA set differs from the export's merged
set runs on torch, loaded lazily the first time it is needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from PIL import Image

from sdapi.engines import Engine, Generated
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.errors import GenerationFailed, InvalidParameter
from sdapi.params import GenerationParams

logger = logging.getLogger(__name__)


class EngineRouter:
    """An Engine that sends each request to ONNX when it can and should, else to torch."""

    def __init__(
        self,
        onnx: OnnxEngine,
        make_torch: Callable[[], Engine],
        *,
        only_onnx: bool,
        prefer_onnx: bool,
        fallback_to_torch: bool,
    ) -> None:
        self.onnx = onnx
        self._make_torch = make_torch
        self._torch: Engine | None = None
        self._torch_lock = threading.Lock()
        self._only_onnx = only_onnx
        self._prefer_onnx = prefer_onnx
        self._fallback = fallback_to_torch and not only_onnx
        self.name = "onnx" if only_onnx else "auto"

    @property
    def loaded(self) -> bool:
        return self.onnx.loaded

    def load(self) -> None:
        self.onnx.load()

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.onnx.adapter_shapes()

    def describe(self) -> dict[str, str]:
        return self.onnx.describe()

    def routes_to_onnx(self, params: GenerationParams) -> bool:
        return self._only_onnx or (self._prefer_onnx and self.onnx.serves(params))

    def check(self, params: GenerationParams) -> None:
        if not (self._only_onnx and self.onnx.loaded):
            return
        if not self.onnx.serves_loras(params):
            manifest = self.onnx.manifest
            merged = ", ".join(f"{lora.name}:{lora.weight:g}" for lora in manifest.loras) if manifest else ""
            raise InvalidParameter(
                "loras",
                f"model.engine 为 onnx，只能使用导出时合并的 LoRA 组合（{merged or '无'}）；"
                "其他组合需要 model.engine: auto 或 torch",
            )
        if not self.onnx.serves_size(params):
            raise InvalidParameter(
                "width",
                f"width/height 无效：{params.width}x{params.height}。ONNX 引擎要求宽高为 "
                f"{self.onnx.side_multiple} 的倍数（其他尺寸需要 model.engine: auto 或 torch）",
            )

    def _torch_engine(self) -> Engine:
        with self._torch_lock:
            if self._torch is None:
                engine = self._make_torch()
                logger.info("loading the torch engine for a request the ONNX export cannot serve")
                engine.load()
                self._torch = engine
            return self._torch

    def generate(self, params: GenerationParams, init_image: Image.Image | None) -> Generated:
        if not self.routes_to_onnx(params):
            return self._torch_engine().generate(params, init_image)
        try:
            return self.onnx.generate(params, init_image)
        except GenerationFailed as error:
            if not self._fallback:
                raise
            logger.warning("ONNX run failed (%s); running the task on torch", error.message)
            return self._torch_engine().generate(params, init_image)
