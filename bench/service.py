"""`make bench`: the service's own overhead on the tiny model.

Clients poll over minimal keep-alive HTTP/1.1 connections: on a 2-core machine a heavyweight client's own CPU
(httpx costs about 1 ms per request) would slow the generation it is timing, and measure itself, not the service.

(a) bare engine time for a 512x512, 20-step image; (b) the same through the HTTP API, submit to completed with
fast polling; (c) b/a (target <= 1.10); (d) p50/p99 of GET /api/v1/tasks/{id} with 32 concurrent clients,
idle and while a generation runs (target p99 < 50 ms); (e) images per second for a queue of QUEUE tasks submitted at
once (the generation thread only generates: the next task starts while the last one's images are encoded and stored).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.machine import describe_machine
from sdapi.config import load_config
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.families.tiny import make_tiny_model
from sdapi.observability.stages import Stages
from tests.support.factories import make_params
from tests.support.services import API_KEY, ServiceProcess, submit, write_config

REQUEST = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "num_inference_steps": 20, "seed": 1}
RUNS = 7
POLL_INTERVALS = (0.01, 0.05)
CLIENTS = 32
REQUESTS_PER_CLIENT = 25
QUEUE = 20


def load_engine(config_path: Path) -> TorchEngine:
    engine = TorchEngine(load_config(config_path).model)
    engine.load()
    return engine


def engine_seconds(engine: TorchEngine) -> float:
    params = make_params(prompt=str(REQUEST["prompt"]))
    started = time.perf_counter()
    engine.generate(Run(params))
    return time.perf_counter() - started


def api_seconds(client: httpx.Client, port: int, poll_seconds: float) -> float:
    """Submit, then poll every `poll_seconds` on one keep-alive connection until the task ends."""
    started = time.perf_counter()
    task_id = submit(client, **REQUEST)
    asyncio.run(_poll_until_finished(port, task_id, poll_seconds))
    return time.perf_counter() - started


async def _poll_until_finished(port: int, task_id: str, poll_seconds: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _get_request(port, f"/api/v1/tasks/{task_id}")
    try:
        while True:
            writer.write(request)
            body = await _read_response(reader)
            if b'"status":"completed"' in body or b'"status":"failed"' in body:
                return
            await asyncio.sleep(poll_seconds)
    finally:
        writer.close()


def _get_request(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {API_KEY}\r\n\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length_line = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(int(length_line.split(b":")[1]))


async def _keep_alive_client(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    """One client on one keep-alive connection: minimal HTTP/1.1, so the client costs little CPU."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            await _read_response(reader)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def poll_latencies(port: int, task_id: str) -> list[float]:
    """CLIENTS concurrent keep-alive clients, each polling the task REQUESTS_PER_CLIENT times."""
    request = _get_request(port, f"/api/v1/tasks/{task_id}")
    latencies: list[float] = []
    await asyncio.gather(*(_keep_alive_client(port, request, REQUESTS_PER_CLIENT, latencies) for _ in range(CLIENTS)))
    return latencies


def queue_images_per_second(client: httpx.Client) -> float:
    """Submit QUEUE tasks at once, wait until every one has completed: images per second from first submit to last."""
    started = time.perf_counter()
    task_ids = [submit(client, **{**REQUEST, "seed": index}) for index in range(QUEUE)]
    deadline = started + 600
    for task_id in task_ids:
        while (status := client.get(f"/api/v1/tasks/{task_id}").json()["status"]) not in ("completed", "failed"):
            assert time.perf_counter() < deadline, "the queue did not drain in 10 minutes"
            time.sleep(0.02)
        assert status == "completed", status
    return QUEUE / (time.perf_counter() - started)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, Stages(6) as stages:
        root = Path(folder)
        stages.stage("building the tiny model")
        model = make_tiny_model(root / "tiny-sd")
        config_path = write_config(root, model, log_level="WARNING", model={"dtype": "auto"})
        stages.stage("loading the bare engine and starting the service")
        engine = load_engine(config_path)
        with ServiceProcess(config_path) as service:
            service.wait_ready()
            with service.client() as client:
                stages.stage("warming up")
                # Warm both, then alternate bare and API runs so drift in the machine's speed hits both alike.
                engine_seconds(engine)
                api_seconds(client, service.port, POLL_INTERVALS[0])
                stages.stage(f"{RUNS} runs, bare and through the API")
                bare_runs: list[float] = []
                api_runs: dict[float, list[float]] = {interval: [] for interval in POLL_INTERVALS}
                for run in range(RUNS):
                    stages.detail(f"run {run + 1}/{RUNS}")
                    bare_runs.append(engine_seconds(engine))
                    for interval in POLL_INTERVALS:
                        api_runs[interval].append(api_seconds(client, service.port, interval))
                bare = statistics.median(bare_runs)
                stages.stage("poll latency, idle and during a generation")
                idle_task = submit(client, prompt="x", width=64, height=64, num_inference_steps=1)
                time.sleep(1)
                idle = asyncio.run(poll_latencies(service.port, idle_task))
                busy_task = submit(client, **{**REQUEST, "num_inference_steps": 150})
                while client.get(f"/api/v1/tasks/{busy_task}").json()["status"] != "processing":
                    time.sleep(0.01)
                busy = asyncio.run(poll_latencies(service.port, idle_task))
                still = client.get(f"/api/v1/tasks/{busy_task}").json()["status"]
                client.post(f"/api/v1/tasks/{busy_task}/cancel")
                stages.stage(f"a queue of {QUEUE} tasks")
                queue_rate = queue_images_per_second(client)
    print(f"machine: {describe_machine()}")
    print(f"(a) engine, 512x512, 20 steps, median of {RUNS}: {bare:.3f} s  (runs: {_seconds(bare_runs)})")
    for interval, runs in api_runs.items():
        through_api, label = statistics.median(runs), f"{interval * 1000:.0f} ms polling"
        print(f"(b) API, submit -> completed, {label}: {through_api:.3f} s  (runs: {_seconds(runs)})")
        print(f"(c) b/a, {label}: {through_api / bare:.3f} (target <= 1.10)")
    for name, values in (("idle", idle), ("while generating", busy)):
        print(
            f"(d) GET /api/v1/tasks/{{id}}, {CLIENTS} clients x {REQUESTS_PER_CLIENT}, {name}: "
            f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p99 {percentile(values, 0.99) * 1000:.1f} ms "
            "(target p99 < 50 ms)"
        )
    print(f"    (the generation was still {still} when the busy measurement ended)")
    print(f"(e) a queue of {QUEUE} tasks of 512x512, 20 steps, submitted at once: {queue_rate:.3f} images/s")


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.3f}" for value in values)


if __name__ == "__main__":
    main()
