"""The transformer families' real architectures with random weights, built on the device (speed does not depend
on the values; nothing is downloaded or saved: FLUX.1's 12B transformer alone is 24 GB in bf16), and what
bench/gpu_check.py measures on them: seconds per 1024x1024 image at the family's step count, images per second at
batch 4, and peak memory. `--tiny` measures the tiny models of `make-tiny-model` instead, so CI runs every step.

Configs are the published models' (SD 3.5 Medium's MMDiT-X, FLUX.1's 19 double + 38 single blocks, Z-Image-Turbo's
30-layer single-stream transformer), with their text encoders (CLIP-L, CLIP-G and T5-XXL; CLIP-L and T5-XXL;
Qwen3-4B) and VAEs; the tokenizers are the tiny byte-level ones (their ids fit every vocabulary)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One measured architecture: its builder, and the run its model page recommends."""

    name: str
    tiny_variant: str  # the make-tiny-model family measured with --tiny
    build: Callable[[Path], Any]
    steps: int
    guidance_scale: float


def _clip(width: int, layers: int, heads: int, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=width,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_xxl() -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    )
    return T5EncoderModel(config)


def _vae() -> Any:
    """SD3's and FLUX.1's VAE layout: 16 latent channels, 8x."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def _tokenizers(work: Path) -> dict[str, Any]:
    from transformers import CLIPTokenizer

    from sdapi.families.tiny import write_tokenizer
    from sdapi.families.tiny_transformers import qwen_tokenizer, t5_tokenizer

    write_tokenizer(work / "clip")
    return {
        "clip": CLIPTokenizer.from_pretrained(str(work / "clip")),
        "t5": t5_tokenizer(work / "t5"),
        "qwen": qwen_tokenizer(work / "qwen"),
    }


def build_sd35_medium(work: Path) -> Any:
    import diffusers

    tokenizers = _tokenizers(work)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(),
        text_encoder=_clip(768, 12, 12, projection=True),
        tokenizer=tokenizers["clip"],
        text_encoder_2=_clip(1280, 32, 20, projection=True),
        tokenizer_2=tokenizers["clip"],
        text_encoder_3=_t5_xxl(),
        tokenizer_3=tokenizers["t5"],
    )


def build_flux1(work: Path, guidance_embeds: bool) -> Any:
    import diffusers

    tokenizers = _tokenizers(work)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(16, 56, 56),
    )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    return diffusers.FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(),
        text_encoder=_clip(768, 12, 12, projection=False),
        tokenizer=tokenizers["clip"],
        text_encoder_2=_t5_xxl(),
        tokenizer_2=tokenizers["t5"],
    )


def build_z_image_turbo(work: Path) -> Any:
    import diffusers
    from transformers import Qwen3Config, Qwen3Model

    tokenizers = _tokenizers(work)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
        )
    )
    return diffusers.ZImagePipeline(
        transformer=diffusers.ZImageTransformer2DModel(),  # its defaults are Z-Image's own config
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizers["qwen"],
    )


ARCHITECTURES = (
    Architecture("sd35-medium", "sd3", build_sd35_medium, steps=40, guidance_scale=4.5),
    Architecture("flux1-schnell", "flux", lambda work: build_flux1(work, False), steps=4, guidance_scale=0.0),
    Architecture("flux1-dev", "flux-dev", lambda work: build_flux1(work, True), steps=28, guidance_scale=3.5),
    Architecture("z-image-turbo", "z-image", build_z_image_turbo, steps=9, guidance_scale=0.0),
)


def build_on(device: str, build: Callable[[Path], Any], work: Path) -> Any:
    """`build(work)` with its weights created on `device` in the device's working dtype (bf16 on CUDA: a 12B
    transformer never exists in fp32), its progress bars off."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipeline = build(work)
    finally:
        torch.set_default_dtype(previous)
    pipeline.to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def measure(pipeline: Any, device: str, side: int, steps: int, guidance_scale: float) -> dict[str, Any]:
    """Seconds per image at `steps` (after a one-step warm-up), images per second at batch 4, and peak memory."""
    import torch

    def generate(images: int, steps: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        pipeline(
            prompt="a lighthouse on a cliff at dusk",
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=side,
            height=side,
            num_images_per_prompt=images,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in range(images)],
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    generate(1, 1)  # warm-up: kernels, allocator
    one = generate(1, steps)
    four = generate(4, steps)
    figures: dict[str, Any] = {
        "side": side,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seconds_per_image": round(one, 3),
        "images_per_second_batch4": round(4 / four, 3),
    }
    if device.startswith("cuda"):
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures
