"""deploy/compose.yaml brought up by podman-compose (Debian's): its PostgreSQL, an API node and a worker, talking
by service name on the project's network, healthy by the file's own healthchecks, complete the contract's example.

What the run changes, and why, is in RUN_CHANGES (printed, and the rest of each service checked unchanged). MinIO
is left out: it ships no Debian package, so its image cannot be built here (no registry answers); the run keeps
images on the file's `images` volume instead (storage.backend: local), and MinIO's service is checked against the
config the file mounts (tests/integration/operations/test_container.py). The postgres service runs a stand-in built
from Debian's packages (tests/container/postgres) that honours the same environment, volume and pg_isready check."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from tests.support.containers import PODMAN, built_image, built_postgres_image, podman, run_limits
from tests.support.services import REPO_ROOT, free_port, wait_for_task
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(3000)]

COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"
KEY = "compose-test-key"
RAN = ["postgres", "api", "worker-0"]
LEFT_OUT = {
    "minio": "MinIO ships no Debian package, so its image cannot be built here",
    "worker-1": "the second-gpu profile: a second GPU",
}
RUN_CHANGES = [
    "api, worker-0: the image built by `make image`, not minio in depends_on",
    "worker-0: --device cpu (no GPU here), no nvidia device reservation",
    "postgres: the stand-in image built from Debian's packages",
    "the mounted config (SDAPI_CONFIG_FILE): the baked default model on the CPU, images on the `images` volume",
]


def _compose_file() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))  # merge keys (<<) resolved by the loader


def _run_file(image: str, postgres_image: str) -> dict[str, Any]:
    """deploy/compose.yaml with RUN_CHANGES applied: everything else (commands, environment, healthchecks,
    volumes, ports, networking by service name) as the file has it."""
    compose = copy.deepcopy(_compose_file())
    services = compose["services"]
    for name in LEFT_OUT:
        del services[name]
    for name in ("api", "worker-0"):
        services[name].pop("build")
        services[name].pop("deploy", None)
        services[name]["image"] = image
        depends_on = services[name]["depends_on"]  # one mapping for both: the file's anchor
        services[name]["depends_on"] = {service: how for service, how in depends_on.items() if service != "minio"}
    command = services["worker-0"]["command"]
    command[command.index("--device") + 1] = "cpu"
    services["postgres"]["image"] = postgres_image
    return compose


def _run_config(directory: Path) -> Path:
    """config.compose.yaml with the run's changes: the model baked into the image, on the CPU, images stored
    locally on the shared volume."""
    config = yaml.safe_load((COMPOSE.parent / "config.compose.yaml").read_text(encoding="utf-8"))
    config["model"] |= {"path": "/app/data/models/scenes-sd", "device": "cpu"}
    config["storage"] = {"backend": "local"}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o644)
    return path


def test_the_compose_file_runs_postgres_an_api_node_and_a_worker(tmp_path, tmp_path_factory, capsys):
    image, postgres_image = built_image(tmp_path_factory), built_postgres_image(tmp_path_factory)
    run, original = _run_file(image, postgres_image), _compose_file()
    assert sorted(run["services"]) == sorted(RAN) and set(original["services"]) - set(RAN) == set(LEFT_OUT)
    changed = {"image", "build", "deploy", "depends_on", "command"}
    for name in RAN:  # the rest of each service runs as the file has it
        kept = {key: value for key, value in run["services"][name].items() if key not in changed}
        assert kept == {key: value for key, value in original["services"][name].items() if key not in changed}
    assert run["services"]["api"]["command"] == original["services"]["api"]["command"]
    run_file = tmp_path / "compose.yaml"
    run_file.write_text(yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
    models = tmp_path / "models"
    models.mkdir()
    port = free_port()
    project = f"sdapi-test-{uuid.uuid4().hex[:8]}"
    environment = {
        **os.environ,
        "POSTGRES_PASSWORD": "compose-pg-password",
        "MINIO_ROOT_PASSWORD": "unused-without-minio",
        "SDAPI_API_KEYS": KEY,
        "SDAPI_CONFIG_FILE": str(_run_config(tmp_path)),
        "SDAPI_MODELS_DIR": str(models),
        "SDAPI_PORT": str(port),
    }
    compose = [
        "podman-compose",
        "--project-name",
        project,
        "--file",
        str(run_file),
        "--podman-args",
        " ".join(PODMAN[1:]),
        "--podman-run-args",
        " ".join(run_limits()),
    ]

    def compose_command(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *arguments], env=environment, capture_output=True, text=True, timeout=600, check=False
        )

    with capsys.disabled():
        print(f"\ncompose run: {', '.join(RAN)}; left out: {LEFT_OUT}; changed: {RUN_CHANGES}")
    try:
        started = compose_command("up", "-d", "--no-build")
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        names = {service: f"{project}_{service}_1" for service in RAN}

        def logs() -> str:
            return "\n".join(
                f"--- {name}\n{podman('logs', name, check=False).stderr[-3000:]}" for name in names.values()
            )

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=30.0) as client:

            def a_worker_has_loaded_the_model() -> bool:
                try:
                    return bool(client.get("/health").json()["model_loaded"])
                except httpx.HTTPError:
                    return False

            eventually(a_worker_has_loaded_the_model, timeout=300.0, what=f"the compose stack's model load\n{logs()}")
            # The file's own healthchecks: PostgreSQL ready, the API answering, and the worker's heartbeat seen by
            # the API it reaches by service name.
            for name in names.values():
                eventually(
                    lambda name=name: podman("healthcheck", "run", name, check=False).returncode == 0,
                    timeout=120.0,
                    what=f"{name}'s healthcheck\n{logs()}",
                )
            response = client.post(
                "/api/v1/generate",
                json={"prompt": "a beautiful landscape with mountains and lakes, sunset", "output_format": "png"},
            )
            assert response.status_code == 200, response.text
            body = wait_for_task(client, response.json()["task_id"], timeout=300.0)
            assert body["status"] == "completed", body
            picture = Image.open(io.BytesIO(httpx.get(body["result_url"], timeout=30.0).content))
            assert picture.format == "PNG" and picture.size == (512, 512)
            health = client.get("/health").json()
            [worker] = health["workers"]
            assert (
                worker["host"]
                == podman("inspect", "--format", "{{.Config.Hostname}}", names["worker-0"]).stdout.strip()
            )
    finally:
        compose_command("down", "--volumes")
        podman("network", "rm", "--force", f"{project}_default", check=False)
        for volume in ("postgres-data", "images"):
            podman("volume", "rm", "--force", f"{project}_{volume}", check=False)
