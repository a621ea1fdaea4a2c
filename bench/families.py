"""`make bench-families`: CPU seconds per denoising step of every family's tiny model (what the suite runs on), at
64x64 (the tests' size) and 512x512, torch fp32 on this machine's CPU.

Per step is timed from two runs with different step counts (the difference divided by the extra steps), which also
gives the fixed cost (text encoders, VAE decode, the pipeline's own setup); each figure is the best of three."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine

SIDES = (64, 512)
STEPS = (2, 6)


def measure(variant: str, folder: Path) -> dict[str, object]:
    import torch

    from sdapi.config import ModelConfig
    from sdapi.engines import Run
    from sdapi.engines.torch_engine import TorchEngine
    from sdapi.families.tiny import make_tiny_model
    from tests.support.factories import make_params

    make_tiny_model(folder / variant, family=variant)
    engine = TorchEngine(ModelConfig(path=str(folder / variant), device="cpu", dtype="float32"))
    engine.load()
    assert engine.family is not None
    guidance = engine.family.run_defaults.guidance_scale
    figures: dict[str, object] = {"family": engine.family.family.name}
    for side in SIDES:
        seconds = []
        for steps in STEPS:
            params = make_params(width=side, height=side, num_inference_steps=steps, guidance_scale=guidance)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                with torch.inference_mode():
                    engine.generate(Run(params))
                best = min(best, time.perf_counter() - started)
            seconds.append(best)
        per_step = (seconds[1] - seconds[0]) / (STEPS[1] - STEPS[0])
        figures[f"{side}"] = {
            "seconds_per_step": round(per_step, 4),
            "fixed_seconds": round(seconds[0] - STEPS[0] * per_step, 4),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="sd15,sd2-v,sdxl,sd3,flux,flux-dev,flux-fill,flux2-klein,z-image")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {variant: measure(variant, Path(folder)) for variant in arguments.variants.split(",")}
    print(json.dumps({"machine": describe_machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
