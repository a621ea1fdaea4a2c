"""`make bench` (its second part): what live previews cost (issue 46). The step time of a 20-step 512x512 task with
previews off, at the default cadence (every 5 steps) and at every step, on the trained default model and on SD 1.5's
architecture with random weights (built under data/bench, as bench-engines does), side by side in one process.

Each preview here is drawn and encoded on the generation thread, so the figures are an upper bound: the service
encodes off that thread (sdapi.worker.run). The one-time fit of the latent-to-RGB map (a VAE encode of eight 128x128
pictures, on a model's first preview) is timed on its own, and so are the encoded sizes against PostgreSQL's 8000-byte
NOTIFY payload limit (why previews cross processes through a table: sdapi.previews.board).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from pathlib import Path
from typing import Any

from bench.engines import build_sd15_random
from bench.machine import describe_machine
from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.previews.drawing import draw_current
from sdapi.previews.encoding import encode_preview
from sdapi.previews.latent_rgb import map_of
from tests.support.factories import make_params

NOTIFY_LIMIT = 8000
CADENCES = {"off": 0, "default (every 5)": 5, "every step": 1}


def run_once(engine: TorchEngine, every: int, steps: int, sizes: list[int], side: int = 512) -> float:
    """Seconds per step of one side x side task, drawing and encoding a preview every `every` steps (0: none)."""

    def on_step(step: int, total: int, images_done: int) -> None:
        if every and step % every == 0:
            picture = draw_current(256)
            assert picture is not None
            sizes.append(len(encode_preview(picture, step, total, "jpeg", 70).data))

    params = make_params(prompt="a lake and green mountains", width=side, height=side, num_inference_steps=steps)
    started = time.perf_counter()
    engine.generate(Run(params, on_step=on_step))
    return (time.perf_counter() - started) / steps


def measure(name: str, model: Path, steps: int, rounds: int) -> list[dict[str, Any]]:
    engine = TorchEngine(ModelConfig(path=str(model), device="cpu", dtype="float32"))
    engine.load()
    figures = cadence_figures(engine, steps, rounds, 512)
    print(
        f"{name}: map fitted in {figures['fit_s']:.2f}s (rms {figures['fit_rms']:.3f} of [-1, 1]); 256x256 JPEG "
        f"previews {figures['preview_kb']:.1f} kB, {figures['preview_base64_kb']:.1f} kB as base64 (NOTIFY's "
        f"limit: {NOTIFY_LIMIT / 1000:.1f} kB)"
    )
    return [
        {"model": name, "previews": label, "step_s": figures["step_s"][label], "cost": figures["cost"][label]}
        for label in CADENCES
    ]


def cadence_figures(engine: TorchEngine, steps: int, rounds: int, side: int) -> dict[str, Any]:
    """The fit's time and error, seconds per step at each cadence (medians, interleaved rounds), the cost against
    previews off, and the encoded preview size: what this bench and the GPU check record."""
    pipeline = engine._pipelines().text_to_image
    began = time.perf_counter()
    fitted = map_of(pipeline)
    fit_seconds = time.perf_counter() - began
    run_once(engine, 0, 2, [], side)  # warm-up
    times: dict[str, list[float]] = {label: [] for label in CADENCES}
    sizes: list[int] = []
    for _ in range(rounds):  # interleaved, so drift on a shared machine spreads over every cadence alike
        for label, every in CADENCES.items():
            times[label].append(run_once(engine, every, steps, sizes, side))
    step_s = {label: statistics.median(times[label]) for label in CADENCES}
    encoded = statistics.median(sizes)
    return {
        "fit_s": fit_seconds,
        "fit_rms": fitted.rms_error,
        "step_s": step_s,
        "cost": {label: step_s[label] / step_s["off"] - 1 for label in CADENCES},
        "preview_kb": encoded / 1000,
        "preview_base64_kb": len(base64.b64encode(bytes(int(encoded)))) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="data/bench")
    parser.add_argument("--models", default="default,sd15")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    print(describe_machine())
    rows: list[dict[str, Any]] = []
    for name in arguments.models.split(","):
        if name == "default":
            rows += measure("default model (scenes-sd)", Path("models/scenes-sd"), 20, arguments.rounds)
        elif name == "sd15":
            model = build_sd15_random(Path(arguments.workdir) / "sd15-random")
            rows += measure("SD 1.5 architecture, random weights", model, 20, max(arguments.rounds // 2, 2))
    print("| model | previews | s/step | cost vs off |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['previews']} | {row['step_s']:.4f} | {row['cost'] * 100:+.1f} % |")


if __name__ == "__main__":
    main()
