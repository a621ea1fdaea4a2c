"""What AUTOMATIC1111 clients read about the service: samplers, schedule types, models, LoRAs, scripts, and the
options (set in config.yaml, but for the live previews' and the images' format: sdapi.api.dialects.a1111.settings)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from sdapi.api.dialects.a1111.errors import a1111_errors
from sdapi.api.dialects.a1111.models import Checkpoint, served_checkpoints
from sdapi.api.dialects.a1111.settings import WRITABLE, options_of_caller, write_caller_options
from sdapi.api.dialects.a1111.translate import SAMPLER_ALIASES, SAMPLERS, SCHEDULE_TYPES, SD_UPSCALE
from sdapi.api.dialects.common import (
    config_of,
    service_of,
    status_of,
)
from sdapi.errors import (
    InvalidParameter,
)


@get("/samplers", summary="AUTOMATIC1111: 采样器列表", responses=a1111_errors())
async def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": list(SAMPLER_ALIASES.get(name, ())), "options": {}} for name in SAMPLERS]


@get("/schedulers", summary="AUTOMATIC1111: 调度类型（Schedule type）列表", responses=a1111_errors())
async def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": name, "label": name.capitalize(), "aliases": None, "default_rho": 7.0 if karras else -1.0}
        for name, karras in SCHEDULE_TYPES.items()
    ]


@get("/sd-models", summary="AUTOMATIC1111: 模型列表（默认模型在前，附哈希）", responses=a1111_errors(503))
async def sd_models(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [
        {
            "title": model.title,
            "model_name": model.name,
            "hash": model.sha256[:10] if model.sha256 else None,
            "sha256": model.sha256,
            "filename": model.filename,
            "config": None,
        }
        for model in await served_checkpoints(request)
    ]


@get("/loras", summary="AUTOMATIC1111: LoRA 列表（可在提示词中以 <lora:名称:权重> 使用）", responses=a1111_errors(503))
async def loras(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [
        {"name": entry.name, "alias": entry.name, "path": entry.name, "metadata": {"type": entry.type}}
        for entry in status_of(request).listed("loras")
        if entry.error is None and entry.fits is not False
    ]


@get(
    "/embeddings",
    summary="AUTOMATIC1111: 嵌入（textual inversion）列表：loaded 可用，skipped 不适配当前模型或无法读取",
    responses=a1111_errors(503),
)
async def embeddings(request: Request[Any, Any, Any]) -> dict[str, dict[str, Any]]:
    listing: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
    for entry in status_of(request).listed("embeddings"):
        usable = entry.error is None and entry.fits is not False
        listing["loaded" if usable else "skipped"][entry.name] = {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": entry.widths[0] if entry.widths else 0,
            "vectors": entry.vectors,
        }
    return listing


@get("/options", summary="AUTOMATIC1111: 读取设置（当前模型、实时预览等）", responses=a1111_errors(503))
async def read_options(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return options_of((await served_checkpoints(request))[0]) | options_of_caller(request).values


def options_of(model: Checkpoint) -> dict[str, Any]:
    """The settings A1111 clients read that are fixed here (set in config.yaml), with A1111's values for what sdapi
    does as A1111 does by default; the writable ones (sdapi.api.dialects.a1111.settings) are laid over them per API
    key."""
    return {
        "sd_model_checkpoint": model.title,
        "sd_checkpoint_hash": model.sha256,
        "samples_format": "png",
        "eta_noise_seed_delta": 0,
        "sd_hypernetwork": "None",
        "face_restoration": False,
        "face_restoration_model": None,
        "enable_pnginfo": True,  # the generation record is embedded (output.embed_parameters)
        "samples_save": False,  # sdapi stores every image, but not in A1111's outputs folder
        "grid_save": False,
        "return_grid": False,
        "jpeg_quality": 95,
        "img_max_size_mp": 200,
        "upscaler_for_img2img": None,
        "sd_checkpoint_cache": 0,
        "sd_vae_checkpoint_cache": 0,
    }


@post(
    "/options",
    status_code=200,
    responses=a1111_errors(413, 422, 503),
    summary="AUTOMATIC1111: 写入设置（实时预览与图片格式可写；其余只读，仅接受与当前值相同的设置）",
    description="可写（按 API Key 保存在本节点内存中）：live_previews_enable、show_progress_every_n_steps、"
    "show_progress_type、live_preview_content、live_previews_image_format、samples_format。"
    "其余设置在 config.yaml 中修改：可发送 sd_model_checkpoint（默认模型）和 GET /options 中的当前值，"
    "其他设置返回 422 并列出名称。要为一个请求选择其他模型，请在请求的 override_settings.sd_model_checkpoint 中指定。",
)
async def write_options(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    model = (await served_checkpoints(request))[0]
    current = options_of(model)
    refused = [
        key
        for key, value in data.items()
        if key not in WRITABLE
        and not (key == "sd_model_checkpoint" and model.named_by(value))
        and current.get(key) != value
    ]
    if refused:
        raise InvalidParameter(
            refused[0],
            f"设置只读（在 config.yaml 中修改）：{', '.join(refused)}。"
            "为单个请求选择模型：override_settings.sd_model_checkpoint",
        )
    write_caller_options(request, {key: value for key, value in data.items() if key in WRITABLE})
    return {}


@get("/cmd-flags", summary="AUTOMATIC1111: 启动参数（sdapi 的对应设置）", responses=a1111_errors())
async def cmd_flags(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A1111's command-line flags that sdapi has an answer to, from its config (clients read the folders and
    whether the API is on); every other flag is absent."""
    config = config_of(request)
    return {
        "api": True,
        "nowebui": True,
        "api_auth": None,  # sdapi's keys are not shown
        "listen": config.server.host not in ("127.0.0.1", "localhost"),
        "port": config.server.port,
        "lora_dir": str(config.loras_path),
        "embeddings_dir": str(config.embeddings_path),
        "esrgan_models_path": str(config.upscalers_path),
        "controlnet_dir": str(config.controlnet_path),
        "ckpt_dir": None,
        "hypernetwork_dir": None,
        "no_half": config.model.dtype == "float32",
        "medvram": False,
        "lowvram": False,
    }


@get("/sd-vae", summary="AUTOMATIC1111: VAE 列表（vae.dir 中可用的 VAE）", responses=a1111_errors())
async def sd_vae(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [
        {"model_name": entry.name, "filename": entry.name}
        for entry in status_of(request).listed("vaes")
        if entry.error is None
    ]


@post(
    "/interrogate",
    status_code=200,
    summary="AUTOMATIC1111: 图片反推提示词（sdapi 不提供：422）",
    responses=a1111_errors(422),
)
async def interrogate(data: dict[str, Any]) -> dict[str, Any]:
    raise InvalidParameter("model", "sdapi 不提供图片反推（interrogate）：没有 CLIP interrogator 或 DeepBooru 模型")


@get("/hypernetworks", summary="AUTOMATIC1111: 超网络列表（sdapi 不提供超网络：空）", responses=a1111_errors())
async def hypernetworks() -> list[dict[str, Any]]:
    return []


@get("/face-restorers", summary="AUTOMATIC1111: 面部修复模型（sdapi 不提供：空）", responses=a1111_errors())
async def face_restorers() -> list[dict[str, Any]]:
    return []


@get(
    "/realesrgan-models",
    summary="AUTOMATIC1111: Real-ESRGAN 模型（upscalers.dir 中的神经网络放大模型）",
    responses=a1111_errors(),
)
async def realesrgan_models(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [
        {"name": entry.name, "path": None, "scale": entry.scale}
        for entry in status_of(request).listed("upscalers")
        if entry.kind == "neural" and entry.error is None
    ]


@get("/prompt-styles", summary="AUTOMATIC1111: 提示词样式（styles.file 中的 styles.csv）", responses=a1111_errors())
async def prompt_styles(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [
        {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
        for style in await service_of(request).styles()
    ]


@get("/scripts", summary="AUTOMATIC1111: 脚本列表（SD upscale；ControlNet 为常开脚本）", responses=a1111_errors())
async def scripts() -> dict[str, list[str]]:
    # As A1111 with the ControlNet extension answers: every script's name, the always-on ones included.
    return {"txt2img": ["controlnet"], "img2img": [SD_UPSCALE, "controlnet"]}
