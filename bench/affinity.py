"""Model affinity: model loads caused by a mixed queue of 40 tasks (two models alternating, two workers with one
model loaded at a time, PostgreSQL queue), with affinity (queue.affinity_max_wait_seconds 600) and without (0)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine
from sdapi.families.tiny import make_tiny_model
from sdapi.observability.stages import Stages
from tests.support.affinity import mixed_queue_loads
from tests.support.postgres import PostgresCluster

TASKS = 40


def main() -> None:
    figures = {}
    with Stages(4) as stages, tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        stages.stage("building two tiny models (SD 1.5 and SDXL layouts) and starting PostgreSQL")
        models = {"base": make_tiny_model(root / "base"), "xl": make_tiny_model(root / "xl", family="sdxl")}
        cluster = PostgresCluster().start()
        try:
            for label, wait in (("with affinity", 600.0), ("without affinity", 0.0)):
                stages.stage(f"{TASKS} alternating tasks {label}")
                began = time.monotonic()
                loads = mixed_queue_loads(root / label.replace(" ", "-"), models, cluster.new_database(), TASKS, wait)
                figures[label] = (loads, time.monotonic() - began)
        finally:
            cluster.destroy()
        stages.stage("done")
    print(f"machine: {describe_machine()}")
    for label, (loads, seconds) in figures.items():
        print(
            f"{TASKS} tasks, 2 models alternating, 2 workers (max_loaded 1), {label}: {loads} model loads "
            f"(2 at start-up), {seconds:.0f} s including start-up"
        )


if __name__ == "__main__":
    main()
