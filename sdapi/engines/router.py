"""Routing each request to a preferred engine (the ONNX export) or a fallback engine (torch), per request.

A request the preferred engine cannot serve (its `check` refuses it: another LoRA set than the export's merged
one, a size the traced graph cannot take) runs on the fallback, loaded lazily the first time it is needed. The
router knows engines only through the Engine protocol, so a third engine needs no change here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from sdapi.core.params import GenerationParams
from sdapi.engines import Engine, EngineDescription, Run, RunResult
from sdapi.errors import GenerationFailed, InvalidParameter

logger = logging.getLogger(__name__)

T = TypeVar("T")


def can_serve(engine: Engine, params: GenerationParams) -> bool:
    """Whether `engine.check` accepts `params`."""
    try:
        engine.check(params)
    except InvalidParameter:
        return False
    return True


class EngineRouter:
    """An Engine that sends each request to `preferred` when it can and should, else to the fallback.

    `make_fallback` None: the preferred engine alone (model.engine: onnx); what it cannot serve is refused at
    submit. `prefer` False: the fallback takes every request (measured faster on this machine).
    `fallback_on_failure`: a run that fails on the preferred engine runs again on the fallback.
    """

    def __init__(
        self,
        preferred: Engine,
        make_fallback: Callable[[], Engine] | None,
        *,
        prefer: bool = True,
        fallback_on_failure: bool = False,
    ) -> None:
        self.preferred = preferred
        self._make_fallback = make_fallback
        self._fallback: Engine | None = None
        self._fallback_lock = threading.Lock()
        self._prefer = prefer
        self._fallback_on_failure = fallback_on_failure and make_fallback is not None
        self.name = preferred.name if make_fallback is None else "auto"

    @property
    def loaded(self) -> bool:
        return self.preferred.loaded

    def load(self) -> None:
        self.preferred.load()

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.preferred.adapter_shapes()

    def describe(self) -> EngineDescription:
        return self.preferred.describe()

    def check(self, params: GenerationParams) -> None:
        """With a fallback every request can run somewhere; without one, the preferred engine's refusal stands."""
        if self._make_fallback is not None:
            return
        try:
            self.preferred.check(params)
        except InvalidParameter as refused:
            hint = f"（其他组合或尺寸需要 model.engine: auto 或 torch，当前为 {self.name}）"
            raise InvalidParameter(refused.field, refused.message + hint) from None

    def routes_to_preferred(self, params: GenerationParams) -> bool:
        return self._make_fallback is None or (self._prefer and can_serve(self.preferred, params))

    def _fallback_engine(self) -> Engine:
        assert self._make_fallback is not None
        with self._fallback_lock:
            if self._fallback is None:
                engine = self._make_fallback()
                logger.info("loading the %s engine for a request %s does not serve", engine.name, self.preferred.name)
                engine.load()
                self._fallback = engine
            return self._fallback

    def generate(self, run: Run) -> RunResult:
        return self._routed(run.params, lambda engine: engine.generate(run))

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        """Routed as the first run is: the runs share everything routing looks at (their batch key)."""
        return self._routed(runs[0].params, lambda engine: engine.generate_batch(runs))

    def _routed(self, params: GenerationParams, run: Callable[[Engine], T]) -> T:
        """`run` on the engine `params` go to; on the fallback too when it fails there and fallback_on_failure."""
        if not self.routes_to_preferred(params):
            return run(self._fallback_engine())
        try:
            return run(self.preferred)
        except GenerationFailed as error:
            if not self._fallback_on_failure:
                raise
            logger.warning("%s run failed (%s); running the task on the fallback", self.preferred.name, error.message)
            return run(self._fallback_engine())
