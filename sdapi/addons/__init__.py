"""The add-on registry: every add-on kind's library (sdapi.core.addons.Addon), built once from the config in the
composition root and passed as one value to the status service, admission, the engine factory and the HTTP layer's
one list/refresh controller. A new kind is one package (its library with a `kind` and `from_config`) and one line in
LIBRARIES."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

from sdapi.config import Config
from sdapi.controlnets.library import ControlNetLibrary
from sdapi.core.addons import Addon, AddonKind
from sdapi.embeddings.library import EmbeddingLibrary
from sdapi.ip_adapters.library import IpAdapterLibrary
from sdapi.loras.library import LoraLibrary
from sdapi.upscalers.library import UpscalerLibrary
from sdapi.vaes.library import VaeLibrary


class AddonLibrary(Addon, Protocol):
    """An add-on library as the registry builds it: from the config alone."""

    @classmethod
    def from_config(cls, config: Config) -> Any:
        """The library of the configured folder (`<kind>.dir`, by default under data_dir)."""


# Every add-on kind, in the order they are scanned and documented.
LIBRARIES: tuple[type[AddonLibrary], ...] = (
    LoraLibrary,
    EmbeddingLibrary,
    UpscalerLibrary,
    ControlNetLibrary,
    IpAdapterLibrary,
    VaeLibrary,
)
# What the HTTP surface lists (known before any registry is built: routes are made before the runtime).
ADDON_KINDS: tuple[AddonKind, ...] = tuple(library.kind for library in LIBRARIES)

L = TypeVar("L")


class AddonRegistry:
    """The libraries of one process, by kind."""

    def __init__(self, libraries: Iterable[Addon]) -> None:
        self._libraries = {library.kind.name: library for library in libraries}

    @classmethod
    def from_config(cls, config: Config) -> AddonRegistry:
        return cls(library.from_config(config) for library in LIBRARIES)

    def __iter__(self) -> Iterator[Addon]:
        return iter(self._libraries.values())

    def named(self, name: str) -> Addon:
        """The library of the kind whose URL segment is `name`; KeyError for another."""
        return self._libraries[name]

    def of(self, library_type: type[L]) -> L:
        """The library of one kind, typed (admission and the engines need each kind's own methods)."""
        for library in self._libraries.values():
            if isinstance(library, library_type):
                return library
        raise KeyError(f"no {library_type.__name__} in the add-on registry")
