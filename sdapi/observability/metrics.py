"""Prometheus metrics: what each process counts and measures, and the text exposition GET /metrics answers.

Label values are bounded by construction: dialects, engines, error codes, statuses, outcomes, the model's name from
the config and coarse size classes. No task id, prompt, key or URL is ever a label.

Several processes serving one port (uvicorn or gunicorn workers) set PROMETHEUS_MULTIPROC_DIR before starting:
prometheus-client then keeps every process's values in files there and /metrics adds them up.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

# Seconds, from a fast GPU step to a long CPU run.
_SHORT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

TASKS_SUBMITTED = Counter("sdapi_tasks_submitted_total", "Tasks accepted, by the API they came through", ["dialect"])
TASKS_COMPLETED = Counter("sdapi_tasks_completed_total", "Tasks that completed", ["dialect", "engine"])
TASKS_FAILED = Counter("sdapi_tasks_failed_total", "Tasks that failed (cancelled included)", ["dialect", "error_code"])
QUEUE_TASKS = Gauge(
    "sdapi_queue_tasks", "Tasks in the shared queue by status", ["status"], multiprocess_mode="mostrecent"
)
WORKERS_ALIVE = Gauge("sdapi_workers_alive", "Workers with a recent heartbeat", multiprocess_mode="mostrecent")
QUEUE_WAIT = Histogram("sdapi_queue_wait_seconds", "From submission to the start of a run", buckets=_LONG)
RUN_SECONDS = Histogram(
    "sdapi_task_run_seconds",
    "One run of a task, generation and storage, by engine, model and image size class",
    ["engine", "model", "size_class"],
    buckets=_LONG,
)
BATCH_TASKS = Histogram(
    "sdapi_batch_tasks",
    "Tasks run together in one denoising batch (queue.batch_max; 1: a task that ran alone)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
STEP_SECONDS = Histogram(
    "sdapi_denoise_step_seconds", "Seconds per denoising step (a run's average)", ["engine"], buckets=_SHORT
)
ENCODE_SECONDS = Histogram("sdapi_image_encode_seconds", "Encoding one image", ["format"], buckets=_SHORT)
UPLOAD_SECONDS = Histogram("sdapi_image_upload_seconds", "Storing one image (all tries)", buckets=_SHORT)
CALLBACK_ATTEMPT_SECONDS = Histogram("sdapi_callback_attempt_seconds", "One callback POST", buckets=_SHORT)
CALLBACK_LATENCY = Histogram(
    "sdapi_callback_delivery_latency_seconds", "From a task's end to its callback being delivered", buckets=_LONG
)
CALLBACK_ATTEMPTS = Counter(
    "sdapi_callback_attempts_total", "Callback attempts by outcome (delivered, retry, failed)", ["outcome"]
)
MODEL_LOAD_SECONDS = Histogram("sdapi_model_load_seconds", "Loading the model", ["engine"], buckets=_LONG)
MODEL_LOADS = Counter("sdapi_model_loads_total", "Model loads by outcome (loaded, failed)", ["engine", "outcome"])
LORA_CACHE = Counter("sdapi_lora_cache_total", "LoRA file lookups in the merge cache (hit, miss)", ["result"])
GPU_MEMORY_ALLOCATED = Gauge(
    "sdapi_gpu_memory_allocated_bytes", "CUDA memory allocated by torch", ["device"], multiprocess_mode="all"
)
GPU_MEMORY_PEAK = Gauge(
    "sdapi_gpu_memory_peak_bytes", "Peak CUDA memory allocated by torch", ["device"], multiprocess_mode="all"
)

# The side of a square with the image's area: bounded classes for the run-time histogram.
_SIZE_CLASSES = ((512, "le_512"), (768, "le_768"), (1024, "le_1024"), (1536, "le_1536"))


def size_class(width: int, height: int) -> str:
    area = width * height
    for side, name in _SIZE_CLASSES:
        if area <= side * side:
            return name
    return "gt_1536"


def registry() -> CollectorRegistry:
    """What /metrics shows: this process's metrics, or those of all processes sharing PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        return shared
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """The text format of registry(), and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve registry() on its own port from a daemon thread (metrics.port); return what stops it."""
    server, thread = start_http_server(port, addr=host, registry=registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
