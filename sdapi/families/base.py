"""What a model family is: data plus a little code (the way diffusers' AutoPipeline mappings and a pipeline's
`_optional_components` are), so the rest of sdapi asks the family instead of testing a flag. One module per family
(sd1.py, sd2.py, sdxl.py, sd3.py, flux.py, flux2_klein.py, z_image.py) fills it in; the registry
(families/__init__.py) lists them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from sdapi.core.params import GenerationParams
from sdapi.core.schedulers import ACCEPTED_SCHEDULERS
from sdapi.errors import InvalidParameter
from sdapi.prompts import PromptSyntaxError
from sdapi.prompts.schedules import check_prompt

# How a model uses guidance_scale: classifier-free guidance with a negative prompt ("cfg"); a guidance value the
# transformer embeds, one pass a step (FLUX.1 [dev]: "embedded"); or none at all, distilled to few steps without it
# (FLUX.1 [schnell], FLUX.2 [klein], Z-Image-Turbo, SD 3.5 Large Turbo: "distilled").
GUIDANCE_KINDS = ("cfg", "embedded", "distilled")
# The most guidance_scale a distilled model takes: 0 and 1 both mean "no guidance" to diffusers' pipelines.
DISTILLED_MAX_GUIDANCE = 1.0


@dataclass(frozen=True)
class RunDefaults:
    """What a request that leaves them out gets, per kind of guidance (from the model's page)."""

    steps: int
    guidance_scale: float


@dataclass(frozen=True)
class ControlNetSupport:
    """How a family runs ControlNets: diffusers' model class of its ControlNets, the pipeline they run on (None:
    diffusers' AutoPipeline of the run's kind, SD's way), and what its pipelines take."""

    model_class: str = "ControlNetModel"
    pipeline: str | None = None
    # Z-Image's ControlNet files hold the control layers alone; the base transformer lends it the rest.
    shares_transformer: bool = False
    max_units: int | None = None  # None: controlnet.max_units
    edits: bool = True  # with image-to-image and inpainting (else text-to-image alone)
    modes: bool = True  # control modes beyond "balanced"
    windows: bool = True  # guidance_start / guidance_end

    def problem(self, units: int, edit: bool, modes: AbstractSet[str], windows: bool, label: str) -> str | None:
        """Why a request's units cannot run on a model of the family `label` (a Chinese phrase), or None."""
        if self.max_units is not None and units > self.max_units:
            return f"{label} 每个请求最多 {self.max_units} 个 ControlNet 单元"
        if edit and not self.edits:
            return f"{label} 的 ControlNet 只用于文生图（不能与 init_image 同用）"
        if not self.modes and modes - {"balanced"}:
            return f"{label} 的 ControlNet 只有 balanced 控制模式"
        if not self.windows and windows:
            return f"{label} 的 ControlNet 流水线不接受 guidance_start / guidance_end"
        return None


@dataclass(frozen=True)
class Family:
    """One model family."""

    # The one name every surface uses (/api/v1/models, the add-on lists, export manifests): sd1, sd2, sdxl, sd3,
    # flux, flux2-klein, z-image.
    name: str
    label: str  # for people: "SD 1.x"
    # Add-ons (LoRAs, ControlNets, IP-Adapters) made for one family of a group run on every family of it: SD 1.x
    # and 2.x share their UNet layout (their text widths tell them apart where it matters).
    addon_group: str
    addon_group_label: str
    # The side a model is trained at when its UNet config does not say (sample_size x 8 does).
    native_side: int
    # diffusers' pipeline classes, by the name model_index.json gives: what detection claims, and what loads. An
    # inpainting checkpoint (its denoiser also takes the mask) loads as `inpainting`; a family without such
    # checkpoints names its ordinary inpainting pipeline there and in `inpainting_pipeline` alike.
    text_to_image: str
    inpainting: str
    # optimum.onnxruntime's pipeline classes for an export: text-to-image, image-to-image, inpainting.
    onnx_pipelines: tuple[str, str, str]
    # Keyword arguments its pipelines load with (the safety checker off, the watermarker off).
    load_options: Mapping[str, object]
    # Its text encoders and tokenizers, as the pipeline names them, first first.
    text_encoders: tuple[str, ...]
    tokenizers: tuple[str, ...]
    # transformers' classes of those text encoders (what an export's configs are read back into).
    text_encoder_classes: tuple[str, ...]
    # kohya's key prefix for each part's modules in LoRA files, and the second prefixes its files may also use.
    kohya_prefixes: Mapping[str, str]
    kohya_aliases: Mapping[str, str] = field(default_factory=dict)
    # Fragments of module keys (kohya style) that only its LoRA files have: how a transformer family's file is told
    # apart from another's (their module names overlap; a file naming none of these is told by its shapes).
    lora_markers: tuple[str, ...] = ()
    # Whether kohya's files for it also name UNet modules by their original (SGM/LDM) block names.
    sgm_unet_names: bool = False
    # Whether its pipelines take size micro-conditioning (original_size, target_size, crops_coords_top_left).
    size_conditioning: bool = False
    # The widths of its text encoders' token embeddings (a textual-inversion file's vectors must have them).
    embedding_widths: tuple[int, ...] = ()
    # The schedulers its requests may name (the model's own config runs when they name none).
    schedulers: tuple[str, ...] = ACCEPTED_SCHEDULERS
    # The ONNX models an export of it holds.
    onnx_parts: tuple[str, ...] = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    # The module that denoises (what LoRAs mostly change): the UNet, or a diffusion transformer.
    denoiser: str = "unet"
    # The text encoders adapters may change (LoRAs for the transformer families change the transformer alone).
    adapter_text_encoders: tuple[str, ...] | None = None
    # diffusers' pipeline class for image-to-image and for inpainting on an ordinary checkpoint; None: what diffusers'
    # AutoPipeline maps the text-to-image pipeline to.
    image_to_image_pipeline: str | None = None
    inpainting_pipeline: str | None = None
    # Whether image-to-image runs as a repaint of the whole picture on the inpainting pipeline (a family whose
    # diffusers pipelines have no strength-based image-to-image: the full mask at `strength` is the same thing).
    repaints_for_image_to_image: bool = False
    # A text encoder its models may be loaded without (`models[].text_encoder_3: false`), by the pipeline's name.
    optional_text_encoder: str | None = None
    # Whether a cross-request batch passes its members' prompts as one list (a pipeline whose encode_prompt is not
    # SD's): each prompt is still encoded on its own row.
    batches_prompt_lists: bool = False
    # Whether its pipelines take a negative prompt (with classifier-free guidance).
    takes_negative_prompt: bool = True
    # The guidance its models use unless their config says otherwise (`models[].guidance`), and how a model's
    # files refine it (transformer config, model_index.json -> a kind of GUIDANCE_KINDS).
    guidance: str = "cfg"
    guidance_of: Callable[[Mapping[str, Any], Mapping[str, Any]], str] | None = None
    # Schedulers that run its text-to-image alone: its image-to-image and inpainting pipelines noise the init image
    # with flow-match Euler's own scale_noise (diffusers 0.38), which the multistep solvers lack.
    text_to_image_only_schedulers: tuple[str, ...] = ()
    # Steps and guidance_scale per kind of guidance.
    defaults: Mapping[str, RunDefaults] = field(default_factory=lambda: {"cfg": RunDefaults(30, 7.5)})
    # Sides must be multiples of this (the VAE's 8 times the transformer's patch).
    side_multiple: int = 8
    # Whether a second pass may upscale its latents (a transformer family's latents are packed: pixels only).
    latent_hires: bool = True
    # Which add-on kinds its models can run here (controlnet None: no ControlNet).
    controlnet: ControlNetSupport | None = field(default_factory=ControlNetSupport)
    image_prompts: bool = True
    # Single files of it diffusers can load (with `single_file_config` naming a diffusers folder for the rest).
    single_files: bool = True
    # Whether its runs can start from noise sdapi draws (variation seeds, seed resize): a UNet's latent grid (not an
    # inpainting checkpoint's, whose every run is a repaint).
    variation_seeds: bool = True
    # Its VAE's latent channels: what a VAE of vae.dir must have to run on its models (sdapi.vaes).
    latent_channels: int = 4
    # Whether A1111's prompt syntax is encoded for it (weights on CLIP token embeddings, 75-token chunks:
    # sdapi.prompts); the other families read their prompts as written.
    weighted_prompts: bool = True
    # How its pipelines read a text encoder's output: the last layer after its final norm (SD 1.x/2.x), or the
    # penultimate layer as it is (SDXL's two encoders); and the encoder whose pooled output conditions it, if any.
    penultimate_text_layer: bool = False
    pooled_text_encoder: str | None = None
    # Whether seamless tiling can run (convolutions that wrap around: a UNet's; a transformer's are not).
    tiling: bool = True
    # Whether its pipelines take clip_skip (a CLIP text encoder whose earlier layers may condition the run).
    clip_skip: bool = True
    # Speed levers (sdapi.engines.speedups): the step caches its denoiser can run (DeepCache on a UNet; diffusers'
    # caches, enable_cache, on a transformer that has them), whether token merging can (tomesd: a UNet's attention
    # over latent pixels), and whether a tiny decoder (AutoencoderTiny) can stand in for its VAE's decoder (its
    # pipelines hand the VAE latents it can take back to the denoiser's space: latents / scale + shift).
    step_caches: tuple[str, ...] = ("deepcache",)
    # Whether a step cache also runs on its edits (image-to-image, inpainting, a second pass): diffusers' caches need
    # the pipeline to set a cache context, and only FLUX's text-to-image pipelines do (diffusers 0.38).
    step_cache_edits: bool = True
    token_merging: bool = True
    tiny_decoder: bool = True
    # Live previews (sdapi.previews) read the latents between steps as a (batch, channels, h, w) grid, in the space
    # the denoiser works in: how its pipelines' latents become that grid (None: they are one already; FLUX packs
    # them into tokens), and how pixels in [-1, 1] are encoded into it (None: the VAE's mean, shifted and scaled as
    # its pipelines' image-to-image does), which is what the preview's latent-to-RGB map is fitted on.
    spatial_latents_of: Callable[[Any, Any, tuple[int, int]], Any] | None = None
    pixel_latents_of: Callable[[Any, Any], Any] | None = None

    def addon_mismatch(self, made_for: Family | None) -> str | None:
        """Why an add-on made for the family `made_for` cannot run on a model of this family (None: it may, or what
        it was made for is not known). Add-ons of one group run on every family of it."""
        if made_for is None or made_for.addon_group == self.addon_group:
            return None
        return f"为 {made_for.addon_group_label} 制作，所选模型为 {self.label}"

    @property
    def adapter_parts(self) -> tuple[str, ...]:
        """The parts adapters may change: the denoiser, then the text encoders they may change."""
        encoders = self.text_encoders if self.adapter_text_encoders is None else self.adapter_text_encoders
        return (self.denoiser, *encoders)

    @property
    def has_inpainting_checkpoints(self) -> bool:
        """Whether `inpainting` names a checkpoint kind of its own (not the ordinary inpainting pipeline)."""
        return self.inpainting != self.inpainting_pipeline

    @property
    def pipeline_names(self) -> tuple[str, ...]:
        """Every diffusers pipeline class of it: what a folder may name, and what its runs make (ControlNet's)."""
        names = (self.text_to_image, self.inpainting, self.image_to_image_pipeline, self.inpainting_pipeline)
        controlled = self.controlnet.pipeline if self.controlnet is not None else None
        return tuple(name for name in (*names, controlled) if name is not None)

    def adapter_modules(self, pipeline: Any) -> dict[str, Any]:
        """The modules of a loaded pipeline that adapters (LoRA, LoHa, LoKr) may change, by part: its denoiser and
        the text encoders adapters change (a pipeline loaded without an optional one lacks it)."""
        modules = {part: getattr(pipeline, part, None) for part in self.adapter_parts}
        return {part: module for part, module in modules.items() if module is not None}

    def prompt_arguments(self, prompt: str | list[str], negative: str | list[str] | None) -> dict[str, object]:
        """Its pipelines' prompt arguments: the prompt, and the negative prompt where they take one (admission has
        refused a negative prompt for the others: ModelFamily.check)."""
        return {"prompt": prompt, "negative_prompt": negative} if self.takes_negative_prompt else {"prompt": prompt}

    def run_defaults(self, guidance: str) -> RunDefaults:
        """Steps and guidance_scale for a model of this family using `guidance`."""
        return self.defaults.get(guidance) or next(iter(self.defaults.values()))

    def kohya_keys(self, part: str, module_path: str, sgm_path: str | None) -> list[str]:
        """Every key kohya's files name one module by: its part's prefix with the diffusers path (dots to
        underscores), then any second name its files use (the UNet's original block name `sgm_path`, a second
        prefix for the part)."""
        keys = [self.kohya_prefixes[part] + module_path.replace(".", "_")]
        if part == "unet" and self.sgm_unet_names and sgm_path is not None:
            keys.append(self.kohya_prefixes["unet"] + sgm_path.replace(".", "_"))
        if part in self.kohya_aliases:
            keys.append(self.kohya_aliases[part] + module_path.replace(".", "_"))
        return keys

    def spatial_latents(self, pipeline: Any, latents: Any, size: tuple[int, int]) -> Any:
        """`pipeline`'s latents between two steps of a picture of `size` (width, height), as a (batch, channels, h,
        w) grid in the denoiser's space."""
        return latents if self.spatial_latents_of is None else self.spatial_latents_of(pipeline, latents, size)

    def latents_of_pixels(self, pipeline: Any, pixels: Any) -> Any:
        """(n, 3, H, W) pixels in [-1, 1] encoded by `pipeline`'s VAE into the denoiser's latent grid."""
        if self.pixel_latents_of is not None:
            return self.pixel_latents_of(pipeline, pixels)
        vae = pipeline.vae
        parameter = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
        if parameter is not None:  # a torch VAE (an ONNX Runtime one takes float32 on the CPU)
            pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
        encoded = vae.encode(pixels).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (encoded - shift) * vae.config.scaling_factor

    def size_arguments(self, size: tuple[int, int]) -> dict[str, object]:
        """Its micro-conditioning for a picture of `size` (width, height): an uncropped picture made at the size
        asked for (the output's size, also for image-to-image), which is what such a family's training associates
        with whole, well-framed images. Nothing for families without it."""
        if not self.size_conditioning:
            return {}
        height_width = (size[1], size[0])
        return {"original_size": height_width, "target_size": height_width, "crops_coords_top_left": (0, 0)}


@dataclass(frozen=True)
class ModelFamily:
    """A model as detected: its family, the size it was trained at (width, height: the default when neither the
    request nor the config gives one), its prediction type (epsilon or v_prediction; None when only loading the
    model can tell, as for a single file), and whether it is an inpainting checkpoint (a UNet that also takes the
    mask and the masked image's latents: 9 input channels)."""

    family: Family
    native_size: tuple[int, int]
    prediction: str | None = None
    inpainting: bool = False
    guidance: str = "cfg"  # one of GUIDANCE_KINDS

    @property
    def pipeline_class(self) -> str:
        """The diffusers pipeline class its checkpoint loads as."""
        return self.family.inpainting if self.inpainting else self.family.text_to_image

    @property
    def run_defaults(self) -> RunDefaults:
        """Steps and guidance_scale for a request that leaves them out."""
        return self.family.run_defaults(self.guidance)

    def check(self, params: GenerationParams) -> None:
        """Raise InvalidParameter for what a model of this kind cannot do with `params`: guidance above what a
        distilled model takes, a negative prompt it cannot use, sides off its multiple, a second pass it cannot
        make, add-on kinds it does not run."""
        family, label = self.family, self.family.label
        if params.shapes_noise and (not family.variation_seeds or self.inpainting):
            raise InvalidParameter("variation_seed", f"{label} 不支持变体种子（variation_seed / seed_resize_from）")
        if params.sd_upscale is not None and (family.repaints_for_image_to_image or self.inpainting):
            raise InvalidParameter("sd_upscale", f"{label} 的图生图是整图重绘：不支持 sd_upscale")
        if params.prompt_syntax == "a1111" and family.weighted_prompts:
            for field, text in (("prompt", params.prompt), ("negative_prompt", params.negative_prompt)):
                try:
                    check_prompt(text or "", params.num_inference_steps)
                except PromptSyntaxError as problem:
                    raise InvalidParameter(field, f"{field} 无法按 A1111 语法读取：{problem}") from None
        edits = params.is_image_to_image or params.inpaint is not None or params.hires is not None or self.inpainting
        if params.step_cache is not None and not family.step_cache_edits and edits:
            raise InvalidParameter(
                "step_cache", f"{label} 的 step_cache 只用于文生图（不能与 init_image、局部重绘模型或 hires 同用）"
            )
        if params.tiling is not None and not family.tiling:
            raise InvalidParameter("tiling", f"{label} 不支持无缝平铺（tiling）：它的去噪模型没有卷积")
        if params.clip_skip > 1 and not family.clip_skip:
            raise InvalidParameter("clip_skip", f"{label} 不使用 CLIP 的中间层：clip_skip 只能为 1")
        if self.guidance == "distilled" and params.guidance_scale > DISTILLED_MAX_GUIDANCE:
            raise InvalidParameter(
                "guidance_scale",
                f"guidance_scale 无效：{params.guidance_scale:g}。此模型（{label}，蒸馏模型，无引导）"
                f"只接受 0 到 {DISTILLED_MAX_GUIDANCE:g}",
            )
        if params.negative_prompt and (self.guidance != "cfg" or not family.takes_negative_prompt):
            why = "不使用无分类器引导（CFG）" if family.takes_negative_prompt else "的流水线不接受负面提示词"
            raise InvalidParameter("negative_prompt", f"此模型（{label}）{why}，不能使用 negative_prompt")
        for name, side in (("width", params.width), ("height", params.height)):
            if side % family.side_multiple:
                raise InvalidParameter(name, f"{name} 无效：{side}。{label} 的边长须为 {family.side_multiple} 的倍数")
        hires = params.hires
        edits = params.is_image_to_image or self.inpainting or hires is not None
        if params.scheduler in family.text_to_image_only_schedulers and edits:
            others = [name for name in family.schedulers if name not in family.text_to_image_only_schedulers]
            raise InvalidParameter(
                "scheduler",
                f"{params.scheduler} 在 {label} 上只用于文生图（图生图、局部重绘、hires 与局部重绘模型须用："
                f"{', '.join(others)}）",
            )
        if hires is not None:
            if family.repaints_for_image_to_image:
                raise InvalidParameter("hires", f"{label} 没有图生图流水线，不支持 hires（高分辨率第二遍）")
            if hires.in_latents and not family.latent_hires:
                raise InvalidParameter("hires", f"{label} 的 hires 只能放大像素（upscaler 不能为 Latent 类）")
            for name, side in (("hires.width", hires.width), ("hires.height", hires.height)):
                if side % family.side_multiple:
                    raise InvalidParameter("hires", f"{name} 须为 {family.side_multiple} 的倍数（{label}）")
