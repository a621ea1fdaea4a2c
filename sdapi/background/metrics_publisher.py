"""Keeps the metrics that describe the whole service (queue depth, live workers) current, and serves the metrics on
metrics.port when one is set. An API node's GET /metrics refreshes them itself on every scrape; a process that
serves them on their own port (a worker has no API) refreshes them every few seconds instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sdapi.background.wakeup import BatchLoop
from sdapi.observability import metrics

REFRESH_SECONDS = 5.0


class MetricsPublisher:
    def __init__(self, host: str, port: int, refresh: Callable[[], Awaitable[None]]) -> None:
        self._host = host
        self._port = port
        self._refresh = refresh
        self._loop = BatchLoop("metrics", REFRESH_SECONDS, self._refresh_once, full=-1)
        self._stop_server: Callable[[], None] | None = None

    async def _refresh_once(self) -> int:
        await self._refresh()
        return 0

    def start(self) -> None:
        self._stop_server = metrics.serve(self._host, self._port)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._stop_server is not None:
            self._stop_server()
