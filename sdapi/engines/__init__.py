"""Engine: turns GenerationParams into images. torch_engine.py (diffusers) is the reference engine; onnx_engine.py
runs an export through ONNX Runtime; router.py sends each request to one of them; factory.py decides, from the
config, which engines a service has; pool.py serves several models as the worker's one engine, single.py one
engine given as it is. Every engine turns its vendor's exceptions into sdapi errors (failures.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec
from PIL import Image

from sdapi.core.params import GenerationParams
from sdapi.core.tasks import CANCELLED_MESSAGE
from sdapi.errors import TaskCancelled


@dataclass(frozen=True)
class Generated:
    """The images of one task and the engine that made them ("torch" or "onnx")."""

    images: list[Image.Image]
    engine: str


@dataclass(frozen=True)
class Conditioning:
    """The pictures a run follows besides its init image, in the request's order: each ControlNet unit's
    (preprocessed, at the picture's size) and each IP-Adapter image prompt's."""

    controls: tuple[Image.Image, ...] = ()
    image_prompts: tuple[Image.Image, ...] = ()


NO_CONDITIONING = Conditioning()


@dataclass(frozen=True)
class BatchMember:
    """One task of a cross-request batch (sdapi.core.batching): its params, its init image (image-to-image), and
    its progress callback, which raises TaskCancelled once the task was cancelled: the task then leaves the batch."""

    params: GenerationParams
    init_image: Image.Image | None
    on_step: Callable[[int, int, int], None]


class EngineDescription(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine says of itself for /health and the node registry."""

    device: str = ""
    dtype: str = ""
    # ONNX Runtime's execution providers in use (ONNX only).
    providers: tuple[str, ...] = ()
    # The class of the model's own scheduler (what "default" means for this model).
    scheduler: str = ""
    # The models in memory now (a pool of several; a single engine names its own once loaded).
    models_loaded: tuple[str, ...] = ()


class Engine(Protocol):
    """Makes images. `generate` runs on the generation thread, one call at a time."""

    @property
    def name(self) -> str:
        """torch, onnx, auto (a router)...: for /health, metrics and the task's engine."""

    @property
    def loaded(self) -> bool:
        """Whether load() finished and generate() can run."""

    def load(self) -> None:
        """Load the model; raise ModelLoadFailed."""

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Modules LoRA files may target (kohya name -> weight shape); empty before load()."""

    def describe(self) -> EngineDescription:
        """Device, dtype, providers and the like, for /health."""

    def check(self, params: GenerationParams) -> None:
        """Raise InvalidParameter, naming the field and why, if this engine cannot serve `params`.

        Called at submit time (a 400 then) and by routers to choose an engine. An engine that is not loaded yet
        refuses only what it can decide without the model.
        """

    def generate(
        self,
        params: GenerationParams,
        init_image: Image.Image | None,
        on_step: Callable[[int, int, int], None] | None = None,
        conditioning: Conditioning = NO_CONDITIONING,
    ) -> Generated:
        """The `params.num_images` images for one task; raise GenerationFailed (never a vendor exception).

        `on_step(steps done, total steps, images done)` is called after every denoising step; what it raises
        (TaskCancelled) stops the run and comes out of generate unchanged."""

    def generate_batch(self, members: list[BatchMember]) -> list[Generated | None]:
        """The images of several tasks that share one batch key, as one denoising batch: each member's images are
        those its own generate() would make (its prompts, image k from its seed + k). A member whose on_step raises
        TaskCancelled has left: it hears of no later step, its entry is None, and the others run on undisturbed.
        When every member has left, TaskCancelled comes out."""


def one_at_a_time(engine: Engine, members: list[BatchMember]) -> list[Generated | None]:
    """generate_batch for runs that cannot share a pipeline call (an inpainting checkpoint's repaints): each member
    runs alone, in order; one cancelled is None and the rest still run."""
    results: list[Generated | None] = []
    for member in members:
        try:
            results.append(engine.generate(member.params, member.init_image, member.on_step))
        except TaskCancelled:
            results.append(None)
    if all(result is None for result in results):
        raise TaskCancelled(CANCELLED_MESSAGE)
    return results


class WorkerEngine(Engine, Protocol):
    """The engine a worker runs: one Engine that may serve several models (engines/pool.py), or one model alone
    (engines/single.py). Everything the worker asks of its engine is here."""

    @property
    def loads_on_demand(self) -> bool:
        """Whether a model that is not loaded can be loaded between tasks (prepare), so that its task may wait in
        the queue meanwhile."""

    def loaded_models(self) -> list[str]:
        """The names of the models in memory now."""

    def prepare(self, model: str) -> None:
        """Load `model` now if it is not loaded (on the generation thread, between tasks); raise ModelLoadFailed."""
