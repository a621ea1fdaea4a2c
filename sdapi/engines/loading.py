"""Loading a Stable Diffusion pipeline from whatever `model.path` names: folder, hub id or single file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sdapi.core.model_sources import describe_source, is_local_path
from sdapi.errors import ModelLoadFailed
from sdapi.models.families import Family, ModelFamily, detect_family, from_unet_config

logger = logging.getLogger(__name__)


def route_library_logs() -> None:
    """diffusers and transformers log through handlers of their own and draw progress bars while loading: send their
    records to sdapi's handler instead (one format, JSON included) and drop the bars, which are no log lines."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.set_verbosity_warning()
        library.disable_progress_bar()


def load_pipeline(path: str, dtype: torch.dtype, single_file_config: str | None = None) -> Any:
    """The pipeline of the model at `path` (SD 1.x/2.x: StableDiffusionPipeline; SDXL base:
    StableDiffusionXLPipeline; an inpainting checkpoint: their inpainting pipelines) in `dtype` on the CPU; raise
    ModelLoadFailed with what is wrong or not served."""
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    route_library_logs()
    kind = describe_source(path)
    if kind == "single-file" and not Path(path).is_file():
        raise ModelLoadFailed(f"模型文件不存在：{path}")
    if kind == "folder" and not (Path(path) / "model_index.json").is_file():
        raise ModelLoadFailed(f"模型目录缺少 model_index.json，不是 diffusers 格式：{path}")
    if kind == "hub" and is_local_path(path):
        raise ModelLoadFailed(f"模型路径不存在：{path}")
    detected = detect_family(path)  # refuses SD3, Flux, refiners before loading anything
    sdxl = detected.family is Family.SDXL
    if detected.inpainting:
        pipeline_class = StableDiffusionXLInpaintPipeline if sdxl else StableDiffusionInpaintPipeline
    else:
        pipeline_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    options: dict[str, Any] = {"torch_dtype": dtype}
    if not sdxl:
        options |= {"safety_checker": None, "requires_safety_checker": False}
    else:
        options["add_watermarker"] = False
    try:
        if kind == "single-file":
            if single_file_config:
                options["config"] = single_file_config
            pipeline = pipeline_class.from_single_file(path, **options)
        else:
            pipeline = pipeline_class.from_pretrained(path, **options)
    except ModelLoadFailed:
        raise
    except Exception as error:  # diffusers raises OSError, ValueError, EnvironmentError, hub errors...
        logger.exception("loading model %s failed", path)
        raise ModelLoadFailed(f"模型加载失败（{kind}：{path}）：{type(error).__name__}: {error}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def loaded_family(pipeline: Any) -> ModelFamily:
    """The family of a loaded pipeline, read from its own modules (a single file's SD 2.x prediction type and
    native size are only known here)."""
    return from_unet_config(
        pipeline.unet.config,
        sdxl=getattr(pipeline, "text_encoder_2", None) is not None,
        prediction=str(pipeline.scheduler.config.get("prediction_type")),
    )
