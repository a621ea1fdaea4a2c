"""Which Stable Diffusion family a model is (SD 1.x, SD 2.x, SDXL base), detected from what is on disk without
loading it: a diffusers folder's model_index.json and component configs, or a single file's tensor names. What
cannot be served (SD3, Flux, a refiner, an inpainting checkpoint...) is refused here, naming what was found."""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import msgspec

from sdapi.core.model_sources import describe_source
from sdapi.errors import ModelLoadFailed


class Family(enum.StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        return {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[self.value]


class ModelFamily(msgspec.Struct, frozen=True):
    family: Family
    # The size the model was trained at (width, height): the default when neither request nor config gives one.
    native_size: tuple[int, int]
    # epsilon or v_prediction (SD 2.x 768 models); None when only loading the model can tell (a single file).
    prediction: str | None = None
    # An inpainting checkpoint: its UNet takes the mask and the masked image's latents too (9 input channels).
    inpainting: bool = False


SERVED = (
    "SD 1.x、SD 2.x、SDXL base 及其局部重绘（inpainting）模型"
    "（StableDiffusionPipeline、StableDiffusionXLPipeline、StableDiffusionInpaintPipeline、"
    "StableDiffusionXLInpaintPipeline）"
)
_NATIVE_SIDE = {Family.SD1: 512, Family.SD2: 768, Family.SDXL: 1024}
_PIPELINES = {
    "StableDiffusionPipeline": None,  # SD 1.x or 2.x: the UNet tells
    "StableDiffusionImg2ImgPipeline": None,
    "StableDiffusionXLPipeline": Family.SDXL,
    "StableDiffusionInpaintPipeline": None,
    "StableDiffusionXLInpaintPipeline": Family.SDXL,
}
# UNet input channels: 4 latents; an inpainting UNet adds the mask (1) and the masked image's latents (4).
_UNET_INPUTS = (4, 9)


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


def detect_folder(folder: Path) -> ModelFamily:
    """The family of a diffusers folder, from model_index.json and the UNet and scheduler configs."""
    index = _read_json(folder / "model_index.json")
    pipeline = str(index.get("_class_name", "?"))
    if pipeline not in _PIPELINES:
        raise _refused(f"{pipeline}（{folder}）")
    unet = _read_json(folder / "unet" / "config.json") if (folder / "unet" / "config.json").is_file() else {}
    if unet.get("in_channels", 4) not in _UNET_INPUTS:
        raise _refused(f"UNet 输入 {unet.get('in_channels')} 通道（{folder}）")
    if index.get("text_encoder") in (None, [None, None]) and pipeline == "StableDiffusionXLPipeline":
        raise _refused(f"SDXL refiner（只有 text_encoder_2）（{folder}）")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    prediction = str(_read_json(scheduler_path).get("prediction_type", "epsilon")) if scheduler_path.is_file() else None
    return from_unet_config(unet, sdxl=_PIPELINES[pipeline] is Family.SDXL, prediction=prediction)


def from_unet_config(unet: Mapping[str, object], sdxl: bool, prediction: str | None) -> ModelFamily:
    """The family of an SD pipeline from its UNet's config: SDXL by its pipeline; else SD 2.x when the UNet projects
    attention linearly or cross-attends 1024-wide text (OpenCLIP), SD 1.x otherwise. The native side is the UNet's
    sample size times the VAE's 8."""
    if sdxl:
        family = Family.SDXL
    elif unet.get("use_linear_projection") or unet.get("cross_attention_dim") == 1024:
        family = Family.SD2
    else:
        family = Family.SD1
    sample_size = unet.get("sample_size")
    side = int(sample_size) * 8 if isinstance(sample_size, int) else _NATIVE_SIDE[family]
    inpainting = unet.get("in_channels", 4) == 9
    return ModelFamily(family=family, native_size=(side, side), prediction=prediction, inpainting=inpainting)


def safetensors_keys(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header (the first bytes of the file; no tensor is read)."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def detect_single_file(path: Path) -> ModelFamily:
    """The family of a single-file checkpoint, from its tensor names (a .ckpt cannot be read without unpickling
    it: it is taken for SD 1.x, which loading confirms or refutes)."""
    if path.suffix.lower() != ".safetensors":
        return ModelFamily(family=Family.SD1, native_size=(512, 512))
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
        return ModelFamily(family=Family.SDXL, native_size=(1024, 1024), prediction="epsilon", inpainting=inpainting)
    if any(key.startswith("cond_stage_model.model.") for key in keys):  # OpenCLIP: SD 2.x (768-v most often)
        # SD 2 inpainting is a 512-pixel epsilon model; the 768-v base is the usual 2.x single file otherwise.
        side = 512 if inpainting else 768
        return ModelFamily(family=Family.SD2, native_size=(side, side), inpainting=inpainting)
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return ModelFamily(family=Family.SD1, native_size=(512, 512), prediction="epsilon", inpainting=inpainting)
    if any(
        key.startswith(("model.diffusion_model.joint_blocks.", "double_blocks.", "transformer_blocks.")) for key in keys
    ):
        raise _refused(f"SD3/Flux 类模型（{path.name}）")
    raise _refused(f"无法识别的检查点（{path.name}）")


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
        return ModelFamily(family=Family.SD1, native_size=(512, 512))
    return detect_folder(cached)
