"""A VAE of vae.dir in a run: loaded once (least recently used out past vae.cache_size), placed on the engine's
device in its dtype, and swapped into every pipeline of the model for the run alone; the model's own is back after
it, whatever happened. A single file (diffusers' tensor names) is read into an AutoencoderKL of the model's own VAE
config; a folder carries its own config. The model's scaling factor stays the pipelines' unless the folder's config
says its own (an SDXL VAE's 0.13025)."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.request import VaeSpec

# The folder or file of a resolved VAE, by (name, sha256): sdapi.vaes.library.VaeLibrary.path_for.
VaeFiles = Callable[[str, str], Path]


class Vaes:
    def __init__(self, path_for: VaeFiles, cache_size: int, device: str, dtype: Any) -> None:
        self._path_for = path_for
        self._cache_size = cache_size
        self._device, self._dtype = device, dtype
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self, spec: VaeSpec, model_vae: Any) -> Any:
        with self._lock:
            if spec.sha256 in self._loaded:
                self._loaded.move_to_end(spec.sha256)
                return self._loaded[spec.sha256]
        from diffusers import AutoencoderKL
        from safetensors.torch import load_file

        path = self._path_for(spec.name, spec.sha256)
        with MODULES_BUILT_ONE_AT_A_TIME:
            if path.is_dir():
                vae = AutoencoderKL.from_pretrained(path)
            else:
                vae = AutoencoderKL.from_config(model_vae.config)
                vae.load_state_dict(load_file(path))
        vae = vae.to(self._device, self._dtype).eval()
        with self._lock:
            self._loaded[spec.sha256] = vae
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
        return vae

    @contextlib.contextmanager
    def applied(self, pipelines: list[Any], spec: VaeSpec | None) -> Iterator[None]:
        """While the block runs, `spec`'s VAE is every one of `pipelines`' (None: nothing changes)."""
        if spec is None:
            yield
            return
        own = pipelines[0].vae
        vae = self._load(spec, own)
        swapped = [pipeline for pipeline in pipelines if pipeline is not None and getattr(pipeline, "vae", None) is own]
        try:
            for pipeline in swapped:
                pipeline.vae = vae
            yield
        finally:
            for pipeline in swapped:
                pipeline.vae = own


@contextlib.contextmanager
def tiled_vae(pipeline: Any, tiled: bool) -> Iterator[None]:
    """While the block runs, `pipeline`'s VAE (every pipeline of the model shares it) decodes and encodes in tiles
    (diffusers' tiled VAE) when `tiled`; after it, as it was."""
    vae = pipeline.vae
    if not tiled or getattr(vae, "use_tiling", False):
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()
