"""What the service does to a client's picture outside any task, in the process that answers, off the event loop:
upscaling it (A1111's "extras" tab: a filter or a neural upscaler from upscalers.dir, to a scale or an exact
size; torch is imported only when a neural upscaler is asked for), and running a ControlNet preprocessor on it
(the detect endpoints)."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from PIL import Image, ImageOps

from sdapi.config import Config
from sdapi.core.request import PIXEL_UPSCALERS
from sdapi.errors import InvalidParameter
from sdapi.media.images import open_image
from sdapi.media.masks import mask_from_image
from sdapi.upscalers.library import UpscalerLibrary

_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


class Extras:
    def __init__(self, config: Config, library: UpscalerLibrary) -> None:
        self._config = config
        self._library = library
        self._neural: Any = None  # sdapi.upscalers.running.NeuralUpscalers, made on first use
        self._lock = threading.Lock()

    def _upscale_with(self, name: str, image: Image.Image) -> Image.Image:
        if name in PIXEL_UPSCALERS:
            return image
        with self._lock:
            if self._neural is None:
                # Chosen here, on first use: an API node imports torch only when a neural upscaler is asked for.
                from sdapi.engines.devices import choose_device
                from sdapi.upscalers.running import NeuralUpscalers

                self._neural = NeuralUpscalers(self._library.path_for, choose_device(self._config.model.device))
            neural = self._neural
        upscaled: Image.Image = neural.upscale(name, image)
        return upscaled

    def _upscale(
        self,
        raw: bytes,
        field: str,
        upscaler: str,
        second: str | None,
        second_visibility: float,
        scale: float | None,
        size: tuple[int, int] | None,
        crop: bool,
    ) -> bytes:
        limit = self._config.limits.max_init_image_pixels
        with open_image(raw, limit, field) as opened:
            image = opened.convert("RGB")
        if size is None:
            assert scale is not None
            size = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
        if size[0] * size[1] > limit:
            raise InvalidParameter(
                field, f"放大后 {size[0]}x{size[1]} 超过上限 {limit} 像素（limits.max_init_image_pixels）"
            )
        if upscaler not in PIXEL_UPSCALERS and upscaler not in self._library.usable():
            known = ", ".join([*PIXEL_UPSCALERS, *self._library.usable()])
            raise InvalidParameter("upscaler_1", f"放大方法不可用：{upscaler!r}。可选：{known}")

        def resized(name: str) -> Image.Image:
            upscaled = self._upscale_with(name, image)
            method = _FILTERS.get(name, Image.Resampling.LANCZOS)
            if crop:
                return ImageOps.fit(upscaled, size, method)
            return upscaled.resize(size, method)

        result = resized(upscaler)
        if second is not None and second_visibility > 0:
            result = Image.blend(result, resized(second), second_visibility)
        buffer = io.BytesIO()
        result.save(buffer, format="PNG")
        return buffer.getvalue()

    async def detect(
        self, raw: bytes, preprocessor: str, options: dict[str, Any], mask_raw: bytes | None = None
    ) -> bytes:
        """What ControlNet preprocessor `preprocessor` makes of the picture in `raw`, as PNG bytes (what a unit
        with it will follow); raise InvalidParameter for what the request checks would refuse."""
        return await asyncio.to_thread(self._detect, raw, preprocessor, options, mask_raw)

    def _detect(self, raw: bytes, preprocessor: str, options: dict[str, Any], mask_raw: bytes | None) -> bytes:
        from sdapi.controlnets.preprocess import check_preprocessor, run_preprocessor

        annotators = self._config.annotators_path
        checked = check_preprocessor(preprocessor, options, "preprocessor", mask_raw is not None, annotators)
        limit = self._config.limits.max_init_image_pixels
        with open_image(raw, limit, "image") as opened:
            image = opened.convert("RGB")
        mask = None
        if mask_raw is not None:
            with open_image(mask_raw, limit, "mask") as opened:
                mask = mask_from_image(opened)
        made = run_preprocessor(preprocessor, image, checked, mask, annotators)
        buffer = io.BytesIO()
        made.save(buffer, format="PNG")
        return buffer.getvalue()

    async def upscale(
        self,
        raw: bytes,
        field: str,
        upscaler: str,
        *,
        second: str | None = None,
        second_visibility: float = 0.0,
        scale: float | None = None,
        size: tuple[int, int] | None = None,
        crop: bool = False,
    ) -> bytes:
        """The picture in `raw` upscaled by `upscaler` (a PIXEL_UPSCALERS name or an installed neural upscaler) to
        `scale` times its size or to `size` (filling it and cropping the middle with `crop`), blended with a second
        upscaler's result at `second_visibility`, as PNG bytes; raise InvalidParameter naming `field`."""
        return await asyncio.to_thread(
            self._upscale, raw, field, upscaler, second, second_visibility, scale, size, crop
        )
