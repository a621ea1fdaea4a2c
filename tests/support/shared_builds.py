"""Read-only test artifacts built once per run, not once per xdist worker: the tiny models, the ONNX exports and
the shared LoRA folder take seconds each to build, and every worker would otherwise build its own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """`name`'s folder, built by `build(folder)` by whichever worker asks first while the others wait for it.

    Under xdist every worker's base temp folder sits in the run's own folder, which they share; without xdist the
    run's own base folder is used (the parent would hold earlier runs' folders)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(parents=True, exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build(folder)
            done.touch()
    return folder
