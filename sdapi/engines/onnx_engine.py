"""The ONNX engine: an export from `python -m export`, run through ONNX Runtime via optimum's ORT pipelines.

Providers come from `onnx.providers`, filtered to what the installed runtime offers (TensorRT with an engine cache
under data_dir, CUDA with IO binding, CPU). The scheduler math and seed rules are diffusers' own, shared with the
torch engine (primitives.py and the recipes).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import threading
from pathlib import Path
from typing import Any

from sdapi.config import ModelConfig, OnnxConfig
from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.params import GenerationParams
from sdapi.engines import EngineDescription, Run, RunFacts, RunResult, facts_of, one_at_a_time
from sdapi.engines.failures import engine_errors
from sdapi.engines.inpainting import as_edit
from sdapi.engines.loading import route_library_logs
from sdapi.engines.plain import make_batch_images
from sdapi.engines.primitives import Pipelines
from sdapi.engines.recipes import make_images
from sdapi.engines.schedulers import check_scheduler
from sdapi.errors import ErrorCode, GenerationFailed, InvalidParameter, ModelLoadFailed
from sdapi.families import Family, family_named
from sdapi.loras.merging import adapter_targets, target_shapes
from sdapi.models.export_manifest import ExportManifest, read_manifest
from sdapi.models.onnx_capability import OnnxCapability, read_capability, refuse_what_no_export_serves
from sdapi.prompts.weighted_encoding import chunk_count, run_needs_weighting

logger = logging.getLogger(__name__)


_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ONNX_NO_LONG_PROMPTS = (
    "ONNX 导出的 UNet 只接受一个 77 token 的分块：超过 75 个 token 或带 BREAK 的提示词请使用 torch 引擎"
)


def cuda_provider_problem() -> str | None:
    """Why ONNX Runtime's CUDA provider cannot load in this process (the loader's own words, naming the missing
    library), or None when it loads.

    The CUDA and cuDNN libraries come from pip wheels (nvidia-*), which are not on the system's library path:
    onnxruntime.preload_dlls() loads them from site-packages first, so the provider finds them.
    """
    import onnxruntime

    with contextlib.suppress(Exception):  # older builds lack it; a failed preload shows in the load below
        onnxruntime.preload_dlls()
    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.is_file():
        return f"{library.name} is not part of this onnxruntime build (install onnxruntime-gpu)"
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return str(error)
    return None


def available_providers(wanted: list[str]) -> list[str]:
    """The configured providers this ONNX Runtime build offers and can load, in the configured order.

    A GPU provider whose libraries cannot be loaded is dropped with an error in the log that names the missing
    library, instead of ONNX Runtime falling back to the CPU silently.
    """
    import onnxruntime

    offered = set(onnxruntime.get_available_providers())
    chosen = [provider for provider in wanted if provider in offered]
    if any(provider in _GPU_PROVIDERS for provider in chosen) and (problem := cuda_provider_problem()):
        logger.error("ONNX Runtime's CUDA provider cannot load, running on the CPU: %s", problem)
        chosen = [provider for provider in chosen if provider not in _GPU_PROVIDERS]
    return chosen or ["CPUExecutionProvider"]


def gpu_index(device: str) -> int:
    """The GPU of model.device: N for cuda:N, else the first."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


def provider_options(
    providers: list[str], tensorrt_cache: Path, fp16: bool, device_id: int = 0
) -> list[dict[str, Any]]:
    """Per-provider options: the GPU (model.device cuda:N), and TensorRT keeps its built engines on disk, so a
    restart does not rebuild them."""
    options: list[dict[str, Any]] = []
    for provider in providers:
        if provider == "CUDAExecutionProvider":
            options.append({"device_id": device_id})
        elif provider == "TensorrtExecutionProvider":
            options.append(
                {
                    "device_id": device_id,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(tensorrt_cache),
                    "trt_timing_cache_enable": True,
                    "trt_fp16_enable": fp16,
                }
            )
        else:
            options.append({})
    return options


def shapes_from_configs(folder: Path, family: Family) -> dict[str, tuple[int, ...]]:
    """LoRA target shapes of the exported model, from its configs alone (no weights are allocated)."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    denoiser_config = json.loads((folder / family.denoiser / "config.json").read_text(encoding="utf-8"))
    denoiser_class = getattr(diffusers, str(denoiser_config["_class_name"]))
    with MODULES_BUILT_ONE_AT_A_TIME, init_empty_weights():
        modules = {family.denoiser: denoiser_class.from_config(denoiser_config)}
        for part, class_name in zip(family.text_encoders, family.text_encoder_classes, strict=True):
            if part in family.adapter_parts:
                model_class = getattr(transformers, class_name)
                modules[part] = model_class(model_class.config_class.from_pretrained(folder / part))
    return target_shapes(adapter_targets(family, modules))


class OnnxEngine:
    """Engine on an ONNX export. Serves only the LoRA set merged into the export."""

    name = "onnx"

    def __init__(self, model: ModelConfig, onnx: OnnxConfig, tensorrt_cache: Path) -> None:
        if model.onnx_path is None:
            raise ModelLoadFailed("model.onnx_path is not set")
        self.folder = Path(model.onnx_path)
        self._model = model
        self._onnx = onnx
        self._tensorrt_cache = tensorrt_cache
        self.providers: list[str] = []
        self.manifest: ExportManifest | None = None
        self.capability: OnnxCapability | None = None  # known once loaded
        self._text_to_image: Any = None
        self._image_to_image: Any = None
        self._inpaint: Any = None
        self._scheduler_config: Any = None
        self._native_size = (512, 512)
        self._family: Family | None = None  # known once loaded
        self.inpainting = False  # an inpainting checkpoint's export (9-channel UNet): every request is a repaint
        self._shapes: dict[str, tuple[int, ...]] = {}
        # Image sides the exported UNet can take: its upsamplers double fixed sizes, so the latent must divide by
        # 2 per downsampling block (torch's UNet adapts to odd sizes; the traced graph cannot).
        self.side_multiple = 64
        self._loaded = threading.Event()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def load(self) -> None:
        import onnxruntime
        from optimum import onnxruntime as ort

        route_library_logs()
        manifest = read_manifest(self.folder)
        family = family_named(manifest.family)
        # FLUX.1 has a text-to-image pipeline alone (the capability refuses the rest: auto runs it on torch).
        text_to_image, image_to_image, inpaint = (getattr(ort, n) if n else None for n in family.onnx_pipelines)
        assert text_to_image is not None  # the exporter writes no export of a family without one
        self.providers = available_providers(self._onnx.providers)
        fp16 = manifest.precision == "fp16"
        self._tensorrt_cache.mkdir(parents=True, exist_ok=True)
        session_options = onnxruntime.SessionOptions()
        session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        on_gpu = self.providers[0] != "CPUExecutionProvider"
        try:
            pipeline = text_to_image.from_pretrained(
                self.folder,
                providers=self.providers,
                provider_options=provider_options(
                    self.providers, self._tensorrt_cache, fp16, gpu_index(self._model.device)
                ),
                session_options=session_options,
                # IO binding keeps tensors on the GPU between the ORT session and torch's scheduler math.
                use_io_binding=on_gpu,
            )
            # The same sessions serve image-to-image: no second load.
            denoiser = getattr(pipeline, family.denoiser)
            sessions = {
                f"{family.denoiser}_session": denoiser.session,
                "vae_decoder_session": pipeline.vae_decoder.session,
                "vae_encoder_session": pipeline.vae_encoder.session,
                "scheduler": pipeline.scheduler,
                "use_io_binding": on_gpu,
            }
            for encoder, tokenizer in zip(family.text_encoders, family.tokenizers, strict=True):
                sessions[f"{encoder}_session"] = getattr(pipeline, encoder).session
                sessions[tokenizer] = getattr(pipeline, tokenizer)
            self._image_to_image = image_to_image(**sessions) if image_to_image is not None else None
            # Inpainting too: latent masking on a 4-channel UNet, the mask in view on an inpainting export's.
            self._inpaint = inpaint(**sessions) if inpaint is not None else None
        except Exception as error:  # onnxruntime and optimum raise many types for a bad or mismatched export
            logger.exception("loading ONNX export %s failed", self.folder)
            raise ModelLoadFailed(f"ONNX 模型加载失败（{self.folder}）：{type(error).__name__}: {error}") from None
        for part in (pipeline, self._image_to_image, self._inpaint):
            if part is not None:
                part.set_progress_bar_config(disable=True)
        self._text_to_image = pipeline
        # What the denoiser's session really runs on (ONNX Runtime may have set a provider aside), for /health.
        self.providers = list(denoiser.session.get_providers())
        self._scheduler_config = pipeline.scheduler.config
        self._shapes = shapes_from_configs(self.folder, family)
        self._family = family
        sample_size = denoiser.config.get("sample_size")
        side = int(sample_size) * pipeline.vae_scale_factor if isinstance(sample_size, int) else family.native_side
        self._native_size = (side, side)
        self.inpainting = denoiser.config.get("in_channels") == 9  # a 9-channel UNet
        self.manifest = manifest
        self.capability = read_capability(self.folder, manifest)
        self.side_multiple = self.capability.side_multiple
        self._loaded.set()
        logger.info("ONNX engine ready: %s (%s) on %s", self.folder, manifest.precision, ", ".join(self.providers))

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def describe(self) -> EngineDescription:
        return EngineDescription(
            device=self._device(),
            dtype=self._dtype(),
            providers=tuple(self.providers),
            scheduler="" if self._scheduler_config is None else str(self._scheduler_config["_class_name"]),
        )

    def _device(self) -> str:
        on_cpu = not self.providers or self.providers[0] == "CPUExecutionProvider"
        return "cpu" if on_cpu else self._model.device if ":" in self._model.device else "cuda"

    def _dtype(self) -> str:
        precision = self.manifest.precision if self.manifest else ""
        return {"fp16": "float16", "fp32": "float32"}.get(precision, "")

    def _facts(self, params: GenerationParams) -> RunFacts:
        """What a run of `params` on this export ran (its LoRAs are the export's merged set: check() held it)."""
        return facts_of(
            params,
            engine=self.name,
            scheduler_config=self._scheduler_config,
            dtype=self._dtype(),
            device=self._device(),
            providers=tuple(self.providers),
            family=self._family.label if self._family is not None else "",
        )

    def check(self, params: GenerationParams) -> None:
        """What the export can serve (sdapi.models.onnx_capability): before load() only what no export serves is
        refused (nothing else is known of it yet)."""
        if self.capability is None:
            refuse_what_no_export_serves(params)
            return
        self.capability.check(params)
        if self._scheduler_config is not None:
            check_scheduler(params, self._scheduler_config)
        pipeline = self._text_to_image
        if pipeline is not None and run_needs_weighting(pipeline, params) and chunk_count(pipeline, params) > 1:
            # The traced UNet takes one 77-token chunk: weights fit in it, a longer prompt does not (a router sends
            # such runs to torch).
            raise InvalidParameter("prompt", ONNX_NO_LONG_PROMPTS)

    def _pipelines(self) -> Pipelines:
        return Pipelines(
            text_to_image=self._text_to_image,
            image_to_image=self._image_to_image,
            inpaint=self._inpaint,
            scheduler_config=self._scheduler_config,
            batch_size=self._model.batch_size,
            native_size=self._native_size,
            side_multiple=self.side_multiple,  # the traced UNet's: a masked-only crop renders at such sides
        )

    def generate(self, run: Run) -> RunResult:
        if not self.loaded:
            raise GenerationFailed("ONNX 模型尚未加载完成", ErrorCode.MODEL_NOT_LOADED)
        params, init_image = run.params, run.init_image
        try:
            self.check(params)
        except InvalidParameter as refused:
            raise GenerationFailed(refused.message, ErrorCode.INVALID_INPUT) from None
        if self.inpainting and params.inpaint is None:
            params, init_image = as_edit(params, init_image)
        with engine_errors(params, describe=lambda error: f"ONNX 推理失败：{type(error).__name__}"):
            images = make_images(self._pipelines(), params, init_image, run.on_step)
        return RunResult(images, self._facts(run.params))

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        first = runs[0].params
        if self.inpainting or not self.loaded:  # an inpainting export's runs are repaints: one task at a time
            return one_at_a_time(self, runs)
        try:
            self.check(first)  # the runs share everything check looks at (their batch key)
        except InvalidParameter as refused:
            raise GenerationFailed(refused.message, ErrorCode.INVALID_INPUT) from None
        with engine_errors(first, describe=lambda error: f"ONNX 推理失败：{type(error).__name__}"):
            batches = make_batch_images(self._pipelines(), runs)
        return [
            None if images is None else RunResult(images, self._facts(run.params))
            for run, images in zip(runs, batches, strict=True)
        ]
