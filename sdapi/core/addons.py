"""What an add-on kind is (LoRAs, embeddings, upscalers, ControlNets, IP-Adapters...): a library of files in one
folder, scanned, listed and resolved the same way, so one registry (sdapi.addons) holds them all and one controller
lists and refreshes every kind. Pure: the protocol and the kind's description, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class AddonKind:
    """How an add-on kind shows on the HTTP surface and in the config."""

    # Its URL segment under /api/v1 (GET /api/v1/{name}, POST /api/v1/{name}/refresh).
    name: str
    # The key of its list in the JSON answer ({"loras": [...]}).
    list_key: str
    # Its section of config.yaml (its folder is `<section>.dir`, by default under data_dir).
    config_section: str
    # The msgspec Struct one listed file is.
    entry_type: type[Any]
    summary: str  # of its list, for the API documentation
    description: str
    refresh_summary: str


class Addon(Protocol):
    """One add-on kind's library: a folder of files, scanned at start-up and on refresh."""

    kind: AddonKind

    @property
    def directory(self) -> Path:
        """The folder it reads."""

    def scan(self) -> object:
        """Read the folder again (hashing new files: call it off the event loop)."""

    def listed(self) -> list[Any]:
        """The files as GET /api/v1/{kind} lists them, as last scanned."""
