"""Build the tiny, randomly initialised Stable Diffusion pipeline used as the embedded default.

It has the real architecture (UNet2DConditionModel, AutoencoderKL with 8x downsampling, CLIP text
encoder and tokenizer, a scheduler config) at toy sizes, so it loads and runs through exactly the
code a real checkpoint does, offline, in seconds. Its pictures are deterministic noise.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TextIO

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.families import TINY_VARIANTS
from sdapi.families.tiny_parts import TINY_MODEL_SEED, _bytes_to_unicode, _text_encoder_config
from sdapi.families.tiny_transformers import TRANSFORMER_VARIANTS, build_tiny_transformer_pipeline
from sdapi.observability.stages import Stages

# The scheduler config of Stable Diffusion 1.5, so every scheduler sees the values it would in production.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "prediction_type": "epsilon",
}


def write_tokenizer(directory: Path) -> None:
    """Write a byte-level CLIP BPE vocabulary with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    characters = list(_bytes_to_unicode().values())
    vocab_list = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab_file=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        model_max_length=77,
    )
    tokenizer.save_pretrained(str(directory))


# SD 2.x 768-v (v-prediction) and SDXL base schedulers, as their model pages ship them.
SD2V_SCHEDULER_CONFIG = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "DDIMScheduler",
    "clip_sample": False,
    "prediction_type": "v_prediction",
}
SDXL_SCHEDULER_CONFIG = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _tiny_vae(
    scaling_factor: float = 0.18215, block_out_channels: tuple[int, ...] = (8, 16, 16, 16), norm_num_groups: int = 8
) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=512,
        mid_block_add_attention=False,
        scaling_factor=scaling_factor,
    )


def sd_unet(
    block_out_channels: tuple[int, ...] = (16, 32, 32),
    cross_attention_dim: int = 32,
    sample_size: int = 64,
    linear_projection: bool = False,
    in_channels: int = 4,
) -> Any:
    """The SD 1.x/2.x UNet layout at toy sizes, one level per entry of `block_out_channels`. Attention only at the
    lowest resolution keeps a 512x512 image to a few seconds on two cores."""
    from diffusers import UNet2DConditionModel

    plain_levels = len(block_out_channels) - 1

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,  # 9 for an inpainting UNet: latents, the mask, the masked image's latents
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * plain_levels + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * plain_levels,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=linear_projection,
    )


def build_tiny_pipeline_components(family: str = "sd15") -> dict[str, object]:
    """Create the tiny model's torch modules with fixed random weights (not yet saved): SD 1.5's layout, SD 2.x's
    (linear attention projections, OpenCLIP's gelu, 768-pixel native size) or SDXL's (two text encoders, the
    size/crop micro-conditioning, 1024-pixel native size)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(TINY_MODEL_SEED)
    inpainting = family.endswith("-inpaint")
    family = family.removesuffix("-inpaint")
    if family == "sdxl":
        # SDXL's block layout (no attention in the first block, two resnets per block, more transformer layers
        # deeper down) at toy widths.
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=9 if inpainting else 4,
            out_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=64,  # the two text encoders' hidden states side by side
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers + the pooled text embedding
            norm_num_groups=8,
        )
    else:
        unet = sd_unet(
            sample_size=96 if family == "sd2-v" else 64,
            linear_projection=family == "sd2-v",
            in_channels=9 if inpainting else 4,
        )
    torch.manual_seed(TINY_MODEL_SEED + 1)
    vae = _tiny_vae(0.13025 if family == "sdxl" else 0.18215)
    torch.manual_seed(TINY_MODEL_SEED + 2)
    text_encoder = CLIPTextModel(_text_encoder_config("gelu" if family == "sd2-v" else "quick_gelu"))
    components: dict[str, object] = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    if family == "sdxl":
        torch.manual_seed(TINY_MODEL_SEED + 3)
        components["text_encoder_2"] = CLIPTextModelWithProjection(_text_encoder_config("gelu"))
    return components


def _save(pipeline: Any, staging: Path, target_path: Path) -> None:
    """Save `pipeline` under `staging`, then move it to `target_path` in one rename (replacing what was there)."""
    pipeline.save_pretrained(str(staging / "model"), safe_serialization=True)
    if target_path.exists():
        shutil.rmtree(target_path)
    (staging / "model").rename(target_path)


def make_tiny_model(target: str | os.PathLike[str], progress: TextIO | None = None, family: str = "sd15") -> Path:
    """Write the tiny pipeline of `family` (sd15, sd2-v or sdxl; sd15-inpaint or sdxl-inpaint for an inpainting
    checkpoint's 9-channel UNet; sd3, flux, flux-dev, flux2-klein or z-image) in diffusers format to `target`,
    atomically, showing its stages on `progress` (None: silent); return the folder."""
    if family not in TINY_VARIANTS:
        raise ValueError(f"family must be one of {', '.join(TINY_VARIANTS)}, not {family!r}")
    # Seeded random weights: no other thread may build modules (or patch torch while loading) meanwhile.
    with Stages(4, progress) as stages, MODULES_BUILT_ONE_AT_A_TIME:
        stages.stage("loading diffusers")
        import diffusers
        from transformers import CLIPTokenizer

        target_path = Path(target)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=target_path.parent))
        try:
            stages.stage("writing the tokenizer")
            write_tokenizer(staging / "_tokenizer_src")
            tokenizer = CLIPTokenizer.from_pretrained(str(staging / "_tokenizer_src"))
            pipeline: Any
            if family in TRANSFORMER_VARIANTS:
                stages.stage(f"building the {family} transformer, VAE and text encoder(s)")
                pipeline = build_tiny_transformer_pipeline(family, staging, tokenizer)
                stages.stage(f"saving to {target_path}")
                _save(pipeline, staging, target_path)
                return target_path
            stages.stage(f"building the {family} UNet, VAE and text encoder(s)")
            config = {"sd15": SD15_SCHEDULER_CONFIG, "sd2-v": SD2V_SCHEDULER_CONFIG, "sdxl": SDXL_SCHEDULER_CONFIG}
            scheduler_config = config[family.removesuffix("-inpaint")]
            scheduler = getattr(diffusers, str(scheduler_config["_class_name"])).from_config(scheduler_config)
            components = build_tiny_pipeline_components(family)
            inpainting = family.endswith("-inpaint")
            if family.startswith("sdxl"):
                sdxl_class = (
                    diffusers.StableDiffusionXLInpaintPipeline if inpainting else diffusers.StableDiffusionXLPipeline
                )
                pipeline = sdxl_class(
                    tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler, add_watermarker=False, **components
                )
            else:
                sd_class = diffusers.StableDiffusionInpaintPipeline if inpainting else diffusers.StableDiffusionPipeline
                pipeline = sd_class(
                    tokenizer=tokenizer,
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                    **components,
                )
            stages.stage(f"saving to {target_path}")
            _save(pipeline, staging, target_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target_path
