"""The models this service serves, as requests and GET /api/v1/models see them: each configured model's name, its
family (detected from disk at start-up, where a model of a kind not served is refused), native size and engines,
and what its files say an engine can serve (its own scheduler, an ONNX-only export's LoRA set and sizes), so that
an API node refuses exactly what a worker would, without loading anything."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import msgspec

from sdapi.config import Config, ModelEntry
from sdapi.core.model_sources import describe_source
from sdapi.core.params import GenerationParams, model_run_defaults
from sdapi.core.speed import SpeedSupport
from sdapi.errors import InvalidParameter, ModelLoadFailed
from sdapi.families import SD1, TEXT_ENCODER_PARTS, ModelFamily
from sdapi.families.detection import UnsupportedModel, detect_family
from sdapi.loras.targets import disk_targets
from sdapi.models.configs import read_config
from sdapi.models.digests import model_weights_sha256
from sdapi.models.onnx_capability import ONNX_NO_SPEEDUPS, OnnxCapability, read_capability
from sdapi.vaes.tiny import tiny_decoder_folder

logger = logging.getLogger(__name__)

# Until a missing model appears (its worker then reports the load error), requests are sized as for SD 1.x.
_UNKNOWN = ModelFamily(family=SD1, native_size=(512, 512))


class ModelView(msgspec.Struct, frozen=True):
    """One entry of GET /api/v1/models."""

    name: str
    family: str  # its family's name (sdapi.families)
    native_size: tuple[int, int]
    source: str
    sha256: str | None
    engines: list[str]
    loaded: bool
    default: bool
    # The live workers that could not load it (worker id -> why); they leave its tasks to the others.
    load_errors: dict[str, str] = {}
    inpainting: bool = False  # an inpainting checkpoint (9-channel UNet)
    family_label: str = ""  # the family for people: "FLUX.1"
    guidance: str = "cfg"  # cfg | embedded | distilled (sdapi.families.base.GUIDANCE_KINDS)
    default_steps: int = 30  # what a request without num_inference_steps gets (its family's, or defaults:)
    default_guidance_scale: float = 7.5
    schedulers: list[str] = []  # the schedulers its requests may name
    # The speed levers its requests may pull (sdapi.core.speed): {vae_decoder: [full, tiny?], step_cache: [modes],
    # token_merging: bool}.
    speed_options: dict[str, object] = {}


class Capability(msgspec.Struct, frozen=True):
    """What a model's files say an engine can serve; None where the files do not tell (checked by the worker)."""

    # The class of the model's own scheduler (what runs when a request names none).
    own_scheduler: str | None = None
    # A model served by its ONNX export alone (engine: onnx): what the export can serve.
    onnx_only: OnnxCapability | None = None

    def check(self, params: GenerationParams) -> None:
        """Step 6 of the request checks: raise InvalidParameter for what the model's engine cannot serve (the
        export's own rules, sdapi.models.onnx_capability, as its engine applies them)."""
        if self.onnx_only is not None:
            self.onnx_only.check(params, hint="（其他组合或尺寸需要 model.engine: auto 或 torch，当前为 onnx）")


def _own_scheduler(folder: Path) -> str | None:
    config = read_config(folder / "scheduler" / "scheduler_config.json")
    name = config.get("_class_name") if config else None
    return name if isinstance(name, str) else None


def _onnx_only(entry: ModelEntry) -> OnnxCapability | None:
    if entry.engine != "onnx" or entry.onnx_path is None:
        return None
    try:
        return read_capability(Path(entry.onnx_path))
    except ModelLoadFailed:
        return None  # the worker fails to load it and says why


def _capability(entry: ModelEntry) -> Capability:
    onnx_only = _onnx_only(entry)
    if onnx_only is not None and entry.onnx_path is not None:
        return Capability(own_scheduler=_own_scheduler(Path(entry.onnx_path)), onnx_only=onnx_only)
    folder = Path(entry.path) if describe_source(entry.path) == "folder" else None
    return Capability(own_scheduler=_own_scheduler(folder) if folder else None)


def _unet_config(source: str) -> dict[str, object] | None:
    """A folder model's unet/config.json, or None (a single file, a hub id, a transformer model)."""
    return read_config(Path(source) / "unet" / "config.json") if describe_source(source) == "folder" else None


def _unet_text_width(unet: dict[str, object] | None) -> int | None:
    width = unet.get("cross_attention_dim") if unet else None
    return width if isinstance(width, int) else None


def _unet_levels(unet: dict[str, object] | None) -> int | None:
    """How many levels the UNet has (its down blocks), or None."""
    blocks = unet.get("down_block_types") if unet else None
    return len(blocks) if isinstance(blocks, list) else None


def _text_widths(source: str) -> tuple[int, ...] | None:
    if describe_source(source) != "folder":
        return None
    widths = []
    for part in TEXT_ENCODER_PARTS:
        config = read_config(Path(source) / part / "config.json")
        if config is None:
            continue
        width = config.get("hidden_size")
        if not isinstance(width, int):
            return None
        widths.append(width)
    return tuple(widths) or None


class ModelCatalog:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._entries = {entry.name: entry for entry in config.model_entries}
        self.default = config.default_model.name
        self._families = {name: self._detect(entry) for name, entry in self._entries.items()}
        self._capabilities = {name: _capability(entry) for name, entry in self._entries.items()}
        # Read once here, not per request: every submit naming an embedding, ControlNet or IP-Adapter asks.
        self._text_widths = {name: _text_widths(entry.path) for name, entry in self._entries.items()}
        unets = {name: _unet_config(entry.path) for name, entry in self._entries.items()}
        self._unet_text_widths = {name: _unet_text_width(unet) for name, unet in unets.items()}
        self._unet_levels = {name: _unet_levels(unet) for name, unet in unets.items()}
        self._speed = {name: self._speed_support(entry) for name, entry in self._entries.items()}
        self._hashes: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def capability(self, name: str) -> Capability:
        """What model `name`'s files say its engine can serve (read at start-up)."""
        return self._capabilities[name]

    def speed(self, name: str) -> SpeedSupport:
        """The speed levers model `name` can run, from its family, its engine and its files (read at start-up)."""
        return self._speed[name]

    def _speed_support(self, entry: ModelEntry) -> SpeedSupport:
        family = self._families[entry.name].family
        if self._capabilities[entry.name].onnx_only is not None:
            return SpeedSupport(label=family.label, none_because=ONNX_NO_SPEEDUPS)
        tiny = tiny_decoder_folder(entry.path, family, self._config.tiny_vae_path) is not None
        levels = self._unet_levels[entry.name]
        return SpeedSupport(
            label=family.label,
            tiny_decoder=tiny,
            step_caches=family.step_caches,
            token_merging=family.token_merging,
            deepcache_branches=None if levels is None else 3 * levels,
        )

    def lora_targets(self, name: str) -> dict[str, tuple[int, ...]] | None:
        """The modules LoRA files may target in model `name`, from its files (None: not readable this way). Reads
        safetensors headers: call it off the event loop."""
        source = self._entries[name].path
        return disk_targets(Path(source)) if describe_source(source) == "folder" else None

    def unet_text_width(self, name: str) -> int | None:
        """The text width model `name`'s UNet attends to (its cross_attention_dim: what a ControlNet must share),
        read from its folder at start-up; None when its files do not say."""
        return self._unet_text_widths[name]

    def text_widths(self, name: str) -> tuple[int, ...] | None:
        """The widths of model `name`'s text encoders (what an embedding must match), read from its folder at
        start-up; None when its files do not say (a single file or hub id: the worker checks once loaded)."""
        return self._text_widths[name]

    @staticmethod
    def _detect(entry: ModelEntry) -> ModelFamily:
        try:
            detected = detect_family(entry.path)
        except UnsupportedModel:
            raise  # a model of a kind not served: the service does not start
        except ModelLoadFailed as error:
            logger.warning("model %s: %s", entry.path, error.message)
            return _UNKNOWN
        # The config's word on guidance goes over the files' (Z-Image base, SD 3.5 Large Turbo look alike on disk).
        return dataclasses.replace(detected, guidance=entry.guidance) if entry.guidance else detected

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def resolve(self, name: str | None) -> tuple[str, ModelFamily]:
        """The model a request names (None: the default) and its family; raise InvalidParameter for an unknown one."""
        chosen = name or self.default
        if chosen not in self._entries:
            raise InvalidParameter("model", f"模型不存在：{chosen!r}。可用模型：{', '.join(self._entries)}")
        return chosen, self._families[chosen]

    def default_steps(self, name: str | None) -> int:
        """The steps a request for the model `name` (None: the default) gets when it gives none."""
        family = self.resolve(name)[1].run_defaults
        return model_run_defaults(self._config.defaults, (family.steps, family.guidance_scale))[0]

    def sha256(self, name: str) -> str | None:
        """The hash of the model's weights (read once: seconds for a big model; call it off the event loop)."""
        with self._lock:
            if name in self._hashes:
                return self._hashes[name]
        digest = model_weights_sha256(self._entries[name].path)
        with self._lock:
            self._hashes[name] = digest
        return digest

    def views(self, loaded: set[str], failures: dict[str, dict[str, str]] | None = None) -> list[ModelView]:
        """Every model as GET /api/v1/models lists it; `loaded`: the names some live worker has in memory;
        `failures`: model -> {worker id: why it could not load it}."""
        views = []
        defaults = self._config.defaults
        for name, entry in self._entries.items():
            family = self._families[name]
            own = family.run_defaults
            steps, guidance = model_run_defaults(defaults, (own.steps, own.guidance_scale))
            engines = ["torch"] if entry.engine == "torch" or entry.onnx_path is None else ["onnx", "torch"]
            if entry.engine == "onnx":
                engines = ["onnx"]
            views.append(
                ModelView(
                    name=name,
                    family=family.family.name,
                    native_size=family.native_size,
                    source=entry.path,
                    sha256=self.sha256(name),
                    engines=engines,
                    loaded=name in loaded,
                    default=name == self.default,
                    load_errors=(failures or {}).get(name, {}),
                    inpainting=family.inpainting,
                    family_label=family.family.label,
                    guidance=family.guidance,
                    default_steps=steps,
                    default_guidance_scale=guidance,
                    schedulers=list(family.family.schedulers),
                    speed_options=self._speed[name].as_listing(),
                )
            )
        return views
