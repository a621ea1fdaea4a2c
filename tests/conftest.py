"""Shared fixtures: the tiny model (built once per run) and one running service for most integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sdapi.testing.services import InProcessService, in_process
from sdapi.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[InProcessService]:
    """One real service (uvicorn on loopback, SQLite file, local images) shared by the read-mostly tests."""
    with in_process(tmp_path_factory.mktemp("service"), tiny_model) as running:
        yield running


@pytest.fixture()
def client(service: InProcessService) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http
