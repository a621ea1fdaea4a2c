"""What an add-on kind is (LoRAs, embeddings, upscalers, ControlNets, IP-Adapters...): a library of files in one
folder, scanned, listed and resolved to specs pinned by sha256 the same way, so one registry (sdapi.addons) holds
them all and one controller lists and refreshes every kind. Pure: the protocol and the kind's description, no I/O.

On the engine's side each kind that changes a pipeline has an `applied(...)` context in its own package, which
applies the specs a run names for that run and leaves nothing a later run could see: LoRAs
(loras.merging.AdapterManager.applied), embeddings (embeddings.loading.PipelineEmbeddings.applied), image prompts
(ip_adapters.running.IpAdapters.applied), VAEs (vaes.running.Vaes.applied) and ControlNet units
(controlnets.running.applied); the torch engine enters them in that order. Upscalers change no pipeline: the
second pass and the extras call them."""

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
