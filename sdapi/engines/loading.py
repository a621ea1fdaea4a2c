"""Loading a model's pipeline from whatever `model.path` names: folder, hub id or single file (its family, from
sdapi.families, says which pipeline class and options)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sdapi.core.model_sources import describe_source, is_local_path
from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.engines.shared_encoders import SharedTextEncoders
from sdapi.errors import ModelLoadFailed
from sdapi.families.detection import detect_family

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


def load_pipeline(
    path: str,
    dtype: torch.dtype,
    single_file_config: str | None = None,
    optional_text_encoder: bool = True,
    shared: SharedTextEncoders | None = None,
) -> Any:
    """The pipeline of the model at `path` (its family's text-to-image pipeline, or its inpainting pipeline for an
    inpainting checkpoint) in `dtype` on the CPU, with or without its family's optional text encoder (SD 3.x's
    T5-XXL: `models[].text_encoder_3`), taking from `shared` the text encoders a model loaded before has (and
    offering it its own); raise ModelLoadFailed with what is wrong or not served."""
    import diffusers

    route_library_logs()
    kind = describe_source(path)
    if kind == "single-file" and not Path(path).is_file():
        raise ModelLoadFailed(f"模型文件不存在：{path}")
    if kind == "folder" and not (Path(path) / "model_index.json").is_file():
        raise ModelLoadFailed(f"模型目录缺少 model_index.json，不是 diffusers 格式：{path}")
    if kind == "hub" and is_local_path(path):
        raise ModelLoadFailed(f"模型路径不存在：{path}")
    detected = detect_family(path)  # refuses SD3, Flux, refiners before loading anything
    pipeline_class = getattr(diffusers, detected.pipeline_class)
    options: dict[str, Any] = {"torch_dtype": dtype, **detected.family.load_options}
    family = detected.family
    optional = family.optional_text_encoder
    if optional is not None and not optional_text_encoder:  # the encoder and its tokenizer left out
        options[optional] = None
        options[family.tokenizers[family.text_encoders.index(optional)]] = None
    if kind == "single-file" and not family.single_files:
        raise ModelLoadFailed(f"{family.label} 模型须为 diffusers 目录，不能是单文件：{path}")
    keys = shared.keys(Path(path), family, dtype) if shared is not None and kind == "folder" else {}
    if shared is not None and keys:
        reused = shared.loaded_for(keys)
        options |= {part: module for part, module in reused.items() if part not in options}
        if reused:
            logger.info("model %s shares its %s with a model loaded before", path, ", ".join(reused))
    if kind == "single-file" and single_file_config:
        options["config"] = single_file_config
    try:
        with MODULES_BUILT_ONE_AT_A_TIME:
            if kind == "single-file":
                pipeline = pipeline_class.from_single_file(path, **options)
            else:
                pipeline = pipeline_class.from_pretrained(path, **options)
    except ModelLoadFailed:
        raise
    except Exception as error:  # diffusers raises OSError, ValueError, EnvironmentError, hub errors...
        logger.exception("loading model %s failed", path)
        raise ModelLoadFailed(f"模型加载失败（{kind}：{path}）：{type(error).__name__}: {error}") from None
    pipeline.set_progress_bar_config(disable=True)
    if shared is not None and keys:
        shared.remember(keys, pipeline)
    return pipeline


def pipeline_from(pipeline: Any, class_name: str | None, auto_class: str) -> Any:
    """A pipeline of another kind sharing `pipeline`'s modules (diffusers' from_pipe: no second load, no memory):
    of the class `class_name`, or the one diffusers' AutoPipeline `auto_class` maps `pipeline` to."""
    import diffusers

    made = getattr(diffusers, class_name or auto_class).from_pipe(pipeline)
    made.set_progress_bar_config(disable=True)
    return made


def place(pipeline: Any, device: str, offload: str) -> None:
    """Put `pipeline` on `device`: all of it, or on a GPU with diffusers' CPU offload (`models[].offload`: model
    keeps each module on the GPU while it runs; sequential streams layer by layer). A CPU has nothing to offload."""
    if offload == "none" or not device.startswith("cuda"):
        pipeline.to(device)
    elif offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.enable_sequential_cpu_offload(device=device)
