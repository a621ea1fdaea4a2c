"""`make bench-tracing`: what tracing costs, side by side in one run: a queue of 20 tasks (the tiny model, 256x256,
4 steps, 2 images each) submitted at once to one in-process service, with tracing off and on (the SDK batching
spans to an in-memory exporter: the export's network cost is the collector's, not the service's). Three rounds
each, alternating; the figure is the best round's seconds per task."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine
from sdapi.config import load_config
from sdapi.families.tiny import make_tiny_model
from sdapi.observability import tracing
from tests.support.services import InProcessService, submit, wait_for_task, write_config

TASKS = 20
BODY = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 4, "num_images": 2}


def queue_seconds(service: InProcessService) -> float:
    with service.client() as client:
        started = time.perf_counter()
        ids = [submit(client, **BODY, seed=index) for index in range(TASKS)]
        for task_id in ids:
            assert wait_for_task(client, task_id, timeout=600)["status"] == "completed"
        return time.perf_counter() - started


def main() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    with tempfile.TemporaryDirectory() as folder:
        model = make_tiny_model(Path(folder) / "model")
        config = load_config(write_config(Path(folder) / "svc", model, queue={"max_pending": 100}))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        rounds: dict[str, list[float]] = {"off": [], "on": []}
        with InProcessService(config) as service:
            service.wait_ready()
            queue_seconds(service)  # warm-up
            for _ in range(3):
                for mode in ("off", "on"):
                    tracing.use_provider(provider if mode == "on" else None)
                    rounds[mode].append(queue_seconds(service) / TASKS)
            tracing.use_provider(None)
        provider.force_flush()
        spans = len(exporter.get_finished_spans())
    print(
        json.dumps(
            {
                "machine": describe_machine(),
                "seconds_per_task": {mode: round(min(values), 4) for mode, values in rounds.items()},
                "rounds": {mode: [round(value, 4) for value in values] for mode, values in rounds.items()},
                "spans_recorded_on": spans,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
