"""The container image, built by `make image`'s script and run by a real container engine (Debian's podman): it
starts healthy, answers the contract's curl example as its non-root user with the default model baked in, stops
cleanly on SIGTERM without losing the task in flight, and runs as an API container beside a worker container on
PostgreSQL. This directory sorts first, so the build (minutes on a fresh machine) overlaps the rest of the suite."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from tests.support.containers import Container, built_image
from tests.support.services import REPO_ROOT, deep_merge, free_port, wait_for_task
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(3000)]

KEY = "container-test-key"
IMAGE_USER = 10001  # the Dockerfile's USER
# The contract's curl example (docs: 2. 图片生成), sent as it is written.
CONTRACT_EXAMPLE = {
    "prompt": "a beautiful landscape with mountains and lakes, sunset, highly detailed, 4k",
    "width": 512,
    "height": 512,
    "num_images": 1,
    "guidance_scale": 7.5,
    "num_inference_steps": 30,
    "output_format": "png",
}
LONG = {"prompt": "a long one", "width": 512, "height": 512, "num_inference_steps": 150, "seed": 1}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return built_image(tmp_path_factory)


def _config(directory: Path, **changes: object) -> Path:
    """The image's own config.yaml with `changes` merged in, readable by the image's user."""
    config = deep_merge(yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8")), changes)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o644)
    return path


def _client(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=30.0)


def _png(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30.0)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def _wait_processing(client: httpx.Client, task_id: str) -> None:
    wait_for_task(client, task_id, timeout=180.0, until=("processing", "completed", "failed"))
    assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "processing", "the task ended too soon"


def test_the_image_runs_healthy_serves_the_contract_and_stops_cleanly_on_sigterm(image, tmp_path):
    # Grace 0 and one attempt: a SIGTERM mid-task hands the task back at once, and it must still run (a clean stop
    # gives the attempt back), as on a bare process (tests/integration/scale_out/test_durability.py).
    config = _config(tmp_path, queue={"shutdown_grace_seconds": 0, "max_attempts": 1})
    port = free_port()
    options = ["-p", f"127.0.0.1:{port}:8000", "-e", f"SDAPI_API_KEYS={KEY}", "-v", f"{config}:/app/config.yaml:ro"]
    with Container(f"sdapi-test-{uuid.uuid4().hex[:8]}", image, *options) as running, _client(port) as client:
        running.wait_healthy()
        eventually(lambda: client.get("/health").json()["model_loaded"], timeout=300.0, what="the model load")
        assert client.get("/health").json().items() >= {"status": "ok", "model_loaded": True}.items()

        # The main process runs as the image's user, and the model it serves is the one baked into the image.
        uid_line = next(line for line in running.run("cat", "/proc/1/status").splitlines() if line.startswith("Uid"))
        assert uid_line.split()[1:] == [str(IMAGE_USER)] * 4
        assert running.run("ls", "/app/data/models/scenes-sd").split().count("model_index.json") == 1
        assert not [mount for mount in running.inspect()["Mounts"] if mount["Destination"].startswith("/app/data")]

        response = client.post("/api/v1/generate", json=CONTRACT_EXAMPLE)
        assert response.status_code == 200, response.text
        body = wait_for_task(client, response.json()["task_id"], timeout=300.0)
        assert body["status"] == "completed", body
        picture = _png(body["result_url"])
        assert picture.format == "PNG" and picture.size == (512, 512)

        task_id = client.post("/api/v1/generate", json=LONG).json()["task_id"]
        _wait_processing(client, task_id)
        podman_stop = running.stop(timeout=60)
        state = running.inspect()["State"]
        assert state["ExitCode"] == 0, running.logs()[-4000:]  # SIGTERM handled, not SIGKILL's 137
        assert podman_stop < 60, "podman had to kill it"
        assert "will run again" in running.logs()

        running.start()
        running.wait_healthy()
        body = wait_for_task(client, task_id, timeout=300.0)
        assert body["status"] == "completed", body
        assert body["attempts"] == 1
        assert _png(body["result_url"]).size == (512, 512)


@pytest.mark.postgres
def test_an_api_container_and_a_worker_container_complete_a_task_on_postgresql(image, tmp_path, postgres):
    config = _config(tmp_path / "config", store={"backend": "postgres"})
    images = tmp_path / "images"  # local storage shared by the two, as a volume would be
    images.mkdir()
    os.chown(images, IMAGE_USER, IMAGE_USER) if os.geteuid() == 0 else images.chmod(0o777)
    port = free_port()
    # Host networking: both reach the test's PostgreSQL on loopback, as they would a database host.
    common = [
        "--network",
        "host",
        "-e",
        f"SDAPI_DATABASE_URL={postgres.new_database()}",
        "-e",
        f"SDAPI_API_KEYS={KEY}",
        "-v",
        f"{config}:/app/config.yaml:ro",
        "-v",
        f"{images}:/app/data/images",
    ]
    suffix = uuid.uuid4().hex[:8]
    serve = ["sdapi", "serve", "--role", "api", "--config", "/app/config.yaml", "--host", "127.0.0.1"]
    with (
        Container(f"sdapi-api-{suffix}", image, *common, command=[*serve, "--port", str(port)]) as api,
        Container(
            f"sdapi-worker-{suffix}", image, *common, command=["sdapi", "worker", "--config", "/app/config.yaml"]
        ) as worker,
        _client(port) as client,
    ):

        def a_worker_has_loaded_the_model() -> bool:
            for running in (api, worker):
                if not running.inspect()["State"]["Running"]:
                    raise AssertionError(f"{running.name} exited:\n{running.logs()[-4000:]}")
            try:
                return bool(client.get("/health").json()["model_loaded"])  # the API node reports its workers
            except httpx.HTTPError:
                return False

        eventually(a_worker_has_loaded_the_model, timeout=300.0, what="the worker container's model load")
        response = client.post("/api/v1/generate", json={**CONTRACT_EXAMPLE, "num_inference_steps": 4})
        assert response.status_code == 200, response.text
        body = wait_for_task(client, response.json()["task_id"], timeout=300.0)
        assert body["status"] == "completed", body
        assert _png(body["result_url"]).size == (512, 512)
        assert any(images.rglob("*.png")), "the worker container wrote no image to the shared storage"
    shutil.rmtree(images, ignore_errors=True)
