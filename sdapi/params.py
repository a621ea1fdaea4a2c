"""The generation request as clients send it, and the rules that turn it into GenerationParams. Pure."""

from __future__ import annotations

import random
from typing import Annotated

import msgspec

from sdapi.config import DefaultsConfig, LimitsConfig
from sdapi.errors import InvalidParameter
from sdapi.loras import LoraRequest, LoraSpec
from sdapi.schedulers import SCHEDULER_NAMES

OUTPUT_FORMATS = ("png", "jpg", "jpeg")
MAX_IMAGES = 10
MIN_SIDE = 64
# Seeds are unsigned 32-bit integers, as in A1111 and most clients; image k of a batch uses seed + k.
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000


class GenerationRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /api/v1/generate, field for field as the API document defines it."""

    prompt: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=MAX_PROMPT_CHARS, description="提示词，描述要生成的图片内容"),
    ]
    init_image: Annotated[
        str | None,
        msgspec.Meta(
            description="初始图片的base64编码（包含 data:image/png;base64, 或 data:image/jpeg;base64, 前缀）。"
            "提供此参数时执行图生图"
        ),
    ] = None
    negative_prompt: (
        Annotated[
            str,
            msgspec.Meta(max_length=MAX_PROMPT_CHARS, description="负面提示词，描述不希望在图片中出现的内容"),
        ]
        | None
    ) = None
    width: (
        Annotated[
            int,
            msgspec.Meta(gt=0, description="图片宽度（像素，8的倍数）。仅文生图有效；null 时用配置 defaults.width"),
        ]
        | None
    ) = None
    height: (
        Annotated[
            int,
            msgspec.Meta(gt=0, description="图片高度（像素，8的倍数）。仅文生图有效；null 时用配置 defaults.height"),
        ]
        | None
    ) = None
    num_images: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMAGES, description="生成图片张数，范围：1-10")] = 1
    num_inference_steps: (
        Annotated[int, msgspec.Meta(ge=1, description="推理步数，建议20-50；null 时用配置默认值")] | None
    ) = None
    guidance_scale: (
        Annotated[float, msgspec.Meta(ge=0.0, le=30.0, description="引导强度（CFG Scale），0-30，建议7.0-12.0")] | None
    ) = None
    strength: (
        Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="图生图强度，范围0.0-1.0。仅图生图有效")] | None
    ) = None
    scheduler: Annotated[str | None, msgspec.Meta(description="采样方法名称：" + "、".join(SCHEDULER_NAMES))] = None
    seed: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=MAX_SEED,
                description="随机种子（0-4294967295）。相同seed与参数生成相同图片；第k张图片使用 seed+k；"
                "不指定时随机选取并记录在任务上",
            ),
        ]
        | None
    ) = None
    output_format: Annotated[str, msgspec.Meta(description="输出图片格式，可选：png、jpg、jpeg")] = "png"
    callback_url: Annotated[
        str | None, msgspec.Meta(description="回调URL。生成完成后将结果通过POST请求推送到该URL")
    ] = None
    loras: Annotated[
        list[LoraRequest] | None,
        msgspec.Meta(
            description="本次请求使用的 LoRA/LoHa/LoKr 列表：[{name, weight}]，weight 范围 -2 到 2（默认 1.0）。"
            "配置 loras.defaults 中的 LoRA 总会加上；同名时以请求的权重为准"
        ),
    ] = None


class InitImageInfo(msgspec.Struct, frozen=True):
    """What the service keeps about a decoded init image next to its bytes."""

    width: int
    height: int
    format: str  # "png" | "jpeg"


class GenerationParams(msgspec.Struct, frozen=True, kw_only=True):
    """A request with every default applied and every rule checked: what the engine runs."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_images: int
    num_inference_steps: int
    guidance_scale: float
    strength: float | None  # only for image-to-image
    scheduler: str | None  # None: the model's own scheduler
    seed: int
    output_format: str
    init_image: InitImageInfo | None = None
    callback_url: str | None = None
    loras: tuple[LoraSpec, ...] = ()

    @property
    def is_image_to_image(self) -> bool:
        return self.init_image is not None

    def image_seeds(self) -> list[int]:
        """The seed of each image: image k starts from the latents of seed + k."""
        return [self.seed + k for k in range(self.num_images)]


def _check_side(field: str, value: int, maximum: int) -> None:
    if value % 8 != 0 or not MIN_SIDE <= value <= maximum:
        raise InvalidParameter(
            field,
            f"{field} 无效：{value}。必须是8的倍数，范围 {MIN_SIDE}-{maximum}",
        )


def output_side(input_side: int) -> int:
    """Image-to-image output side: the input's side rounded down to a multiple of 8."""
    return input_side - input_side % 8


def resolve_params(
    request: GenerationRequest,
    defaults: DefaultsConfig,
    limits: LimitsConfig,
    init_image: InitImageInfo | None = None,
    rng: random.Random | None = None,
    loras: tuple[LoraSpec, ...] = (),
) -> GenerationParams:
    """Apply config defaults to a decoded request and check the rules the schema cannot; raise InvalidParameter."""
    output_format = request.output_format.lower()
    if output_format not in OUTPUT_FORMATS:
        raise InvalidParameter(
            "output_format",
            f"output_format 不支持：{request.output_format!r}。可选：{', '.join(OUTPUT_FORMATS)}",
        )
    if request.scheduler is not None and request.scheduler not in SCHEDULER_NAMES:
        raise InvalidParameter(
            "scheduler",
            f"scheduler 不支持：{request.scheduler!r}。可选：{', '.join(SCHEDULER_NAMES)}",
        )
    steps = request.num_inference_steps or defaults.num_inference_steps
    if steps > limits.max_inference_steps:
        raise InvalidParameter(
            "num_inference_steps",
            f"num_inference_steps 无效：{steps}。范围 1-{limits.max_inference_steps}",
        )
    if init_image is None:
        width = request.width if request.width is not None else defaults.width
        height = request.height if request.height is not None else defaults.height
        _check_side("width", width, limits.max_width)
        _check_side("height", height, limits.max_height)
        strength = None
    else:
        # The seed: width/height only apply to text-to-image; the output takes the input's size.
        width, height = output_side(init_image.width), output_side(init_image.height)
        if not (MIN_SIDE <= width <= limits.max_width and MIN_SIDE <= height <= limits.max_height):
            raise InvalidParameter(
                "init_image",
                f"init_image 尺寸不支持：{init_image.width}x{init_image.height}。"
                f"宽度范围 {MIN_SIDE}-{limits.max_width}，高度范围 {MIN_SIDE}-{limits.max_height}",
            )
        strength = request.strength if request.strength is not None else defaults.strength
    seed = request.seed if request.seed is not None else (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        num_images=request.num_images,
        num_inference_steps=steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else defaults.guidance_scale,
        strength=strength,
        scheduler=request.scheduler if request.scheduler is not None else defaults.scheduler,
        seed=seed,
        output_format=output_format,
        init_image=init_image,
        callback_url=request.callback_url,
        loras=loras,
    )
