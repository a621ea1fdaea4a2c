"""What a `model.path` value names: a local diffusers folder, a single-file checkpoint, or a hub id. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_PATH_PREFIXES = (".", "/", "~")

SourceKind = Literal["folder", "single-file", "hub"]


def is_local_path(value: str, base: Path | None = None) -> bool:
    """Whether `value` names something on disk rather than a hub id ("org/name").

    A value that starts like a path, ends like a checkpoint file, or is an existing folder (under `base`, when
    given) is local; anything else is taken for a hub id.
    """
    if value.startswith(_PATH_PREFIXES) or value.lower().endswith(SINGLE_FILE_SUFFIXES):
        return True
    return ((base or Path.cwd()) / value).is_dir()


def describe_source(path: str) -> SourceKind:
    """ "folder", "single-file" or "hub" for a model.path value."""
    local = Path(path)
    if local.is_dir():
        return "folder"
    if local.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return "single-file"
    return "hub"


def model_name(path: str) -> str:
    """A model's short name: the last part of its configured path (a folder, a file without its suffix, a hub
    id's name), as AUTOMATIC1111's model lists and our metric labels show it."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in SINGLE_FILE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name
