"""The OpenAI Images API under /v1, a thin translation onto the native task pipeline: decode OpenAI's request, map it
to a GenerationRequest, submit it as the caller's task, wait for the task to end, answer in OpenAI's shape. Nothing
here generates or stores; the native request checks decide what is served, this module only OpenAI's own fields
(through msgspec and sdapi.api.dialects.fields), and every error, unexpected ones too, comes back in OpenAI's shape.

`OpenAI(base_url="http://host:8000/v1", api_key=KEY)` works unchanged; sdapi's own controls (negative_prompt, seed,
num_inference_steps, guidance_scale, scheduler, loras, strength; with an edit's mask also mask_blur, inpaint_area,
masked_content) travel in the SDK's `extra_body`. An edit's mask repaints its fully transparent pixels.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body

from sdapi.api.auth import api_key_guard
from sdapi.api.dialects import fields as fields_parser
from sdapi.api.dialects.common import (
    DialectTaskFailed,
    classify,
    config_of,
    framework_error_message,
    service_of,
    submit_and_wait,
)
from sdapi.api.dialects.openai_stream import streamed, with_partial_images
from sdapi.api.error_docs import error_responses
from sdapi.api.errors import INTERNAL_ERROR_DETAIL, log_unexpected
from sdapi.config import DEFAULT_MODEL_NAME, Config
from sdapi.core.callers import callers_by_key
from sdapi.core.request import GenerationRequest, LoraRequest
from sdapi.errors import (
    InvalidParameter,
    ModelNotFound,
    SdapiError,
)
from sdapi.media.images import open_image
from sdapi.media.masks import encode_mask, mask_from_transparency
from sdapi.media.mime import image_mime
from sdapi.service.tasks import TaskService, TaskView

# OpenAI's error `type` for each status the SDK maps to an exception class.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "timeout",
}


# OpenAI's own `code` for the errors it names; other refusals carry sdapi's error class name.
_OPENAI_CODES = {"ModelNotFound": "model_not_found"}


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """OpenAI's error body, `{"error": {"message", "type", "param", "code"}}` (rendered by `_error`)."""

    error: OpenAIErrorDetail


def _openai_errors(*statuses: int, **described: str) -> dict[int, ResponseSpec]:
    """A /v1 operation's documented errors: 401 and 500 on every one (all sit behind the key)."""
    return error_responses(OpenAIErrorBody, *statuses, 401, 500, **described)


# An unknown `model` is OpenAI's 404; 504 when the wait for the task runs out.
_GENERATION_ERRORS = _openai_errors(400, 404, 413, 429, 503, 504, s404="模型不存在（见 GET /v1/models）")


class ImageGenerationRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/images/generations: OpenAI's fields, and sdapi's own through the SDK's extra_body."""

    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    size: str | None = None  # "WxH", or "auto"/None for the configured default
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None  # jpeg and webp only
    model: str | None = None
    user: str | None = None
    # Accepted for OpenAI clients that always send them; they do not change what sdapi makes.
    quality: str | None = None
    style: str | None = None
    moderation: str | None = None
    background: str | None = None
    # Image streaming: Server-Sent Events with up to partial_images previews, then the images
    # (sdapi.api.dialects.openai_stream).
    stream: bool = False
    partial_images: Annotated[int, msgspec.Meta(ge=0, le=3)] | None = None
    # sdapi's own controls, same names and rules as POST /api/v1/generate.
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    loras: list[LoraRequest] | None = None
    # images.edit with a mask: the native inpainting settings (masked_content defaults to fill here).
    mask_blur: int | None = None
    inpaint_area: str | None = None
    masked_content: str | None = None


def _native(
    body: ImageGenerationRequest,
    model: str | None,
    init_image: str | None = None,
    strength: float | None = None,
    mask_image: str | None = None,
) -> Any:
    width, height = fields_parser.size(body.size)
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "width": width,
        "height": height,
        "num_inference_steps": body.num_inference_steps,
        "guidance_scale": body.guidance_scale,
        "seed": body.seed,
        "num_images": body.n,
        "scheduler": body.scheduler,
        "output_format": {"jpeg": "jpg"}.get(body.output_format, body.output_format),
        "output_compression": body.output_compression,
        "init_image": init_image,
        "strength": strength,
        # OpenAI repaints the transparent area from scratch: all of it denoised, starting from its surroundings.
        "mask_image": mask_image,
        "masked_content": (body.masked_content or "fill") if mask_image is not None else None,
        "mask_blur": body.mask_blur,
        "inpaint_area": body.inpaint_area,
        "loras": body.loras,
        "model": model,
        "prompt_syntax": "plain",  # OpenAI's prompts are plain text
    }
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, GenerationRequest)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None


def _model_ids(config: Config) -> list[str]:
    """What GET /v1/models lists: compat.model_id (the default model), then each configured model by name."""
    names = [entry.name for entry in config.model_entries]
    # The one model of a `model.path` config is "default": compat.model_id already stands for it.
    return [
        config.compat.model_id,
        *(name for name in names if name not in (config.compat.model_id, DEFAULT_MODEL_NAME)),
    ]


def _model(config: Config, model: str | None) -> str | None:
    """The native model for OpenAI's `model` (None: the default); raise ModelNotFound (OpenAI's 404,
    `model_not_found`) for an unknown id, naming the served ones."""
    if model is None or model in (config.compat.model_id, "default"):
        return None
    if model in {entry.name for entry in config.model_entries}:
        return model
    raise ModelNotFound(f"模型不存在：{model!r}。可用模型：{', '.join(_model_ids(config))}（GET /v1/models）")


async def _generate_and_answer(
    request: Request[Any, Any, Any], native: GenerationRequest, body: ImageGenerationRequest, event_prefix: str
) -> Response[Any]:
    """Run as the caller's task to its end, then answer OpenAI's way (a failed task is an error); with `stream`,
    as Server-Sent Events named `event_prefix`.partial_image and .completed."""
    if body.stream:
        drawing = with_partial_images(request, native, body.partial_images or 0)
        return await streamed(request, drawing, body, event_prefix)
    if body.partial_images is not None:
        raise InvalidParameter("partial_images", "partial_images 只用于 stream: true")
    return Response(await _answer(request, native, body))


async def _answer(
    request: Request[Any, Any, Any], native: GenerationRequest, body: ImageGenerationRequest
) -> dict[str, Any]:
    view = await submit_and_wait(request, native, dialect="openai")
    if view.task.error_message is not None:
        raise DialectTaskFailed(view.task.error_message)
    return {
        "created": int(view.task.created_at.timestamp()),
        "data": await _images(service_of(request), view, body.response_format),
        "output_format": body.output_format,
        "size": f"{view.task.params.width}x{view.task.params.height}",
    }


async def _images(service: TaskService, view: TaskView, response_format: str) -> list[dict[str, Any]]:
    if response_format == "url":
        return [{"url": url, "revised_prompt": None} for url in view.image_urls or []]
    data = await service.image_bytes(view)
    return [{"b64_json": base64.b64encode(raw).decode("ascii"), "revised_prompt": None} for raw in data]


@post("/images/generations", status_code=200, summary="OpenAI: images.generate", responses=_GENERATION_ERRORS)
async def generations(data: ImageGenerationRequest, request: Request[Any, Any, Any]) -> Response[Any]:
    model = _model(config_of(request), data.model)
    return await _generate_and_answer(request, _native(data, model), data, "image_generation")


async def _form_decodes(request: Request[Any, Any, Any]) -> None:
    """before_request of /images/edits: every text part decodes, checked before the framework parses the form."""
    fields_parser.check_form_text(await request.body(), request.headers.get("content-type", ""))


@post(
    "/images/edits",
    status_code=200,
    summary="OpenAI: images.edit（图生图；带 mask 时局部重绘：mask 完全透明处重新生成，其余保留）",
    before_request=_form_decodes,
    responses=_GENERATION_ERRORS,
)
async def edits(
    data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
    request: Request[Any, Any, Any],
) -> Response[Any]:
    upload = data.get("image") or data.get("image[]")
    if isinstance(upload, list):
        if len(upload) != 1:
            raise InvalidParameter("image", "只支持一张 image")
        upload = upload[0]
    if not isinstance(upload, UploadFile):
        raise InvalidParameter("image", "缺少 image 文件（PNG 或 JPEG）")
    raw = await upload.read()
    # Every other part must be one text field; strength is a number, read by its own parser.
    fields = {
        key: fields_parser.form_text(data, key) for key in data if key not in ("image", "image[]", "mask", "strength")
    }
    strength = fields_parser.form_number(data, "strength")
    try:
        # Multipart fields arrive as strings: strict=False lets msgspec read "2" as 2 and "6.5" as 6.5.
        body = msgspec.convert(fields, ImageGenerationRequest, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    model = _model(config_of(request), body.model)
    init_image = f"data:image/{image_mime(raw)};base64,{base64.b64encode(raw).decode('ascii')}"
    mask_image = None
    if data.get("mask") is not None:
        mask_upload = data["mask"]
        if not isinstance(mask_upload, UploadFile):
            raise InvalidParameter("mask", "mask 必须是 PNG 文件（透明处为要编辑的区域）")
        max_pixels = config_of(request).limits.max_init_image_pixels
        mask_image = await asyncio.to_thread(_native_mask, raw, await mask_upload.read(), max_pixels)
        if strength is None:
            strength = 1.0  # OpenAI's edit redraws the transparent area entirely
    native = _native(body, model, init_image, strength, mask_image)
    return await _generate_and_answer(request, native, body, "image_edit")


def _native_mask(image_raw: bytes, mask_raw: bytes, max_pixels: int) -> str:
    """OpenAI's mask (a PNG whose fully transparent pixels are edited) as a native mask_image data URL; raise
    InvalidParameter naming `mask` for a mask without alpha or of another size than the image."""
    with open_image(image_raw, max_pixels, "image") as image:
        size = image.size
    with open_image(mask_raw, max_pixels, "mask") as opened:
        if opened.size != size:
            raise InvalidParameter(
                "mask", f"mask 尺寸 {opened.width}x{opened.height} 与 image 的 {size[0]}x{size[1]} 不一致"
            )
        mask = mask_from_transparency(opened)
    if mask is None:
        raise InvalidParameter("mask", "mask 必须带透明通道（alpha）：完全透明的像素为要编辑的区域")
    return "data:image/png;base64," + base64.b64encode(encode_mask(mask)).decode("ascii")


@get("/models", summary="OpenAI: models.list", responses=_openai_errors())
async def models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    ids = _model_ids(config_of(request))
    return {
        "object": "list",
        "data": [{"id": id_, "object": "model", "created": 0, "owned_by": "sdapi"} for id_ in ids],
    }


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Response[object]:
    body = {
        "error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }
    return Response(body, status_code=status)


def _sdapi_error(request: Request[Any, Any, Any], error: SdapiError) -> Response[object]:
    failure = classify(error)
    if failure.kind == "client_gone":
        return _error(499, failure.message, code="client_closed_request")
    if failure.kind == "timeout":
        return _error(504, failure.message, code="timeout")
    if failure.kind == "task_failed":
        return _error(500, failure.message, code="generation_failed")
    if failure.kind == "server":
        return _error(failure.status, failure.message)
    if failure.kind == "validation":
        message = f"{failure.field}: {failure.message}" if failure.field else failure.message
        return _error(400, message, failure.field)
    code = _OPENAI_CODES.get(failure.name, failure.name)
    response = _error(failure.status, failure.message, failure.field, code=code)
    if failure.retry_after is not None:
        response.headers["Retry-After"] = str(failure.retry_after)
    return response


def _unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[object]:
    """A real fault: logged with its traceback (as the native API does), answered in this dialect's shape."""
    log_unexpected(request, error)
    return _error(500, INTERNAL_ERROR_DETAIL)


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[object]:
    status = 400 if error.status_code == 422 else error.status_code
    message, field = framework_error_message(error)
    return _error(status, message, field)


def openai_router(config: Config) -> Router:
    return Router(
        path="/v1",
        route_handlers=[generations, edits, models],
        guards=[api_key_guard(callers_by_key(config.api), config.api.key_header, bearer=True)],
        tags=["openai"],
        security=[{"BearerKey": []}, {"APIKeyHeader": []}],
        exception_handlers={SdapiError: _sdapi_error, HTTPException: _http_error, Exception: _unexpected},
    )
