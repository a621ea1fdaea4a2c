"""Engine: a Run in (params, opened inputs, step callback), a RunResult out (images and the facts of what ran).
torch_engine.py (diffusers) is the reference engine; onnx_engine.py runs an export through ONNX Runtime; router.py
sends each request to one of them; factory.py decides, from the config, which engines a service has; pool.py serves
several models as the worker's one engine, single.py one engine given as it is. Both engines make their images
with the same recipes (recipes.py dispatching to plain.py, inpainting.py, hires.py, all built on primitives.py).
Every engine turns its vendor's exceptions into sdapi errors (failures.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from PIL import Image

from sdapi.core.params import GenerationParams
from sdapi.core.schedulers import scheduler_that_runs
from sdapi.core.tasks import CANCELLED_MESSAGE
from sdapi.errors import TaskCancelled

# Called after every denoising step with (steps done, total steps, images done) over the whole run. It may raise
# (sdapi.errors.TaskCancelled) to stop the run between two steps.
StepCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Conditioning:
    """The pictures a run follows besides its init image, in the request's order: each ControlNet unit's
    (preprocessed, at the picture's size) and each IP-Adapter image prompt's."""

    controls: tuple[Image.Image, ...] = ()
    image_prompts: tuple[Image.Image, ...] = ()


NO_CONDITIONING = Conditioning()


@dataclass(frozen=True)
class Run:
    """One task's run, as the engine takes it: its params, its opened inputs (the init image, RGBA with the mask as
    alpha for inpainting; the ControlNet and IP-Adapter pictures), and the step callback, which hears of every
    denoising step and raises TaskCancelled once the task was cancelled. In a cross-request batch each member is
    one Run."""

    params: GenerationParams
    init_image: Image.Image | None = None
    conditioning: Conditioning = NO_CONDITIONING
    on_step: StepCallback | None = None


class AppliedAddon(msgspec.Struct, frozen=True):
    """An add-on a run applied: its kind (loras, embeddings, controlnets, ip_adapters, vaes), name and sha256."""

    kind: str
    name: str
    sha256: str


class RunFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What actually ran, told by the engine that ran it (never asked of an engine afterwards): the image records,
    the task's engine and A1111's infotext and sampler come from here."""

    engine: str  # torch, onnx...: the engine that made the images (after any fallback)
    model: str = ""  # the served model's name (config `models:`); set by the engine that knows it
    scheduler: str = ""  # the scheduler class that ran: the request's, else the model's own
    scheduler_options: dict[str, object] = {}
    use_karras_sigmas: bool = False
    dtype: str = ""
    device: str = ""
    providers: tuple[str, ...] = ()  # ONNX Runtime's execution providers (ONNX only)
    addons: tuple[AppliedAddon, ...] = ()
    family: str = ""  # the model's family for people (sdapi.families: "FLUX.1"); "" where the engine did not say


@dataclass(frozen=True)
class RunResult:
    """The images of one run, in image order, and the facts of what made them."""

    images: list[Image.Image]
    facts: RunFacts


def for_model(result: RunResult, name: str) -> RunResult:
    """`result` naming the served model `name` (the pool and the single-model engine know the name; the engine of
    one model does not)."""
    return RunResult(result.images, msgspec.structs.replace(result.facts, model=name))


def facts_of(
    params: GenerationParams,
    *,
    engine: str,
    scheduler_config: Any,
    dtype: str,
    device: str,
    providers: tuple[str, ...] = (),
    family: str = "",
) -> RunFacts:
    """What a run of `params` ran on an engine: the scheduler class (the request's, else the model's own config's
    `_class_name`), its options, the add-ons pinned by sha256 (a weight of 0 is "without it": left out), and the
    engine's dtype, device and providers."""
    addons = [AppliedAddon("loras", spec.name, spec.sha256) for spec in params.loras]
    addons += [AppliedAddon("embeddings", spec.name, spec.sha256) for spec in params.embeddings]
    addons += [AppliedAddon("controlnets", unit.model, unit.sha256) for unit in params.controlnets if unit.weight > 0]
    addons += [AppliedAddon("ip_adapters", p.model, p.sha256) for p in params.ip_adapters if p.weight > 0]
    if params.vae is not None:
        addons.append(AppliedAddon("vaes", params.vae.name, params.vae.sha256))
    return RunFacts(
        engine=engine,
        scheduler=scheduler_that_runs(params.scheduler, str(scheduler_config["_class_name"])),
        scheduler_options=dict(params.scheduler_options),
        use_karras_sigmas=params.use_karras_sigmas,
        dtype=dtype,
        device=device,
        providers=providers,
        addons=tuple(addons),
        family=family,
    )


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

        Called by routers to choose an engine, and by an engine before it runs (admission at submit time asks the
        model catalog instead, which knows the model without loading it). An engine that is not loaded yet refuses
        only what it can decide without the model.
        """

    def generate(self, run: Run) -> RunResult:
        """The `run.params.num_images` images of one task, and what made them; raise GenerationFailed (never a
        vendor exception). What `run.on_step` raises (TaskCancelled) stops the run and comes out unchanged."""

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        """The images of several tasks that share one batch key, as one denoising batch: each run's images are
        those its own generate() would make (its prompts, image k from its seed + k). A run whose on_step raises
        TaskCancelled has left: it hears of no later step, its entry is None, and the others run on undisturbed.
        When every run has left, TaskCancelled comes out."""


def one_at_a_time(engine: Engine, runs: list[Run]) -> list[RunResult | None]:
    """generate_batch for runs that cannot share a pipeline call (an inpainting checkpoint's repaints): each run
    goes alone, in order; one cancelled is None and the rest still run."""
    results: list[RunResult | None] = []
    for run in runs:
        try:
            results.append(engine.generate(run))
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
