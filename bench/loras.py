"""`make bench-loras`: cost of LoRA sets on the torch engine (tiny model, kohya-layout files made on the fly).

Time to apply a new set (read, ΔW, merge), to re-apply a cached set, a generation with and without adapters, and
resident memory across 200 alternating swaps (target: growth under 5%).
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import psutil

from bench.machine import describe_machine
from sdapi.config import ModelConfig
from sdapi.core.request import LoraSpec
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.families.tiny import make_tiny_model
from tests.support.adapter_files import model_modules, write_adapter
from tests.support.factories import make_params

SWAPS = 200


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "tiny-sd")
        modules = model_modules(model)
        paths = {}
        for kind, seed in (("lora", 1), ("loha", 2), ("lokr", 3)):
            paths[kind] = root / f"{kind}.safetensors"
            write_adapter(paths[kind], modules, kind, seed=seed)
        specs = {
            kind: LoraSpec(kind, 1.0, hashlib.sha256(path.read_bytes()).hexdigest()) for kind, path in paths.items()
        }
        engine = TorchEngine(ModelConfig(path=str(model), device="cpu"), lambda spec: paths[spec.name], 8)
        engine.load()
        assert engine.adapters is not None
        manager = engine.adapters

        new_set = []
        for kind in ("lora", "loha", "lokr"):
            started = time.perf_counter()
            manager.activate([specs[kind]])
            new_set.append(time.perf_counter() - started)
        manager.restore()
        cached = []
        for _ in range(20):
            for kind in ("lora", "loha", "lokr"):
                started = time.perf_counter()
                manager.activate([specs[kind]])
                cached.append(time.perf_counter() - started)

        params = make_params(prompt="a castle")
        with_mixed = msgspec.structs.replace(params, loras=(specs["lora"], specs["loha"]))
        timings: dict[str, list[float]] = {"without": [], "with": []}
        engine.generate(Run(params))
        engine.generate(Run(with_mixed))
        for _ in range(5):
            for name, chosen in (("without", params), ("with", with_mixed)):
                started = time.perf_counter()
                engine.generate(Run(chosen))
                timings[name].append(time.perf_counter() - started)

        process = psutil.Process()
        sets = [[specs["lora"]], [specs["loha"], specs["lokr"]], [], [specs["lokr"]]]
        for chosen in sets:  # warm every set once before measuring
            manager.activate(chosen)
        rss_before = process.memory_info().rss
        for swap in range(SWAPS):
            manager.activate(sets[swap % len(sets)])
        rss_after = process.memory_info().rss
        sizes = ", ".join(f"{kind} {path.stat().st_size / 1024:.0f} KiB" for kind, path in paths.items())

    print(f"machine: {describe_machine()}; engine dtype {engine.dtype}")
    print(f"adapter files: {sizes} (every attention projection and resnet 3x3 conv of UNet and text encoder)")
    print(f"apply a new set (read + ΔW + merge): {', '.join(f'{t * 1000:.1f} ms' for t in new_set)} (lora, loha, lokr)")
    print(f"re-apply a cached set (restore + merge): median {statistics.median(cached) * 1000:.2f} ms")
    print(
        f"generation 512x512, 20 steps: without adapters {statistics.median(timings['without']):.3f} s, "
        f"with LoRA+LoHa {statistics.median(timings['with']):.3f} s (same set each time: merged once)"
    )
    growth = (rss_after - rss_before) / rss_before * 100
    print(
        f"RSS across {SWAPS} alternating swaps: {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB "
        f"({growth:+.2f}%, target < 5%)"
    )


if __name__ == "__main__":
    main()
