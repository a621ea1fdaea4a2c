"""AUTOMATIC1111's ControlNet extension, as its API clients use it: units in `alwayson_scripts.controlnet.args` on
txt2img and img2img, translated to native ControlNet units, and the extension's own routes under /controlnet.

Module names are the extension's (`canny`, `depth_midas`, `tile_resample`, `t2ia_color_grid`…), mapped to the native
preprocessors; `threshold_a`/`threshold_b` become the options each reads (canny's low and high thresholds…). Model
names may carry the extension's hash suffix ("control_v11p_sd15_canny [d14c016b]"). Units that are not enabled, or
name no model, are left out, as the extension does with the empty units clients send.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from litestar import Request, get, post

from sdapi.api.dialects.a1111.errors import a1111_errors
from sdapi.api.dialects.common import config_of, extras_of, status_of
from sdapi.api.dialects.fields import decoded
from sdapi.errors import InvalidParameter
from sdapi.media.mime import base64_image_mime

# The extension's module -> (native preprocessor, {threshold_a/b -> native option}).
MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "none": ("none", {}),
    "canny": ("canny", {"threshold_a": "low_threshold", "threshold_b": "high_threshold"}),
    "invert (from white bg & black line)": ("invert", {}),
    "invert": ("invert", {}),
    "threshold": ("binary", {"threshold_a": "threshold"}),
    "binary": ("binary", {"threshold_a": "threshold"}),
    "tile_resample": ("tile", {"threshold_a": "down_sampling_rate"}),
    "tile": ("tile", {"threshold_a": "down_sampling_rate"}),
    "shuffle": ("shuffle", {}),
    "inpaint_only": ("inpaint", {}),
    "inpaint_global_harmonious": ("inpaint", {}),
    "inpaint": ("inpaint", {}),
    "scribble_xdog": ("scribble_xdog", {"threshold_a": "threshold"}),
    "t2ia_color_grid": ("color", {}),
    "color": ("color", {}),
    "depth_midas": ("depth", {}),
    "depth_anything": ("depth", {}),
    "depth_anything_v2": ("depth", {}),
    "depth": ("depth", {}),
    "openpose": ("openpose", {}),
    "openpose_full": ("openpose", {}),
}
_RESIZE = {0: "resize", 1: "crop", 2: "fill", "just resize": "resize", "crop and resize": "crop"}
_RESIZE |= {"resize and fill": "fill", "inner fit (scale to fit)": "crop", "outer fit (shrink to fit)": "fill"}
_RESIZE |= {"envelope (outer fit)": "fill"}
_MODES = {0: "balanced", 1: "prompt", 2: "controlnet", "balanced": "balanced"}
_MODES |= {"my prompt is more important": "prompt", "controlnet is more important": "controlnet"}
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]+\]$")
# The extension's defaults for the sliders a client leaves at webuiapi's 64.
_UNSET = (None, -1)


def script_of(scripts: dict[str, Any], name: str = "controlnet") -> Any:
    """The `alwayson_scripts` entry named `name`, its case aside (webuiapi sends "ControlNet"), as A1111 reads it."""
    return next((value for key, value in scripts.items() if key.lower() == name), None)


def _choice(value: Any, table: dict[Any, str], field: str) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        known = ", ".join(str(name) for name in table if isinstance(name, str))
        raise InvalidParameter(
            field, f"{field} 不支持：{value!r}。可选：{known}，或 0-{max(k for k in table if isinstance(k, int))}"
        )
    return table[key]


def _data_url(encoded: str) -> str:
    if encoded.startswith("data:"):
        return encoded
    return f"data:image/{base64_image_mime(encoded)};base64,{encoded}"


def _options(unit: dict[str, Any], module: str, pixel_side: int | None) -> dict[str, Any]:
    preprocessor, sliders = MODULES[module]
    options: dict[str, Any] = {}
    for slider, option in sliders.items():
        value = unit.get(slider)
        if value not in _UNSET:
            options[option] = int(value) if option != "down_sampling_rate" else float(value)
    if preprocessor == "canny" and options.get("low_threshold") == 64 and options.get("high_threshold") == 64:
        options = {}  # webuiapi's untouched sliders: the extension's canny defaults (100, 200) apply
    resolution = unit.get("processor_res")
    if unit.get("pixel_perfect") and pixel_side:
        resolution = pixel_side
    if isinstance(resolution, int | float) and resolution > 0 and preprocessor != "none":
        options["resolution"] = int(resolution)
    return options


def native_units(
    scripts: Any, init_image: str | None, pixel_side: int | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The native ControlNet units and IP-Adapter image prompts (the extension's `ip-adapter_*` modules) of an
    A1111 request's alwayson_scripts (empty when it has none)."""
    if not isinstance(scripts, dict):
        return [], []
    script = script_of(scripts)
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        return [], []
    units: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []
    for index, unit in enumerate(args):
        field = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(unit, dict):
            if unit in (False, None):
                continue
            raise InvalidParameter(field, f"{field} 必须是 ControlNet 单元对象")
        model = unit.get("model") or "None"
        if not unit.get("enabled", True) or model == "None":
            continue
        module = str(unit.get("module") or "none").lower()
        image = unit.get("image") or unit.get("input_image")
        if isinstance(image, dict):
            image = image.get("image")
        if module.startswith("ip-adapter"):  # an image prompt: the picture's look, not a map to follow
            if not image:
                raise InvalidParameter(field, f"{field}.image 缺少 IP-Adapter 的参考图片")
            name = _HASH_SUFFIX.sub("", str(model))
            prompts.append({"model": name, "image": _data_url(str(image)), "weight": float(unit.get("weight", 1.0))})
            continue
        if module not in MODULES:
            raise InvalidParameter(field, f"{field}.module 不支持：{module!r}。可选：{', '.join(MODULES)}")
        if not image:
            if init_image is None:
                raise InvalidParameter(field, f"{field}.image 缺少控制图片（txt2img 没有可代替的 init_images）")
            image = init_image  # the extension's img2img uses the init image for a unit without one
        units.append(
            {
                "model": _HASH_SUFFIX.sub("", str(model)),
                "image": _data_url(str(image)),
                "preprocessor": MODULES[module][0],
                "preprocessor_options": _options(unit, module, pixel_side),
                "weight": float(unit.get("weight", 1.0)),
                "guidance_start": float(unit.get("guidance_start", 0.0)),
                "guidance_end": float(unit.get("guidance_end", 1.0)),
                "control_mode": _choice(unit.get("control_mode", 0), _MODES, f"{field}.control_mode"),
                "resize_mode": _choice(unit.get("resize_mode", 1), _RESIZE, f"{field}.resize_mode"),
            }
        )
    return units, prompts


# -- the extension's routes (/controlnet/...) --------------------------------------------------------------------


@get("/version", summary="AUTOMATIC1111 ControlNet: 版本", responses=a1111_errors())
async def version() -> dict[str, int]:
    return {"version": 2}


def _model_names(request: Request[Any, Any, Any]) -> list[str]:
    """The ControlNets, then the IP-Adapters (the extension keeps both in its models folder), with hash suffixes."""
    status = status_of(request)
    named = [(entry.name, entry.sha256, entry.error) for entry in status.listed("controlnets")]
    named += [(entry.name, entry.sha256, entry.error) for entry in status.listed("ip-adapters")]
    return [f"{name} [{sha256[:8]}]" for name, sha256, error in named if error is None]


@get("/model_list", summary="AUTOMATIC1111 ControlNet: 模型列表（名称 [sha256 前 8 位]）", responses=a1111_errors())
async def model_list(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    return {"model_list": _model_names(request)}


# The extension's IP-Adapter modules: their units become image prompts (the encoder comes with the adapter).
IP_ADAPTER_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_h", "ip-adapter_clip_g")


def _served_modules() -> list[str]:
    return [*(name for name, (kind, _) in MODULES.items() if kind != "openpose"), *IP_ADAPTER_MODULES]


@get("/module_list", summary="AUTOMATIC1111 ControlNet: 预处理器列表", responses=a1111_errors())
async def module_list() -> dict[str, Any]:
    details = {name: {"model_free": False, "sliders": []} for name in _served_modules()}
    return {"module_list": _served_modules(), "module_detail": details}


@get("/control_types", summary="AUTOMATIC1111 ControlNet: 控制类型", responses=a1111_errors())
async def control_types(request: Request[Any, Any, Any]) -> dict[str, Any]:
    models = ["None", *_model_names(request)]
    kinds = {"All": _served_modules(), "Canny": ["canny"], "Depth": ["depth_midas"], "Tile": ["tile_resample"]}
    kinds |= {"Inpaint": ["inpaint_only"], "Scribble": ["scribble_xdog"], "Shuffle": ["shuffle"]}
    kinds["IP-Adapter"] = list(IP_ADAPTER_MODULES)
    return {
        "control_types": {
            kind: {"module_list": modules, "model_list": models, "default_option": modules[0], "default_model": "None"}
            for kind, modules in kinds.items()
        }
    }


@get("/settings", summary="AUTOMATIC1111 ControlNet: 设置", responses=a1111_errors())
async def settings(request: Request[Any, Any, Any]) -> dict[str, int]:
    return {"control_net_unit_count": config_of(request).controlnet.max_units}


@post("/detect", status_code=200, summary="AUTOMATIC1111 ControlNet: 预处理预览", responses=a1111_errors(413, 422))
async def detect(data: dict[str, Any], request: Request[Any, Any, Any]) -> dict[str, Any]:
    module = str(data.get("controlnet_module") or "none").lower()
    if module not in MODULES:
        raise InvalidParameter("controlnet_module", f"controlnet_module 不支持：{module!r}。可选：{', '.join(MODULES)}")
    images = data.get("controlnet_input_images") or data.get("controlnet_images") or []
    if not isinstance(images, list) or not images:
        raise InvalidParameter("controlnet_input_images", "controlnet_input_images 缺少图片（base64 列表）")
    unit = {"threshold_a": data.get("controlnet_threshold_a"), "threshold_b": data.get("controlnet_threshold_b")}
    unit["processor_res"] = data.get("controlnet_processor_res")
    options = _options(unit, module, None)
    masks = data.get("controlnet_masks") or []
    made = []
    for index, encoded in enumerate(images):
        field = f"controlnet_input_images[{index}]"
        raw = decoded(encoded, field)
        mask = decoded(masks[index], f"controlnet_masks[{index}]") if index < len(masks) and masks[index] else None
        png = await extras_of(request).detect(raw, MODULES[module][0], options, mask)
        made.append(base64.b64encode(png).decode("ascii"))
    return {"images": made, "info": "Success"}
