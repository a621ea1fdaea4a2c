"""`make bench-batching`: cross-request batching (queue.batch_max) with 32 concurrent small requests.

For each model (the tiny one, and SD 1.5's architecture with random weights) and each batch_max in 1, 2, 4, 8, one
service (a child process, as a user runs it) gets one warm-up task, then 32 text-to-image requests submitted at
once, every one with its own prompt and seed (so the batches are of different pictures, as in real traffic).
Reported: images per second from the first submit to the last completion, and the p50/p99 of each task's latency
(its own created_at to finished_at, the service's clock: polling does not enter the figures).

`--gpu` runs the same on CUDA; bench/gpu_check.py's batching step runs run_queue on the device machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.engines import build_sd15_random
from bench.machine import describe_machine
from sdapi.families.tiny import make_tiny_model
from tests.support.services import Service, ServiceProcess, submit, wait_for_task, write_config

REQUESTS = 32
POLL_SECONDS = 1.0
TASK_TIMEOUT_SECONDS = 3600
BATCH_MAX = (1, 2, 4, 8)
# Small requests: what batching is for (a large image fills the device on its own). The full-size architecture
# takes a few steps at 256x256 so that four settings fit in minutes on a CPU.
SHAPES = {
    "tiny": {"width": 256, "height": 256, "num_inference_steps": 20},
    "sd15": {"width": 256, "height": 256, "num_inference_steps": 4},
}
GPU_SHAPES = {
    "tiny": {"width": 256, "height": 256, "num_inference_steps": 20},
    "sd15": {"width": 512, "height": 512, "num_inference_steps": 20},
}


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 32 values is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def run_queue(service: Service, shape: dict[str, Any], requests: int = REQUESTS) -> dict[str, float]:
    """Submit `requests` tasks at once and wait for them all; the figures of that queue."""
    with service.client() as client:
        warm = wait_for_task(client, submit(client, prompt="warm-up", seed=0, **shape), timeout=1800)
        assert warm["status"] == "completed", warm

    def one(index: int) -> dict[str, Any]:
        with service.client() as client:
            task_id = submit(client, prompt=f"a lighthouse at dusk, picture {index}", seed=1000 + index, **shape)
            # Slow polling: 32 clients polling fast would take the CPU the generation is timed on, and the
            # latencies are read from the task's own timestamps anyway.
            deadline = time.monotonic() + TASK_TIMEOUT_SECONDS
            while (body := client.get(f"/api/v1/tasks/{task_id}").json())["status"] not in ("completed", "failed"):
                assert time.monotonic() < deadline, f"task {task_id} still {body['status']}"
                time.sleep(POLL_SECONDS)
            return body

    began = time.time()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        bodies = list(pool.map(one, range(requests)))
    failed = [body for body in bodies if body["status"] != "completed"]
    assert not failed, failed[:1]
    latencies = [_seconds(body["finished_at"]) - _seconds(body["created_at"]) for body in bodies]
    ended = max(_seconds(body["finished_at"]) for body in bodies)
    return {
        "images_per_second": requests / (ended - began),
        "p50_seconds": statistics.median(latencies),
        "p99_seconds": percentile(latencies, 0.99),
    }


def measure(name: str, model: Path, work: Path, shape: dict[str, Any], device: str) -> list[dict[str, Any]]:
    rows = []
    for batch_max in BATCH_MAX:
        config = write_config(
            work / f"{name}-batch-{batch_max}",
            model,
            model={"device": device, "dtype": "auto"},
            queue={"batch_max": batch_max, "batch_wait_ms": 25, "max_pending": 200, "lease_seconds": 600},
            limits={"max_inference_steps": 150},
        )
        with ServiceProcess(config) as service:
            service.wait_ready(timeout=1800)
            health = httpx.get(f"{service.url}/health", timeout=30).json()
            figures = run_queue(service, shape)
        row = {
            "model": name,
            "batch_max": batch_max,
            "device": health.get("device"),
            "dtype": health.get("dtype"),
            **shape,
            **figures,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | request | batch_max | images/s | vs batch_max 1 | p50 latency | p99 latency |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    alone = {row["model"]: row["images_per_second"] for row in rows if row["batch_max"] == 1}
    for row in rows:
        request = f"{row['width']}x{row['height']}, {row['num_inference_steps']} steps, {row['dtype']}"
        lines.append(
            f"| {row['model']} | {request} | {row['batch_max']} | {row['images_per_second']:.3g} | "
            f"{row['images_per_second'] / alone[row['model']]:.2f}x | {row['p50_seconds']:.1f} s | "
            f"{row['p99_seconds']:.1f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("data/bench"))
    parser.add_argument("--models", default="tiny,sd15")
    parser.add_argument("--gpu", action="store_true", help="CUDA (fp16) instead of the CPU")
    arguments = parser.parse_args()
    work = arguments.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if arguments.gpu else "cpu"
    shapes = GPU_SHAPES if arguments.gpu else SHAPES
    print(f"machine: {describe_machine()}", flush=True)
    rows = []
    for name in arguments.models.split(","):
        if name == "tiny":
            model = work / "tiny-sd"
            if not (model / "model_index.json").is_file():
                make_tiny_model(model)
        else:
            model = build_sd15_random(work / "sd15-random")
        rows.extend(measure(name, model, work, shapes[name], device))
    print(table(rows))


if __name__ == "__main__":
    main()
