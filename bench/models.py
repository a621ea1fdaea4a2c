"""`make bench-models`: does an evicted model give its memory back? One worker's ModelPool with two models and
model.max_loaded 1 alternates between them 100 times (each alternation loads both); resident memory (and, on
CUDA, torch's allocated memory) after the first alternations is the baseline the last must come back to (within 5 %).
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import psutil
import torch

from bench.machine import describe_machine
from sdapi.addons import AddonRegistry
from sdapi.config import config_from_mapping
from sdapi.engines import Run
from sdapi.engines.factory import build_engine
from sdapi.families.tiny import make_tiny_model
from sdapi.observability.stages import Stages
from tests.support.factories import make_params

ALTERNATIONS = 100
WARM_UP = 3  # alternations before the baseline: allocator pools and lazy imports settle


def resident_mib() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def cuda_mib() -> float:
    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, Stages(3) as stages:
        root = Path(folder)
        stages.stage("building two tiny models (SD 1.5 and SDXL layouts)")
        base, xl = make_tiny_model(root / "base"), make_tiny_model(root / "xl", family="sdxl")
        config = config_from_mapping(
            {
                "api": {"keys": ["k"]},
                "data_dir": str(root / "data"),
                "model": {
                    "max_loaded": 1,
                    "dtype": "float32",
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                },
                "models": [{"name": "base", "path": str(base)}, {"name": "xl", "path": str(xl)}],
            },
            environ={},
        )
        pool = build_engine(config, AddonRegistry.from_config(config))
        stages.stage(f"{ALTERNATIONS} alternations, each loading both models")
        samples: list[tuple[float, float]] = []
        for alternation in range(ALTERNATIONS):
            for name in ("base", "xl"):
                pool.generate(Run(make_params(model=name, width=64, height=64, num_inference_steps=1)))
            samples.append((resident_mib(), cuda_mib()))
            stages.detail(f"{alternation + 1}/{ALTERNATIONS}: RSS {samples[-1][0]:.0f} MiB")
        stages.stage("done")
    baseline, last = samples[WARM_UP - 1], samples[-1]
    peak = max(sample[0] for sample in samples)
    print(f"machine: {describe_machine()}")
    print(
        f"{ALTERNATIONS} alternations between two models with max_loaded 1 ({pool.loads} loads): resident memory "
        f"{baseline[0]:.0f} MiB after {WARM_UP}, {last[0]:.0f} MiB after {ALTERNATIONS} "
        f"({(last[0] / baseline[0] - 1) * 100:+.1f} %, target within 5 %), peak {peak:.0f} MiB"
    )
    if torch.cuda.is_available():
        print(f"CUDA allocated: {baseline[1]:.0f} MiB after {WARM_UP}, {last[1]:.0f} MiB after {ALTERNATIONS}")


if __name__ == "__main__":
    main()
