"""AUTOMATIC1111's API under /sdapi/v1, a thin translation onto the native task pipeline: decode A1111's request,
map it to a GenerationRequest, run it as the caller's task to its end, answer in A1111's shape. Nothing here
generates, validates or stores: the native service does, and its errors come back in A1111's error shape.

`webuiapi.WebUIApi(host, port)` works unchanged. A1111 clients send every field with its default (enable_hr false,
restore_faces false, eta 1.0, styles []...), so an option sdapi does not implement is refused (422, naming it) only
when it is set to a value that would change the picture; a field this module does not know is likewise accepted
only while it is empty (null, false, 0, "", [] or {}).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from PIL import Image, ImageOps

from sdapi import __version__
from sdapi.api.auth import api_key_guard, caller_of
from sdapi.api.dialects import (
    ClientGone,
    CompatTimeout,
    base_url_of,
    cancel_quietly,
    image_bytes,
    run_to_end,
    runtime_of,
)
from sdapi.api.errors import status_for
from sdapi.bootstrap import Runtime
from sdapi.callers import callers_by_key
from sdapi.config import DEFAULT_MODEL_NAME, Config
from sdapi.errors import (
    AuthenticationFailed,
    ErrorCode,
    InvalidParameter,
    RequestValidationFailed,
    SdapiError,
)
from sdapi.model_sources import model_name
from sdapi.provenance import A1111_SAMPLER_NAMES, parse_infotext, read_embedded
from sdapi.request import MAX_IMAGES, MAX_SEED, GenerationRequest, LoraRequest
from sdapi.service import MAX_PAGE, TaskView
from sdapi.tasks import TaskStatus

# A1111's sampler names (what its /samplers lists) for the nine schedulers, with the aliases it also accepts.
SAMPLERS: dict[str, str] = {name: scheduler for scheduler, name in A1111_SAMPLER_NAMES.items()}
SAMPLER_ALIASES: dict[str, tuple[str, ...]] = {
    "DPM++ 2M": ("k_dpmpp_2m",),
    "Euler a": ("k_euler_a", "k_euler_ancestral"),
    "Euler": ("k_euler",),
    "LMS": ("k_lms",),
    "Heun": ("k_heun",),
    "DPM2": ("k_dpm_2",),
    "DPM2 a": ("k_dpm_2_a",),
    "DDIM": ("ddim",),
    "PLMS": ("plms",),
}
# A1111's schedule types ("scheduler" in its API) that sdapi has: the scheduler's own spacing, or Karras sigmas.
SCHEDULE_TYPES = {"automatic": False, "karras": True}

# Options sdapi does not implement, with the values that leave the picture as sdapi makes it (A1111's defaults and
# what its clients send). Any other value is refused with a 422 naming the option.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "enable_hr": (False, None),
    "restore_faces": (False, None),
    "tiling": (False, None),
    "subseed_strength": (0, None),
    "seed_resize_from_h": (0, -1, None),
    "seed_resize_from_w": (0, -1, None),
    "styles": ([], None),
    "script_name": (None, ""),
    # Diffusers' ancestral samplers add their full noise (A1111's eta 1); DDIM runs deterministic (eta 0).
    "eta": (None, 0, 1),
    "s_churn": (0, None),
    "s_tmax": (0, None),
    "s_tmin": (0, None),
    "s_noise": (1, None),
    "mask": (None, ""),
    "initial_noise_multiplier": (1, None),
    "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0),
    "disable_extra_networks": (False, None),
}
# Fields that change nothing here: where A1111 saves files, whether it returns grids, options of features that are
# off (high-res fix while enable_hr is false, inpainting without a mask, scripts without a script_name).
_HARMLESS = {
    "save_images",
    "do_not_save_samples",
    "do_not_save_grid",
    "override_settings_restore_afterwards",
    "subseed",
    "firstphase_width",
    "firstphase_height",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_additional_modules",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "image_cfg_scale",  # only instruct-pix2pix models read it
    "script_args",
    "comments",
    "force_task_id",
    "infotext",
}
# override_settings that may be sent with these values (the model sdapi serves is checked separately).
_NEUTRAL_SETTINGS: dict[str, tuple[Any, ...]] = {
    "CLIP_stop_at_last_layers": (1,),
    "eta_noise_seed_delta": (0,),
    "samples_format": ("png",),
    "sd_vae": ("Automatic", "None", None),
}
_LORA_TAG = re.compile(r"<(lora|lyco|hypernet):([^>]*)>", re.IGNORECASE)
_RESIZE_MODES = {0: "just resize", 1: "crop and resize"}


class A1111Generation(msgspec.Struct, kw_only=True):
    """The fields of /txt2img and /img2img that sdapi maps onto a GenerationRequest (A1111's names and defaults)."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 1
    n_iter: Annotated[int, msgspec.Meta(ge=1)] = 1
    denoising_strength: float | None = None
    init_images: list[str] | None = None
    resize_mode: int = 0
    include_init_images: bool = False
    send_images: bool = True
    override_settings: dict[str, Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Translated:
    """A decoded A1111 request: the native request, and what the answer echoes."""

    native: GenerationRequest
    body: dict[str, Any]
    fields: A1111Generation
    sampler_name: str | None
    schedule_type: str
    init_image: str | None = None


class _Model(msgspec.Struct, frozen=True):
    """A served model as A1111 names it."""

    name: str
    sha256: str | None
    filename: str
    served: str  # its name in sdapi (the native `model`)

    @property
    def title(self) -> str:
        return f"{self.name} [{self.sha256[:10]}]" if self.sha256 else self.name

    def named_by(self, value: object) -> bool:
        names = {self.name, self.title, self.filename}
        if self.sha256:
            names |= {self.sha256, self.sha256[:10]}
        return value in names


def _listed(runtime: Runtime) -> list[_Model]:
    """The served models, the default first. A single unnamed model (config `model.path`) shows its folder or file
    name, as A1111 shows a checkpoint's; configured ones show their names. Hashing a model's weights the first time
    reads them: call this off the event loop."""
    models = []
    for entry in sorted(runtime.config.model_entries, key=lambda entry: not entry.default):
        shown = model_name(entry.path) if entry.name == DEFAULT_MODEL_NAME else entry.name
        models.append(_Model(shown, runtime.catalog.sha256(entry.name), entry.path, entry.name))
    return models


async def _models(runtime: Runtime) -> list[_Model]:
    return await asyncio.to_thread(_listed, runtime)


def _checkpoint(body: dict[str, Any], models: list[_Model]) -> _Model:
    """The model override_settings.sd_model_checkpoint names (A1111's per-request model), else the default."""
    settings = body.get("override_settings")
    wanted = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
    return next((model for model in models if wanted is not None and model.named_by(wanted)), models[0])


def _is_empty(value: object) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def _check_options(body: dict[str, Any], models: list[_Model]) -> None:
    """Refuse (422, naming them) the options this service would otherwise have to ignore while they are set."""
    known = set(A1111Generation.__struct_fields__) | _HARMLESS | set(_NEUTRAL)
    refused = [key for key, neutral in _NEUTRAL.items() if key in body and body[key] not in neutral]
    refused += sorted(key for key, value in body.items() if key not in known and not _is_empty(value))
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        refused.append("alwayson_scripts")
    else:  # a script sent switched off ({"args": []} or {"args": [false]}) is fine; any other is not served here
        refused += [f"alwayson_scripts.{name}" for name, value in scripts.items() if not _script_off(value)]
    settings = body.get("override_settings") or {}
    if not isinstance(settings, dict):
        refused.append("override_settings")
    else:
        for key, value in settings.items():
            if key == "sd_model_checkpoint" and any(model.named_by(value) for model in models):
                continue
            if value not in _NEUTRAL_SETTINGS.get(key, ()):
                refused.append(f"override_settings.{key}")
    if refused:
        raise InvalidParameter(
            refused[0], f"不支持的选项：{', '.join(refused)}。sdapi 不实现这些功能，请去掉它们或使用默认值"
        )


def _script_off(value: object) -> bool:
    args = value.get("args") if isinstance(value, dict) else None
    return args in ([], [False], None)


def _sampler(fields: A1111Generation) -> tuple[str | None, bool]:
    """The diffusers scheduler of A1111's sampler name (None: the configured default), and whether the name itself
    asks for Karras sigmas (the older "DPM++ 2M Karras" style)."""
    name = fields.sampler_name or fields.sampler_index
    if not name:
        return None, False
    karras = name.lower().endswith(" karras")
    base = name[: -len(" karras")] if karras else name
    for sampler, scheduler in SAMPLERS.items():
        if base.lower() in (sampler.lower(), *SAMPLER_ALIASES.get(sampler, ())) or base == scheduler:
            return scheduler, karras
    raise InvalidParameter("sampler_name", f"sampler_name 不支持：{name!r}。可选：{', '.join(SAMPLERS)}")


def _schedule_type(fields: A1111Generation) -> bool:
    name = (fields.scheduler or "automatic").lower()
    if name not in SCHEDULE_TYPES:
        known = ", ".join(label.capitalize() for label in SCHEDULE_TYPES)
        raise InvalidParameter("scheduler", f"scheduler 不支持：{fields.scheduler!r}。可选：{known}")
    return SCHEDULE_TYPES[name]


def lora_tags(prompt: str) -> tuple[str, list[LoraRequest]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags (also `<lyco:…>`, the LyCORIS extension's spelling), and
    the LoRAs they name; the weight defaults to 1. Raise InvalidParameter for a tag sdapi cannot apply."""
    loras: list[LoraRequest] = []
    for kind, inside in _LORA_TAG.findall(prompt):
        if kind.lower() == "hypernet":
            raise InvalidParameter("prompt", f"不支持 hypernetwork：<{kind}:{inside}>")
        name, *weights = inside.split(":")
        if len(set(weights)) > 1 or any("=" in weight for weight in weights):
            raise InvalidParameter(
                "prompt", f"<{kind}:{inside}>：只支持 <lora:名称:权重>（文本编码器与 UNet 同一权重）"
            )
        try:
            weight = float(weights[0]) if weights else 1.0
        except ValueError:
            raise InvalidParameter("prompt", f"<{kind}:{inside}>：权重不是数字") from None
        try:
            loras.append(msgspec.convert({"name": name.strip(), "weight": weight}, LoraRequest))
        except msgspec.ValidationError as error:
            raise InvalidParameter("prompt", f"<{kind}:{inside}>：{error}") from None
    return " ".join(_LORA_TAG.sub(" ", prompt).split()), loras


def _init_image(encoded: str, mode: int, width: int | None, height: int | None) -> str:
    """A1111's init image (base64, with or without a data-URL prefix) as a native data URL, resized to width x
    height the way A1111's resize_mode says (0 stretches, 1 scales to cover and crops the middle)."""
    payload = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as opened:
            image_format = opened.format
            size = opened.size
            if width and height and size != (width, height):
                if mode not in _RESIZE_MODES:
                    modes = ", ".join(f"{key} ({name})" for key, name in _RESIZE_MODES.items())
                    raise InvalidParameter("resize_mode", f"resize_mode 不支持：{mode}。可选：{modes}")
                rgb = opened.convert("RGB")
                resized = rgb.resize((width, height)) if mode == 0 else ImageOps.fit(rgb, (width, height))
                buffer = io.BytesIO()
                resized.save(buffer, format="PNG")
                raw, image_format = buffer.getvalue(), "PNG"
    except InvalidParameter:
        raise
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
        raise InvalidParameter("init_images", "init_images[0] 不是有效的 base64 PNG/JPEG 图片") from None
    mime = "jpeg" if image_format == "JPEG" else "png"
    return f"data:image/{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _translate(body: dict[str, Any], models: list[_Model], image_to_image: bool) -> _Translated:
    try:
        # strict=False: A1111's own server (pydantic) reads "20" as 20, and some clients send numbers as strings.
        fields = msgspec.convert(body, A1111Generation, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    _check_options(body, models)
    scheduler, karras_sampler = _sampler(fields)
    karras = _schedule_type(fields) or karras_sampler
    count = fields.batch_size * fields.n_iter
    if count > MAX_IMAGES:
        raise InvalidParameter(
            "batch_size", f"batch_size × n_iter 无效：{fields.batch_size} × {fields.n_iter}。乘积范围 1-{MAX_IMAGES}"
        )
    if not 0 <= fields.seed <= MAX_SEED and fields.seed != -1:
        raise InvalidParameter("seed", f"seed 无效：{fields.seed}。范围 0-{MAX_SEED}，-1 表示随机")
    prompt, loras = lora_tags(fields.prompt)
    init_image = None
    if image_to_image:
        if not fields.init_images:
            raise InvalidParameter("init_images", "img2img 需要 init_images（一张 base64 图片）")
        if len(fields.init_images) > 1:
            raise InvalidParameter("init_images", "只支持一张 init_images")
        init_image = _init_image(fields.init_images[0], fields.resize_mode, fields.width, fields.height)
    native: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": fields.negative_prompt or None,
        "seed": None if fields.seed == -1 else fields.seed,
        "scheduler": scheduler,
        "use_karras_sigmas": karras or None,
        "num_inference_steps": fields.steps,
        "guidance_scale": fields.cfg_scale,
        "num_images": count,
        "output_format": "png",
        "loras": [msgspec.to_builtins(lora) for lora in loras] or None,
        "model": _checkpoint(body, models).served,
    }
    if image_to_image:
        native |= {"init_image": init_image, "strength": fields.denoising_strength}
    else:
        native |= {"width": fields.width, "height": fields.height}
    try:
        request = msgspec.convert({k: v for k, v in native.items() if v is not None}, GenerationRequest)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    label = "Karras" if karras else "Automatic"
    sampler_name = A1111_SAMPLER_NAMES.get(scheduler) if scheduler else None
    return _Translated(request, body, fields, sampler_name, label, init_image)


async def _generate(request: Request[Any, Any, Any], body: dict[str, Any], image_to_image: bool) -> dict[str, Any]:
    runtime = runtime_of(request)
    models = await _models(runtime)
    translated = _translate(body, models, image_to_image)
    model = _checkpoint(body, models)
    view = await run_to_end(request, translated.native, dialect="a1111")
    task = view.task
    if task.error_code is ErrorCode.CANCELLED:  # interrupted (POST /interrupt): A1111 answers without failing
        return _answer(translated, view, [], [], model, interrupted=True)
    if task.error_message is not None:
        raise DialectTaskFailed(task.error_message, task.error_code)
    stored = await image_bytes(runtime, view)
    infotexts = [_infotext_of(raw) for raw in stored]
    images = [base64.b64encode(raw).decode("ascii") for raw in stored] if translated.fields.send_images else []
    if translated.fields.include_init_images and translated.init_image is not None:
        images.append(translated.init_image.split(",", 1)[1])
    return _answer(translated, view, images, infotexts, model)


def _infotext_of(raw: bytes) -> str:
    infotext, _record = read_embedded(raw)
    return infotext or ""


def _answer(
    translated: _Translated,
    view: TaskView,
    images: list[str],
    infotexts: list[str],
    model: _Model,
    interrupted: bool = False,
) -> dict[str, Any]:
    """A1111's response: the images, the request echoed (without its images) and `info`, a JSON string."""
    params, fields = view.task.params, translated.fields
    seeds = params.image_seeds()
    sampler = translated.sampler_name
    if sampler is None and infotexts and infotexts[0]:
        sampler = parse_infotext(infotexts[0]).get("Sampler")
    started = view.task.started_at or view.task.created_at
    info = {
        "prompt": fields.prompt,
        "all_prompts": [fields.prompt] * len(seeds),
        "negative_prompt": fields.negative_prompt,
        "all_negative_prompts": [fields.negative_prompt] * len(seeds),
        "seed": params.seed,
        "all_seeds": seeds,
        "subseed": params.seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": sampler,
        "scheduler": translated.schedule_type,
        "cfg_scale": params.guidance_scale,
        "steps": params.num_inference_steps,
        "batch_size": fields.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model.name,
        "sd_model_hash": model.sha256[:10] if model.sha256 else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": params.strength,
        "extra_generation_params": {"Lora": [f"{lora.name}:{lora.weight:g}" for lora in params.loras]}
        if params.loras
        else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": started.astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdapi {__version__}",
        # sdapi's additions: the task behind this answer, and whether POST /interrupt stopped it.
        "task_id": view.task.id,
        "engine": view.task.engine,
        "interrupted": interrupted,
    }
    parameters = dict(translated.body)
    if "init_images" in parameters and not fields.include_init_images:
        parameters["init_images"] = None
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


class DialectTaskFailed(SdapiError):
    """The task failed: answered with its message and error_code, in A1111's error shape."""

    def __init__(self, message: str, code: ErrorCode | None) -> None:
        super().__init__(message)
        self.code = code


@post("/txt2img", status_code=200, summary="AUTOMATIC1111: txt2img（文生图）")
async def txt2img(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await _generate(request, data, image_to_image=False)


@post("/img2img", status_code=200, summary="AUTOMATIC1111: img2img（图生图）")
async def img2img(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await _generate(request, data, image_to_image=True)


@get("/samplers", summary="AUTOMATIC1111: 采样器列表")
async def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": list(SAMPLER_ALIASES.get(name, ())), "options": {}} for name in SAMPLERS]


@get("/schedulers", summary="AUTOMATIC1111: 调度类型（Schedule type）列表")
async def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": name, "label": name.capitalize(), "aliases": None, "default_rho": 7.0 if karras else -1.0}
        for name, karras in SCHEDULE_TYPES.items()
    ]


@get("/sd-models", summary="AUTOMATIC1111: 模型列表（默认模型在前，附哈希）")
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
        for model in await _models(runtime_of(request))
    ]


@get("/loras", summary="AUTOMATIC1111: LoRA 列表（可在提示词中以 <lora:名称:权重> 使用）")
async def loras(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    runtime = runtime_of(request)
    return [
        {"name": entry.name, "alias": entry.name, "path": entry.name, "metadata": {"type": entry.type}}
        for entry in runtime.library.entries()
        if entry.error is None and entry.fits is not False
    ]


@get("/options", summary="AUTOMATIC1111: 读取设置（当前模型等）")
async def read_options(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return _options((await _models(runtime_of(request)))[0])


def _options(model: _Model) -> dict[str, Any]:
    """The settings A1111 clients read: fixed here, set in config.yaml."""
    return {
        "sd_model_checkpoint": model.title,
        "sd_checkpoint_hash": model.sha256,
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "sd_vae": "Automatic",
    }


@post(
    "/options",
    status_code=200,
    summary="AUTOMATIC1111: 写入设置（只读：仅接受与当前值相同的设置）",
    description="设置在 config.yaml 中修改。可发送 sd_model_checkpoint（默认模型）和 GET /options 中的当前值；"
    "其他设置返回 422 并列出名称。要为一个请求选择其他模型，请在请求的 override_settings.sd_model_checkpoint 中指定。",
)
async def write_options(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    model = (await _models(runtime_of(request)))[0]
    current = _options(model)
    refused = [
        key
        for key, value in data.items()
        if not (key == "sd_model_checkpoint" and model.named_by(value)) and current.get(key) != value
    ]
    if refused:
        raise InvalidParameter(
            refused[0],
            f"设置只读（在 config.yaml 中修改）：{', '.join(refused)}。"
            "为单个请求选择模型：override_settings.sd_model_checkpoint",
        )
    return {}


@get("/progress", summary="AUTOMATIC1111: 调用者正在运行的任务的进度与剩余时间")
async def progress(request: Request[Any, Any, Any]) -> dict[str, Any]:
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
    fraction = task.progress.step / task.progress.total_steps if task.progress and task.progress.total_steps else 0.0
    elapsed = (datetime.now(UTC) - (task.started_at or task.created_at)).total_seconds()
    eta = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
    state |= {
        "job": f"task({task.id})",
        "job_count": task.params.num_images,
        "job_timestamp": (task.started_at or task.created_at).astimezone(UTC).strftime("%Y%m%d%H%M%S"),
        "job_no": task.progress.images_done if task.progress else 0,
        "sampling_step": task.progress.step if task.progress else 0,
        "sampling_steps": task.progress.total_steps if task.progress else task.params.num_inference_steps,
    }
    return {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 2),
        "state": state,
        "current_image": None,
        "textinfo": None,
        "current_task": task.id,
    }


async def _running_tasks(request: Request[Any, Any, Any]) -> list[TaskView]:
    """The caller's own processing tasks (an admin's or a shared key's too: only those its key created)."""
    runtime, caller = runtime_of(request), caller_of(request)
    page = await runtime.service.list(caller, base_url_of(request), TaskStatus.PROCESSING, MAX_PAGE)
    return [view for view in page.tasks if view.task.owner == caller.name]


async def _running_task(request: Request[Any, Any, Any]) -> TaskView | None:
    running = await _running_tasks(request)
    return running[0] if running else None


@post("/interrupt", status_code=200, summary="AUTOMATIC1111: 中断调用者正在运行的任务（不影响其他 Key 的任务）")
async def interrupt(request: Request[Any, Any, Any]) -> dict[str, Any]:
    runtime, caller, base_url = runtime_of(request), caller_of(request), base_url_of(request)
    running = await _running_tasks(request)
    for view in running:
        await cancel_quietly(runtime.service, view.task.id, base_url, caller)
    return {"interrupted": [view.task.id for view in running]}


class PngInfoRequest(msgspec.Struct):
    image: str


@post("/png-info", status_code=200, summary="AUTOMATIC1111: 读取图片中嵌入的生成参数")
async def png_info(data: PngInfoRequest) -> dict[str, Any]:
    payload = data.image.split(",", 1)[1] if data.image.startswith("data:") else data.image
    try:
        raw = base64.b64decode(payload, validate=True)
        infotext, record = read_embedded(raw)
    except (binascii.Error, ValueError, OSError):
        raise InvalidParameter("image", "image 不是有效的 base64 图片") from None
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


@get("/scripts", summary="AUTOMATIC1111: 脚本列表（sdapi 没有脚本）")
async def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


def _error(status: int, error: str, detail: str) -> Response[object]:
    """A1111's error body: {"error", "detail", "body", "errors"} (what its API middleware answers)."""
    headers = {"WWW-Authenticate": 'Basic realm="sdapi"'} if status == 401 else {}
    return Response(
        {"error": error, "detail": detail, "body": "", "errors": detail}, status_code=status, headers=headers
    )


def _sdapi_error(request: Request[Any, Any, Any], error: SdapiError) -> Response[object]:
    if isinstance(error, ClientGone):
        return _error(499, "ClientGone", error.message)
    if isinstance(error, CompatTimeout):
        return _error(504, "Timeout", error.message)
    if isinstance(error, DialectTaskFailed):
        code = error.code.value if error.code else "internal"
        return _error(422 if error.code is ErrorCode.INVALID_INPUT else 500, code, error.message)
    status = status_for(error)
    if status >= 500:
        return _error(status, type(error).__name__, "服务器内部错误" if status == 500 else error.message)
    if isinstance(error, RequestValidationFailed):
        first = error.errors[0] if error.errors else {}
        location = first.get("loc")
        field = str(location[-1]) if isinstance(location, list) and location else None
        message = f"{field}: {first.get('msg', error.message)}" if field else error.message
        return _error(422, "ValidationError", message)
    if isinstance(error, AuthenticationFailed):
        return _error(401, "Unauthorized", error.message)
    # A1111 answers a request it cannot serve with 422; a full queue stays a 429 (with Retry-After).
    response = _error(422 if status == 400 else status, type(error).__name__, error.message)
    if status == 429 and hasattr(error, "retry_after"):  # a full queue or a key over its rate
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[object]:
    status = 422 if error.status_code == 400 else error.status_code
    return _error(status, type(error).__name__, str(error.detail))


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
            read_options,
            write_options,
            progress,
            interrupt,
            png_info,
            scripts,
        ],
        guards=[api_key_guard(callers_by_key(config.api), config.api.key_header, basic=True)],
        tags=["automatic1111"],
        security=[{"BasicAuth": []}, {"APIKeyHeader": []}],
        exception_handlers={SdapiError: _sdapi_error, HTTPException: _http_error},
    )
