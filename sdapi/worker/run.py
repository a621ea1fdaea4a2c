"""One claimed task's run, between the event loop and the generation thread: its progress (written by the thread
after every step, reported to the store about once a second), its live previews (drawn by the thread when one is due,
encoded and posted to the preview board by the event loop), its cancel flag (set when a report learns that a client
asked to cancel; the thread stops at its next step), and its lease, renewed every third of queue.lease_seconds until
the outcome is written."""

from __future__ import annotations

import asyncio
import logging
import threading

import msgspec
from PIL import Image

from sdapi.background.wakeup import Signals, Wakeup
from sdapi.core import tasks
from sdapi.core.tasks import Progress
from sdapi.errors import SdapiError, SkipCurrentImage, TaskCancelled
from sdapi.previews.board import PreviewBoard
from sdapi.previews.drawing import draw_current
from sdapi.previews.encoding import encode_preview
from sdapi.store import Lease, TaskStore

logger = logging.getLogger("sdapi.worker")

# How often a running task's progress is written to the store (and a cancel request is looked for).
PROGRESS_SECONDS = 1.0


class TaskRun:
    """The state of one run that the generation thread and the event loop share, and the two loops that keep it
    known to the store while it lasts (start_reporting ... stop_reporting)."""

    def __init__(
        self,
        lease: Lease,
        task_store: TaskStore,
        lease_seconds: float,
        signals: Signals,
        previews: PreviewBoard | None = None,
    ) -> None:
        self.lease = lease
        self.progress = Progress(step=0, total_steps=0, images_done=0, num_images=lease.task.params.num_images)
        self.cancel = threading.Event()
        # How long the engine took (for the queue's estimates); 0 until it has run.
        self.generation_seconds = 0.0
        # The image keys this run recorded on its task before uploading (deleted if the run is given up).
        self.staged_keys: list[str] = []
        self._tasks = task_store
        self._lease_seconds = lease_seconds
        self._signals = signals
        self._wakeup = Wakeup()
        self._loops: list[asyncio.Task[None]] = []
        self._previews = previews
        every = lease.task.params.preview_every_steps
        self._preview_every = 0 if previews is None else (previews.settings.every_steps if every is None else every)
        # The newest drawn preview not yet posted: (step, total steps, picture); the event loop takes it.
        self._drawn: tuple[int, int, Image.Image] | None = None
        self._preview_wakeup = Wakeup()
        self._loop: asyncio.AbstractEventLoop | None = None
        # A1111's skips: how many clients asked for (as the store counts them), and how many the run has made.
        self._skips_requested = 0
        self._skips_made = 0

    @property
    def task_id(self) -> str:
        return self.lease.task.id

    def on_step(self, step: int, total_steps: int, images_done: int) -> None:
        """On the generation thread, after each denoising step: record it; stop here if cancelled; draw the preview
        when one is due; ask the engine to end the current image if a skip was asked for (SkipCurrentImage)."""
        self.progress = msgspec.structs.replace(
            self.progress, step=step, total_steps=total_steps, images_done=images_done
        )
        if self.cancel.is_set():
            raise TaskCancelled(tasks.CANCELLED_MESSAGE)
        if self._preview_every and step % self._preview_every == 0:
            self._draw_preview(step, total_steps)
        if self._skips_made < self._skips_requested:
            self._skips_made = self._skips_requested
            raise SkipCurrentImage()

    def _draw_preview(self, step: int, total_steps: int) -> None:
        """On the generation thread: draw this step's preview and hand it to the event loop (which encodes it)."""
        assert self._previews is not None
        settings = self._previews.settings
        try:
            picture = draw_current(settings.max_side, settings.decoder)
        except Exception:  # a preview is best effort: the run goes on without it
            logger.exception("task %s: drawing the preview of step %d failed", self.task_id, step)
            return
        if picture is None or self._loop is None:
            return
        self._drawn = (step, total_steps, picture)
        self._loop.call_soon_threadsafe(self._preview_wakeup.nudge)

    def generation_done(self) -> None:
        """Every step has run: the progress says so, whatever the engine reported last."""
        total = max(self.progress.total_steps, self.progress.step)
        self.progress = msgspec.structs.replace(
            self.progress, step=total, total_steps=total, images_done=self.progress.num_images
        )

    def report_now(self) -> None:
        """A client asked to cancel a running task: report at once (and learn whether it is this one)."""
        self._wakeup.nudge()

    def start_reporting(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._keep_lease(), name=f"sdapi-lease-{self.task_id}"),
            loop.create_task(self._report_progress(), name=f"sdapi-progress-{self.task_id}"),
        ]
        if self._preview_every:
            self._loops.append(loop.create_task(self._post_previews(), name=f"sdapi-previews-{self.task_id}"))

    async def end_previews(self) -> None:
        """The run's outcome is written: its preview is gone from the board."""
        if self._previews is not None and self._preview_every:
            await self._previews.clear(self.task_id)

    def stop_reporting(self) -> None:
        for running in self._loops:
            running.cancel()

    async def cancel_requested(self) -> bool:
        """Report the progress once more and say whether a cancel was asked for (False while the store is down:
        the run's outcome stands)."""
        try:
            return (await self._tasks.report_progress(self.lease, self.progress)).cancel
        except SdapiError:
            return False

    async def _report_progress(self) -> None:
        """Write the run's progress about once a second (or at once when nudged) and learn from the answer whether
        a client asked to cancel (the generation thread then stops at its next step) or to skip the current image."""
        while True:
            await self._wakeup.sleep(PROGRESS_SECONDS)
            try:
                requests = await self._tasks.report_progress(self.lease, self.progress)
                if requests.cancel:
                    self.cancel.set()
                self._skips_requested = max(self._skips_requested, requests.skips)
                self._signals.task_changed(self.task_id)
            except SdapiError as error:  # progress is best effort; the lease keeper owns the task's fate
                logger.error("task %s: reporting progress failed: %s", self.task_id, error.message)

    async def _post_previews(self) -> None:
        """Encode each drawn preview (off the event loop) and post it; a newer one drawn meanwhile replaces an
        unposted one."""
        assert self._previews is not None
        settings = self._previews.settings
        while True:
            await self._preview_wakeup.sleep(PROGRESS_SECONDS * 60)
            drawn, self._drawn = self._drawn, None
            if drawn is None:
                continue
            step, total_steps, picture = drawn
            preview = await asyncio.to_thread(
                encode_preview, picture, step, total_steps, settings.format, settings.quality
            )
            await self._previews.post(self.task_id, preview)
            self._signals.task_changed(self.task_id)

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its length until cancelled, or until it turns out lost."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not await self._tasks.renew(self.lease, self._lease_seconds):
                    logger.warning(
                        "task %s: lease lost (another worker may run it); its outcome will not count", self.task_id
                    )
                    return
            except SdapiError as error:  # keep trying: the lease may still be ours when the store answers again
                logger.error("task %s: renewing the lease failed: %s", self.task_id, error.message)
