"""`python -m bench.gpu_check`: the one command to run on a lent GPU machine, which stops itself before its time
budget with whatever it has measured, and writes `gpu-check.json` and `gpu-check.md` to `--out` ($OUT there).

For each model (the full SD 1.5 and SDXL architectures with random weights, built on the device: speed does not
depend on the values; `--tiny`: the tiny test model), each engine configuration is measured: torch eager (fp16 on
CUDA, SDPA attention), torch `channels_last` + `torch.compile` (mode max-autotune-no-cudagraphs on CUDA; on a CPU
the plumbing only, backend "eager"), whether another size recompiles and whether a LoRA merged after compiling is
really used, and ONNX Runtime from an export made there (`--fp16` on CUDA; TensorRT only where its provider loads,
else the reason). Figures: UNet steps per second (CUDA events), one image at 20 steps, images per second at batch 1
and 4, peak memory, load and warm-up time; then a queue of 20 tasks through the real service against the bare
engine, and cross-request batching: 32 concurrent requests at queue.batch_max 1, 4 and 8. The contract is checked
on the device: same seed same pixels, image k of a batch = seed + k, a batch's members get their own runs' pixels,
every scheduler runs, a LoRA swap is exact, image-to-image runs, and running out of memory gives out_of_memory and
frees it. Last, the transformer families' real architectures with random weights (bench/transformer_families.py:
SD 3.5 Medium, FLUX.1 at [schnell]'s and [dev]'s step counts, Z-Image-Turbo) at 1024x1024: seconds per image,
images per second at batch 4, peak memory (`--tiny`: their tiny models at 64x64).

CI runs `--device cpu --tiny --budget-seconds 60` (tests/integration/operations/test_gpu_check.py): every step is
known to run before a GPU is lent. A step that fails is recorded with its error and the command exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A step is not started with less than this left of the budget: the files still get written.
RESERVE_SECONDS = 5.0
# The kinds of step, in the order they run (--steps picks some).
STEP_KINDS = (
    "environment",
    "contract",
    "eager",
    "compile",
    "onnx",
    "service",
    "batching",
    "previews",
    "speed",
    "transformers",
)
# queue.batch_max settings the batching step compares, with 32 concurrent requests each.
BATCHING_SETTINGS = (1, 4, 8)
BATCHING_REQUESTS = 32


@dataclass
class Run:
    """The check's state: where it writes, the budget, and every figure so far."""

    device: str
    tiny: bool
    out: Path
    budget: float
    started: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    only: set[str] | None = None  # --steps: the kinds of step to run (None: all)

    @property
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def step(self, kind: str, name: str, action: Callable[[], dict[str, Any]]) -> None:
        """Run one step (of `kind`, what --steps names) unless the budget is spent; record its figures, or its
        error, and write the files."""
        if self.only is not None and kind not in self.only:
            return
        if self.left < RESERVE_SECONDS:
            self.skipped.append(name)
            print(f"[gpu-check] {name}: skipped, budget spent", flush=True)
            return
        began = time.monotonic()
        try:
            figures = action()
        except Exception as error:
            self.failures.append(name)
            figures = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
        figures["seconds"] = round(time.monotonic() - began, 2)
        self.results[name] = figures
        print(f"[gpu-check] {name}: {json.dumps({k: v for k, v in figures.items() if k != 'traceback'})}", flush=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        document = {"results": self.results, "failures": self.failures, "skipped": self.skipped}
        (self.out / "gpu-check.json").write_text(json.dumps(document, indent=2, default=str))
        (self.out / "gpu-check.md").write_text(markdown(document))


def markdown(document: dict[str, Any]) -> str:
    """One table: a row per step, its figures as `name value` pairs."""
    lines = ["| step | figures |", "|---|---|"]
    for name, figures in document["results"].items():
        shown = ", ".join(f"{key} {value}" for key, value in figures.items() if key not in ("traceback",))
        lines.append(f"| {name} | {shown} |")
    for name in document["skipped"]:
        lines.append(f"| {name} | skipped: the budget was spent |")
    return "\n".join(lines) + "\n"


# -- the machine ------------------------------------------------------------------------------------------------


def environment(run: Run) -> dict[str, Any]:
    import torch

    figures: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "onnxruntime", "optimum"):
        with contextlib.suppress(Exception):
            figures[name] = __import__(name).__version__
    if run.device == "cuda":
        figures |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
        with contextlib.suppress(Exception):
            query = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
            figures["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    else:
        figures["cpu"] = platform.processor() or "cpu"
    with contextlib.suppress(Exception):
        import onnxruntime

        figures["onnx_providers"] = onnxruntime.get_available_providers()
    return figures


# -- measuring one engine ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    side: int  # the picture's side measured at
    steps: int = 20  # the denoising steps of "one image" (4 for the tiny model: a check of the script, not a figure)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _timer(device: str) -> Iterator[dict[str, float]]:
    """Seconds of the body: CUDA events on a GPU, the wall clock elsewhere."""
    import torch

    measured: dict[str, float] = {}
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield measured
        end.record()
        torch.cuda.synchronize()
        measured["seconds"] = start.elapsed_time(end) / 1000
    else:
        began = time.perf_counter()
        yield measured
        measured["seconds"] = time.perf_counter() - began


def _peak_memory(device: str) -> float:
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _unet_steps_per_second(run: Run, unet: Any, side: int, repeats: int) -> float:
    import torch

    dtype = next(unet.parameters()).dtype
    latents = torch.randn(2, unet.config.in_channels, side // 8, side // 8, device=run.device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=run.device, dtype=dtype)
    extra: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, width, device=run.device, dtype=dtype),
            "time_ids": torch.zeros(2, 6, device=run.device, dtype=dtype),
        }
    timestep = torch.tensor([500], device=run.device)
    with torch.inference_mode():
        unet(latents, timestep, encoder_hidden_states=text, **extra)  # warm-up
        with _timer(run.device) as timed:
            for _ in range(repeats):
                unet(latents, timestep, encoder_hidden_states=text, **extra)
    return round(repeats / timed["seconds"], 2)


def _params(model: Model, **changes: Any) -> Any:
    from tests.support.factories import make_params

    fields = {"width": model.side, "height": model.side, "num_inference_steps": model.steps, "seed": 1} | changes
    return make_params(**fields)


def _image_seconds(run: Run, engine: Any, params: Any) -> float:
    from sdapi.engines import Run as EngineRun

    with _timer(run.device) as timed:
        engine.generate(EngineRun(params))
    return round(timed["seconds"], 3)


def torch_engine(run: Run, model: Model, lora: Path | None = None) -> Any:
    from sdapi.config import ModelConfig
    from sdapi.engines.torch_engine import TorchEngine

    dtype = "float16" if run.device == "cuda" else "float32"
    files = (lambda _spec: lora) if lora is not None else None
    engine = TorchEngine(ModelConfig(path=str(model.path), device=run.device, dtype=dtype), files, 4)
    engine.load()
    return engine


def measure_torch(run: Run, model: Model, compiled: bool) -> dict[str, Any]:
    import torch

    repeats = 3 if run.tiny else 10
    began = time.monotonic()
    engine = torch_engine(run, model)
    figures: dict[str, Any] = {"load_s": round(time.monotonic() - began, 2)}
    unet = engine._text_to_image.unet
    if compiled:
        unet.to(memory_format=torch.channels_last)
        options = {"backend": "eager"} if run.device == "cpu" else {"mode": "max-autotune-no-cudagraphs"}
        figures["compile"] = options
        engine._text_to_image.unet = torch.compile(unet, **options)
        unet = engine._text_to_image.unet
    warm = time.monotonic()
    _image_seconds(run, engine, _params(model, num_inference_steps=2))
    figures["warm_up_s"] = round(time.monotonic() - warm, 2)
    figures["unet_it_per_s"] = _unet_steps_per_second(run, unet, model.side, repeats)
    figures[f"image_{model.steps}_steps_s"] = _image_seconds(run, engine, _params(model))
    # Batch 4 compiles the UNet again (another shape): left to the GPU run, where it is worth its minute.
    for batch in (1,) if compiled and run.tiny else (1, 4):
        seconds = _image_seconds(run, engine, _params(model, num_images=batch))
        figures[f"images_per_s_batch_{batch}"] = round(batch / seconds, 3)
    if compiled:
        figures |= compile_behaviour(run, model, engine)
    figures["peak_memory_gib"] = _peak_memory(run.device)
    return figures


def compile_behaviour(run: Run, model: Model, engine: Any) -> dict[str, Any]:
    """Whether another size or scheduler makes the compiled UNet compile again."""
    from torch._dynamo.utils import counters

    def graphs() -> int:
        return int(sum(counters["stats"].values()))

    before = graphs()
    _image_seconds(run, engine, _params(model, num_inference_steps=2, width=model.side + 64))
    after_size = graphs()
    _image_seconds(run, engine, _params(model, num_inference_steps=2, scheduler="EulerDiscreteScheduler"))
    return {"recompiles_on_size": after_size > before, "recompiles_on_scheduler": graphs() > after_size}


def lora_after_compile(run: Run, model: Model, lora: Path) -> dict[str, Any]:
    """A LoRA merged into the weights after compiling changes the compiled UNet's output as it does eager's."""
    import numpy as np
    import torch

    from sdapi.core.request import LoraSpec
    from sdapi.engines import Run as EngineRun
    from sdapi.models.digests import sha256_file
    from tests.support.services import mean_abs_diff

    spec = LoraSpec(name=lora.stem, weight=1.0, sha256=sha256_file(lora))
    eager = torch_engine(run, model, lora)
    compiled = torch_engine(run, model, lora)
    options = {"backend": "eager"} if run.device == "cpu" else {"mode": "max-autotune-no-cudagraphs"}
    compiled._text_to_image.unet = torch.compile(compiled._text_to_image.unet, **options)
    params = _params(model, num_inference_steps=4)
    plain = np.asarray(compiled.generate(EngineRun(params)).images[0], dtype=np.float64)
    styled_params = _params(model, num_inference_steps=4, loras=(spec,))
    styled = np.asarray(compiled.generate(EngineRun(styled_params)).images[0], dtype=np.float64)
    reference = np.asarray(eager.generate(EngineRun(styled_params)).images[0], dtype=np.float64)
    return {
        "lora_changes_compiled_output": mean_abs_diff(styled, plain) > 0.5,
        "compiled_vs_eager_with_lora_mean_abs": round(mean_abs_diff(styled, reference), 3),
    }


def measure_onnx(run: Run, model: Model, work: Path) -> dict[str, Any]:
    import onnxruntime

    from export.exporter import export_model
    from sdapi.config import ModelConfig, OnnxConfig
    from sdapi.engines.onnx_engine import OnnxEngine

    export = work / f"{model.name}-onnx"
    began = time.monotonic()
    fp16 = run.device == "cuda"
    if not (export / "export.json").is_file():
        export_model(str(model.path), export, [], fp16=fp16, progress=None, force=True)
    figures: dict[str, Any] = {"export_s": round(time.monotonic() - began, 2), "precision": "fp16" if fp16 else "fp32"}
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if run.device == "cuda" else ["CPUExecutionProvider"]
    config = ModelConfig(path=str(model.path), onnx_path=str(export), device=run.device, engine="onnx")
    engine = OnnxEngine(config, OnnxConfig(providers=providers), work / "trt-cache")
    loading = time.monotonic()
    engine.load()
    figures |= {"load_s": round(time.monotonic() - loading, 2), "providers": engine.providers}
    figures["io_binding"] = engine.providers[0] != "CPUExecutionProvider"
    _image_seconds(run, engine, _params(model, num_inference_steps=2))
    figures[f"image_{model.steps}_steps_s"] = _image_seconds(run, engine, _params(model))
    figures["peak_memory_gib"] = _peak_memory(run.device)
    figures["tensorrt"] = (
        "TensorrtExecutionProvider offered"
        if "TensorrtExecutionProvider" in onnxruntime.get_available_providers()
        else "not measured: this onnxruntime build offers no TensorRT provider (libnvinfer would have to travel too)"
    )
    return figures


def through_the_service(run: Run, model: Model, work: Path) -> dict[str, Any]:
    """20 tasks submitted at once through the real service (HTTP, SQLite, local storage) against the bare engine."""
    from tests.support.services import in_process, submit, wait_for_task

    steps = model.steps
    dtype = "float16" if run.device == "cuda" else "float32"
    changes = {"model": {"device": run.device, "dtype": dtype, "engine": "torch"}}
    changes["defaults"] = {"width": model.side, "height": model.side, "num_inference_steps": steps}
    with in_process(work / f"{model.name}-service", model.path, **changes) as service, service.client() as client:
        client.timeout = 600
        submit(client, prompt="warm-up", seed=0)
        began = time.monotonic()
        ids = [submit(client, prompt="a lighthouse", seed=seed) for seed in range(20)]
        finished = [wait_for_task(client, task_id, timeout=600) for task_id in ids]
        seconds = time.monotonic() - began
    completed = sum(task["status"] == "completed" for task in finished)
    engine = torch_engine(run, model)
    bare = _image_seconds(run, engine, _params(model, num_inference_steps=steps))
    return {
        "tasks": 20,
        "completed": completed,
        "seconds": round(seconds, 2),
        "per_task_s": round(seconds / 20, 3),
        "bare_engine_per_image_s": bare,
        "overhead_ratio": round(seconds / 20 / bare, 3),
    }


def batching(run: Run, model: Model, work: Path) -> dict[str, Any]:
    """Cross-request batching through the real service: 32 concurrent requests (their own prompts and seeds) at each
    of BATCHING_SETTINGS' queue.batch_max, as `make bench-batching` does on a CPU."""
    from bench.batching import run_queue
    from tests.support.services import in_process

    dtype = "float16" if run.device == "cuda" else "float32"
    shape = {"width": model.side, "height": model.side, "num_inference_steps": model.steps}
    figures: dict[str, Any] = {"requests": BATCHING_REQUESTS, **shape}
    # A setting is started only when it should end within the budget: the first is estimated from the service
    # step's seconds per task (when it ran), each next one from the setting before.
    queued = run.results.get(f"{model.name}: service queue of 20", {}).get("per_task_s")
    expected = BATCHING_REQUESTS * queued + 30 if queued else 0.0
    for batch_max in BATCHING_SETTINGS:
        if run.left < expected + RESERVE_SECONDS:
            figures["stopped"] = f"budget left {run.left:.0f} s, batch_max {batch_max} needs about {expected:.0f} s"
            break
        began = time.monotonic()
        changes = {
            "model": {"device": run.device, "dtype": dtype, "engine": "torch"},
            "queue": {"batch_max": batch_max, "batch_wait_ms": 25, "max_pending": 200, "lease_seconds": 600},
        }
        with in_process(work / f"{model.name}-batch-{batch_max}", model.path, **changes) as service:
            queue = run_queue(service, shape, BATCHING_REQUESTS)
        figures[f"batch_max_{batch_max}"] = {key: round(value, 3) for key, value in queue.items()}
        expected = time.monotonic() - began
    alone = figures.get("batch_max_1", {}).get("images_per_second")
    for batch_max in BATCHING_SETTINGS[1:]:
        measured = figures.get(f"batch_max_{batch_max}")
        if alone and measured:
            figures[f"speedup_batch_max_{batch_max}"] = round(measured["images_per_second"] / alone, 3)
    return figures


def contract(run: Run, model: Model, lora: Path) -> dict[str, Any]:
    """The contract's promises on this device."""
    import numpy as np

    from sdapi.core.request import LoraSpec
    from sdapi.core.schedulers import ACCEPTED_SCHEDULERS
    from sdapi.engines import Run as EngineRun
    from sdapi.models.digests import sha256_file
    from tests.support.services import mean_abs_diff

    engine = torch_engine(run, model, lora)
    steps = 4

    def pixels(params: Any, index: int = 0) -> Any:
        return np.asarray(engine.generate(EngineRun(params)).images[index], dtype=np.float64)

    first = pixels(_params(model, num_inference_steps=steps, seed=5))
    figures: dict[str, Any] = {
        "same_seed_same_pixels": bool(np.array_equal(first, pixels(_params(model, num_inference_steps=steps, seed=5))))
    }
    batch = engine.generate(EngineRun(_params(model, num_inference_steps=steps, seed=5, num_images=2))).images
    figures["batch_image_k_is_seed_plus_k"] = bool(
        np.array_equal(
            np.asarray(batch[1], dtype=np.float64), pixels(_params(model, num_inference_steps=steps, seed=6))
        )
    )
    failed = []
    for scheduler in ACCEPTED_SCHEDULERS:
        try:
            engine.generate(EngineRun(_params(model, num_inference_steps=steps, scheduler=scheduler)))
        except Exception as error:
            failed.append(f"{scheduler}: {error}")
    figures["schedulers_failed"] = failed
    spec = LoraSpec(name=lora.stem, weight=1.0, sha256=sha256_file(lora))
    styled = pixels(_params(model, num_inference_steps=steps, seed=5, loras=(spec,)))
    figures["lora_changes_pixels"] = mean_abs_diff(styled, first) > 0.5
    figures["lora_swap_exact"] = bool(np.array_equal(first, pixels(_params(model, num_inference_steps=steps, seed=5))))
    from PIL import Image

    from sdapi.core.params import InitImageInfo

    init = Image.fromarray(first.astype(np.uint8))
    info = InitImageInfo(width=model.side, height=model.side, format="png")
    image_to_image = _params(model, num_inference_steps=steps, strength=0.6, init_image=info)
    figures["image_to_image_size"] = list(engine.generate(EngineRun(image_to_image, init)).images[0].size)
    difference = batch_members_difference(engine, model, steps)
    figures["batch_members_mean_difference"] = difference
    figures["batch_members_match_their_own_runs"] = difference <= 1.0
    if run.device == "cuda":
        figures |= out_of_memory(engine, model)
    else:
        figures["out_of_memory"] = "not checked on a CPU (it would take the machine's memory, not a device's)"
    return figures


def batch_members_difference(engine: Any, model: Model, steps: int) -> float:
    """Cross-request batching's promise on this device: each member of a batch (its own prompt, seed and image
    count) gets the pixels of its own run. The largest mean difference (of 255) between a member's image and its own
    run's; the seed rule allows 1."""
    import numpy as np

    from sdapi.engines import Run as EngineRun
    from tests.support.services import mean_abs_diff

    own = [
        _params(model, num_inference_steps=steps, prompt="a red ball", seed=3),
        _params(model, num_inference_steps=steps, prompt="a lake", negative_prompt="blur", seed=9, num_images=2),
    ]
    batched = engine.generate_batch([EngineRun(params, on_step=lambda *_: None) for params in own])
    differences = [
        mean_abs_diff(np.asarray(mine, dtype=np.float64), np.asarray(alone, dtype=np.float64))
        for params, generated in zip(own, batched, strict=True)
        for mine, alone in zip(generated.images, engine.generate(EngineRun(params)).images, strict=True)
    ]
    return round(max(differences), 4)


def out_of_memory(engine: Any, model: Model) -> dict[str, Any]:
    import torch

    from sdapi.engines import Run as EngineRun
    from sdapi.errors import ErrorCode, GenerationFailed

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    try:
        engine.generate(EngineRun(_params(model, width=8192, height=8192, num_images=8, num_inference_steps=1)))
        code = "none: 8 images of 8192x8192 fitted"
    except GenerationFailed as error:
        code = error.code.value if error.code is ErrorCode.OUT_OF_MEMORY else f"other: {error.code.value}"
    freed = torch.cuda.memory_allocated() <= before * 1.05 + 2**26
    return {"out_of_memory_code": code, "memory_freed_after": bool(freed)}


def previews(run: Run, model: Model) -> dict[str, Any]:
    """What live previews cost (issue 46): seconds per step with previews off, every 5 steps and every step, side by
    side on one engine (bench.previews, drawn and encoded on the generation thread: an upper bound)."""
    from bench.previews import cadence_figures

    engine = torch_engine(run, model)
    figures = cadence_figures(engine, model.steps, 2 if run.tiny else 3, model.side)
    return {key: value if not isinstance(value, float) else round(value, 4) for key, value in figures.items()}


def speed_levers(run: Run, model: Model, work: Path) -> dict[str, Any]:
    """What the speed levers save (issue 48): seconds per image with each alone and combined, side by side on one
    engine (bench.speed's options; the tiny decoder is TAESD's architecture with random weights: time only)."""
    from bench.speed import OPTIONS, build_taesd_random, time_options
    from sdapi.config import ModelConfig
    from sdapi.engines.torch_engine import TorchEngine

    dtype = "float16" if run.device == "cuda" else "float32"
    tiny_dir = build_taesd_random(work / "vae-tiny")
    engine = TorchEngine(ModelConfig(path=str(model.path), device=run.device, dtype=dtype), tiny_vae_dir=tiny_dir)
    engine.load()
    if engine.family is None or "deepcache" not in engine.family.family.step_caches:
        return {"skipped": "no UNet"}
    rows = time_options(engine, model.side, model.steps, 1 if run.tiny else 3, OPTIONS, quality=False)
    return {row["option"]: round(row["s_per_image"], 4) for row in rows}


def transformer_family(run: Run, architecture: Any, work: Path) -> dict[str, Any]:
    """One transformer architecture measured (bench/transformer_families.py), then freed for the next."""
    import gc

    import torch

    from bench.transformer_families import build_on, measure
    from sdapi.families.tiny import make_tiny_model

    if run.tiny:
        from diffusers import DiffusionPipeline

        folder = make_tiny_model(work / f"tiny-{architecture.tiny_variant}", family=architecture.tiny_variant)
        pipeline = DiffusionPipeline.from_pretrained(str(folder)).to(run.device)
        pipeline.set_progress_bar_config(disable=True)
        side, steps = 64, min(architecture.steps, 4)
    else:
        pipeline = build_on(run.device, architecture.build, work / architecture.name)
        side, steps = 1024, architecture.steps
    try:
        return {
            "architecture": architecture.name,
            **measure(pipeline, run.device, side, steps, architecture.guidance_scale),
        }
    finally:
        del pipeline
        gc.collect()
        if run.device.startswith("cuda"):
            torch.cuda.empty_cache()


# -- the models ------------------------------------------------------------------------------------------------


def models_for(run: Run, work: Path, names: list[str]) -> list[Model]:
    from bench.engines import build_sd15_random, build_sdxl_random
    from sdapi.families.tiny import make_tiny_model

    if run.tiny:
        return [Model("tiny", make_tiny_model(work / "tiny"), 64, steps=4)]
    builders = {"sd15": (build_sd15_random, 512), "sdxl": (build_sdxl_random, 1024)}
    return [Model(name, builders[name][0](work / f"{name}-random"), builders[name][1]) for name in names]


def lora_for(model: Model, work: Path) -> Path:
    from tests.support.adapter_files import model_modules, write_adapter

    path = work / f"{model.name}-lora.safetensors"
    if not path.is_file():
        write_adapter(path, model_modules(model.path), "lora", seed=3, scale=1.0)
    return path


def install_wheels(folder: Path) -> None:
    """Install the carried wheels (bench/gpu_bundle.sh) into a folder put first on sys.path."""
    target = Path(tempfile.gettempdir()) / "sdapi-gpu-site"
    wheels = sorted(str(path) for path in folder.glob("*.whl"))
    if not wheels:
        return
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--target",
        str(target),
        *wheels,
    ]
    subprocess.run(command, check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model instead of the full architectures")
    parser.add_argument("--models", default="sd15,sdxl", help="full architectures to measure (sd15, sdxl)")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "data/gpu-check")))
    parser.add_argument("--work", type=Path, default=None, help="where models and exports are built (a temp folder)")
    parser.add_argument("--wheels", type=Path, default=None, help="carried wheels to install first")
    parser.add_argument(
        "--steps", default=None, help=f"only these kinds of step, comma-separated: {', '.join(STEP_KINDS)}"
    )
    arguments = parser.parse_args(argv)
    if arguments.wheels is not None:
        install_wheels(arguments.wheels)
    run = Run(arguments.device, arguments.tiny, arguments.out, arguments.budget_seconds)
    if arguments.steps:
        run.only = set(arguments.steps.split(","))
        unknown = run.only - set(STEP_KINDS)
        if unknown:
            parser.error(f"unknown --steps: {', '.join(sorted(unknown))}")
    work = arguments.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    run.step("environment", "environment", lambda: environment(run))
    for model in models_for(run, work, arguments.models.split(",")):
        lora = lora_for(model, work)
        name = model.name
        run.step("contract", f"{name}: contract", lambda model=model, lora=lora: contract(run, model, lora))
        run.step("eager", f"{name}: torch eager", lambda model=model: measure_torch(run, model, compiled=False))
        run.step("compile", f"{name}: torch compile", lambda model=model: measure_torch(run, model, compiled=True))
        run.step(
            "compile",
            f"{name}: LoRA after compile",
            lambda model=model, lora=lora: lora_after_compile(run, model, lora),
        )
        run.step("onnx", f"{name}: onnx runtime", lambda model=model: measure_onnx(run, model, work))
        run.step("service", f"{name}: service queue of 20", lambda model=model: through_the_service(run, model, work))
        run.step("batching", f"{name}: batching", lambda model=model: batching(run, model, work))
        run.step("previews", f"{name}: live previews", lambda model=model: previews(run, model))
        run.step("speed", f"{name}: speed levers", lambda model=model: speed_levers(run, model, work))
    from bench.transformer_families import ARCHITECTURES

    for architecture in ARCHITECTURES:
        label = "tiny " + architecture.tiny_variant if run.tiny else architecture.name
        run.step(
            "transformers",
            f"{label}: images",
            lambda architecture=architecture: transformer_family(run, architecture, work),
        )
    run.write()
    print(f"[gpu-check] wrote {run.out / 'gpu-check.json'} and gpu-check.md; failed: {run.failures or 'none'}")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
