"""The /sdapi/v1 routes: each decodes, calls the translation and the native service, answers in A1111's shape,
and every error comes back in A1111's error shape."""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException

from sdapi.api.auth import api_key_guard, caller_of
from sdapi.api.dialects.a1111 import controlnet
from sdapi.api.dialects.a1111.answer import answer
from sdapi.api.dialects.a1111.errors import GENERATION_ERRORS, a1111_errors
from sdapi.api.dialects.a1111.extras import extra_batch_images, extra_single_image, latent_upscale_modes, upscalers
from sdapi.api.dialects.a1111.models import checkpoint_of, served_checkpoints
from sdapi.api.dialects.a1111.options import (
    cmd_flags,
    embeddings,
    face_restorers,
    hypernetworks,
    interrogate,
    loras,
    prompt_styles,
    read_options,
    realesrgan_models,
    samplers,
    schedulers,
    scripts,
    sd_models,
    sd_vae,
    write_options,
)
from sdapi.api.dialects.a1111.settings import VAE_DECODE_METHODS, options_of_caller
from sdapi.api.dialects.a1111.translate import translate, vae_named
from sdapi.api.dialects.common import (
    DialectTaskFailed,
    base_url_of,
    cancel_quietly,
    classify,
    config_of,
    framework_error_message,
    service_of,
    status_of,
    submit_and_wait,
)
from sdapi.api.errors import INTERNAL_ERROR_DETAIL, log_unexpected
from sdapi.config import Config
from sdapi.core.callers import callers_by_key
from sdapi.core.request import GenerationRequest
from sdapi.core.tasks import TaskStatus
from sdapi.errors import (
    ErrorCode,
    InvalidParameter,
    SdapiError,
)
from sdapi.media.images import open_image
from sdapi.media.provenance import parse_infotext, read_embedded
from sdapi.previews.encoding import reencoded_base64
from sdapi.service.tasks import MAX_PAGE, TaskView


async def generate(request: Request[Any, Any, Any], body: dict[str, Any], image_to_image: bool) -> dict[str, Any]:
    models = await served_checkpoints(request)
    neural = {
        entry.name: entry.scale
        for entry in status_of(request).listed("upscalers")
        if entry.kind == "neural" and entry.error is None
    }
    translated = translate(body, models, image_to_image, config_of(request).limits, neural)
    model = checkpoint_of(body, models)
    view = await submit_and_wait(request, _with_caller_options(request, body, translated.native), dialect="a1111")
    task = view.task
    if task.error_code is ErrorCode.CANCELLED:  # interrupted (POST /interrupt): A1111 answers without failing
        return answer(translated, view, [], [], model, interrupted=True)
    if task.error_message is not None:
        raise DialectTaskFailed(task.error_message, task.error_code)
    # The infotexts come from the task (recorded as the images were written): the images are read only to be sent.
    infotexts = [image.infotext for image in task.images]
    images = []
    if translated.fields.send_images:
        images = [base64.b64encode(raw).decode("ascii") for raw in await service_of(request).image_bytes(view)]
    if translated.fields.include_init_images and translated.init_image is not None:
        images.append(translated.init_image.split(",", 1)[1])
    return answer(translated, view, images, infotexts, model)


def _with_caller_options(request: Request[Any, Any, Any], body: dict[str, Any], native: GenerationRequest) -> Any:
    """`native` with the caller's writable options (sdapi.api.dialects.a1111.settings): its live previews' period,
    and its samples_format, clip skip, VAE, decode method and token merging where the request's override_settings
    does not name them."""
    options = options_of_caller(request)
    changes: dict[str, Any] = {"preview_every_steps": options.preview_every_steps()}
    settings = body.get("override_settings")
    overridden = settings if isinstance(settings, dict) else {}
    if "samples_format" not in overridden:
        chosen = options.values["samples_format"]
        changes["output_format"] = "jpg" if chosen == "jpeg" else chosen
    if "CLIP_stop_at_last_layers" not in overridden:
        skip = int(options.values["CLIP_stop_at_last_layers"])
        changes["clip_skip"] = skip if skip > 1 else None
    if "sd_vae" not in overridden:
        changes["vae"] = vae_named(options.values["sd_vae"])
    if "sd_vae_decode_method" not in overridden and options.values["sd_vae_decode_method"] != "Full":
        changes["vae_decoder"] = VAE_DECODE_METHODS[options.values["sd_vae_decode_method"]]
    if "token_merging_ratio" not in overridden and options.values["token_merging_ratio"] > 0:
        changes["token_merging"] = float(options.values["token_merging_ratio"])
    return msgspec.structs.replace(native, **changes)


@post("/txt2img", status_code=200, summary="AUTOMATIC1111: txt2img（文生图）", responses=GENERATION_ERRORS)
async def txt2img(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await generate(request, data, image_to_image=False)


@post("/img2img", status_code=200, summary="AUTOMATIC1111: img2img（图生图）", responses=GENERATION_ERRORS)
async def img2img(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await generate(request, data, image_to_image=True)


@get(
    "/progress",
    summary="AUTOMATIC1111: 调用者正在运行的任务的进度、剩余时间与实时预览",
    responses=a1111_errors(422, 503),
)
async def progress(request: Request[Any, Any, Any], skip_current_image: bool = False) -> dict[str, Any]:
    view = await _running_task(request)
    state = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if view is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    task = view.task
    options = options_of_caller(request)
    preview = await service_of(request).latest_preview(view) if options.values["live_previews_enable"] else None
    step = task.progress.step if task.progress else 0
    total = task.progress.total_steps if task.progress else task.params.num_inference_steps
    if preview is not None and preview.step > step:  # a preview is posted at once; progress about once a second
        step, total = preview.step, preview.total_steps
    fraction = step / total if total else 0.0
    elapsed = (datetime.now(UTC) - (task.started_at or task.created_at)).total_seconds()
    eta = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
    state |= {
        "job": f"task({task.id})",
        "job_count": task.params.num_images,
        "job_timestamp": (task.started_at or task.created_at).astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "job_no": task.progress.images_done if task.progress else 0,
        "sampling_step": step,
        "sampling_steps": total,
    }
    current_image = None
    if preview is not None and not skip_current_image:
        # base64 without a data: prefix, in live_previews_image_format, as A1111 sends it
        chosen = options.values["live_previews_image_format"]
        current_image = await asyncio.to_thread(reencoded_base64, preview, chosen)
    return {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 2),
        "state": state,
        "current_image": current_image,
        "textinfo": None,
        "current_task": task.id,
    }


async def _running_tasks(request: Request[Any, Any, Any]) -> list[TaskView]:
    """The caller's own processing tasks (an admin's or a shared key's too: only those its key created)."""
    caller = caller_of(request)
    page = await service_of(request).list(caller, base_url_of(request), TaskStatus.PROCESSING, MAX_PAGE)
    return [view for view in page.tasks if view.task.owner == caller.name]


async def _running_task(request: Request[Any, Any, Any]) -> TaskView | None:
    running = await _running_tasks(request)
    return running[0] if running else None


@post(
    "/interrupt",
    status_code=200,
    summary="AUTOMATIC1111: 中断调用者正在运行的任务（不影响其他 Key 的任务）",
    responses=a1111_errors(503),
)
async def interrupt(request: Request[Any, Any, Any]) -> dict[str, Any]:
    caller, base_url = caller_of(request), base_url_of(request)
    running = await _running_tasks(request)
    for view in running:
        await cancel_quietly(service_of(request), view.task.id, base_url, caller)
    return {"interrupted": [view.task.id for view in running]}


@post(
    "/skip",
    status_code=200,
    summary="AUTOMATIC1111: 跳过调用者正在运行的任务的当前图片（该图片按已完成的步数输出，之后继续下一张）",
    responses=a1111_errors(503),
)
async def skip(request: Request[Any, Any, Any]) -> dict[str, Any]:
    service, caller = service_of(request), caller_of(request)
    skipped = [view.task.id for view in await _running_tasks(request)]
    skipped = [task_id for task_id in skipped if await service.skip_current_image(task_id, caller)]
    return {"skipped": skipped}


class PngInfoRequest(msgspec.Struct):
    image: str


@post("/png-info", status_code=200, summary="AUTOMATIC1111: 读取图片中嵌入的生成参数", responses=a1111_errors(413, 422))
async def png_info(data: PngInfoRequest, request: Request[Any, Any, Any]) -> dict[str, Any]:
    payload = data.image.split(",", 1)[1] if data.image.startswith("data:") else data.image
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("image", "image 不是有效的 base64 图片") from None
    # Its size from the header within the init image limit, before anything is decoded (off the event loop).
    infotext, record = await asyncio.to_thread(_embedded, raw, config_of(request).limits.max_init_image_pixels)
    items: dict[str, Any] = {}
    if infotext is not None:
        items["parameters"] = infotext
    if record is not None:
        items["sdapi"] = record
    return {
        "info": infotext or "",
        "items": items,
        "parameters": parse_infotext(infotext) if infotext else {},
    }


def _embedded(raw: bytes, max_pixels: int) -> tuple[str | None, str | None]:
    with open_image(raw, max_pixels, "image") as image:
        image.load()  # PNG text chunks may follow the pixels
    try:
        return read_embedded(raw)
    except (OSError, ValueError, SyntaxError):
        raise InvalidParameter("image", "image 无法解码为 PNG、JPEG 或 WebP 图片") from None


def _error(status: int, error: str, detail: str) -> Response[object]:
    """A1111's error body: {"error", "detail", "body", "errors"} (what its API middleware answers)."""
    headers = {"WWW-Authenticate": 'Basic realm="sdapi"'} if status == 401 else {}
    return Response(
        {"error": error, "detail": detail, "body": "", "errors": detail}, status_code=status, headers=headers
    )


def _sdapi_error(request: Request[Any, Any, Any], error: SdapiError) -> Response[object]:
    failure = classify(error)
    if failure.kind == "client_gone":
        return _error(499, "ClientGone", failure.message)
    if failure.kind == "timeout":
        return _error(504, "Timeout", failure.message)
    if failure.kind == "task_failed":
        code = failure.code.value if failure.code else "internal"
        return _error(422 if failure.code is ErrorCode.INVALID_INPUT else 500, code, failure.message)
    if failure.kind == "server":
        return _error(failure.status, failure.name, failure.message)
    if failure.kind == "validation":
        message = f"{failure.field}: {failure.message}" if failure.field else failure.message
        return _error(422, "ValidationError", message)
    if failure.kind == "unauthorized":
        return _error(401, "Unauthorized", failure.message)
    # A1111 answers a request it cannot serve with 422; a full queue stays a 429 (with Retry-After).
    response = _error(422 if failure.status == 400 else failure.status, failure.name, failure.message)
    if failure.retry_after is not None:
        response.headers["Retry-After"] = str(failure.retry_after)
    return response


def _unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[object]:
    """A real fault: logged with its traceback (as the native API does), answered in this dialect's shape."""
    log_unexpected(request, error)
    return _error(500, "InternalError", INTERNAL_ERROR_DETAIL)


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[object]:
    status = 422 if error.status_code == 400 else error.status_code
    message, _ = framework_error_message(error)
    return _error(status, type(error).__name__, message)


def controlnet_router(config: Config) -> Router:
    """The ControlNet extension's own routes, at /controlnet as the extension mounts them, with A1111's login and
    error shape."""
    return Router(
        path="/controlnet",
        route_handlers=[
            controlnet.version,
            controlnet.model_list,
            controlnet.module_list,
            controlnet.control_types,
            controlnet.settings,
            controlnet.detect,
        ],
        guards=[api_key_guard(callers_by_key(config.api), config.api.key_header, basic=True)],
        tags=["automatic1111"],
        security=[{"BasicAuth": []}, {"APIKeyHeader": []}],
        exception_handlers={SdapiError: _sdapi_error, HTTPException: _http_error, Exception: _unexpected},
    )


def a1111_router(config: Config) -> Router:
    return Router(
        path="/sdapi/v1",
        route_handlers=[
            txt2img,
            img2img,
            samplers,
            schedulers,
            sd_models,
            loras,
            embeddings,
            upscalers,
            latent_upscale_modes,
            extra_single_image,
            extra_batch_images,
            read_options,
            write_options,
            progress,
            interrupt,
            skip,
            png_info,
            scripts,
            cmd_flags,
            hypernetworks,
            face_restorers,
            realesrgan_models,
            prompt_styles,
            sd_vae,
            interrogate,
        ],
        guards=[api_key_guard(callers_by_key(config.api), config.api.key_header, basic=True)],
        tags=["automatic1111"],
        security=[{"BasicAuth": []}, {"APIKeyHeader": []}],
        exception_handlers={SdapiError: _sdapi_error, HTTPException: _http_error, Exception: _unexpected},
    )
