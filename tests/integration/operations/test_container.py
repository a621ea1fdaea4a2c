"""What can be checked of the container image without a Docker engine: the Dockerfile against the repository, the
config and the CUDA the pinned wheels were built for (read from their metadata on PyPI, not hard-coded)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import PurePosixPath

import pytest

from sdapi.config import load_config
from tests.support.services import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            joined.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage, by stage name; the unnamed last stage is "final"."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, arguments in _instructions():
        if instruction == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else "final"
            current = stages.setdefault(name, [])
        current.append((instruction, arguments))
    return stages


def _pyproject() -> dict:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_every_copy_source_exists_in_the_repository():
    copies = [arguments for instruction, arguments in _instructions() if instruction == "COPY"]
    assert copies
    for arguments in copies:
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        if "--from=" in arguments:
            continue  # copied from another stage, not from the build context
        for source in words[:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_command_serves_the_config_the_image_holds_on_the_port_it_exposes():
    final = _stages()["final"]
    workdir = PurePosixPath(next(arguments for instruction, arguments in final if instruction == "WORKDIR"))
    copied = {
        workdir / shlex.split(arguments)[-1]
        for instruction, arguments in final
        if instruction == "COPY" and "--from=" not in arguments
    }
    command = json.loads(next(arguments for instruction, arguments in final if instruction == "CMD"))
    config_path = PurePosixPath(command[command.index("--config") + 1])
    assert config_path in copied, f"CMD reads {config_path}, the image has {sorted(map(str, copied))}"
    exposed = int(next(arguments for instruction, arguments in final if instruction == "EXPOSE"))
    assert int(command[command.index("--port") + 1]) == exposed
    assert load_config(REPO_ROOT / "config.yaml", environ={}).server.port == exposed
    health = next(arguments for instruction, arguments in final if instruction == "HEALTHCHECK")
    assert f":{exposed}/health" in health
    user = next(arguments for instruction, arguments in final if instruction == "USER")
    assert user not in ("0", "root")


def test_the_image_installs_with_the_same_recipe_and_pins_as_make_install():
    install_runs = [a for i, a in _stages()["build"] if i == "RUN" and "deploy/install-deps.sh" in a]
    assert install_runs, "the image must install through deploy/install-deps.sh"
    assert "deploy/install-deps.sh" in (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    printed = subprocess.run(
        [str(REPO_ROOT / "deploy" / "install-deps.sh"), "--print-pins"], capture_output=True, text=True, check=True
    ).stdout.split()
    dependencies = _pyproject()["project"]["dependencies"]
    torch_pin = next(pin for pin in dependencies if pin.startswith("torch=="))
    assert printed[0] == torch_pin
    assert printed[1].startswith("drf-spectacular-sidecar==")
    # Both ONNX Runtime builds come from the package's own extras, pinned there.
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any(pin.startswith("onnxruntime-gpu==") for pin in extras["gpu"])
    assert any(pin.startswith("onnxruntime==") for pin in extras["cpu"])


def _required_cuda_majors(pins: list[str]) -> dict[str, set[int]]:
    """The CUDA majors each pinned wheel's metadata requires, from the record deploy/record_gpu_wheels.py writes
    (no test asks the package index: the record holds the wheels' Requires-Dist lines that name CUDA)."""
    record = json.loads((REPO_ROOT / "deploy" / "gpu-wheels.json").read_text(encoding="utf-8"))
    assert sorted(record) == sorted(pins), (
        f"deploy/gpu-wheels.json records {sorted(record)}, the pins are {sorted(pins)}: "
        "run .venv/bin/python deploy/record_gpu_wheels.py"
    )
    majors: dict[str, set[int]] = {}
    cuda_requirement = re.compile(
        r"^(?:cuda-toolkit|nvidia-cuda-runtime|nvidia-cuda-runtime-cu\d+|nvidia-cudnn-cu(?P<cudnn>\d+))"
        r"(?:\[[^\]]*\])?\s*(?:==|~=|>=)?\s*(?P<version>\d+)?"
    )
    for pin, metadata in record.items():
        found: set[int] = set()
        for requirement in metadata["requires_dist"]:
            match = cuda_requirement.match(requirement)
            if match is None:
                continue
            found.add(int(match["cudnn"] or match["version"]))
        majors[pin.split("==")[0].lower()] = found
    return majors


def test_the_gpu_base_image_has_the_cuda_major_the_pinned_wheels_were_built_for():
    base = next(arguments for instruction, arguments in _stages()["runtime-gpu"] if instruction == "FROM")
    match = re.match(r"nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-", base)
    assert match, f"the GPU runtime stage must start from an nvidia/cuda image, not {base}"
    base_major = int(match[1])
    dependencies = _pyproject()["project"]["dependencies"]
    torch_pin = next(pin for pin in dependencies if pin.startswith("torch=="))
    onnx_pin = next(pin for pin in _pyproject()["project"]["optional-dependencies"]["gpu"])
    majors = _required_cuda_majors([torch_pin, onnx_pin])
    assert majors["torch"] == {base_major}, majors
    assert majors["onnxruntime-gpu"] == {base_major}, majors


@pytest.mark.parametrize("path", [".venv", "data", ".git", "tests"])
def test_local_state_stays_out_of_the_build_context(path):
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert path in ignored


# -- deploy/compose.yaml -----------------------------------------------------------------------------------------
# No Docker engine here: what can be checked is the file's structure, that every command is one the CLI accepts,
# and that the config it mounts loads with the secrets compose passes through the environment.

COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"


def _compose() -> dict:
    import yaml

    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merge keys (<<) resolved by the loader


def test_compose_runs_postgres_minio_an_api_node_and_one_worker_per_gpu():
    from sdapi.cli import parser

    services = _compose()["services"]
    assert {"postgres", "minio", "api", "worker-0", "worker-1"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, name
    api_args = parser().parse_args(services["api"]["command"][1:])
    assert api_args.command == "serve" and api_args.role == "api" and api_args.config == "/app/config.yaml"
    devices = []
    for name in ("worker-0", "worker-1"):
        worker = services[name]
        arguments = parser().parse_args(worker["command"][1:])
        assert arguments.command == "worker"
        devices.append(arguments.device)
        [reservation] = worker["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
        assert "ports" not in worker  # no public HTTP
    assert devices == ["cuda:0", "cuda:1"]
    for name in ("api", "worker-0"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "minio": {"condition": "service_healthy"},
        }


def test_compose_passes_secrets_through_the_environment_and_its_config_loads_with_them():
    services = _compose()["services"]
    environment = services["api"]["environment"]
    for variable in ("SDAPI_DATABASE_URL", "SDAPI_API_KEYS", "SDAPI_MINIO_SECRET_KEY"):
        assert "${" in environment[variable], variable  # interpolated, never a literal secret
    assert services["worker-0"]["environment"] == environment
    [mount] = [volume for volume in services["api"]["volumes"] if volume.endswith(":/app/config.yaml:ro")]
    source = mount.rsplit(":", 2)[0]  # ${SDAPI_CONFIG_FILE:-./config.compose.yaml}: the default is the shipped one
    default = re.fullmatch(r"\$\{SDAPI_CONFIG_FILE:-(.+)\}", source)
    assert default, source
    config_file = COMPOSE.parent / default[1]
    config = load_config(
        config_file,
        environ={
            "SDAPI_DATABASE_URL": "postgresql://sdapi:pw@postgres:5432/sdapi",
            "SDAPI_API_KEYS": "k1,k2",
            "SDAPI_MINIO_ACCESS_KEY": "sdapi",
            "SDAPI_MINIO_SECRET_KEY": "secret",
        },
    )
    assert (
        config.store.backend == "postgres" and config.store.postgres.dsn == "postgresql://sdapi:pw@postgres:5432/sdapi"
    )
    assert config.storage.backend == "minio" and config.storage.minio.endpoint == "minio:9000"
    assert config.api.keys == ["k1", "k2"]


def test_compose_minio_service_matches_the_config_the_file_mounts():
    """MinIO is the one service the podman-compose run leaves out (tests/container/test_compose.py): its port,
    keys and volumes are checked against the config the file mounts instead."""
    services = _compose()["services"]
    minio = services["minio"]
    config = load_config(
        COMPOSE.parent / "config.compose.yaml",
        environ={
            "SDAPI_DATABASE_URL": "postgresql://u:p@postgres:5432/sdapi",
            "SDAPI_MINIO_ACCESS_KEY": "a",
            "SDAPI_MINIO_SECRET_KEY": "s",
            "SDAPI_API_KEYS": "k",
        },
    )
    host, port = config.storage.minio.endpoint.split(":")
    assert host == "minio" and f"{port}:{port}" in minio["ports"]
    assert config.storage.minio.public_base_url.endswith(f":{port}")
    # The keys the sdapi services hand over are the ones MinIO is started with.
    environment = services["api"]["environment"]
    assert "MINIO_ROOT_USER" in environment["SDAPI_MINIO_ACCESS_KEY"]
    assert "MINIO_ROOT_USER" in minio["environment"]["MINIO_ROOT_USER"]
    assert "MINIO_ROOT_PASSWORD" in environment["SDAPI_MINIO_SECRET_KEY"]
    assert "MINIO_ROOT_PASSWORD" in minio["environment"]["MINIO_ROOT_PASSWORD"]
    declared = set(_compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"volume {source} is not declared"
    # The file's database URL names its postgres service, user and database.
    postgres = services["postgres"]["environment"]
    url = environment["SDAPI_DATABASE_URL"]
    assert url.startswith(f"postgresql://{postgres['POSTGRES_USER']}:") and url.endswith(
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
