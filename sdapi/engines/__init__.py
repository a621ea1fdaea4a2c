"""Engine: turns GenerationParams into images. torch_engine.py (diffusers) is the reference engine."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from sdapi.params import GenerationParams


class Engine(Protocol):
    """Makes images. `generate` runs on a worker thread, one call at a time per engine."""

    name: str

    @property
    def loaded(self) -> bool:
        """Whether load() finished and generate() can run."""

    def load(self) -> None:
        """Load the model; raise ModelLoadFailed."""

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Modules LoRA files may target (kohya name -> weight shape); empty before load()."""

    def describe(self) -> dict[str, str]:
        """Device, dtype and the like, for /health."""

    def generate(self, params: GenerationParams, init_image: Image.Image | None) -> list[Image.Image]:
        """The `params.num_images` images for one task; raise GenerationFailed."""
