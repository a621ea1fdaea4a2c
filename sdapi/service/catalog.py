"""The models this service serves, as requests and GET /api/v1/models see them: each configured model's name, its
family (detected from disk at start-up, where a model of a kind not served is refused), native size and engines."""

from __future__ import annotations

import logging
import threading

import msgspec

from sdapi.config import Config
from sdapi.errors import InvalidParameter, ModelLoadFailed
from sdapi.models.digests import model_weights_sha256
from sdapi.models.families import Family, ModelFamily, UnsupportedModel, detect_family

logger = logging.getLogger(__name__)

# Until a missing model appears (its worker then reports the load error), requests are sized as for SD 1.x.
_UNKNOWN = ModelFamily(family=Family.SD1, native_size=(512, 512))


class ModelView(msgspec.Struct, frozen=True):
    """One entry of GET /api/v1/models."""

    name: str
    family: str  # sd1 | sd2 | sdxl
    native_size: tuple[int, int]
    source: str
    sha256: str | None
    engines: list[str]
    loaded: bool
    default: bool


class ModelCatalog:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._entries = {entry.name: entry for entry in config.model_entries}
        self.default = config.default_model.name
        self._families = {name: self._detect(entry.path) for name, entry in self._entries.items()}
        self._hashes: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _detect(path: str) -> ModelFamily:
        try:
            return detect_family(path)
        except UnsupportedModel:
            raise  # a model of a kind not served: the service does not start
        except ModelLoadFailed as error:
            logger.warning("model %s: %s", path, error.message)
            return _UNKNOWN

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def resolve(self, name: str | None) -> tuple[str, ModelFamily]:
        """The model a request names (None: the default) and its family; raise InvalidParameter for an unknown one."""
        chosen = name or self.default
        if chosen not in self._entries:
            raise InvalidParameter("model", f"模型不存在：{chosen!r}。可用模型：{', '.join(self._entries)}")
        return chosen, self._families[chosen]

    def sha256(self, name: str) -> str | None:
        """The hash of the model's weights (read once: seconds for a big model; call it off the event loop)."""
        with self._lock:
            if name in self._hashes:
                return self._hashes[name]
        digest = model_weights_sha256(self._entries[name].path)
        with self._lock:
            self._hashes[name] = digest
        return digest

    def views(self, loaded: set[str]) -> list[ModelView]:
        """Every model as GET /api/v1/models lists it; `loaded`: the names some live worker has in memory."""
        views = []
        for name, entry in self._entries.items():
            family = self._families[name]
            engines = ["torch"] if entry.engine == "torch" or entry.onnx_path is None else ["onnx", "torch"]
            if entry.engine == "onnx":
                engines = ["onnx"]
            views.append(
                ModelView(
                    name=name,
                    family=family.family.value,
                    native_size=family.native_size,
                    source=entry.path,
                    sha256=self.sha256(name),
                    engines=engines,
                    loaded=name in loaded,
                    default=name == self.default,
                )
            )
        return views
