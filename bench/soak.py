"""`make bench-soak`: 1,000 small tasks through one node, with callbacks to a local receiver and retention on.
Resident memory and open file descriptors of the service process, the database file's size and the stored images
are sampled at the start, the middle and the end: nothing may grow without bound (retention deletes what is old).
"""

from __future__ import annotations

import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

from bench.machine import describe_machine
from sdapi.config import Config, load_config
from sdapi.families.tiny import make_tiny_model
from sdapi.observability.stages import Stages
from tests.support.services import ServiceProcess, submit, write_config

TASKS = 1000
BATCH = 50  # submitted at once, then waited for
TASK = {"prompt": "soak", "width": 64, "height": 64, "num_inference_steps": 1}
# Finished tasks older than 30 s are swept (with their images), so stored images stay bounded.
RETENTION_DAYS = 30 / 86400


class _Receiver:
    """A callback receiver on loopback that answers 200 and counts what it got."""

    def __init__(self) -> None:
        self.received = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def _sample(process: psutil.Process, config: Config, done: int) -> dict[str, float]:
    images = config.images_path
    database = config.database_path
    sizes = [path.stat().st_size for path in database.parent.glob(database.name + "*")]
    return {
        "tasks done": done,
        "RSS MiB": process.memory_info().rss / 2**20,
        "open fds": process.num_fds(),
        "database KiB (with WAL)": sum(sizes) / 1024,
        "stored images": sum(1 for path in images.iterdir() if not path.name.startswith(".")) if images.exists() else 0,
    }


def main() -> None:
    receiver = _Receiver()
    with tempfile.TemporaryDirectory() as folder, Stages(3) as stages:
        root = Path(folder)
        stages.stage("building the tiny model")
        model = make_tiny_model(root / "tiny-sd")
        config = write_config(
            root,
            model,
            log_level="WARNING",
            retention={"days": RETENTION_DAYS},
            callbacks={"allowed_hosts": ["127.0.0.1/32"]},
            queue={"max_pending": BATCH * 2},
        )
        settings = load_config(config)
        stages.stage("starting the service")
        samples = []
        began = time.perf_counter()
        with ServiceProcess(config) as service:
            service.wait_ready()
            assert service.process is not None
            process = psutil.Process(service.process.pid)
            stages.stage(f"{TASKS} tasks with callbacks")
            with service.client() as client:
                samples.append(_sample(process, settings, 0))
                for done in range(0, TASKS, BATCH):
                    ids = [submit(client, **TASK, seed=done + n, callback_url=receiver.url) for n in range(BATCH)]
                    for task_id in ids:
                        while client.get(f"/api/v1/tasks/{task_id}").json()["status"] not in ("completed", "failed"):
                            time.sleep(0.02)
                    stages.detail(f"{done + BATCH}/{TASKS}")
                    if done + BATCH in (TASKS // 2, TASKS):
                        samples.append(_sample(process, settings, done + BATCH))
            elapsed = time.perf_counter() - began
    receiver.close()
    print(f"machine: {describe_machine()}")
    print(f"{TASKS} tasks of 64x64, 1 step, callbacks on, retention {RETENTION_DAYS * 86400:.0f} s: {elapsed:.0f} s")
    print(f"callbacks received: {receiver.received}")
    print("| " + " | ".join(samples[0]) + " |")
    for sample in samples:
        print(
            "| "
            + " | ".join(f"{value:.1f}" if isinstance(value, float) else str(value) for value in sample.values())
            + " |"
        )


if __name__ == "__main__":
    main()
