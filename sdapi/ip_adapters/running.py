"""Applying IP-Adapters to a torch pipeline for one run, with diffusers' own loader.

diffusers puts an IP-Adapter into the UNet's attention processors, shared by every pipeline of the model: it is
loaded for the run and unloaded after it (the original processors back), so the next request runs as if it had never
been there. The image encoders stay loaded between runs (they are the big part), one per encoder folder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.params import IpAdapterSpec
from sdapi.errors import ErrorCode, GenerationFailed
from sdapi.ip_adapters.library import ENCODER_FOLDER

IpAdapterFiles = Callable[[str, str], Path]


class IpAdapters:
    def __init__(self, path_for: IpAdapterFiles, device: str, dtype: Any) -> None:
        self._path_for = path_for
        self._device = device
        self._dtype = dtype
        self._encoders: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def _encoder(self, folder: Path) -> Any:
        with self._lock:
            if folder in self._encoders:
                return self._encoders[folder]
        from transformers import CLIPVisionModelWithProjection

        with MODULES_BUILT_ONE_AT_A_TIME:
            encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder), torch_dtype=self._dtype)
        encoder.to(self._device)
        with self._lock:
            self._encoders = {folder: encoder}  # one kept: a run uses one, and they are large
        return encoder

    @contextmanager
    def applied(self, pipeline: Any, specs: Sequence[IpAdapterSpec]) -> Iterator[None]:
        """`pipeline` (and every pipeline made from it meanwhile) with these adapters at their weights."""
        from transformers import CLIPImageProcessor

        paths = [self._path_for(spec.model, spec.sha256) for spec in specs]
        folders = {path.parent for path in paths}
        if len(folders) > 1:
            names = ", ".join(spec.model for spec in specs)
            raise GenerationFailed(
                f"IP-Adapter {names} 使用不同的图像编码器（{ENCODER_FOLDER}）：一次请求只能用同一个编码器的 IP-Adapter",
                ErrorCode.INVALID_INPUT,
            )
        encoder = self._encoder(next(iter(folders)) / ENCODER_FOLDER)
        side = int(encoder.config.image_size)
        pipeline.register_modules(
            image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=side, crop_size=side)
        )
        try:
            with MODULES_BUILT_ONE_AT_A_TIME:  # builds the image projection and the adapters' attention layers
                pipeline.load_ip_adapter(
                    [str(path.parent) for path in paths],
                    subfolder=[""] * len(paths),
                    weight_name=[path.name for path in paths],
                    image_encoder_folder=None,  # registered above, kept between runs
                )
            pipeline.set_ip_adapter_scale([spec.weight for spec in specs])
            yield
        finally:
            pipeline.unload_ip_adapter()
            pipeline.register_modules(feature_extractor=None)
