"""`make bench-speed`: what each speed lever (issue 48) saves and what it costs, side by side in one process, on one
machine: seconds per image with each lever alone and in the sensible combinations, for 512² and 1024² pictures at 4,
20 and 30 steps, on the trained default model and on SD 1.5's architecture with random weights (built under
data/bench as bench-engines does; its tiny decoder is TAESD's architecture with random weights: its time is real,
its pixels mean nothing).

Quality, on the default model only (random weights draw noise): the mean absolute pixel difference (0-255) to the
plain run of the same prompt and seed, and bench/adherence.py's held-out prompts scored from the pixels with each
lever on. Every lever runs in the engine as the service runs it (sdapi.engines.speedups), in-process.

    python -m bench.speed --workdir data/bench                 # the whole table (about an hour on 2 cores)
    python -m bench.speed --workdir data/bench --quick         # 512² alone, fewer rounds

Times are medians of interleaved rounds (every option once per round), so drift on a shared machine spreads over
every option alike."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.adherence import SCORED, held_out_prompts
from bench.engines import build_sd15_random
from bench.machine import describe_machine
from sdapi.config import ModelConfig
from sdapi.core.request import StepCache
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from tests.support.factories import make_params
from training import scene_stats
from training.train_tiny_decoder import drop_unread_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "scenes-sd"
PROMPT = "a lake and green mountains at sunset"
DEEPCACHE_3 = StepCache(mode="deepcache", interval=3, branch=0)
DEEPCACHE_5 = StepCache(mode="deepcache", interval=5, branch=0)
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "tiny decoder": {"vae_decoder": "tiny"},
    "DeepCache 3": {"step_cache": DEEPCACHE_3},
    "DeepCache 5": {"step_cache": DEEPCACHE_5},
    "ToMe 0.5": {"token_merging": 0.5},
    "VAE tiling": {"vae_tiling": True},
    "DeepCache 3 + tiny": {"step_cache": DEEPCACHE_3, "vae_decoder": "tiny"},
    "DeepCache 3 + tiny + ToMe 0.5": {"step_cache": DEEPCACHE_3, "vae_decoder": "tiny", "token_merging": 0.5},
}

# What runs on SD 1.5's architecture (a 512² step takes about 8 s on 2 cores): every option at 4 and 20 steps; at 30
# steps and at 1024² (4 steps: what a step and a decode cost there; 20 would take hours) the ones that tell.
SD15_MATRIX: dict[tuple[int, int], tuple[str, ...]] = {
    (512, 4): tuple(OPTIONS),
    (512, 20): tuple(OPTIONS),
    (512, 30): ("plain", "DeepCache 3", "DeepCache 3 + tiny"),
    (1024, 4): ("plain", "tiny decoder", "ToMe 0.5", "VAE tiling", "DeepCache 3 + tiny + ToMe 0.5"),
}


def build_taesd_random(target: Path) -> Path:
    """TAESD's architecture (diffusers' AutoencoderTiny defaults) with fixed random weights, as vae.tiny_dir/sd1."""
    folder = target / "sd1"
    if not (folder / "config.json").is_file():
        import torch
        from diffusers import AutoencoderTiny

        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(str(folder))
        drop_unread_config(folder / "config.json")
    return target


def engine_for(model: Path, tiny_dir: Path | None) -> TorchEngine:
    engine = TorchEngine(ModelConfig(path=str(model), device="cpu", dtype="float32"), tiny_vae_dir=tiny_dir)
    engine.load()
    return engine


def picture(engine: TorchEngine, side: int, steps: int, seed: int, prompt: str = PROMPT, **lever: Any) -> np.ndarray:
    params = make_params(prompt=prompt, width=side, height=side, num_inference_steps=steps, seed=seed, **lever)
    return np.asarray(engine.generate(Run(params)).images[0], dtype=np.float64)


def time_options(
    engine: TorchEngine, side: int, steps: int, rounds: int, options: dict[str, dict[str, Any]], quality: bool
) -> list[dict[str, Any]]:
    """Seconds per image of each option (median of `rounds` interleaved rounds, after a warm-up of each), and with
    `quality` its mean pixel difference to the plain picture of the same seed."""
    for lever in options.values():  # warm-up: first calls allocate, the tiny decoder loads
        picture(engine, side, 1, 0, **lever)
    seconds: dict[str, list[float]] = {name: [] for name in options}
    pictures: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, lever in options.items():
            began = time.perf_counter()
            pictures[name] = picture(engine, side, steps, 1, **lever)
            seconds[name].append(time.perf_counter() - began)
    plain = statistics.median(seconds["plain"])
    rows = []
    for name in options:
        median = statistics.median(seconds[name])
        difference = float(np.abs(pictures[name] - pictures["plain"]).mean()) if quality else None
        rows.append(
            {
                "option": name,
                "side": side,
                "steps": steps,
                "s_per_image": median,
                "speedup": plain / median,
                "mad": difference,
            }
        )
        shown = "" if difference is None else f", {difference:.1f} of 255 from plain"
        print(f"  {side}² {steps} steps, {name}: {median:.2f} s ({plain / median:.2f}x){shown}", flush=True)
    return rows


def adherence(
    engine: TorchEngine, options: dict[str, dict[str, Any]], prompts: int, seeds: int
) -> list[dict[str, Any]]:
    """bench/adherence.py's held-out prompts at 512², 20 steps, scored from the pixels, with each option on."""
    scorer = scene_stats.calibrated_scorer()
    held_out = held_out_prompts(prompts)
    rows = []
    for name, lever in options.items():
        if name == "VAE tiling":  # the default model's VAE tiles above 512 pixels: a 512² picture is one tile
            continue
        hits: dict[str, list[bool]] = {attribute: [] for attribute in SCORED}
        for index, (prompt, scene) in enumerate(held_out):
            for seed in range(seeds):
                image = picture(engine, 512, 20, 1000 * index + seed, prompt, **lever).astype(np.uint8)
                predicted = scorer.predict(_image(image))
                for attribute in SCORED:
                    hits[attribute].append(predicted[attribute] == getattr(scene, attribute))
        accuracy = {attribute: 100.0 * float(np.mean(values)) for attribute, values in hits.items()}
        rows.append({"option": name, **accuracy})
        print(f"  adherence, {name}: " + ", ".join(f"{k} {v:.0f}%" for k, v in accuracy.items()), flush=True)
    return rows


def _image(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(pixels)


def markdown(report: dict[str, Any]) -> str:
    """The report as docs/benchmarks.md's tables: seconds per image (speed-up) [difference to plain] per option."""
    lines = [f"Machine: {report['machine']}.", ""]
    for key, title in (("default_model", "the trained default model"), ("sd15", "SD 1.5's architecture")):
        rows = report[key]
        if not rows:
            continue
        columns = sorted({(row["side"], row["steps"]) for row in rows})
        lines += [
            f"Seconds per image on {title} (speed-up against plain"
            + (", mean difference to the plain picture in 0-255)" if key == "default_model" else ")")
            + ":",
            "",
        ]
        lines.append("| option | " + " | ".join(f"{side}², {steps} steps" for side, steps in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for option in dict.fromkeys(row["option"] for row in rows):
            cells = []
            for side, steps in columns:
                found = [r for r in rows if (r["option"], r["side"], r["steps"]) == (option, side, steps)]
                if not found:
                    cells.append("–")
                    continue
                row = found[0]
                cell = f"{row['s_per_image']:.2f} s ({row['speedup']:.2f}x)"
                if row["mad"] is not None and option != "plain":
                    cell += f" [{row['mad']:.1f}]"
                cells.append(cell)
            lines.append(f"| {option} | " + " | ".join(cells) + " |")
        lines.append("")
    if report["adherence"]:
        attributes = [key for key in report["adherence"][0] if key != "option"]
        lines += ["Held-out prompts scored from the pixels (bench/adherence.py's scorer), % right:", ""]
        lines.append("| option | " + " | ".join(attributes) + " |")
        lines.append("|---|" + "---|" * len(attributes))
        for row in report["adherence"]:
            lines.append(f"| {row['option']} | " + " | ".join(f"{row[a]:.0f}" for a in attributes) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--quick", action="store_true", help="512² alone, one round: a smoke test")
    parser.add_argument("--rounds", type=int, default=3, help="rounds on the default model (SD 1.5: one)")
    parser.add_argument("--prompts", type=int, default=25, help="held-out prompts for adherence (x2 seeds)")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--table", type=Path, default=None, help="print a saved report's tables and stop")
    arguments = parser.parse_args()
    if arguments.table is not None:
        print(markdown(json.loads(arguments.table.read_text(encoding="utf-8"))), end="")
        return
    print(describe_machine(), flush=True)
    sides = (512,) if arguments.quick else (512, 1024)
    rounds = 1 if arguments.quick else arguments.rounds
    report: dict[str, Any] = {"machine": describe_machine(), "default_model": [], "sd15": [], "adherence": []}

    print("default model (trained, in models/scenes-sd, its own tiny decoder)", flush=True)
    default = engine_for(DEFAULT_MODEL, None)
    for side in sides:
        for steps in (4, 20, 30):
            report["default_model"] += time_options(default, side, steps, rounds, OPTIONS, quality=True)
    report["adherence"] = adherence(default, OPTIONS, 4 if arguments.quick else arguments.prompts, 2)

    if not arguments.skip_sd15:
        print("SD 1.5's architecture, random weights (TAESD's architecture as its tiny decoder)", flush=True)
        sd15 = engine_for(
            build_sd15_random(arguments.workdir / "sd15-random"), build_taesd_random(arguments.workdir / "vae-tiny")
        )
        for (side, steps), names in SD15_MATRIX.items():
            if arguments.quick and (side, steps) != (512, 4):
                continue
            chosen = {name: OPTIONS[name] for name in names}
            report["sd15"] += time_options(sd15, side, steps, 1, chosen, quality=False)
    target = arguments.workdir / "speed.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {target}\n", flush=True)
    print(markdown(report), end="")


if __name__ == "__main__":
    main()
