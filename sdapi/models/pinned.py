"""Finding a file again on the worker by the content a request was checked against at submit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sdapi.errors import InvalidParameter


class Pinned(Protocol):
    """A scanned file of a folder library: where it is and the sha256 of its content."""

    @property
    def path(self) -> Path: ...

    @property
    def full_sha256(self) -> str: ...


def pinned_path(
    lookup: Callable[[], Pinned | None], rescan: Callable[[], None], sha256: str, field: str, gone: str
) -> Path:
    """The path of the file `lookup` finds (under its library's lock) while its content is still `sha256`. A file
    this process has not seen, or has seen with other content (added or changed after its last scan, through
    another node), rescans the folder once. Raise InvalidParameter naming `field` with `gone` when it is still not
    there."""
    scanned = lookup()
    if scanned is None or scanned.full_sha256 != sha256:
        rescan()
        scanned = lookup()
    if scanned is None or scanned.full_sha256 != sha256:
        raise InvalidParameter(field, gone)
    return scanned.path
