"""The command-line client: `sdapi generate`, `sdapi tasks`, `sdapi cancel`, talking to a running service over its
native API (URL and key from --url/--key or SDAPI_URL/SDAPI_API_KEY). Only httpx: no model, no config file.

Exit codes: 0 done, 1 the task failed (or was cancelled, or could not be cancelled), 2 usage (bad arguments, or a
request the service refused: the message is the service's), 3 the service cannot be reached or is unavailable.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from sdapi.media.mime import image_mime

DONE, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "http://localhost:8000"
POLL_SECONDS = 0.5
BAR_WIDTH = 30


class ClientError(Exception):
    """Stops a command with an exit code and a message for stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Client:
    url: str
    key: str
    timeout: float = 30.0

    def request(self, method: str, path: str, **options: Any) -> Any:
        """The decoded JSON of a 2xx answer; raise ClientError naming what went wrong otherwise."""
        try:
            response = httpx.request(
                method, self.url.rstrip("/") + path, headers={"X-API-Key": self.key}, timeout=self.timeout, **options
            )
        except httpx.HTTPError as error:
            raise ClientError(UNREACHABLE, f"cannot reach {self.url}: {error}") from None
        if response.status_code >= 500:
            raise ClientError(UNREACHABLE, f"{self.url} answered {response.status_code}: {_detail(response)}")
        if response.status_code >= 400:
            code = FAILED if response.status_code in (404, 409) else USAGE
            raise ClientError(code, f"{response.status_code}: {_detail(response)}")
        return response.json()

    def download(self, url: str, path: Path) -> None:
        try:
            response = httpx.get(url, timeout=self.timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ClientError(UNREACHABLE, f"downloading {url} failed: {error}") from None
        path.write_bytes(response.content)


def _detail(response: httpx.Response) -> str:
    """The service's own words for a refused request."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):  # the 422 list of {loc, msg}
        return "; ".join(f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}" for item in detail)
    return str(detail)


def parse_size(text: str) -> tuple[int, int]:
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size must look like 768x512, not {text!r}")
    return int(width), int(height)


def parse_lora(text: str) -> dict[str, Any]:
    name, _colon, weight = text.partition(":")
    if not name:
        raise ValueError(f"a LoRA is NAME or NAME:WEIGHT, not {text!r}")
    try:
        return {"name": name, "weight": float(weight) if weight else 1.0}
    except ValueError:
        raise ValueError(f"the weight of {text!r} is not a number") from None


def init_image_data_url(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ClientError(USAGE, f"cannot read {path}: {error.strerror}") from None
    return f"data:image/{image_mime(raw)};base64,{base64.b64encode(raw).decode('ascii')}"


class Progress:
    """A bar redrawn in place on a terminal; a plain line per change of state (and every quarter) elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._last = ""

    def show(self, task: dict[str, Any]) -> None:
        status = task["status"]
        if status == "pending":
            position = task.get("queue_position")
            line = "queued" + (f", {position} ahead" if position else "")
            percent = 0.0
        else:
            percent = float((task.get("progress") or {}).get("percent") or 0.0)
            line = f"{status} {percent:.0f}%"
        if self._terminal:
            filled = int(BAR_WIDTH * percent / 100)
            self._stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {line:<24}")
            self._stream.flush()
            return
        coarse = line if status != "processing" else f"processing {int(percent // 25) * 25}%"
        if coarse != self._last:
            self._last = coarse
            print(coarse, file=self._stream, flush=True)

    def close(self) -> None:
        if self._terminal:
            self._stream.write("\n")
            self._stream.flush()


def generate(client: Client, body: dict[str, Any], out: Path, stream: TextIO = sys.stderr) -> int:
    """Submit, follow the task to its end, write its images as <task>-seed<N>.<ext> into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    task_id = client.request("POST", "/api/v1/generate", json=body)["task_id"]
    print(f"task {task_id}", file=stream, flush=True)
    progress = Progress(stream)
    try:
        task = follow(client, task_id, progress.show)
    except KeyboardInterrupt:
        progress.close()
        client.request("POST", f"/api/v1/tasks/{task_id}/cancel")
        print(f"cancelled task {task_id}", file=stream)
        return 130
    progress.close()
    if task["status"] != "completed":
        code = task.get("error_code") or "failed"
        print(f"task {task_id} failed ({code}): {task.get('error_message')}", file=stream)
        return FAILED
    extension = (body.get("output_format") or "png").replace("jpeg", "jpg")  # png, jpg or webp
    for image in task.get("images") or []:
        path = out / f"{task_id[:8]}-seed{image['seed']}.{extension}"
        client.download(image["url"], path)
        print(path)
    return DONE


def follow(client: Client, task_id: str, on_change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    while True:
        task: dict[str, Any] = client.request("GET", f"/api/v1/tasks/{task_id}")
        on_change(task)
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(POLL_SECONDS)


def list_tasks(client: Client, limit: int, status: str | None) -> int:
    query: dict[str, Any] = {"limit": limit}
    if status:
        query["status"] = status
    page = client.request("GET", "/api/v1/tasks", params=query)
    print(f"{'task_id':36}  {'status':10}  {'created_at':20}  {'seed':>10}  images  error")
    for task in page["tasks"]:
        print(
            f"{task['task_id']:36}  {task['status']:10}  {task['created_at'][:19]:20}  {task['seed']:>10}  "
            f"{task['num_images']:>6}  {task.get('error_code') or ''}"
        )
    return DONE


def cancel(client: Client, task_id: str) -> int:
    task = client.request("POST", f"/api/v1/tasks/{task_id}/cancel")
    print(f"task {task_id}: {task['status']}" + (" (cancel requested)" if task["status"] == "processing" else ""))
    return DONE
