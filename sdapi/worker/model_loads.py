"""The models this worker failed to load: why, when it tries again (with backoff), and which of their tasks it
leaves to other workers. A task of such a model fails with model_not_loaded only when no live worker can load it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdapi.core.nodes import NodeInfo

# A failed model is tried again after these waits, doubling from the first to the last and staying there.
LOAD_RETRY_FIRST_SECONDS = 10.0
LOAD_RETRY_MAX_SECONDS = 600.0


@dataclass(frozen=True)
class FailedLoad:
    message: str
    attempts: int
    retry_at: float  # by `clock`


class FailedLoads:
    """What this worker knows of its failed model loads."""

    def __init__(self, worker_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._worker_id = worker_id
        self._clock = clock
        self._failed: dict[str, FailedLoad] = {}

    def record(self, model: str, message: str) -> None:
        """Loading `model` failed (again): wait longer before the next try."""
        attempts = self._failed[model].attempts + 1 if model in self._failed else 1
        wait = min(LOAD_RETRY_FIRST_SECONDS * 2 ** (attempts - 1), LOAD_RETRY_MAX_SECONDS)
        self._failed[model] = FailedLoad(message, attempts, self._clock() + wait)

    def succeeded(self, model: str) -> None:
        self._failed.pop(model, None)

    def message(self, model: str) -> str | None:
        """Why `model` could not be loaded here, or None when it has not failed."""
        failed = self._failed.get(model)
        return None if failed is None else failed.message

    def retry_due(self, model: str) -> bool:
        failed = self._failed.get(model)
        return failed is not None and self._clock() >= failed.retry_at

    def waiting(self, model: str) -> bool:
        """Whether `model` failed here and its next try is not due yet."""
        return self.message(model) is not None and not self.retry_due(model)

    def failing(self) -> dict[str, str]:
        """Model -> why, for the node registry (/health, GET /api/v1/models)."""
        return {model: failed.message for model, failed in self._failed.items()}

    def any(self) -> bool:
        return bool(self._failed)

    def loadable_elsewhere(self, model: str, live: Sequence[NodeInfo]) -> bool:
        """Whether another live worker may load `model`: it has it loaded, or has not failed to load it."""
        return any(
            node.role.runs_worker and node.id != self._worker_id and model not in node.models_failed for node in live
        )

    def to_skip(self, live: Sequence[NodeInfo]) -> list[str]:
        """The models whose tasks this worker leaves in the queue now: failed here, not yet due for another try,
        and loadable by another live worker."""
        return sorted(model for model in self._failed if self.waiting(model) and self.loadable_elsewhere(model, live))
