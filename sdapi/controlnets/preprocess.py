"""The preprocessors: what turns a client's picture into the map a ControlNet follows (edges, a colour grid, a
depth map…). Checking a unit's preprocessor and options is pure (any node does it at submit); running one needs
OpenCV (and transformers, for depth), imported on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.request import PreprocessorOption
from sdapi.errors import InvalidParameter


@dataclass(frozen=True)
class Option:
    """One setting of a preprocessor: its kind, bounds and default."""

    kind: type
    default: float | int | bool
    low: float | None = None
    high: float | None = None


# Every preprocessor takes `resolution`: the short side it runs at (the picture is scaled to it first; A1111's
# processor_res), default the picture's own.
_RESOLUTION = Option(int, 0, 0, 4096)


@dataclass(frozen=True)
class Preprocessor:
    options: dict[str, Option] = field(default_factory=dict)
    needs_mask: bool = False
    annotator: str | None = None  # the folder under controlnet.annotators_dir it needs
    unavailable: str | None = None  # why it cannot run here


PREPROCESSORS: dict[str, Preprocessor] = {
    "none": Preprocessor(),
    "canny": Preprocessor({"low_threshold": Option(int, 100, 0, 255), "high_threshold": Option(int, 200, 0, 255)}),
    "invert": Preprocessor(),
    # threshold 0: Otsu's choice, as A1111's binary does.
    "binary": Preprocessor({"threshold": Option(int, 0, 0, 255)}),
    "tile": Preprocessor({"down_sampling_rate": Option(float, 2.0, 1.0, 8.0), "blur": Option(float, 0.0, 0.0, 16.0)}),
    "shuffle": Preprocessor({"seed": Option(int, 0, 0, 2**32 - 1)}),
    "inpaint": Preprocessor(needs_mask=True),
    "scribble_xdog": Preprocessor({"threshold": Option(int, 32, 1, 64)}),
    "color": Preprocessor({"block": Option(int, 64, 4, 256)}),
    "depth": Preprocessor(annotator="depth"),
    "openpose": Preprocessor(
        unavailable="openpose 预处理器不可用："
        "没有适配本服务依赖（torch 2.13、无 torchvision）且仍在维护的 OpenPose 加载器"
    ),
}


def check_preprocessor(
    name: str, options: dict[str, PreprocessorOption], field_name: str, has_mask: bool, annotators: Path
) -> dict[str, PreprocessorOption]:
    """The options with defaults filled in; raise InvalidParameter naming `field_name` for an unknown
    preprocessor, option or value, one that needs a mask the request lacks, or a model that is not installed."""
    known = PREPROCESSORS.get(name)
    if known is None:
        raise InvalidParameter(field_name, f"预处理器不支持：{name!r}。可选：{', '.join(PREPROCESSORS)}")
    if known.unavailable:
        raise InvalidParameter(field_name, known.unavailable)
    if known.needs_mask and not has_mask:
        raise InvalidParameter(field_name, f"{name} 预处理器需要 mask_image（与 init_image 一起）")
    if known.annotator is not None and not (annotators / known.annotator / "config.json").is_file():
        raise InvalidParameter(
            field_name,
            f"{name} 预处理器需要模型：请把 transformers 的深度估计模型（如 Intel/dpt-hybrid-midas、"
            f"depth-anything/Depth-Anything-V2-Small-hf）放到 {annotators / known.annotator}",
        )
    specs = {**known.options, "resolution": _RESOLUTION}
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise InvalidParameter(
            field_name, f"{name} 不接受 preprocessor_options：{', '.join(unknown)}。可用：{', '.join(specs)}"
        )
    checked: dict[str, PreprocessorOption] = {}
    for option_name, spec in specs.items():
        value = options.get(option_name, spec.default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (spec.kind is int and value != int(value)):
            raise InvalidParameter(
                field_name, f"{name} 的 {option_name} 必须是{'整数' if spec.kind is int else '数字'}"
            )
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            raise InvalidParameter(field_name, f"{name} 的 {option_name} 无效：{value}。范围 {spec.low}-{spec.high}")
        checked[option_name] = spec.kind(value)
    return checked


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _canny(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    import cv2

    return cv2.Canny(_rgb(image), int(options["low_threshold"]), int(options["high_threshold"]))


def _binary(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY)
    threshold = int(options["threshold"])
    flags = cv2.THRESH_BINARY_INV | (cv2.THRESH_OTSU if threshold == 0 else 0)
    _, binary = cv2.threshold(grey, threshold, 255, flags)  # dark strokes become white lines on black
    return binary


def _tile(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    rate = float(options["down_sampling_rate"])
    small = image.convert("RGB").resize(
        (max(round(image.width / rate), 1), max(round(image.height / rate), 1)), Image.Resampling.BICUBIC
    )
    result = small.resize(image.size, Image.Resampling.BICUBIC)
    if options["blur"]:
        from PIL import ImageFilter

        result = result.filter(ImageFilter.GaussianBlur(float(options["blur"])))
    return np.asarray(result)


def _shuffle(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    """The picture's content moved around by a smooth random flow (seeded): colours and textures without layout."""
    import cv2

    pixels = _rgb(image)
    height, width = pixels.shape[:2]
    rng = np.random.default_rng(int(options["seed"]))
    grid = max(min(height, width) // 32, 2)

    def flow(size: int) -> np.ndarray:
        coarse = rng.random((grid, grid)).astype(np.float32) * size
        return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

    return cv2.remap(pixels, flow(width), flow(height), interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _xdog(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    """Scribble lines from a difference of Gaussians: white strokes where the picture has edges."""
    import cv2

    pixels = _rgb(image).astype(np.float32)
    fine, coarse = cv2.GaussianBlur(pixels, (0, 0), 0.5), cv2.GaussianBlur(pixels, (0, 0), 5.0)
    difference = np.min(coarse - fine, axis=2).clip(-255, 0)  # how much darker than its surroundings
    lines = np.zeros(difference.shape, np.uint8)
    lines[-2 * difference > float(options["threshold"])] = 255
    return lines


def _color(image: Image.Image, options: dict[str, Any]) -> np.ndarray:
    block = int(options["block"])
    small = image.convert("RGB").resize(
        (max(image.width // block, 1), max(image.height // block, 1)), Image.Resampling.BICUBIC
    )
    return np.asarray(small.resize(image.size, Image.Resampling.NEAREST))


def _inpaint(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """The picture with what the mask repaints blacked out: what an inpainting ControlNet is shown."""
    assert mask is not None  # checked at submit
    pixels = _rgb(image).copy()
    pixels[np.asarray(mask.resize(image.size)) >= 128] = 0
    return pixels


@functools.lru_cache(maxsize=1)
def _depth_estimator(folder: str) -> Any:
    """transformers' depth-estimation pipeline on the model in `folder`, loaded once (it is the slow part)."""
    from transformers import pipeline

    with MODULES_BUILT_ONE_AT_A_TIME:
        return pipeline("depth-estimation", model=folder, device="cpu")


def _depth(image: Image.Image, annotators: Path) -> np.ndarray:
    depth = _depth_estimator(str(annotators / "depth"))(image.convert("RGB"))["depth"]
    return np.asarray(depth.convert("RGB").resize(image.size))


def run_preprocessor(
    name: str, image: Image.Image, options: dict[str, Any], mask: Image.Image | None, annotators: Path
) -> Image.Image:
    """The map ControlNet `name`'s preprocessor makes of `image` (RGB), at the picture's own size (scaled to
    `resolution` on its short side first when set)."""
    resolution = int(options.get("resolution", 0))
    if resolution and min(image.size) != resolution:
        scale = resolution / min(image.size)
        image = image.resize((max(round(image.width * scale), 1), max(round(image.height * scale), 1)))
    if name == "none":
        result = _rgb(image)
    elif name == "invert":
        result = 255 - _rgb(image)
    elif name == "inpaint":
        result = _inpaint(image, mask)
    elif name == "depth":
        result = _depth(image, annotators)
    else:
        makers = {"canny": _canny, "binary": _binary, "tile": _tile, "shuffle": _shuffle}
        makers |= {"scribble_xdog": _xdog, "color": _color}
        result = makers[name](image, options)
    return Image.fromarray(result).convert("RGB")
