"""Writing to the task store until it answers: a worker settling a run and a node recording a callback attempt
hold an outcome that must not be lost (or repeated) because the database is briefly down, so they retry the write
with doubling waits instead of giving up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sdapi.errors import SdapiError


async def until_written(
    write: Callable[[], Awaitable[bool]], what: str, first_wait: float, longest_wait: float, log: logging.Logger
) -> bool:
    """`write()`, retried while the task store fails: waits double from `first_wait` to `longest_wait` and stay there,
    until it answers (its own True or False: a lost lease or claim) or the caller is cancelled. Each failure is
    logged on the caller's `log` (operators filter on its name), naming `what` was being written."""
    wait = first_wait
    while True:
        try:
            return await write()
        except SdapiError as error:
            log.error("%s failed, retrying in %.1fs: %s", what, wait, error.message)
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest_wait)
