"""Which engines a service runs, decided from the config: the one place that knows the prefer-ONNX policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sdapi.config import Config, ModelConfig
from sdapi.controlnets.library import ControlNetLibrary
from sdapi.controlnets.running import ControlNetFiles
from sdapi.core.request import LoraSpec
from sdapi.embeddings.library import EmbeddingLibrary
from sdapi.embeddings.loading import EmbeddingFiles
from sdapi.engines import Engine
from sdapi.engines.devices import Placement, choose_placement
from sdapi.engines.hires import NeuralUpscale
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.engines.pool import ModelPool
from sdapi.engines.router import EngineRouter
from sdapi.engines.torch_engine import TorchEngine
from sdapi.ip_adapters.library import IpAdapterLibrary
from sdapi.ip_adapters.running import IpAdapterFiles
from sdapi.loras.library import LoraLibrary
from sdapi.upscalers.library import UpscalerLibrary
from sdapi.vaes.library import VaeLibrary
from sdapi.vaes.running import VaeFiles

if TYPE_CHECKING:  # the registry sits above the engines: named for the type checker only
    from sdapi.addons import AddonRegistry


def prefers_onnx(placement: Placement) -> bool:
    """Whether `engine: auto` sends the requests an export can serve to ONNX Runtime rather than torch.

    Measured on one CPU only (docs/benchmarks.md; an AMD EPYC with AVX-512 BF16 and no AMX): ONNX Runtime fp32 took
    7.9 s per SD 1.5 UNet step, torch fp32 9.2 s and torch bf16 11.8 s. On AMX CPUs torch bf16 is reported about 3x
    fp32, so where `dtype: auto` picks bf16 (AMX only) torch is preferred. CUDA has not been measured yet: ONNX is
    preferred there on the design card's word until the GPU benchmarks decide.
    """
    return not placement.on_cpu_in_bf16


def build_engine(config: Config, addons: AddonRegistry) -> ModelPool:
    """The worker's engine: every configured model, each loaded when first needed (ModelPool), all reading the
    add-on libraries' files and sharing the neural upscalers."""
    from sdapi.upscalers.running import NeuralUpscalers

    lora_files = addons.of(LoraLibrary).path_for
    embedding_files = addons.of(EmbeddingLibrary).path_for
    controlnet_files = addons.of(ControlNetLibrary).path_for
    ip_adapter_files = addons.of(IpAdapterLibrary).path_for
    vae_files = addons.of(VaeLibrary).path_for
    placement = choose_placement(config.model.device, config.model.dtype)  # once, for every model and upscaler
    upscalers = NeuralUpscalers(addons.of(UpscalerLibrary).path_for, placement.device).upscale

    def make(name: str) -> Engine:
        return build_model_engine(
            config,
            config.model_config(name),
            placement,
            lora_files,
            embedding_files,
            upscalers,
            controlnet_files,
            ip_adapter_files,
            vae_files,
        )

    return ModelPool(config, make, placement.device)


def build_model_engine(
    config: Config,
    model: ModelConfig,
    placement: Placement,
    lora_files: Callable[[LoraSpec], Path],
    embedding_files: EmbeddingFiles | None = None,
    neural_upscale: NeuralUpscale | None = None,
    controlnet_files: ControlNetFiles | None = None,
    ip_adapter_files: IpAdapterFiles | None = None,
    vae_files: VaeFiles | None = None,
) -> Engine:
    """One model's engine: torch alone, or its ONNX export with torch behind it, as its engine and onnx_path say."""

    def make_torch() -> Engine:
        return TorchEngine(
            model,
            lora_files,
            config.loras.cache_size,
            embedding_files,
            neural_upscale,
            controlnet_files,
            config.controlnet.cache_size,
            ip_adapter_files,
            placement=placement,
            vae_files=vae_files,
            vae_cache_size=config.vae.cache_size,
            tiny_vae_dir=config.tiny_vae_path,
        )

    if model.engine == "torch" or model.onnx_path is None:
        return make_torch()
    onnx = OnnxEngine(model, config.onnx, config.tensorrt_cache_path)
    if model.engine == "onnx":
        return EngineRouter(onnx, None)
    return EngineRouter(
        onnx, make_torch, prefer=prefers_onnx(placement), fallback_on_failure=config.onnx.fallback_to_torch
    )
