"""AUTOMATIC1111's txt2img/img2img request, decoded and translated to the native GenerationRequest: samplers by
A1111 name, schedule types, <lora:…> prompt tags, the init image's resize mode, and the options refused only when set
to a value that would change the picture."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
from PIL import ImageOps

from sdapi.api.dialects.a1111.controlnet import native_units
from sdapi.api.dialects.a1111.models import Checkpoint, checkpoint_of
from sdapi.api.dialects.a1111.settings import VAE_DECODE_METHODS, is_merging_ratio
from sdapi.api.dialects.fields import decoded
from sdapi.config import LimitsConfig
from sdapi.core.params import MIN_SIDE
from sdapi.core.request import MAX_IMAGES, MAX_SEED, GenerationRequest, LoraRequest
from sdapi.core.schedulers import A1111_SAMPLER_NAMES, FLOW_MATCH_EULER
from sdapi.errors import (
    InvalidParameter,
)
from sdapi.media.images import open_image
from sdapi.media.masks import encode_mask, mask_from_image, rounded
from sdapi.media.mime import image_mime

# A1111's sampler names (what its /samplers lists) for every accepted scheduler, with the aliases it also accepts.
# (Flow-match Euler is A1111's "Euler" on a flow-matching model: "Euler" names EulerDiscreteScheduler, which such a
# model runs as flow-match Euler.)
SAMPLERS: dict[str, str] = {
    name: scheduler for scheduler, name in A1111_SAMPLER_NAMES.items() if scheduler != FLOW_MATCH_EULER
}
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
    "restore_faces": (False, None),
    "initial_noise_multiplier": (1, None),
    "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0),
    "disable_extra_networks": (False, None),
}
# Fields that change nothing here: where A1111 saves files, whether it returns grids, the old first-pass size
# fields, the second pass's own sampler and checkpoint (it uses the first pass's), scripts without a script_name.
_HARMLESS = {
    "save_images",
    "do_not_save_samples",
    "do_not_save_grid",
    "override_settings_restore_afterwards",
    "firstphase_width",
    "firstphase_height",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_additional_modules",
    "image_cfg_scale",  # only instruct-pix2pix models read it
    "comments",
    "force_task_id",
    "infotext",
}
# override_settings that may be sent with these values (the model sdapi serves is checked separately).
_NEUTRAL_SETTINGS: dict[str, tuple[Any, ...]] = {
    "CLIP_stop_at_last_layers": tuple(range(1, 13)),  # clip skip, A1111's numbering (clip_skip below)
    "eta_noise_seed_delta": (0,),
    "samples_format": ("png", "jpg", "jpeg", "webp"),  # the images' format (samples_format below)
    "sd_vae_decode_method": tuple(VAE_DECODE_METHODS),  # the native vae_decoder (speed_levers below)
}


def clip_skip(body: dict[str, Any]) -> int | None:
    """The request's override_settings.CLIP_stop_at_last_layers (A1111's clip skip, the native numbering), or None."""
    settings = body.get("override_settings")
    value = settings.get("CLIP_stop_at_last_layers") if isinstance(settings, dict) else None
    return None if value is None else int(value)


# sd_vae values meaning the model's own VAE.
OWN_VAE = ("Automatic", "None", None, "")


def vae_named(value: object) -> str | None:
    """An sd_vae value as the name of a VAE of vae.dir (a file name's stem too), or None: the model's own."""
    return None if value in OWN_VAE else Path(str(value)).stem


def vae_of(body: dict[str, Any]) -> str | None:
    """The request's override_settings.sd_vae as a VAE of vae.dir, or None: the model's own."""
    settings = body.get("override_settings")
    return vae_named(settings.get("sd_vae") if isinstance(settings, dict) else None)


def speed_levers(body: dict[str, Any]) -> dict[str, Any]:
    """The request's override_settings sd_vae_decode_method and token_merging_ratio (check_options let only known
    values through) as the native vae_decoder and token_merging; what it does not name is left out (None)."""
    settings = body.get("override_settings")
    settings = settings if isinstance(settings, dict) else {}
    method, ratio = settings.get("sd_vae_decode_method"), settings.get("token_merging_ratio")
    return {
        "vae_decoder": None if method is None else VAE_DECODE_METHODS[method],
        "token_merging": None if ratio is None else float(ratio),
    }


def samples_format(body: dict[str, Any]) -> str:
    """The request's override_settings.samples_format (A1111's name for the images' format): png, jpg or webp."""
    settings = body.get("override_settings")
    value = settings.get("samples_format", "png") if isinstance(settings, dict) else "png"
    return "jpg" if value == "jpeg" else str(value)


# A1111's inpainting_fill values, and its names for the latent upscalers of the second pass.
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}
LATENT_UPSCALE_MODES = {
    "Latent": "latent",
    "Latent (antialiased)": "latent-antialiased",
    "Latent (bicubic)": "latent-bicubic",
    "Latent (bicubic antialiased)": "latent-bicubic-antialiased",
    "Latent (nearest)": "latent-nearest",
    "Latent (nearest-exact)": "latent-nearest-exact",
}
PIXEL_UPSCALER_NAMES = {"None": "lanczos", "Lanczos": "lanczos", "Nearest": "nearest"}
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
    # img2img inpainting (A1111's API defaults).
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    # txt2img's high-resolution pass.
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    styles: list[str] | None = None
    # Variation seeds: A1111's subseed (-1: random), its strength, and the seed-resize size (0 or -1: none).
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    tiling: bool = False
    # Scripts: "SD upscale" is served (with its script_args in A1111's order).
    script_name: str | None = None
    script_args: list[Any] | None = None
    # Sampler settings (step_options below): DDIM's eta, the ancestral samplers' eta, Euler's churn.
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None
    s_noise: float = 1.0


# A1111Generation's number fields (ints and floats): where a JSON boolean means 0 or 1.
_NUMBER_FIELDS = frozenset(
    field.name
    for field in msgspec.structs.fields(A1111Generation)
    if any(kind in str(field.type) for kind in ("int", "float")) and "bool" not in str(field.type)
)


@dataclass(frozen=True)
class Translated:
    """A decoded A1111 request: the native request, and what the answer echoes."""

    native: GenerationRequest
    body: dict[str, Any]
    fields: A1111Generation
    sampler_name: str | None
    schedule_type: str
    init_image: str | None = None


def _is_empty(value: object) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def check_options(body: dict[str, Any], models: list[Checkpoint]) -> None:
    """Refuse (422, naming them) the options this service would otherwise have to ignore while they are set."""
    known = set(A1111Generation.__struct_fields__) | _HARMLESS | set(_NEUTRAL)
    refused = [key for key, neutral in _NEUTRAL.items() if key in body and body[key] not in neutral]
    refused += sorted(key for key, value in body.items() if key not in known and not _is_empty(value))
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        refused.append("alwayson_scripts")
    else:  # a script sent switched off ({"args": []} or {"args": [false]}) is fine; any other is not served here
        # ControlNet's units are served (sdapi.api.dialects.a1111.controlnet); any other script switched on is not.
        refused += [
            f"alwayson_scripts.{name}"
            for name, value in scripts.items()
            if name.lower() != "controlnet" and not _script_off(value)
        ]
    settings = body.get("override_settings") or {}
    if not isinstance(settings, dict):
        refused.append("override_settings")
    else:
        for key, value in settings.items():
            if key == "sd_model_checkpoint" and any(model.named_by(value) for model in models):
                continue
            if key == "sd_vae" and isinstance(value, str | None):  # a VAE of vae.dir: admission checks the name
                continue
            if key == "token_merging_ratio" and is_merging_ratio(
                value
            ):  # the native token_merging (speed_levers below)
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


# What each sampler's eta means in A1111 and in diffusers: DDIM takes it; the ancestral samplers run diffusers' fixed
# full noise, A1111's eta 1.
_ANCESTRAL = ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
# A1111's k-diffusion samplers that churn (s_churn and the rest); diffusers' Euler alone takes those settings.
_CHURNING = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler")


def _step_options(fields: A1111Generation, scheduler: str | None) -> dict[str, float]:
    """The native step_options of A1111's eta and s_* for the sampler that runs: honoured where diffusers' scheduler
    takes them, accepted where A1111 ignores them too, refused by name where A1111 would use them and diffusers
    cannot."""
    options: dict[str, float] = {}
    if fields.eta is not None:
        if scheduler == "DDIMScheduler":
            options["eta"] = fields.eta
        elif scheduler in _ANCESTRAL and fields.eta != 1:
            raise InvalidParameter("eta", "祖先采样器（Euler a、DPM2 a）的 eta 只能为 1（diffusers 的完整噪声）")
    churn = {"s_churn": fields.s_churn, "s_tmin": fields.s_tmin, "s_noise": fields.s_noise}
    if fields.s_tmax:  # 0 and null: A1111's "no upper bound"
        churn["s_tmax"] = fields.s_tmax
    churns = fields.s_churn > 0
    if scheduler == "EulerDiscreteScheduler" and churns:
        options |= churn
    elif scheduler in _CHURNING and churns:
        raise InvalidParameter("s_churn", "s_churn 只用于 Euler（diffusers 的 Heun、DPM2 不接受随机扰动）")
    return options


# The scripts served, by A1111's names (/sdapi/v1/scripts lists them).
SD_UPSCALE = "sd upscale"


def _sd_upscale(
    fields: A1111Generation, image_to_image: bool, neural: dict[str, float | None]
) -> dict[str, Any] | None:
    """The native sd_upscale of A1111's `script_name: "SD upscale"` and its script_args ([info,] overlap, upscaler
    (an index into /sdapi/v1/upscalers or a name), scale); None without a script; any other script is refused."""
    name = (fields.script_name or "").strip()
    if not name:
        return None
    if name.lower() != SD_UPSCALE:
        raise InvalidParameter("script_name", f"脚本不支持：{name!r}。可用：SD upscale（img2img）")
    if not image_to_image:
        raise InvalidParameter("script_name", "SD upscale 只用于 img2img")
    args = list(fields.script_args or [])
    if len(args) == 4:  # A1111's UI sends its info text first
        args = args[1:]
    overlap = args[0] if len(args) > 0 and args[0] is not None else 64
    upscaler = args[1] if len(args) > 1 and args[1] is not None else 0
    scale = args[2] if len(args) > 2 and args[2] is not None else 2.0
    names = [*PIXEL_UPSCALER_NAMES, *neural]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        if not 0 <= upscaler < len(names):
            message = f"SD upscale 的放大模型序号 {upscaler} 超出范围（0-{len(names) - 1}）"
            raise InvalidParameter("script_args", message)
        upscaler = names[upscaler]
    try:
        return {
            "overlap": int(overlap),
            "upscaler": PIXEL_UPSCALER_NAMES.get(str(upscaler), str(upscaler)),
            "scale": float(scale),
        }
    except (TypeError, ValueError):
        raise InvalidParameter("script_args", "SD upscale 的 script_args：[重叠像素, 放大模型, 倍数]") from None


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


def upscaler_for(name: str | None, neural: dict[str, float | None]) -> str:
    """The native upscaler of A1111's hr_upscaler name: its Latent modes, Lanczos and Nearest by name; a neural
    upscaler installed under that name (case aside); else, for the names of A1111's own neural upscalers
    ("R-ESRGAN 4x+", "ESRGAN_4x", …), the first installed neural upscaler of that scale, or of any; else Lanczos."""
    if not name:
        return "latent"  # A1111's default hr_upscaler
    if name in LATENT_UPSCALE_MODES:
        return LATENT_UPSCALE_MODES[name]
    if name in PIXEL_UPSCALER_NAMES:
        return PIXEL_UPSCALER_NAMES[name]
    for installed in neural:
        if installed.lower() == name.lower():
            return installed
    scale = re.search(r"(\d)x", name)
    same_scale = [n for n, factor in neural.items() if scale and factor == float(scale.group(1))]
    return (same_scale or list(neural) or ["lanczos"])[0]


def _mask(encoded: str, fields: A1111Generation, image_size: tuple[int, int], limits: LimitsConfig) -> str:
    """A1111's mask as a native mask_image: read as A1111 reads it (alpha where not opaque, else luminance),
    rounded to black and white with mask_round, and resized as the init image was."""
    with open_image(decoded(encoded, "mask"), limits.max_init_image_pixels, "mask") as opened:
        mask = mask_from_image(opened)
    if fields.mask_round:
        mask = rounded(mask)
    if mask.size != image_size:
        width, height = image_size
        mask = mask.resize((width, height)) if fields.resize_mode == 0 else ImageOps.fit(mask, (width, height))
    return "data:image/png;base64," + base64.b64encode(encode_mask(mask)).decode("ascii")


def _init_image(encoded: str, mode: int, width: int | None, height: int | None, limits: LimitsConfig) -> str:
    """A1111's init image (base64, with or without a data-URL prefix) as a native data URL, resized to width x
    height the way A1111's resize_mode says (0 stretches, 1 scales to cover and crops the middle). The image's size
    is checked from its header, and the resize target against the limits, before any pixel is decoded."""
    raw = decoded(encoded, "init_images")
    with open_image(raw, limits.max_init_image_pixels, "init_images") as opened:
        if width and height and opened.size != (width, height):
            if mode not in _RESIZE_MODES:
                modes = ", ".join(f"{key} ({name})" for key, name in _RESIZE_MODES.items())
                raise InvalidParameter("resize_mode", f"resize_mode 不支持：{mode}。可选：{modes}")
            _check_target(width, height, limits)
            rgb = opened.convert("RGB")
            resized = rgb.resize((width, height)) if mode == 0 else ImageOps.fit(rgb, (width, height))
            buffer = io.BytesIO()
            resized.save(buffer, format="PNG")
            raw = buffer.getvalue()
    return f"data:image/{image_mime(raw)};base64,{base64.b64encode(raw).decode('ascii')}"


def _check_target(width: int, height: int, limits: LimitsConfig) -> None:
    """A resize target within the sizes the service makes (limits.max_width/max_height)."""
    for field, side, maximum in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if not MIN_SIDE <= side <= maximum:
            raise InvalidParameter(field, f"{field} 无效：{side}。范围 {MIN_SIDE}-{maximum}")


def _inpainting(fields: A1111Generation, init_image: str, limits: LimitsConfig) -> dict[str, Any]:
    """The native inpainting fields of an img2img request with a mask."""
    assert fields.mask is not None
    with open_image(decoded(init_image, "init_images"), limits.max_init_image_pixels, "init_images") as opened:
        size = opened.size
    if fields.inpainting_fill not in INPAINTING_FILL:
        raise InvalidParameter("inpainting_fill", f"inpainting_fill 不支持：{fields.inpainting_fill}。可选：0-3")
    # One blur radius here: mask_blur when sent, else the larger of A1111's separate x and y radii.
    blur = fields.mask_blur if fields.mask_blur is not None else max(fields.mask_blur_x, fields.mask_blur_y)
    return {
        "mask_image": _mask(fields.mask, fields, size, limits),
        "mask_blur": blur,
        "mask_invert": bool(fields.inpainting_mask_invert),
        "masked_content": INPAINTING_FILL[fields.inpainting_fill],
        "inpaint_area": "masked" if fields.inpaint_full_res else "whole",
        "inpaint_padding": fields.inpaint_full_res_padding,
    }


def _hires(fields: A1111Generation, neural: dict[str, float | None]) -> dict[str, Any]:
    """The native second pass of a txt2img request with enable_hr."""
    hires: dict[str, Any] = {
        "upscaler": upscaler_for(fields.hr_upscaler, neural),
        "steps": fields.hr_second_pass_steps or None,
        "strength": fields.denoising_strength if fields.denoising_strength is not None else 0.7,
        "prompt": fields.hr_prompt or None,
        "negative_prompt": fields.hr_negative_prompt or None,
    }
    if fields.hr_resize_x or fields.hr_resize_y:
        hires |= {"width": fields.hr_resize_x or None, "height": fields.hr_resize_y or None}
    else:
        hires["scale"] = fields.hr_scale
    return {key: value for key, value in hires.items() if value is not None}


def _booleans_as_numbers(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with JSON booleans read as 0 and 1 where A1111's schema has a number: its pydantic models take them
    (several clients send `"inpainting_mask_invert": false`), msgspec does not."""
    return {
        key: int(value) if isinstance(value, bool) and key in _NUMBER_FIELDS else value for key, value in body.items()
    }


def translate(
    body: dict[str, Any],
    models: list[Checkpoint],
    image_to_image: bool,
    limits: LimitsConfig,
    neural: dict[str, float | None] | None = None,
) -> Translated:
    """`neural`: the installed neural upscalers (name -> scale) hr_upscaler names may map to."""
    try:
        # strict=False: A1111's own server (pydantic) reads "20" as 20, and some clients send numbers as strings.
        fields = msgspec.convert(_booleans_as_numbers(body), A1111Generation, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    check_options(body, models)
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
        init_image = _init_image(fields.init_images[0], fields.resize_mode, fields.width, fields.height, limits)
    native: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": fields.negative_prompt or None,
        "seed": None if fields.seed == -1 else fields.seed,
        "scheduler": scheduler,
        "use_karras_sigmas": karras or None,
        "num_inference_steps": fields.steps,
        "guidance_scale": fields.cfg_scale,
        "num_images": count,
        "output_format": samples_format(body),  # check_options let only png, jpg, jpeg or webp through
        "clip_skip": clip_skip(body),  # check_options let only 1-12 through
        "styles": fields.styles or None,
        "tiling": True if fields.tiling else None,
        "prompt_syntax": "a1111",  # always, as A1111 reads its prompts
        "step_options": _step_options(fields, scheduler) or None,
        "vae": vae_of(body),
        **speed_levers(body),
        "variation_seed": None if fields.subseed == -1 else fields.subseed,
        "variation_strength": fields.subseed_strength or None,
        "seed_resize_from_width": fields.seed_resize_from_w if fields.seed_resize_from_w > 0 else None,
        "seed_resize_from_height": fields.seed_resize_from_h if fields.seed_resize_from_h > 0 else None,
        "loras": [msgspec.to_builtins(lora) for lora in loras] or None,
        "model": checkpoint_of(body, models).served,
    }
    pixel_side = min(fields.width, fields.height) if fields.width and fields.height else None
    units, image_prompts = native_units(body.get("alwayson_scripts"), init_image, pixel_side)
    native["controlnets"] = units or None
    native["ip_adapters"] = image_prompts or None
    native["sd_upscale"] = _sd_upscale(fields, image_to_image, neural or {})
    if image_to_image:
        assert init_image is not None
        native |= {"init_image": init_image, "strength": fields.denoising_strength}
        if fields.mask:
            native |= _inpainting(fields, init_image, limits)
    else:
        native |= {"width": fields.width, "height": fields.height}
        if fields.enable_hr:
            native["hires"] = _hires(fields, neural or {})
    try:
        request = msgspec.convert({k: v for k, v in native.items() if v is not None}, GenerationRequest)
    except msgspec.ValidationError as error:
        raise InvalidParameter("body", str(error)) from None
    label = "Karras" if karras else "Automatic"
    sampler_name = A1111_SAMPLER_NAMES.get(scheduler) if scheduler else None
    return Translated(request, body, fields, sampler_name, label, init_image)
