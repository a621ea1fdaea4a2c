"""Scanning a library folder whose entries are diffusers folders (a config.json beside the weights) and single
.safetensors files, named by the folder's name or the file's stem (a folder wins a name both use): how the
ControlNet and VAE libraries read theirs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def scan_models(
    directory: Path, read_folder: Callable[[Path], T], read_file: Callable[[Path], T], what: str
) -> dict[str, T]:
    """Each entry of `directory` read by `read_folder` or `read_file`, by name; one that cannot be read at all is
    logged (as `what`) and left out, the rest are listed whatever they hold."""
    directory.mkdir(parents=True, exist_ok=True)
    found: dict[str, T] = {}
    for path in sorted(directory.iterdir()):
        try:
            if path.is_dir() and (path / "config.json").is_file():
                found[path.name] = read_folder(path)
            elif path.is_file() and path.suffix == ".safetensors" and path.stem not in found:
                found[path.stem] = read_file(path)
        except OSError as error:
            logger.warning("%s %s unreadable: %s", what, path.name, error)
    return found
