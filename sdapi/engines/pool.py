"""The models one worker serves (config `models:`), as one Engine: each request runs on its model's engine, loaded
on demand on the generation thread (so never two loads at once), with at most `model.max_loaded` models in memory;
the least recently used is dropped first and its memory given back."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec
import torch

from sdapi.config import Config
from sdapi.core.params import GenerationParams
from sdapi.engines import Engine, EngineDescription, Run, RunResult, for_model
from sdapi.errors import ModelLoadFailed
from sdapi.observability import metrics

logger = logging.getLogger(__name__)

# Builds the (not yet loaded) engine of a model, by name.
EngineMaker = Callable[[str], Engine]


def default_max_loaded(device: str) -> int:
    """One model at a time on a CPU (system memory is shared with everything else), two on a GPU."""
    return 1 if device == "cpu" else 2


class ModelPool:
    """An Engine over several models. Not thread-safe: the worker calls load/generate from its one generation thread;
    check/describe may come from the event loop and only read."""

    def __init__(self, config: Config, make: EngineMaker, device: str) -> None:
        self._config = config
        self._make = make
        self._names = [entry.name for entry in config.model_entries]
        self.default = config.default_model.name
        self.max_loaded = config.model.max_loaded or default_max_loaded(device)
        self._idle: dict[str, Engine] = {self.default: make(self.default)}  # built, not loaded
        self._loaded: OrderedDict[str, Engine] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards the two maps for readers on other threads
        self.loads = 0  # how many loads this pool has done (benchmarks and tests count them)

    # -- Engine protocol -----------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._engine_of(self.default).name

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded: the worker can serve (other models load when a request needs them)."""
        with self._lock:
            return bool(self._loaded)

    def load(self) -> None:
        """Load the default model (start-up)."""
        self._ensure(self.default)

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._engine_of(self.default).adapter_shapes()

    def describe(self) -> EngineDescription:
        details = self._engine_of(self.default).describe()
        return msgspec.structs.replace(details, models_loaded=tuple(self.loaded_models()))

    def check(self, params: GenerationParams) -> None:
        engine = self._engine_of(params.model or self.default)
        engine.check(params)

    def generate(self, run: Run) -> RunResult:
        name = run.params.model or self.default
        return for_model(self._ensure(name).generate(run), name)

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        name = runs[0].params.model or self.default  # one model per batch: it is part of the batch key
        return [
            None if result is None else for_model(result, name) for result in self._ensure(name).generate_batch(runs)
        ]

    # -- the pool ------------------------------------------------------------------------------------------------

    @property
    def loads_on_demand(self) -> bool:
        return True

    def prepare(self, name: str) -> None:
        """Load model `name` now if it is not loaded (on the generation thread, between tasks)."""
        self._ensure(name)

    def loaded_models(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def _engine_of(self, name: str) -> Engine:
        with self._lock:
            engine = self._loaded.get(name) or self._idle.get(name)
        if engine is None:
            if name not in self._names:
                raise ModelLoadFailed(f"模型不存在：{name}")
            engine = self._make(name)
            with self._lock:
                engine = self._idle.setdefault(name, engine)
        return engine

    def _ensure(self, name: str) -> Engine:
        """The loaded engine of `name`: loading it (after dropping the least recently used beyond max_loaded)."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        while len(self._loaded) >= self.max_loaded:
            self._evict()
        engine = self._engine_of(name)
        began = time.perf_counter()
        try:
            engine.load()
        except Exception:
            metrics.MODEL_LOADS.labels(engine=engine.name, outcome="failed").inc()
            raise
        metrics.MODEL_LOAD_SECONDS.labels(engine=engine.name).observe(time.perf_counter() - began)
        metrics.MODEL_LOADS.labels(engine=engine.name, outcome="loaded").inc()
        self.loads += 1
        with self._lock:
            self._idle.pop(name, None)
            self._loaded[name] = engine
        logger.info("model %s loaded (%d of at most %d loaded)", name, len(self._loaded), self.max_loaded)
        return engine

    def _evict(self) -> None:
        with self._lock:
            name, _engine = self._loaded.popitem(last=False)
        # The pool held the only reference to the engine and its pipelines: collecting now returns the memory
        # before the next model loads (torch's CUDA cache is emptied too, or it would keep the blocks).
        del _engine
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        logger.info("model %s unloaded (least recently used)", name)
