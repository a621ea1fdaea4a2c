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


def run_once(engine: TorchEngine, every: int, steps: int, sizes: list[int]) -> float:
    """Seconds per step of one 512x512 task, drawing and encoding a preview every `every` steps (0: none)."""

    def on_step(step: int, total: int, images_done: int) -> None:
        if every and step % every == 0:
            picture = draw_current(256)
            assert picture is not None
            sizes.append(len(encode_preview(picture, step, total, "jpeg", 70).data))

    params = make_params(prompt="a lake and green mountains", width=512, height=512, num_inference_steps=steps)
    started = time.perf_counter()
    engine.generate(Run(params, on_step=on_step))
    return (time.perf_counter() - started) / steps


def measure(name: str, model: Path, steps: int, rounds: int) -> list[dict[str, Any]]:
    engine = TorchEngine(ModelConfig(path=str(model), device="cpu", dtype="float32"))
    engine.load()
    pipeline = engine._pipelines().text_to_image
    began = time.perf_counter()
    fitted = map_of(pipeline)
    fit_seconds = time.perf_counter() - began
    run_once(engine, 0, 2, [])  # warm-up
    times: dict[str, list[float]] = {label: [] for label in CADENCES}
    sizes: list[int] = []
    for _ in range(rounds):  # interleaved, so drift on a shared machine spreads over every cadence alike
        for label, every in CADENCES.items():
            times[label].append(run_once(engine, every, steps, sizes))
    base = statistics.median(times["off"])
    rows = []
    for label in CADENCES:
        step = statistics.median(times[label])
        rows.append({"model": name, "previews": label, "step_s": step, "cost": step / base - 1})
    encoded = statistics.median(sizes)
    print(
        f"{name}: map fitted in {fit_seconds:.2f}s (rms {fitted.rms_error:.3f} of [-1, 1]); 256x256 JPEG previews "
        f"{encoded / 1000:.1f} kB, {len(base64.b64encode(bytes(int(encoded)))) / 1000:.1f} kB as base64 "
        f"(NOTIFY's limit: {NOTIFY_LIMIT / 1000:.1f} kB)"
    )
    return rows


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
