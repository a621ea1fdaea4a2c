"""What a client may put in a request, as value types with their ranges: the generation request, its LoRA entries
and the ranges of every field. Pure: config.py and params.py build on these (the sampler tables are in schedulers.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from sdapi.core.schedulers import EXTRA_SCHEDULER_NAMES, KARRAS_SCHEDULERS, SCHEDULER_NAMES, SchedulerOptionValue

OUTPUT_FORMATS = ("png", "jpg", "jpeg", "webp")  # the contract's three, and WebP
# The formats output_compression applies to (PNG is lossless).
LOSSY_OUTPUT_FORMATS = ("jpg", "jpeg", "webp")
MAX_IMAGES = 10
# Seeds are unsigned 32-bit integers, as in A1111 and most clients; image k of a batch uses seed + k.
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000
# A LoRA's weight lies in [-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT], in requests, in loras.defaults and in exports.
MAX_LORA_WEIGHT = 2.0


class LoraRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One entry of a request's `loras` list (and of the config's `loras.defaults`)."""

    name: Annotated[str, msgspec.Meta(min_length=1, description="LoRA 名称（loras.dir 中的文件名，不含扩展名）")]
    weight: Annotated[
        float, msgspec.Meta(ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT, description="权重，范围 -2 到 2")
    ] = 1.0


class LoraSpec(msgspec.Struct, frozen=True):
    """A resolved LoRA of a task: the file's content hash pins exactly what was validated and will be applied."""

    name: str
    weight: float
    sha256: str


class EmbeddingSpec(msgspec.Struct, frozen=True):
    """A textual-inversion embedding a task's prompt names, pinned to the content that was checked."""

    name: str
    sha256: str


class VaeSpec(msgspec.Struct, frozen=True):
    """The VAE (vae.dir) a task runs instead of its model's own, pinned to the content that was checked."""

    name: str
    sha256: str


MaskedContent = Literal["original", "fill", "latent_noise", "latent_nothing"]
InpaintArea = Literal["whole", "masked"]
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 256


class Outpaint(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How far the canvas grows on each side, in pixels (multiples of 8); the original sits at (left, top)."""

    left: Annotated[int, msgspec.Meta(ge=0, description="左侧扩展像素（8的倍数）")] = 0
    right: Annotated[int, msgspec.Meta(ge=0, description="右侧扩展像素（8的倍数）")] = 0
    top: Annotated[int, msgspec.Meta(ge=0, description="上方扩展像素（8的倍数）")] = 0
    bottom: Annotated[int, msgspec.Meta(ge=0, description="下方扩展像素（8的倍数）")] = 0


# The built-in upscalers of the high-resolution pass: the latent ones resize the first pass's latents (torch's
# interpolation modes; A1111's "Latent …" names), the others its decoded pixels. Neural upscalers add their names.
LATENT_UPSCALERS = {
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-bicubic-antialiased": ("bicubic", True),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
}
PIXEL_UPSCALERS = ("lanczos", "nearest")
MAX_HIRES_SCALE = 4.0


class HiresRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The high-resolution second pass: upscale the first picture, then denoise it again at `strength`."""

    scale: Annotated[float, msgspec.Meta(ge=1.0, le=MAX_HIRES_SCALE, description="放大倍数（1-4），默认 2")] | None = (
        None
    )
    width: Annotated[int, msgspec.Meta(gt=0, description="放大后的宽度（代替 scale；8的倍数）")] | None = None
    height: Annotated[int, msgspec.Meta(gt=0, description="放大后的高度（代替 scale；8的倍数）")] | None = None
    upscaler: Annotated[
        str,
        msgspec.Meta(
            description="放大方法："
            + "、".join([*LATENT_UPSCALERS, *PIXEL_UPSCALERS])
            + "，或 upscalers.dir 中的神经网络放大模型（GET /api/v1/upscalers）"
        ),
    ] = "latent"
    steps: (
        Annotated[int, msgspec.Meta(ge=1, description="第二遍的推理步数；默认与 num_inference_steps 相同")] | None
    ) = None
    strength: Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="第二遍的重绘强度（0-1），默认 0.7")] = 0.7
    prompt: (
        Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_CHARS, description="第二遍的提示词；默认同 prompt")] | None
    ) = None
    negative_prompt: (
        Annotated[
            str, msgspec.Meta(max_length=MAX_PROMPT_CHARS, description="第二遍的负面提示词；默认同 negative_prompt")
        ]
        | None
    ) = None


class SdUpscaleRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A1111's "SD upscale": upscale the init image, then redraw it tile by tile with image-to-image."""

    scale: Annotated[float, msgspec.Meta(gt=1.0, le=MAX_HIRES_SCALE, description="放大倍数（1-4），默认 2")] = 2.0
    upscaler: Annotated[
        str, msgspec.Meta(description="放大方法：lanczos、nearest，或 upscalers.dir 中的神经网络放大模型")
    ] = "lanczos"
    overlap: Annotated[int, msgspec.Meta(ge=0, le=256, description="相邻分块重叠的像素数（默认 64）")] = 64


# Step caches (sdapi.engines.speedups): DeepCache reuses a UNet's deep features between steps; first_block and
# taylorseer are diffusers' caches of a transformer (enable_cache); off turns a configured default off.
STEP_CACHE_MODES = ("off", "deepcache", "first_block", "taylorseer")
MAX_CACHE_INTERVAL = 10
# DeepCache's branches: three per UNet block level (its resnet/attention layers), the shallowest first.
MAX_CACHE_BRANCH = 11


class StepCache(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Reuse work between denoising steps: faster, at a price in detail (docs/benchmarks.md measures it)."""

    mode: Annotated[
        Literal["off", "deepcache", "first_block", "taylorseer"],
        msgspec.Meta(
            description="deepcache（UNet 模型：每 interval 步只完整计算一次，其余步复用深层特征）、"
            "first_block 或 taylorseer（FLUX 类 Transformer：diffusers 的缓存）、off（关闭配置中的默认值）"
        ),
    ]
    interval: (
        Annotated[
            int,
            msgspec.Meta(
                ge=2, le=MAX_CACHE_INTERVAL, description="deepcache、taylorseer：每多少步完整计算一次（默认 3 与 5）"
            ),
        ]
        | None
    ) = None
    branch: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0, le=MAX_CACHE_BRANCH, description="deepcache：每步仍计算的浅层分支（0 最浅、最快，默认 0）"
            ),
        ]
        | None
    ) = None
    threshold: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0.0, le=1.0, description="first_block：第一个块的残差变化低于此值时复用其余块（默认 0.05）"
            ),
        ]
        | None
    ) = None


ControlMode = Literal["balanced", "prompt", "controlnet"]
ControlResize = Literal["resize", "crop", "fill"]
MAX_CONTROL_WEIGHT = 2.0
PreprocessorOption = int | float | bool | str


class ControlUnitRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ControlNet unit of a request: a model from controlnet.dir and the picture it follows."""

    model: Annotated[str, msgspec.Meta(min_length=1, description="ControlNet 名称（GET /api/v1/controlnets）")]
    image: Annotated[
        str, msgspec.Meta(description="控制图片的base64编码（data:image/png;base64, 或 data:image/jpeg;base64, 前缀）")
    ]
    preprocessor: Annotated[
        str,
        msgspec.Meta(
            description="预处理器：none、canny、invert、binary、tile、shuffle、inpaint、scribble_xdog、color、depth"
        ),
    ] = "none"
    preprocessor_options: Annotated[
        dict[str, PreprocessorOption],
        msgspec.Meta(description="预处理器的设置，例如 canny 的 {low_threshold: 100, high_threshold: 200}"),
    ] = {}
    weight: Annotated[
        float, msgspec.Meta(ge=0.0, le=MAX_CONTROL_WEIGHT, description="权重（0-2）；0 等于没有此单元")
    ] = 1.0
    guidance_start: Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="开始生效的步数比例（0-1）")] = 0.0
    guidance_end: Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="停止生效的步数比例（0-1）")] = 1.0
    control_mode: Annotated[
        ControlMode,
        msgspec.Meta(description="balanced（平衡）、prompt（提示词更重要）、controlnet（ControlNet 更重要）"),
    ] = "balanced"
    resize_mode: Annotated[
        ControlResize,
        msgspec.Meta(
            description="控制图片适配输出尺寸的方式：resize（拉伸）、crop（裁剪填满）、fill（完整放入并补边）"
        ),
    ] = "resize"


class IpAdapterRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One image prompt of a request: an IP-Adapter from ip_adapter.dir and the picture whose look it carries."""

    model: Annotated[str, msgspec.Meta(min_length=1, description="IP-Adapter 名称（GET /api/v1/ip-adapters）")]
    image: Annotated[
        str, msgspec.Meta(description="参考图片的base64编码（data:image/png;base64, 或 data:image/jpeg;base64, 前缀）")
    ]
    weight: Annotated[float, msgspec.Meta(ge=0.0, le=2.0, description="权重（0-2）；0 等于没有此图片提示")] = 1.0


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
    scheduler: Annotated[
        str | None,
        msgspec.Meta(
            description="采样方法名称：" + "、".join(SCHEDULER_NAMES) + "；另可用：" + "、".join(EXTRA_SCHEDULER_NAMES)
        ),
    ] = None
    scheduler_options: Annotated[
        dict[str, SchedulerOptionValue] | None,
        msgspec.Meta(
            description="采样方法的设置（例如 use_karras_sigmas、timestep_spacing、use_lu_lambdas、solver_order），"
            "只能设置所选采样方法接受的项，否则返回 400 并列出可用项"
        ),
    ] = None
    step_options: Annotated[
        dict[str, float] | None,
        msgspec.Meta(
            description="每一步的设置：DDIMScheduler 的 eta（0-1，0 为确定性）；EulerDiscreteScheduler 的 s_churn、"
            "s_tmin、s_tmax、s_noise（k-diffusion 的随机扰动）。所选采样方法不接受的项返回 400"
        ),
    ] = None
    use_karras_sigmas: Annotated[
        bool | None,
        msgspec.Meta(
            description="按 Karras 方式安排噪声步长（AUTOMATIC1111 的 Karras 调度类型）。仅以下采样方法支持："
            + "、".join(sorted(KARRAS_SCHEDULERS))
        ),
    ] = None
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
    output_format: Annotated[str, msgspec.Meta(description="输出图片格式，可选：png、jpg、jpeg、webp")] = "png"
    output_compression: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=100,
                description="jpg/jpeg/webp 的压缩质量（0-100，越大越清晰、文件越大）；不指定时为 95。"
                "png 无损，不接受此参数",
            ),
        ]
        | None
    ) = None
    callback_url: Annotated[
        str | None, msgspec.Meta(description="回调URL。生成完成后将结果通过POST请求推送到该URL")
    ] = None
    model: Annotated[
        str | None,
        msgspec.Meta(description="模型名称（GET /api/v1/models 列出可用模型）；不指定时使用默认模型"),
    ] = None
    mask_image: Annotated[
        str | None,
        msgspec.Meta(
            description="局部重绘蒙版的base64编码（data:image/png;base64, 或 data:image/jpeg;base64, 前缀），与 "
            "init_image 同尺寸：白色重绘、黑色保留、灰色部分重绘；带透明通道时按透明度读取（不透明处重绘）。"
            "需要 init_image"
        ),
    ] = None
    mask_invert: Annotated[bool, msgspec.Meta(description="反转蒙版（黑色重绘、白色保留）")] = False
    mask_blur: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_MASK_BLUR, description="蒙版边缘模糊半径（像素，0-64），默认 4")
    ] = 4
    inpaint_area: Annotated[
        InpaintArea,
        msgspec.Meta(
            description="重绘区域：whole（整张图片）或 masked（只裁出蒙版区域加 inpaint_padding，"
            "以模型原生尺寸重绘后贴回）"
        ),
    ] = "whole"
    inpaint_padding: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_INPAINT_PADDING, description="inpaint_area=masked 时蒙版外扩的像素（0-256）")
    ] = 32
    masked_content: Annotated[
        MaskedContent,
        msgspec.Meta(
            description="重绘区域的初始内容：original（原图）、fill（用周围颜色填充）、latent_noise（随机噪声）、"
            "latent_nothing（空白）"
        ),
    ] = "original"
    outpaint: Annotated[
        Outpaint | None,
        msgspec.Meta(
            description="向外扩展画布：{left, right, top, bottom}（像素，8的倍数），新增区域为重绘区域，原图区域保留。"
            "需要 init_image"
        ),
    ] = None
    hires: Annotated[
        HiresRequest | None,
        msgspec.Meta(
            description="高分辨率第二遍（hires fix，仅文生图）：{scale 或 width/height, upscaler, steps, strength}。"
            "先按 width/height 生成，放大后再以 strength 重绘；输出为放大后的尺寸"
        ),
    ] = None
    controlnets: Annotated[
        list[ControlUnitRequest] | None,
        msgspec.Meta(
            description="ControlNet 单元列表（可多个）：[{model, image, preprocessor, preprocessor_options, weight, "
            "guidance_start, guidance_end, control_mode, resize_mode}]；最多 controlnet.max_units 个"
        ),
    ] = None
    ip_adapters: Annotated[
        list[IpAdapterRequest] | None,
        msgspec.Meta(description="IP-Adapter 图片提示列表：[{model, image, weight}]"),
    ] = None
    loras: Annotated[
        list[LoraRequest] | None,
        msgspec.Meta(
            description="本次请求使用的 LoRA/LoHa/LoKr 列表：[{name, weight}]，weight 范围 -2 到 2（默认 1.0）。"
            "配置 loras.defaults 中的 LoRA 总会加上；同名时以请求的权重为准"
        ),
    ] = None
    sd_upscale: Annotated[
        SdUpscaleRequest | None,
        msgspec.Meta(
            description="AUTOMATIC1111 的 SD upscale（图生图）：init_image 按 scale 放大后，按 width×height 分块、"
            "相邻分块重叠 overlap 像素，逐块以 strength 重绘后融合；输出为放大后的尺寸"
        ),
    ] = None
    vae_tiling: Annotated[
        bool | None,
        msgspec.Meta(
            description="VAE 分块解码/编码（diffusers 的 tiled VAE）：大图的 VAE 一步放得进内存，接缝处融合；"
            "不指定时按配置 vae.tiling_above_pixels（最终图片超过该像素数时自动开启）"
        ),
    ] = None
    vae_decoder: Annotated[
        Literal["full", "tiny"] | None,
        msgspec.Meta(
            description="解码器：full（模型的 VAE）或 tiny（TAESD 式的微型解码器 AutoencoderTiny：快得多，细节略少；"
            "模型自带 vae_tiny/ 或 vae.tiny_dir 中有其家族的）；不指定时按配置 defaults.vae_decoder"
        ),
    ] = None
    step_cache: Annotated[
        StepCache | None,
        msgspec.Meta(
            description="步间缓存（提速，细节有损）：{mode, interval, branch, threshold}；"
            "不指定时按配置 defaults.step_cache"
        ),
    ] = None
    token_merging: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0.0,
                le=0.75,
                description="Token 合并比例（tomesd，UNet 模型；0 关闭）：自注意力中合并相似的 token，"
                "1024×1024 以上才明显提速；不指定时按配置 defaults.token_merging",
            ),
        ]
        | None
    ) = None
    vae: Annotated[
        str | None,
        msgspec.Meta(
            description="代替模型自带 VAE 的 VAE 名称（vae.dir 中，GET /api/v1/vaes 列出）；须与模型的潜空间通道数一致"
        ),
    ] = None
    styles: Annotated[
        list[str] | None,
        msgspec.Meta(
            description="提示词样式名称列表（styles.file 中的 AUTOMATIC1111 styles.csv），按顺序套用到 prompt 与 "
            "negative_prompt：含 {prompt} 的样式把提示词放在该处，否则接在后面"
        ),
    ] = None
    variation_seed: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=MAX_SEED,
                description="变体种子（AUTOMATIC1111 的 subseed）：第 k 张图片的初始噪声由 seed+k 的噪声按 "
                "variation_strength 球面插值向 variation_seed+k 的噪声；不指定而 variation_strength>0 时随机选取",
            ),
        ]
        | None
    ) = None
    variation_strength: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0.0,
                le=1.0,
                description="变体强度（0-1）：0 即 seed 的图片，1 即 variation_seed 的图片。只用于文生图",
            ),
        ]
        | None
    ) = None
    seed_resize_from_width: (
        Annotated[
            int, msgspec.Meta(gt=0, description="按此宽度生成种子的噪声并居中放入（A1111 的 seed_resize_from_w）")
        ]
        | None
    ) = None
    seed_resize_from_height: (
        Annotated[
            int, msgspec.Meta(gt=0, description="按此高度生成种子的噪声并居中放入（A1111 的 seed_resize_from_h）")
        ]
        | None
    ) = None
    prompt_syntax: Annotated[
        Literal["a1111", "plain"] | None,
        msgspec.Meta(
            description="提示词语法：a1111（默认，按 AUTOMATIC1111 读取：(词)、(词:1.3)、[词] 权重，"
            "\\( 转义，BREAK 分块，超过 75 个 token 的提示词分块编码而不截断；用于 SD 1.x、2.x、SDXL）"
            "或 plain（按原文，超出 77 个 token 截断）；不指定时按配置 defaults.prompt_syntax"
        ),
    ] = None
    tiling: Annotated[
        bool | Literal["x", "y"] | None,
        msgspec.Meta(
            description='无缝平铺：true 两个方向，"x" 只左右，"y" 只上下（UNet 与 VAE 的卷积循环填充，'
            "图片的对边相接无接缝）。只用于 SD 1.x、2.x 与 SDXL"
        ),
    ] = None
    clip_skip: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=12,
                description="CLIP 跳过层数（1-12，AUTOMATIC1111 的编号）：1 使用最后一层（默认），2 使用倒数第二层"
                "（许多动漫类模型要求 2）。只用于 SD 1.x、2.x、SDXL 与 SD 3.x",
            ),
        ]
        | None
    ) = None
    preview_every_steps: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=1000,
                description="实时预览：运行中每隔多少步生成一张预览图（SSE preview 事件、GET 任务 ?preview=1）；"
                "0 不生成；不指定时按配置 previews.every_steps（默认 5）",
            ),
        ]
        | None
    ) = None
