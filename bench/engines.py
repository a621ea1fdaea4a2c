"""`make bench-engines`: torch fp32, torch in the device's fast dtype, and ONNX Runtime, on the same model and settings.

Two models: the tiny one, and one with the real SD 1.5 architecture and random weights, built offline
(UNet2DConditionModel with SD 1.5's config, ~860M parameters; a CLIP ViT-L text encoder; the SD VAE).
512x512, batch 1 (CFG doubles the UNet batch to 2). Each configuration runs in its own process, so its
peak resident memory is its own.

Per UNet step is timed from two runs with different step counts (the difference divided by the extra steps), which
also yields the fixed cost (text encoder, VAE decode); seconds per image are given at 20 steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import describe_machine
from sdapi.engines import Run

SIZE = 512
STEPS_IMAGE = 20


def build_sd15_random(target: Path) -> Path:
    """A diffusers folder with SD 1.5's architecture and fixed random weights (no download)."""
    if (target / "model_index.json").is_file():
        return target
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdapi.families.tiny import SD15_SCHEDULER_CONFIG, write_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    write_tokenizer(target.parent / "_tokenizer")  # byte-level: ids stay far below the ViT-L vocabulary size
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(target.parent / "_tokenizer"),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(target)
    return target


def build_sdxl_random(target: Path) -> Path:
    """A diffusers folder with SDXL base's architecture (UNet ~2.6B parameters, CLIP ViT-L and OpenCLIP bigG text
    encoders, the SDXL VAE layout) and fixed random weights (no download); about 14 GiB in fp32."""
    if (target / "model_index.json").is_file():
        return target
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdapi.families.tiny import SDXL_SCHEDULER_CONFIG, write_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
        )
    )
    write_tokenizer(target.parent / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(target.parent / "_tokenizer")
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )
    pipeline.save_pretrained(target)
    return target


def measure(
    engine: str, dtype: str, model: Path, export: Path, steps: tuple[int, int], size: int = SIZE
) -> dict[str, float]:
    """In this process: load one engine and time two runs."""
    import torch

    from sdapi.config import ModelConfig, OnnxConfig
    from sdapi.engines.onnx_engine import OnnxEngine
    from sdapi.engines.torch_engine import TorchEngine
    from tests.support.factories import make_params

    torch.manual_seed(0)
    config = ModelConfig(
        path=str(model),
        device="cpu" if not torch.cuda.is_available() else "cuda",
        dtype=dtype,
        onnx_path=str(export),
        batch_size=1,
    )
    runner = OnnxEngine(config, OnnxConfig(), export.parent / "trt-cache") if engine == "onnx" else TorchEngine(config)
    started = time.perf_counter()
    runner.load()
    load_seconds = time.perf_counter() - started

    def run(count: int) -> float:
        params = make_params(width=size, height=size, num_inference_steps=count, scheduler="EulerDiscreteScheduler")
        began = time.perf_counter()
        runner.generate(Run(params))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - began

    run(steps[0])  # warm-up (kernel selection, allocator)
    short, long = run(steps[0]), run(steps[1])
    per_step = (long - short) / (steps[1] - steps[0])
    fixed = short - steps[0] * per_step
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "load_s": load_seconds,
        "step_s": per_step,
        "fixed_s": fixed,
        "image_s": fixed + STEPS_IMAGE * per_step,
        "peak_rss_mib": peak,
    }


def compare(
    name: str,
    model: Path,
    export: Path,
    steps: tuple[int, int],
    fast_dtype: str,
    size: int = SIZE,
    configurations: tuple[tuple[str, str, str], ...] | None = None,
) -> list[str]:
    lines = [f"model: {name} ({model}), {size}x{size}, steps timed at {steps[0]} and {steps[1]}"]
    configurations = configurations or (
        ("torch fp32", "torch", "float32"),
        (f"torch {fast_dtype}", "torch", fast_dtype),
        ("onnxruntime fp32", "onnx", "float32"),
    )
    for label, engine, dtype in configurations:
        command = [sys.executable, "-m", "bench.engines", "--measure", engine, dtype, str(model), str(export)]
        command += [str(steps[0]), str(steps[1]), str(size)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        figures = json.loads(output)
        lines.append(
            f"  {label:18s} UNet step {figures['step_s']:.3f} s"
            f" | image at {STEPS_IMAGE} steps {figures['image_s']:.2f} s (fixed {figures['fixed_s']:.2f} s)"
            f" | peak RSS {figures['peak_rss_mib']:.0f} MiB | load {figures['load_s']:.1f} s"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", nargs=7)
    parser.add_argument("--workdir", type=Path, default=Path("data/bench"))
    parser.add_argument("--models", default="tiny,sd15")
    arguments = parser.parse_args()
    if arguments.measure:
        engine, dtype, model, export, first, second, size = arguments.measure
        figures = measure(engine, dtype, Path(model), Path(export), (int(first), int(second)), int(size))
        print(json.dumps(figures))
        return

    import torch

    from export.exporter import export_model
    from sdapi.engines.devices import cpu_has_native_bf16
    from sdapi.families.tiny import make_tiny_model

    fast = "float16" if torch.cuda.is_available() else ("bfloat16" if cpu_has_native_bf16() else "float32")
    work = arguments.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe_machine()}", flush=True)
    for name in arguments.models.split(","):
        if name == "sdxl":
            # SDXL base at its native 1024x1024. Exporting a 10 GiB UNet to ONNX needs more memory than the torch
            # engine alone; on machines without it, pass --models sdxl-torch to time torch only.
            model = build_sdxl_random(work / "sdxl-random")
            export = work / "sdxl-onnx"
            if not (export / "export.json").is_file():
                export_model(str(model), export, [])
            compare(name, model, export, (1, 2), fast, 1024)
            continue
        if name == "sdxl-torch":
            model = build_sdxl_random(work / "sdxl-random")
            compare(name, model, work / "sdxl-onnx", (1, 2), fast, 1024, (("torch fp32", "torch", "float32"),))
            continue
        if name == "tiny":
            model = work / "tiny-sd"
            if not (model / "model_index.json").is_file():
                make_tiny_model(model)
            steps = (10, 30)
        else:
            model = build_sd15_random(work / "sd15-random")
            steps = (2, 4)
        export = work / f"{name}-onnx"
        if not (export / "export.json").is_file():
            export_model(str(model), export, [])
        compare(name, model, export, steps, fast)


if __name__ == "__main__":
    main()
