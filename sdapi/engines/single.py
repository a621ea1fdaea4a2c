"""One engine serving one model, as the worker's engine: what tests and tools pass to build_runtime in place of the
configured pool. It never loads another model."""

from __future__ import annotations

import msgspec

from sdapi.core.params import GenerationParams
from sdapi.engines import Engine, EngineDescription, Run, RunResult, for_model
from sdapi.errors import ModelLoadFailed


class SingleModelEngine:
    """`engine`, serving the model named `model` and no other."""

    def __init__(self, engine: Engine, model: str) -> None:
        self._engine = engine
        self._model = model

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def loaded(self) -> bool:
        return self._engine.loaded

    @property
    def loads_on_demand(self) -> bool:
        return False

    def load(self) -> None:
        self._engine.load()

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._engine.adapter_shapes()

    def describe(self) -> EngineDescription:
        return msgspec.structs.replace(self._engine.describe(), models_loaded=tuple(self.loaded_models()))

    def check(self, params: GenerationParams) -> None:
        self._engine.check(params)

    def generate(self, run: Run) -> RunResult:
        return for_model(self._engine.generate(run), self._model)

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        return [
            None if result is None else for_model(result, self._model) for result in self._engine.generate_batch(runs)
        ]

    def loaded_models(self) -> list[str]:
        return [self._model] if self._engine.loaded else []

    def prepare(self, model: str) -> None:
        if model != self._model:
            raise ModelLoadFailed(f"模型加载失败：此引擎只提供模型 {self._model}，不能加载 {model}")
        if not self._engine.loaded:
            self._engine.load()
