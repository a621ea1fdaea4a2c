"""The fixtures every test can use, one module per kind (tests/fixtures/): the tiny models, LoRA folders, ONNX exports,
and the running services (the shared one, the per-module factory, PostgreSQL, S3)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.loras",
    "tests.fixtures.exports",
    "tests.fixtures.services",
]


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, each worker's torch (and the child processes its tests start) takes its share of the cores:
    without it, every worker runs as many threads as there are cores and they all fight for them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return
    share = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, share)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The files that take longest (their tests' seconds together, `make test` on the 2-core machine of
# docs/benchmarks.md), run first: xdist hands out whole files (--dist loadfile) in collection order, and a long file
# handed out last keeps one worker busy while the others have finished. Longest first evens the workers' ends.
LONGEST_FIRST = (
    "tests/integration/scale_out/test_durability.py",
    "tests/integration/operations/test_gpu_check.py",
    "tests/container/test_image.py",
    "tests/integration/scale_out/test_scale_out.py",
    "tests/integration/scale_out/test_orphaned_images.py",
    "tests/container/test_compose.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    # A stable sort: each file's tests keep their order, and every other file its place after these.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
