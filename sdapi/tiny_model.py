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
from typing import TextIO

from sdapi.stages import Stages

# A fixed seed makes the weights identical on every build, so tests and benchmarks are repeatable.
TINY_MODEL_SEED = 20240101

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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


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


def tiny_vocab_size() -> int:
    """Size of the tiny tokenizer's vocabulary (two tokens per byte plus two special tokens)."""
    return 2 * 256 + 2


def build_tiny_pipeline_components() -> dict[str, object]:
    """Create the tiny model's torch modules with fixed random weights (not yet saved)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(TINY_MODEL_SEED)
    # Attention only at the lowest resolution keeps a 512x512 image to a few seconds on two cores.
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(TINY_MODEL_SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
        mid_block_add_attention=False,
    )
    torch.manual_seed(TINY_MODEL_SEED + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tiny_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tiny_vocab_size() - 2,
            eos_token_id=tiny_vocab_size() - 1,
            pad_token_id=tiny_vocab_size() - 1,
        )
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def make_tiny_model(target: str | os.PathLike[str], progress: TextIO | None = None) -> Path:
    """Write the tiny pipeline in diffusers format to `target`, atomically, showing its stages on `progress`
    (None: silent); return the folder."""
    with Stages(4, progress) as stages:
        stages.stage("loading diffusers")
        from diffusers import PNDMScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        target_path = Path(target)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=target_path.parent))
        try:
            stages.stage("writing the tokenizer")
            write_tokenizer(staging / "_tokenizer_src")
            tokenizer = CLIPTokenizer.from_pretrained(str(staging / "_tokenizer_src"))
            stages.stage("building the UNet, VAE and text encoder")
            scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
            components = build_tiny_pipeline_components()
            pipeline = StableDiffusionPipeline(
                tokenizer=tokenizer,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                **components,
            )
            stages.stage(f"saving to {target_path}")
            pipeline.save_pretrained(str(staging / "model"), safe_serialization=True)
            if target_path.exists():
                shutil.rmtree(target_path)
            (staging / "model").rename(target_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target_path
