"""The served models as AUTOMATIC1111 names them (its checkpoints: title, hash, file name), the default first."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request

from sdapi.api.dialects.common import (
    config_of,
    status_of,
)
from sdapi.config import DEFAULT_MODEL_NAME, Config
from sdapi.core.model_sources import model_name
from sdapi.service.status import StatusService


class Checkpoint(msgspec.Struct, frozen=True):
    """A served model as A1111 names it."""

    name: str
    sha256: str | None
    filename: str
    served: str  # its name in sdapi (the native `model`)

    @property
    def title(self) -> str:
        return f"{self.name} [{self.sha256[:10]}]" if self.sha256 else self.name

    def named_by(self, value: object) -> bool:
        """Whether `value` (any JSON a client sent) names this checkpoint: only a string can."""
        if not isinstance(value, str):
            return False
        names = {self.name, self.title, self.filename}
        if self.sha256:
            names |= {self.sha256, self.sha256[:10]}
        return value in names


def listed_checkpoints(config: Config, status: StatusService) -> list[Checkpoint]:
    """The served models, the default first. A single unnamed model (config `model.path`) shows its folder or file
    name, as A1111 shows a checkpoint's; configured ones show their names. Hashing a model's weights the first time
    reads them: call this off the event loop."""
    models = []
    for entry in sorted(config.model_entries, key=lambda entry: not entry.default):
        shown = model_name(entry.path) if entry.name == DEFAULT_MODEL_NAME else entry.name
        models.append(Checkpoint(shown, status.model_sha256(entry.name), entry.path, entry.name))
    return models


async def served_checkpoints(request: Request[Any, Any, Any]) -> list[Checkpoint]:
    return await asyncio.to_thread(listed_checkpoints, config_of(request), status_of(request))


def checkpoint_of(body: dict[str, Any], models: list[Checkpoint]) -> Checkpoint:
    """The model override_settings.sd_model_checkpoint names (A1111's per-request model), else the default."""
    settings = body.get("override_settings")
    wanted = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
    return next((model for model in models if wanted is not None and model.named_by(wanted)), models[0])
