"""The task watch misses no change: not one landing between a request's read and the watcher's first look at the
task (a fast task ending on another node: the SSE hang of issue 46), and not one landing between two waits."""

from __future__ import annotations

import asyncio

from sdapi.service.watch import TaskWatch


class StateTokens:
    """The one store call the watch makes, over tokens a test sets as another process's writes would."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.reads = 0

    async def states(self, task_ids: list[str]) -> dict[str, str]:
        self.reads += 1
        return {task_id: self.tokens[task_id] for task_id in task_ids if task_id in self.tokens}


async def _until_read(store: StateTokens, reads: int) -> None:
    """Wait until the watcher has read the states `reads` times in all (generous: a busy machine is slow)."""
    async with asyncio.timeout(30):
        while store.reads < reads:
            await asyncio.sleep(0.01)


def test_a_change_before_the_watchers_first_look_wakes_the_request():
    async def scenario() -> None:
        store = StateTokens({"t": "processing"})
        watch = TaskWatch(store)  # type: ignore[arg-type]  # only states() is called
        async with watch.watching("t") as next_change:
            # The request has read "processing"; the task ends on another node before the watcher first looks.
            store.tokens["t"] = "completed"
            assert await next_change(30.0)
        await watch.stop()

    asyncio.run(scenario())


def test_a_change_between_two_waits_is_not_lost_and_a_quiet_wait_says_so():
    async def scenario() -> None:
        store = StateTokens({"t": "progress 1"})
        watch = TaskWatch(store)  # type: ignore[arg-type]
        async with watch.watching("t") as next_change:
            assert await next_change(30.0)  # the watcher's first look
            reads = store.reads
            await _until_read(store, reads + 1)
            assert not await next_change(0.0)  # nothing changed since
            # The request is busy elsewhere (sending an event) while the task moves on: the change waits for it.
            store.tokens["t"] = "progress 2"
            await _until_read(store, store.reads + 2)
            assert await next_change(0.0)
            assert not await next_change(0.0)  # consumed
        await watch.stop()

    asyncio.run(scenario())


def test_a_change_made_in_this_process_wakes_at_once():
    async def scenario() -> None:
        store = StateTokens({"t": "pending"})
        watch = TaskWatch(store)  # type: ignore[arg-type]
        async with watch.watching("t") as next_change:
            await _until_read(store, 1)
            await next_change(0.0)  # the first look's wake, if it came
            watch.changed("t")
            assert await next_change(0.0)
        await watch.stop()

    asyncio.run(scenario())
