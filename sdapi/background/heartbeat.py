"""The node heartbeat: every process writes its registry entry (NodeInfo) every third of queue.lease_seconds, so
/health on any node lists the live workers; an entry older than a lease is no longer listed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sdapi.background.wakeup import Wakeup
from sdapi.core.nodes import NodeInfo
from sdapi.errors import SdapiError
from sdapi.store import NodeRegistry

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, registry: NodeRegistry, lease_seconds: float) -> None:
        self._registry = registry
        self._describe: Callable[[], NodeInfo] | None = None
        self._interval = lease_seconds / 3
        self._wakeup = Wakeup()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self, describe: Callable[[], NodeInfo]) -> None:
        """Beat now and then every third of a lease, each time with what `describe` says."""
        self._describe = describe
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="sdapi-heartbeat")

    def beat_now(self) -> None:
        """Something /health shows changed (the model loaded): write the entry now, not at the next beat."""
        self._wakeup.nudge()

    async def _run(self) -> None:
        assert self._describe is not None
        while True:
            try:
                await self._registry.beat(self._describe())
            except SdapiError as error:
                logger.error("heartbeat: %s", error.message)
            await self._wakeup.sleep(self._interval)

    async def stop(self) -> None:
        """Stop beating and take the entry out (a node that is killed drops out after a lease instead)."""
        if self._loop_task is None or self._describe is None:
            return
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        try:
            await self._registry.leave(self._describe().id)
        except SdapiError as error:
            logger.error("heartbeat: leaving the registry failed: %s", error.message)
