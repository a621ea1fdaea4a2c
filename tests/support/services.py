"""Helpers shared by the tests: configs, real servers on loopback (in-process or as a child process), polling."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
import yaml
from PIL import Image

from sdapi.api.app import create_app
from sdapi.callbacks.ssrf import Resolver
from sdapi.config import Config, load_config
from sdapi.engines import Engine
from sdapi.storage import ImageStorage

API_KEY = "test-key-0123456789"
# The checkout this editable install runs from: child services start there, as a user would run them.
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_config(directory: Path, model_path: Path | str, **changes: Any) -> Path:
    """A config for tests: small default sizes and few steps so generations take milliseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "data_dir": str(directory / "data"),
        "log_level": "INFO",
        "api": {"keys": [API_KEY], "key_header": "X-API-Key"},
        "model": {"path": str(model_path), "device": "cpu", "dtype": "auto", "batch_size": 4},
        "defaults": {"width": 128, "height": 96, "num_inference_steps": 4},
        # Leases of 3 s: a task cut short by a kill runs again within seconds, not the default 30.
        "queue": {"shutdown_grace_seconds": 10, "lease_seconds": 3},
    }
    raw = deep_merge(raw, changes)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


class Service:
    """Client side of a running service: base URL, an httpx client with the key, task polling."""

    url: str

    def check_alive(self) -> None:
        """Raise if the service is known to have exited (a child process); in-process services always are alive."""

    def client(self, key: str | None = API_KEY, header: str = "X-API-Key") -> httpx.Client:
        headers = {header: key} if key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until /health says the model is loaded (or failed to load). Generous: a busy 2-core machine loads
        the tiny model slowly while other tests run."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                last = httpx.get(f"{self.url}/health", timeout=2.0).json()
                if last.get("model_loaded") or last.get("model_error"):
                    return dict(last)
            time.sleep(0.05)
        raise TimeoutError(f"service at {self.url} not ready: {last}")


class InProcessService(Service):
    """The real app from create_app, served by uvicorn on a loopback port from a background thread."""

    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        resolver: Resolver | None = None,
        storage: ImageStorage | None = None,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config, engine=engine, resolver=resolver, storage=storage)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> InProcessService:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("in-process service did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)


class ChildProcess:
    """An `sdapi` command as a child process, logging to a file beside its config: killable, stoppable, freezable."""

    def __init__(self, config_path: Path, arguments: list[str], env: dict[str, str] | None, log_name: str) -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / log_name
        self._arguments = arguments
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        environment = {**os.environ, **(self._env or {}), "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdapi", *self._arguments, "--config", str(self.config_path)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        """Raise, with the end of its log, when the process has exited: waiting on it longer cannot help."""
        if self.process is not None and (code := self.process.poll()) is not None:
            raise RuntimeError(f"{' '.join(self._arguments)} exited with {code}:\n{self.log()[-3000:]}")

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


class ServiceProcess(ChildProcess, Service):
    """`python -m sdapi serve` as a child process: what a user runs, killable for restart tests."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, role: str = "all") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        arguments = ["serve", "--role", role, "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(config_path, arguments, env, f"service-{self.port}.log")

    def start(self) -> ServiceProcess:
        super().start()
        return self

    def terminate(self, timeout: float = 60.0) -> bool:
        """SIGTERM and wait: the graceful stop. Return whether the app shut down cleanly.

        uvicorn re-raises the signal once it has shut down, so the exit status is -SIGTERM even when clean.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete." in self.log()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerProcess(ChildProcess):
    """`python -m sdapi worker` as a child process: a GPU worker with no HTTP."""

    _numbers = iter(range(1, 10_000))

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, device: str | None = None) -> None:
        arguments = ["worker", *(["--device", device] if device else [])]
        super().__init__(config_path, arguments, env, f"worker-{next(self._numbers)}.log")

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def submit(client: httpx.Client, **body: Any) -> str:
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def wait_for_task(
    client: httpx.Client, task_id: str, timeout: float = 120.0, until: tuple[str, ...] = ("completed", "failed")
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in until:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"task {task_id} still {body.get('status')} after {timeout}s")


def task_events(
    client: httpx.Client, task_id: str, timeout: float | httpx.Timeout = 120.0
) -> list[tuple[str | None, dict[str, Any]]]:
    """The task's SSE stream read to its end: (event name, decoded data) for each event."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events", timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def generate(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """Submit and wait until the task ends; return the final task body."""
    return wait_for_task(client, submit(client, **body))


def fetch_image(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30.0)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def fetch_pixels(url: str) -> np.ndarray[Any, Any]:
    return np.asarray(fetch_image(url).convert("RGB"), dtype=np.float64)


def mean_abs_diff(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def data_url(image: Image.Image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    mime = "png" if image_format == "PNG" else "jpeg"
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def gradient_image(width: int, height: int) -> Image.Image:
    """A deterministic, non-trivial RGB test picture."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@contextlib.contextmanager
def in_process(
    directory: Path, model_path: Path, engine: Engine | None = None, **changes: Any
) -> Iterator[InProcessService]:
    config = load_config(write_config(directory, model_path, **changes))
    with InProcessService(config, engine=engine) as service:
        service.wait_ready()
        yield service


def decided_loras(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The library listing once every file's fit is decided (checked right after the model loads)."""
    deadline = time.monotonic() + 30
    while True:
        entries = client.get("/api/v1/loras").json()["loras"]
        if all(entry["fits"] is not None for entry in entries) or time.monotonic() > deadline:
            return {entry["name"]: entry for entry in entries}
        time.sleep(0.05)
