"""The rules that turn a client's GenerationRequest into GenerationParams, what the engine runs. Pure: no files,
no torch (`python -c "import sdapi.core.params"` loads neither)."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from sdapi.core.request import (
    LATENT_UPSCALERS,
    LOSSY_OUTPUT_FORMATS,
    MAX_SEED,
    OUTPUT_FORMATS,
    PIXEL_UPSCALERS,
    EmbeddingSpec,
    GenerationRequest,
    LoraSpec,
    PreprocessorOption,
    StepCache,
    VaeSpec,
)
from sdapi.core.schedulers import (
    ACCEPTED_SCHEDULERS,
    CLASS_CHOICES,
    KARRAS_SCHEDULERS,
    OPTION_SPECS,
    SCHEDULER_OPTIONS,
    SIGMA_SPACINGS,
    STEP_OPTIONS,
    SchedulerOptionValue,
)
from sdapi.core.speed import EVERYTHING, SpeedSupport, speed_levers
from sdapi.errors import InvalidParameter

if TYPE_CHECKING:  # the config is read above the core and handed down; the core only names its types
    from sdapi.config import DefaultsConfig, LimitsConfig

MIN_SIDE = 64


class InitImageInfo(msgspec.Struct, frozen=True):
    """What the service keeps about a decoded init image next to its bytes."""

    width: int
    height: int
    format: str  # "png" | "jpeg": the stored bytes are decoded as this format only


class InpaintParams(msgspec.Struct, frozen=True, kw_only=True):
    """How an image-to-image task repaints part of its init image (a mask, outpainting margins, or both)."""

    masked: bool  # a mask_image was given (else only the outpainting margins repaint)
    invert: bool = False
    blur: int = 4
    area: str = "whole"  # whole | masked
    padding: int = 32
    content: str = "original"  # original | fill | latent_noise | latent_nothing
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom

    @property
    def outpaints(self) -> bool:
        return any(self.outpaint)


class HiresParams(msgspec.Struct, frozen=True, kw_only=True):
    """The high-resolution second pass of a text-to-image task: the final size, how to upscale, how to denoise."""

    width: int
    height: int
    upscaler: str  # a LATENT_UPSCALERS or PIXEL_UPSCALERS name, or a neural upscaler's (upscalers.dir)
    steps: int
    strength: float
    prompt: str | None = None  # None: the task's prompt
    negative_prompt: str | None = None

    @property
    def in_latents(self) -> bool:
        return self.upscaler in LATENT_UPSCALERS


class SdUpscaleParams(msgspec.Struct, frozen=True, kw_only=True):
    """A1111's "SD upscale" of an image-to-image task (sdapi.engines.sd_upscale): the init image upscaled by
    `scale` with `upscaler`, redrawn in tiles of the task's width x height overlapping by `overlap` pixels."""

    scale: float
    upscaler: str  # a PIXEL_UPSCALERS name or a neural upscaler's (upscalers.dir)
    overlap: int


class ControlUnitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A checked ControlNet unit: its model pinned by content, its image kept beside the task (control/<index>)."""

    model: str
    sha256: str
    preprocessor: str
    preprocessor_options: dict[str, PreprocessorOption] = msgspec.field(default_factory=dict)
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "balanced"
    resize_mode: str = "resize"


class IpAdapterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A checked image prompt: its adapter pinned by content, its image kept beside the task (ip/<index>)."""

    model: str
    sha256: str
    weight: float = 1.0


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
    # Karras sigma spacing; only for KARRAS_SCHEDULERS (the engine checks the model's own scheduler).
    use_karras_sigmas: bool = False
    # The name of the model (config `models:`) that makes the images; None (tasks from before): the default.
    model: str | None = None
    # Settings for the scheduler class (SCHEDULER_OPTIONS says which each class takes).
    scheduler_options: dict[str, SchedulerOptionValue] = msgspec.field(default_factory=dict)
    seed: int
    output_format: str
    output_compression: int | None = None  # jpg/webp quality; None: the encoder's default
    init_image: InitImageInfo | None = None
    callback_url: str | None = None
    loras: tuple[LoraSpec, ...] = ()
    # The textual-inversion embeddings the prompt or negative prompt names (sdapi.embeddings.library).
    embeddings: tuple[EmbeddingSpec, ...] = ()
    # Inpainting and outpainting (with init_image); None: plain image-to-image or text-to-image.
    inpaint: InpaintParams | None = None
    # The high-resolution second pass (text-to-image): the images come out at its size, not width x height.
    hires: HiresParams | None = None
    # ControlNet units, in the request's order (weight-0 units included: the engine leaves them out).
    controlnets: tuple[ControlUnitSpec, ...] = ()
    # IP-Adapter image prompts (weight-0 ones included: the engine leaves them out).
    ip_adapters: tuple[IpAdapterSpec, ...] = ()
    # Live previews every this many steps (0: none); None: the config's previews.every_steps.
    preview_every_steps: int | None = None
    # CLIP layers counted from the end whose output conditions the run, A1111's numbering: 1 the last (no skip),
    # 2 the penultimate (diffusers' clip_skip=1).
    clip_skip: int = 1
    # A1111's variation seeds (sdapi.engines.noise): image k's starting noise moves from seed + k's towards
    # variation_seed + k's by variation_strength (0: the seed's picture, 1: the variation seed's); with
    # seed_resize_from (width, height), the seed's noise is drawn at that size and centred.
    variation_seed: int | None = None
    variation_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    # A1111's SD upscale of an image-to-image task (sdapi.engines.sd_upscale); None: a plain image-to-image.
    sd_upscale: SdUpscaleParams | None = None
    # The VAE decodes (and encodes) in tiles (diffusers' tiled VAE): asked for, or the picture is large.
    vae_tiling: bool = False
    # Speed levers (sdapi.core.speed, applied by sdapi.engines.speedups): the decoder ("full": the VAE's; "tiny": an
    # AutoencoderTiny's), a step cache (None: none), tomesd's token-merging ratio (0: off).
    vae_decoder: str = "full"
    step_cache: StepCache | None = None
    token_merging: float = 0.0
    # The VAE run instead of the model's own (sdapi.vaes); None: the model's.
    vae: VaeSpec | None = None
    # Settings of each denoising step (sdapi.core.schedulers.STEP_OPTIONS: DDIM's eta, Euler's churn).
    step_options: dict[str, float] = msgspec.field(default_factory=dict)
    # Seamless tiling along "xy", "x" or "y" (sdapi.engines.tiling); None: none.
    tiling: str | None = None
    # How the prompts are read on the CLIP families: "a1111" (weights, long prompts, BREAK: sdapi.prompts) or
    # "plain" (as written, cut at 77 tokens; tasks from before have it).
    prompt_syntax: str = "plain"

    @property
    def shapes_noise(self) -> bool:
        """Whether the run draws its starting noise itself (variation seeds, seed resize)."""
        return (self.variation_seed is not None and self.variation_strength > 0) or self.seed_resize_from is not None

    @property
    def diffusers_clip_skip(self) -> int | None:
        """diffusers' clip_skip for this run (None: the last layer, its default)."""
        return self.clip_skip - 1 if self.clip_skip > 1 else None

    @property
    def is_image_to_image(self) -> bool:
        return self.init_image is not None

    @property
    def keeps_images(self) -> bool:
        """Whether the task has images stored beside it until it ends (an init image or control images)."""
        return self.init_image is not None or bool(self.controlnets) or bool(self.ip_adapters)

    @property
    def work(self) -> float:
        """How much denoising the request asks for, in megapixel-steps (what generation time grows with): the
        queue's estimates multiply it by measured seconds per megapixel-step."""
        steps = self.num_inference_steps * (self.strength if self.is_image_to_image and self.strength else 1.0)
        work = steps * self.width * self.height
        if self.hires is not None:
            work += self.hires.steps * self.hires.strength * self.hires.width * self.hires.height
        return work * self.num_images / 1e6

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images the task makes (width, height): the second pass's when it has one."""
        if self.hires is not None:
            return self.hires.width, self.hires.height
        return self.width, self.height

    def image_seeds(self) -> list[int]:
        """The seed of each image: image k starts from the latents of seed + k."""
        return [self.seed + k for k in range(self.num_images)]


def _check_side(field: str, value: int, maximum: int) -> None:
    if value % 8 != 0 or not MIN_SIDE <= value <= maximum:
        raise InvalidParameter(
            field,
            f"{field} 无效：{value}。必须是8的倍数，范围 {MIN_SIDE}-{maximum}",
        )


def check_karras(scheduler: str, use_karras_sigmas: bool) -> None:
    """Raise InvalidParameter when Karras sigmas are asked of a scheduler class without them."""
    if use_karras_sigmas and scheduler not in KARRAS_SCHEDULERS:
        raise InvalidParameter(
            "use_karras_sigmas",
            f"{scheduler} 不支持 use_karras_sigmas。支持的采样方法：{', '.join(sorted(KARRAS_SCHEDULERS))}",
        )


def check_step_options(scheduler: str, options: dict[str, float]) -> None:
    """Raise InvalidParameter naming the step_options `scheduler` does not take (sdapi.core.schedulers.STEP_OPTIONS)
    or a value out of its range."""
    allowed = STEP_OPTIONS.get(scheduler, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        available = ", ".join(sorted(allowed)) or "（无）"
        message = f"{scheduler} 不接受 step_options：{', '.join(unknown)}。可用：{available}"
        raise InvalidParameter("step_options", message)
    for name, value in sorted(options.items()):
        low, high = allowed[name]
        if not low <= value <= high:
            raise InvalidParameter("step_options", f"step_options.{name} 无效：{value}。范围 {low:g}-{high:g}")


def check_scheduler_options(
    scheduler: str, options: dict[str, SchedulerOptionValue], num_inference_steps: int | None = None
) -> None:
    """Raise InvalidParameter naming the scheduler_options `scheduler` does not take, or a value outside the
    option's type and bounds (sdapi.core.schedulers.OPTION_SPECS)."""
    allowed = SCHEDULER_OPTIONS.get(scheduler, frozenset())
    unknown = sorted(set(options) - allowed)
    if unknown:
        available = ", ".join(sorted(allowed)) or "（无）"
        raise InvalidParameter(
            "scheduler_options", f"{scheduler} 不接受 scheduler_options：{', '.join(unknown)}。可用：{available}"
        )
    for name, value in sorted(options.items()):
        problem = OPTION_SPECS[name].problem(value, CLASS_CHOICES.get((scheduler, name)))
        if problem is not None:
            raise InvalidParameter(
                "scheduler_options", f"{scheduler} 的 scheduler_options 无效：{name}={value!r} {problem}"
            )
    if (
        scheduler in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")
        and options.get("algorithm_type") in ("dpmsolver", "sde-dpmsolver")
        and options.get("final_sigmas_type", "zero") == "zero"
    ):  # diffusers: these first-order variants cannot end the schedule at sigma 0
        raise InvalidParameter(
            "scheduler_options", "algorithm_type dpmsolver / sde-dpmsolver 需要同时设置 final_sigmas_type: sigma_min"
        )
    original = options.get("original_inference_steps")
    if isinstance(original, int) and num_inference_steps is not None and original < num_inference_steps:
        # LCM and TCD pick their steps from an original schedule of this many: it cannot be shorter
        raise InvalidParameter(
            "scheduler_options",
            f"original_inference_steps（{original}）不能小于 num_inference_steps（{num_inference_steps}）",
        )
    spacings = [name for name in SIGMA_SPACINGS if options.get(name) is True]
    if len(spacings) > 1:
        raise InvalidParameter("scheduler_options", f"scheduler_options 只能选一种 sigma 间隔：{', '.join(spacings)}")


def output_side(input_side: int, multiple: int = 8) -> int:
    """Image-to-image output side: the input's side rounded down to a multiple of 8 (of the model's own multiple,
    16 for the transformer families)."""
    return input_side - input_side % multiple


def resolve_params(
    request: GenerationRequest,
    defaults: DefaultsConfig,
    limits: LimitsConfig,
    init_image: InitImageInfo | None = None,
    rng: random.Random | None = None,
    loras: tuple[LoraSpec, ...] = (),
    embeddings: tuple[EmbeddingSpec, ...] = (),
    model: str | None = None,
    native_size: tuple[int, int] = (512, 512),
    own_scheduler: str | None = None,
    upscalers: Collection[str] = (),
    controlnets: tuple[ControlUnitSpec, ...] = (),
    ip_adapters: tuple[IpAdapterSpec, ...] = (),
    schedulers: Sequence[str] = ACCEPTED_SCHEDULERS,
    model_defaults: tuple[int, float] = (30, 7.5),
    side_multiple: int = 8,
    vae: VaeSpec | None = None,
    tiling_above: int | None = None,
    speed: SpeedSupport = EVERYTHING,
) -> GenerationParams:
    """Apply config defaults (and, for what neither gives, the model's: its `native_size`, and its family's steps
    and guidance_scale in `model_defaults`) to a decoded request for `model`, and check the rules the schema cannot;
    raise InvalidParameter. `upscalers`: the neural upscalers' names (upscalers.dir) a second pass may use;
    `schedulers`: the ones the model's family runs."""
    output_format = request.output_format.lower()
    if output_format not in OUTPUT_FORMATS:
        raise InvalidParameter(
            "output_format",
            f"output_format 不支持：{request.output_format!r}。可选：{', '.join(OUTPUT_FORMATS)}",
        )
    if request.output_compression is not None and output_format not in LOSSY_OUTPUT_FORMATS:
        raise InvalidParameter(
            "output_compression",
            f"output_compression 只适用于 {', '.join(LOSSY_OUTPUT_FORMATS)}（{output_format} 无损）",
        )
    if request.scheduler is not None and request.scheduler not in schedulers:
        raise InvalidParameter(
            "scheduler",
            f"scheduler 不支持：{request.scheduler!r}。可选：{', '.join(schedulers)}",
        )
    scheduler = request.scheduler if request.scheduler is not None else defaults.scheduler
    use_karras_sigmas = bool(request.use_karras_sigmas)
    options = dict(request.scheduler_options or {})
    default_steps, default_guidance = model_run_defaults(defaults, model_defaults)
    steps = request.num_inference_steps or default_steps
    if steps > limits.max_inference_steps:
        raise InvalidParameter(
            "num_inference_steps",
            f"num_inference_steps 无效：{steps}。范围 1-{limits.max_inference_steps}",
        )
    # Without a named scheduler the model's own runs: checked here when the catalog knows its class (from the
    # model's scheduler_config.json), else by the engine once the model is loaded.
    checked = scheduler if scheduler is not None else own_scheduler
    if checked is not None:
        check_karras(checked, use_karras_sigmas)
        check_scheduler_options(checked, options, steps)
        check_step_options(checked, dict(request.step_options or {}))
    inpaint = _inpaint(request, init_image)
    if init_image is None:
        width = request.width or defaults.width or native_size[0]
        height = request.height or defaults.height or native_size[1]
        _check_side("width", width, limits.max_width)
        _check_side("height", height, limits.max_height)
        strength = None
    else:
        # The seed: width/height only apply to text-to-image; the output takes the input's size (grown by the
        # outpainting margins).
        left, top, right, bottom = inpaint.outpaint if inpaint is not None else (0, 0, 0, 0)
        width = output_side(init_image.width + left + right, side_multiple)
        height = output_side(init_image.height + top + bottom, side_multiple)
        if not (MIN_SIDE <= width <= limits.max_width and MIN_SIDE <= height <= limits.max_height):
            field = "outpaint" if inpaint is not None and inpaint.outpaints else "init_image"
            raise InvalidParameter(
                field,
                f"{field} 尺寸不支持：{init_image.width + left + right}x{init_image.height + top + bottom}。"
                f"宽度范围 {MIN_SIDE}-{limits.max_width}，高度范围 {MIN_SIDE}-{limits.max_height}",
            )
        strength = request.strength if request.strength is not None else defaults.strength
    hires = None
    if request.hires is not None:
        if init_image is not None:
            raise InvalidParameter("hires", "hires（高分辨率第二遍）只用于文生图，不能与 init_image 同用")
        hires = _hires(request, width, height, steps, limits, upscalers)
    seed = request.seed if request.seed is not None else (rng or random.SystemRandom()).randint(0, MAX_SEED)
    levers = speed_levers(request, defaults, speed)
    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        num_images=request.num_images,
        num_inference_steps=steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else default_guidance,
        strength=strength,
        scheduler=scheduler,
        use_karras_sigmas=use_karras_sigmas,
        model=model,
        scheduler_options=options,
        seed=seed,
        output_format=output_format,
        output_compression=request.output_compression,
        init_image=init_image,
        callback_url=request.callback_url,
        loras=loras,
        embeddings=embeddings,
        inpaint=inpaint,
        hires=hires,
        controlnets=controlnets,
        ip_adapters=ip_adapters,
        preview_every_steps=request.preview_every_steps,
        clip_skip=request.clip_skip or 1,
        **_variation(request, width, height, init_image is not None, rng),
        tiling={True: "xy", False: None, None: None, "x": "x", "y": "y"}[request.tiling],
        prompt_syntax=request.prompt_syntax or defaults.prompt_syntax,
        step_options=dict(request.step_options or {}),
        vae=vae,
        sd_upscale=_sd_upscale(request, init_image, limits, upscalers),
        vae_tiling=request.vae_tiling if request.vae_tiling is not None else _large(width, height, hires, tiling_above),
        vae_decoder=levers.vae_decoder,
        step_cache=levers.step_cache,
        token_merging=levers.token_merging,
    )


def _large(width: int, height: int, hires: HiresParams | None, above: int | None) -> bool:
    """Whether a picture is past the pixel count above which the VAE runs in tiles by default."""
    if above is None:
        return False
    final = (hires.width, hires.height) if hires is not None else (width, height)
    return final[0] * final[1] > above


def _sd_upscale(
    request: GenerationRequest, init_image: InitImageInfo | None, limits: LimitsConfig, upscalers: Collection[str]
) -> SdUpscaleParams | None:
    """The SD upscale settings of an image-to-image request; raise InvalidParameter naming `sd_upscale`."""
    asked = request.sd_upscale
    if asked is None:
        return None
    if init_image is None or request.mask_image is not None or request.outpaint is not None or request.controlnets:
        message = "sd_upscale 只用于图生图（需要 init_image，不能与 mask_image、outpaint、controlnets 同用）"
        raise InvalidParameter("sd_upscale", message)
    width, height = round(init_image.width * asked.scale), round(init_image.height * asked.scale)
    if width > limits.max_width or height > limits.max_height:
        raise InvalidParameter(
            "sd_upscale",
            f"sd_upscale 放大后的尺寸 {width}x{height} 超出范围（limits.max_width {limits.max_width}、"
            f"limits.max_height {limits.max_height}）",
        )
    known = [*PIXEL_UPSCALERS, *sorted(upscalers)]
    if asked.upscaler not in known:
        message = f"sd_upscale.upscaler 不支持：{asked.upscaler!r}。可选：{', '.join(known)}"
        raise InvalidParameter("sd_upscale", message)
    return SdUpscaleParams(scale=asked.scale, upscaler=asked.upscaler, overlap=asked.overlap)


def _variation(
    request: GenerationRequest, width: int, height: int, image_to_image: bool, rng: random.Random | None
) -> dict[str, Any]:
    """The variation-seed fields of the params: a variation without a seed gets a random one (A1111's subseed -1);
    seed_resize_from equal to the size, or not given, is none."""
    strength = request.variation_strength or 0.0
    resize = None
    if request.seed_resize_from_width or request.seed_resize_from_height:
        resize = (request.seed_resize_from_width or width, request.seed_resize_from_height or height)
        largest = max(width, height) * 4
        for value in resize:
            if value % 8 or not 8 <= value <= largest:
                raise InvalidParameter(
                    "seed_resize_from", f"seed_resize_from 无效：{value}。必须是8的倍数，范围 8-{largest}"
                )
        if resize == (width, height):
            resize = None
    if not strength and resize is None:
        return {}
    if image_to_image:
        message = "variation_seed / seed_resize_from 只用于文生图（不能与 init_image 同用）"
        raise InvalidParameter("variation_seed", message)
    seed = request.variation_seed
    if strength and seed is None:
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return {"variation_seed": seed, "variation_strength": strength, "seed_resize_from": resize}


def model_run_defaults(defaults: DefaultsConfig, model_defaults: tuple[int, float]) -> tuple[int, float]:
    """The steps and guidance_scale a request for a model gets when it gives none: the config's `defaults:`, else
    the model's own (its family's: `model_defaults`). What /api/v1/models shows and what admission applies."""
    steps = defaults.num_inference_steps or model_defaults[0]
    guidance = defaults.guidance_scale if defaults.guidance_scale is not None else model_defaults[1]
    return steps, guidance


def _round8(value: float) -> int:
    return max(round(value / 8) * 8, 8)


def _hires(
    request: GenerationRequest, width: int, height: int, steps: int, limits: LimitsConfig, upscalers: Collection[str]
) -> HiresParams:
    """The second pass's settings: its size from width/height (one of them: the other keeps the aspect ratio) or
    scale (default 2), rounded to multiples of 8 and within the limits; its upscaler known."""
    hires = request.hires
    assert hires is not None
    if hires.width is not None or hires.height is not None:
        final_width = hires.width or _round8(hires.height * width / height if hires.height else width)
        final_height = hires.height or _round8(final_width * height / width)
    else:
        scale = hires.scale if hires.scale is not None else 2.0
        final_width, final_height = _round8(width * scale), _round8(height * scale)
    if final_width % 8 or final_height % 8:
        raise InvalidParameter("hires", f"hires 的 width/height 必须是8的倍数，收到 {final_width}x{final_height}")
    if not (MIN_SIDE <= final_width <= limits.max_width and MIN_SIDE <= final_height <= limits.max_height):
        raise InvalidParameter(
            "hires",
            f"hires 放大后的尺寸 {final_width}x{final_height} 超出范围：宽度 {MIN_SIDE}-{limits.max_width}"
            f"（limits.max_width），高度 {MIN_SIDE}-{limits.max_height}（limits.max_height）",
        )
    known = [*LATENT_UPSCALERS, *PIXEL_UPSCALERS, *sorted(upscalers)]
    if hires.upscaler not in known:
        raise InvalidParameter("hires", f"hires.upscaler 不支持：{hires.upscaler!r}。可选：{', '.join(known)}")
    second_steps = hires.steps or steps
    if second_steps > limits.max_inference_steps:
        raise InvalidParameter("hires", f"hires.steps 无效：{second_steps}。范围 1-{limits.max_inference_steps}")
    return HiresParams(
        width=final_width,
        height=final_height,
        upscaler=hires.upscaler,
        steps=second_steps,
        strength=hires.strength,
        prompt=hires.prompt,
        negative_prompt=hires.negative_prompt,
    )


def _inpaint(request: GenerationRequest, init_image: InitImageInfo | None) -> InpaintParams | None:
    """The request's inpainting and outpainting settings; raise InvalidParameter for ones without an init image or
    margins that are not multiples of 8."""
    outpaint = request.outpaint
    if request.mask_image is None and outpaint is None:
        return None
    field = "mask_image" if request.mask_image is not None else "outpaint"
    if init_image is None:
        raise InvalidParameter(field, f"{field} 需要 init_image（局部重绘与扩图都在初始图片上进行）")
    margins = (0, 0, 0, 0) if outpaint is None else (outpaint.left, outpaint.top, outpaint.right, outpaint.bottom)
    if any(margin % 8 for margin in margins):
        raise InvalidParameter("outpaint", f"outpaint 的 left/top/right/bottom 必须是8的倍数，收到 {list(margins)}")
    return InpaintParams(
        masked=request.mask_image is not None,
        invert=request.mask_invert,
        blur=request.mask_blur,
        area=request.inpaint_area,
        padding=request.inpaint_padding,
        content=request.masked_content,
        outpaint=margins,
    )
