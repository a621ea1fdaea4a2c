"""The wired parts of one running service, as create_app builds them."""

from __future__ import annotations

from dataclasses import dataclass

from sdapi.callbacks.sender import CallbackSender
from sdapi.config import Config
from sdapi.engines import Engine
from sdapi.loras import LoraLibrary
from sdapi.service import TaskService
from sdapi.storage import ImageStorage
from sdapi.store import TaskStore
from sdapi.worker import Worker


@dataclass
class Runtime:
    config: Config
    store: TaskStore
    storage: ImageStorage
    engine: Engine
    worker: Worker
    service: TaskService
    callbacks: CallbackSender
    library: LoraLibrary
