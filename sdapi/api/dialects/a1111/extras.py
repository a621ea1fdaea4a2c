"""AUTOMATIC1111's upscaler lists and its "extras" upscaling (extra-single-image, extra-batch-images), onto the
native upscalers (sdapi.service.extras). Face restoration (GFPGAN, CodeFormer) is not served: asking for it is a
422 naming the field."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from litestar import Request, get, post

from sdapi.api.dialects.a1111.errors import a1111_errors
from sdapi.api.dialects.a1111.translate import LATENT_UPSCALE_MODES, PIXEL_UPSCALER_NAMES, upscaler_for
from sdapi.api.dialects.common import extras_of, status_of
from sdapi.api.dialects.fields import decoded
from sdapi.errors import InvalidParameter


def _neural(request: Request[Any, Any, Any]) -> dict[str, float | None]:
    return {
        entry.name: entry.scale
        for entry in status_of(request).listed("upscalers")
        if entry.kind == "neural" and entry.error is None
    }


@get(
    "/upscalers",
    summary="AUTOMATIC1111: 放大模型列表（None、Lanczos、Nearest 与 upscalers.dir 中的模型）",
    responses=a1111_errors(),
)
async def upscalers(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in PIXEL_UPSCALER_NAMES
    ]
    for entry in status_of(request).listed("upscalers"):
        if entry.kind == "neural" and entry.error is None:
            listed.append(
                {
                    "name": entry.name,
                    "model_name": entry.name,
                    "model_path": None,
                    "model_url": None,
                    "scale": entry.scale,
                }
            )
    return listed


@get("/latent-upscale-modes", summary="AUTOMATIC1111: 潜空间放大方式（hr_upscaler 可用）", responses=a1111_errors())
async def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


class _Extras(msgspec.Struct, kw_only=True):
    """The fields of extra-single-image / extra-batch-images sdapi reads (A1111's names and defaults)."""

    resize_mode: int = 0  # 0: by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0


def _settings(body: dict[str, Any]) -> _Extras:
    known = {key: value for key, value in body.items() if key in _Extras.__struct_fields__}
    try:
        settings = msgspec.convert(known, _Extras, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(settings, field):
            raise InvalidParameter(field, f"不支持的选项：{field}（面部修复）。sdapi 不实现此功能，请设为 0")
    if not 0 <= settings.extras_upscaler_2_visibility <= 1:
        raise InvalidParameter("extras_upscaler_2_visibility", "extras_upscaler_2_visibility 范围 0-1")
    if settings.resize_mode == 0 and not 0 < settings.upscaling_resize <= 8:
        raise InvalidParameter("upscaling_resize", f"upscaling_resize 无效：{settings.upscaling_resize}。范围 (0, 8]")
    if settings.resize_mode not in (0, 1):
        raise InvalidParameter("resize_mode", f"resize_mode 不支持：{settings.resize_mode}。可选：0（倍数）、1（尺寸）")
    if settings.resize_mode == 1 and min(settings.upscaling_resize_w, settings.upscaling_resize_h) < 1:
        raise InvalidParameter("upscaling_resize_w", "upscaling_resize_w/h 必须大于 0")
    return settings


async def _upscaled(request: Request[Any, Any, Any], raw: bytes, field: str, settings: _Extras) -> str:
    neural = _neural(request)
    first = upscaler_for(settings.upscaler_1, neural)
    second = upscaler_for(settings.upscaler_2, neural) if settings.extras_upscaler_2_visibility else None
    by_size = settings.resize_mode == 1
    png = await extras_of(request).upscale(
        raw,
        field,
        first,
        second=second,
        second_visibility=settings.extras_upscaler_2_visibility,
        scale=None if by_size else settings.upscaling_resize,
        size=(settings.upscaling_resize_w, settings.upscaling_resize_h) if by_size else None,
        crop=by_size and settings.upscaling_crop,
    )
    return base64.b64encode(png).decode("ascii")


@post(
    "/extra-single-image",
    status_code=200,
    summary="AUTOMATIC1111: 放大一张图片（extras）",
    responses=a1111_errors(413, 422),
)
async def extra_single_image(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    settings = _settings(data)
    image = await _upscaled(request, decoded(data.get("image"), "image"), "image", settings)
    return {"html_info": "", "image": image}


@post(
    "/extra-batch-images",
    status_code=200,
    summary="AUTOMATIC1111: 放大多张图片（extras）",
    responses=a1111_errors(413, 422),
)
async def extra_batch_images(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    settings = _settings(data)
    items = data.get("imageList")
    if not isinstance(items, list) or not items:
        raise InvalidParameter("imageList", "imageList 缺少图片：[{data: base64, name}]")
    images = []
    for index, item in enumerate(items):
        field = f"imageList[{index}]"
        encoded = item.get("data") if isinstance(item, dict) else None
        images.append(await _upscaled(request, decoded(encoded, field), field, settings))
    return {"html_info": "", "images": images}
