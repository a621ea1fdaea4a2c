"""Which family a model is, detected from what is on disk without loading it: a diffusers folder's model_index.json
and component configs, or a single file's tensor names. What cannot be served (SD3, Flux, a refiner...) is refused
here, naming what was found."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sdapi.core.model_sources import describe_source
from sdapi.errors import ModelLoadFailed
from sdapi.families import (
    FAMILIES,
    FLUX,
    SD1,
    SD2,
    SD3,
    SDXL,
    TRANSFORMER_FAMILIES,
    UNET_FAMILIES,
    family_of_pipeline_class,
    family_of_unet,
    guidance_of,
)
from sdapi.families.base import ModelFamily

SERVED = (
    "SD 1.x、SD 2.x、SDXL base 及其局部重绘（inpainting）模型、"
    + "、".join(family.label for family in TRANSFORMER_FAMILIES)
    + "（"
    + "、".join(dict.fromkeys(family.text_to_image for family in FAMILIES))
    + " 等）"
)
# UNet input channels: 4 latents; an inpainting UNet adds the mask (1) and the masked image's latents (4).
_UNET_INPUTS = (4, 9)
# The pipeline classes a diffusers folder may name (an image-to-image folder loads as text-to-image: same parts).
_PIPELINES = {name for family in UNET_FAMILIES for name in (family.text_to_image, family.inpainting)} | {
    "StableDiffusionImg2ImgPipeline"
}


class UnsupportedModel(ModelLoadFailed):
    """The model is there but of a kind this service does not serve (refused at start-up)."""


def _refused(found: str) -> UnsupportedModel:
    return UnsupportedModel(f"不支持的模型：{found}。本服务支持 {SERVED}")


def _read_json(path: Path) -> dict[str, object]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadFailed(f"无法读取 {path}：{error}") from None
    if not isinstance(loaded, dict):
        raise ModelLoadFailed(f"{path} 不是 JSON 对象")
    return loaded


def _transformer_folder(folder: Path, index: dict[str, object], pipeline: str) -> ModelFamily | None:
    """The family of a transformer family's folder (by its pipeline class), or None for another class."""
    family = family_of_pipeline_class(pipeline)
    if family is None:
        return None
    config_path = folder / family.denoiser / "config.json"
    transformer = _read_json(config_path) if config_path.is_file() else {}
    side = family.native_side
    return ModelFamily(
        family=family,
        native_size=(side, side),
        prediction="flow",
        inpainting=family.has_inpainting_checkpoints and pipeline == family.inpainting,
        guidance=guidance_of(family, transformer, index),
    )


def detect_folder(folder: Path) -> ModelFamily:
    """The family of a diffusers folder, from model_index.json and the UNet (or transformer) and scheduler
    configs."""
    index = _read_json(folder / "model_index.json")
    pipeline = str(index.get("_class_name", "?"))
    transformer_family = _transformer_folder(folder, index, pipeline)
    if transformer_family is not None:
        return transformer_family
    if pipeline not in _PIPELINES:
        raise _refused(f"{pipeline}（{folder}）")
    unet = _read_json(folder / "unet" / "config.json") if (folder / "unet" / "config.json").is_file() else {}
    if unet.get("in_channels", 4) not in _UNET_INPUTS:
        raise _refused(f"UNet 输入 {unet.get('in_channels')} 通道（{folder}）")
    pooled = pipeline in (SDXL.text_to_image, SDXL.inpainting)
    if pooled and index.get(SDXL.text_encoders[0]) in (None, [None, None]):
        raise _refused(f"SDXL refiner（只有 {SDXL.text_encoders[-1]}）（{folder}）")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    prediction = str(_read_json(scheduler_path).get("prediction_type", "epsilon")) if scheduler_path.is_file() else None
    family = family_of_unet(unet, pooled_text=pooled)
    sample_size = unet.get("sample_size")
    side = int(sample_size) * 8 if isinstance(sample_size, int) else family.native_side
    inpainting = unet.get("in_channels", 4) == 9
    return ModelFamily(family=family, native_size=(side, side), prediction=prediction, inpainting=inpainting)


def safetensors_keys(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header (the first bytes of the file; no tensor is read). Raise
    ValueError for a file that is not one: its first 8 bytes must give a header length that fits in the file (a
    garbage file's would ask for exabytes, and reading them fail with MemoryError)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        start = file.read(8)
        if len(start) < 8:
            raise ValueError("不是 safetensors 文件（太短）")
        (length,) = struct.unpack("<Q", start)
        if length > size - 8:
            raise ValueError("不是 safetensors 文件（头部长度超出文件）")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError("不是 safetensors 文件（头部不是 JSON 对象）")
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def detect_single_file(path: Path) -> ModelFamily:
    """The family of a single-file checkpoint, from its tensor names (a .ckpt cannot be read without unpickling
    it: it is taken for SD 1.x, which loading confirms or refutes)."""
    if path.suffix.lower() != ".safetensors":
        return ModelFamily(family=SD1, native_size=(512, 512))
    try:
        keys = safetensors_keys(path)
    except (OSError, ValueError, struct.error) as error:
        raise ModelLoadFailed(f"无法读取模型文件 {path}：{error}") from None
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight", [0, 4])
    channels = conv_in[1] if len(conv_in) > 1 else 4
    if channels not in _UNET_INPUTS:
        raise _refused(f"UNet 输入 {channels} 通道（{path.name}）")
    inpainting = channels == 9
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        if not any(key.startswith("conditioner.embedders.0.") for key in keys):
            raise _refused(f"SDXL refiner（{path.name}）")
        side = SDXL.native_side
        return ModelFamily(family=SDXL, native_size=(side, side), prediction="epsilon", inpainting=inpainting)
    if any(key.startswith("cond_stage_model.model.") for key in keys):  # OpenCLIP: SD 2.x (768-v most often)
        # SD 2 inpainting is a 512-pixel epsilon model; the 768-v base is the usual 2.x single file otherwise.
        side = 512 if inpainting else SD2.native_side
        return ModelFamily(family=SD2, native_size=(side, side), inpainting=inpainting)
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return ModelFamily(family=SD1, native_size=(512, 512), prediction="epsilon", inpainting=inpainting)
    side = SD3.native_side
    if any(key.startswith("model.diffusion_model.joint_blocks.") for key in keys):
        return ModelFamily(family=SD3, native_size=(side, side), prediction="flow")
    for prefix in ("", "model.diffusion_model."):  # BFL's own files, and ComfyUI's saves of them
        if any(key.startswith(prefix + "double_blocks.") for key in keys):
            guidance = "embedded" if any(key.startswith(prefix + "guidance_in.") for key in keys) else "distilled"
            return ModelFamily(family=FLUX, native_size=(side, side), prediction="flow", guidance=guidance)
    raise _refused(f"无法识别的检查点（{path.name}；FLUX.2 [klein] 与 Z-Image 须为 diffusers 目录）")


def detect_family(source: str) -> ModelFamily:
    """The family of `source` (a folder, a single file, or a hub id already in the local cache); a hub id that
    is not cached is taken for SD 1.x until its worker loads it. Raise ModelLoadFailed for what is not served."""
    kind = describe_source(source)
    if kind == "folder":
        return detect_folder(Path(source))
    if kind == "single-file":
        return detect_single_file(Path(source))
    from huggingface_hub import snapshot_download

    try:
        cached = Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.json"]))
    except Exception:  # not in the cache (or no hub access): the load decides later
        return ModelFamily(family=SD1, native_size=(512, 512))
    return detect_folder(cached)
