"""Shared fixtures: the tiny model (built once per run) and one running service for most integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer

from sdapi.devtools.testing.postgres import PostgresCluster
from sdapi.devtools.testing.services import InProcessService, free_port, in_process
from sdapi.devtools.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD 2.x's layout with v-prediction, 768-pixel native size."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd2-v", family="sd2-v")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SDXL base's layout: two text encoders, size micro-conditioning, 1024-pixel native size."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", family="sdxl")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[InProcessService]:
    """One real service (uvicorn on loopback, SQLite file, local images) shared by the read-mostly tests."""
    with in_process(tmp_path_factory.mktemp("service"), tiny_model) as running:
        yield running


@pytest.fixture()
def client(service: InProcessService) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server for the run (its own throw-away cluster); tests take fresh databases from it."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, object]]:
    """A real S3 HTTP endpoint on loopback (moto's server), for the MinIO storage backend."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"endpoint": f"127.0.0.1:{port}", "server": server, "port": port}
    server.stop()
