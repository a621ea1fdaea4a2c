"""The callback sender: delivers recorded deliveries from the outbox with retries, signing and the SSRF policy.

It runs on the event loop of every node that serves HTTP and never holds up generation. Deliveries live in the
task store, so a restart resumes them with the same id. Each node claims the deliveries it sends under a short
lease (one POST's worth): one attempt is in flight per delivery at a time, across all nodes, and a node killed
mid-POST leaves the delivery to another once the claim runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec

from sdapi import __version__
from sdapi.background.retries import until_written
from sdapi.background.wakeup import Wakeup
from sdapi.callbacks.signing import signature_headers
from sdapi.callbacks.ssrf import CallbackPolicy, CallbackRefused, Resolver, resolve_target, system_resolver
from sdapi.config import CallbacksConfig
from sdapi.core.deliveries import Delivery, DeliveryStatus, after_attempt
from sdapi.core.results import iso, public_base_url, result_urls
from sdapi.core.tasks import Task, TaskStatus
from sdapi.errors import SdapiError
from sdapi.observability import metrics, tracing
from sdapi.observability.logs import set_request_id, task_context
from sdapi.storage import ImageStorage
from sdapi.store import CallbackOutbox, DeliveryClaim, TaskStore

logger = logging.getLogger(__name__)

# How long the idle sender sleeps at most before looking at the outbox again.
IDLE_POLL_SECONDS = 1.0
# A claim lasts one attempt (resolving the host, then the POST's timeout) plus this margin.
CLAIM_MARGIN_SECONDS = 1.0
# Recording an attempt's outcome is retried while the task store fails: waits double from the first to the last
# value and stay there until the store answers or the sender stops. Short, because the claim lapses meanwhile and
# the sooner the record is written once the database is back, the smaller the window for another node to claim the
# delivery and send it again.
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 1.0


def callback_body(task: Task, storage: ImageStorage, base_url: str | None) -> dict[str, Any]:
    """What the contract's receiver example reads (task_id, status, image_url | image_urls, error_message),
    with the rest of the task body riding along."""
    result_url, urls = result_urls(task, storage, base_url)
    body: dict[str, Any] = {"task_id": task.id, "status": task.status.value}
    if task.status is TaskStatus.COMPLETED:
        if result_url is not None:
            body["image_url"] = result_url
        else:
            body["image_urls"] = urls
    body.update(
        error_message=task.error_message,
        error_code=None if task.error_code is None else task.error_code.value,
        result_url=result_url,
        result_urls=urls,
        created_at=iso(task.created_at),
        updated_at=iso(task.updated_at),
        seed=task.params.seed,
        num_images=task.params.num_images,
        engine=task.engine,
    )
    return body


class DeliveryAttemptFailed(Exception):
    """One POST did not deliver; `retryable` says whether another try may."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@contextlib.contextmanager
def _transport_errors(timeout: float) -> Iterator[None]:
    """The one map from httpx's exceptions to a failed attempt: every transport failure is worth retrying."""
    try:
        yield
    except httpx.TimeoutException:
        raise DeliveryAttemptFailed(f"timed out after {timeout:g}s", retryable=True) from None
    except httpx.HTTPError as error:
        raise DeliveryAttemptFailed(f"{type(error).__name__}: {error}", retryable=True) from None


class CallbackSender:
    """Sends due deliveries, at most `max_concurrent` at a time, and records each outcome."""

    def __init__(
        self,
        config: CallbacksConfig,
        task_store: TaskStore,
        outbox: CallbackOutbox,
        storage: ImageStorage,
        public_base_url: str | None,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._tasks = task_store
        self._outbox = outbox
        self._storage = storage
        self._public_base_url = public_base_url
        self._resolver = resolver
        self._clock = clock
        self.policy = CallbackPolicy.from_config(config)
        self._wakeup = Wakeup()
        self._claim_seconds = config.resolve_timeout + config.timeout + CLAIM_MARGIN_SECONDS
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        # No redirects: a 3xx could point anywhere, past the address check.
        self._client = httpx.AsyncClient(timeout=self._config.timeout, follow_redirects=False, trust_env=False)
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="sdapi-callbacks")

    def wake(self) -> None:
        """A delivery was recorded: look at the outbox now."""
        self._wakeup.nudge()

    async def stop(self) -> None:
        """Stop sending. Deliveries cut short stay pending and are sent again after the restart, same id."""
        tasks = [task for task in (self._loop_task, *self._in_flight.values()) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._start_due()
                next_at = await self._outbox.next_due_at()
            except SdapiError as error:
                logger.error("callback sender: reading the outbox failed: %s", error.message)
                next_at = None
            wait = IDLE_POLL_SECONDS if next_at is None else min(IDLE_POLL_SECONDS, max(0.0, next_at - self._clock()))
            await self._wakeup.sleep(max(wait, 0.01))

    async def _start_due(self) -> None:
        room = self._config.max_concurrent - len(self._in_flight)
        if room <= 0:
            return
        for claim in await self._outbox.claim_due(self._clock(), room, self._claim_seconds):
            if claim.delivery.id in self._in_flight:  # still being sent here: the old claim ran out mid-POST
                continue
            task = asyncio.get_running_loop().create_task(self._attempt(claim))
            self._in_flight[claim.delivery.id] = task
            task.add_done_callback(functools.partial(self._finished, claim.delivery.id))

    def _finished(self, delivery_id: str, _: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)
        self._wakeup.nudge()

    async def _attempt(self, claim: DeliveryClaim) -> None:
        with task_context(
            claim.delivery.task_id, traceparent=claim.delivery.traceparent
        ):  # _post adds the id of the request that created the task
            await self._attempt_in_context(claim)

    async def _attempt_in_context(self, claim: DeliveryClaim) -> None:
        delivery = claim.delivery
        began, attempt_began = time.perf_counter(), time.time()
        try:
            delivered, retryable, error, http_status = await self._post(delivery)
        except SdapiError as failure:  # the task store failed: no attempt was made; it stays due
            logger.error("callback %s: reading task %s failed: %s", delivery.id, delivery.task_id, failure.message)
            await asyncio.sleep(IDLE_POLL_SECONDS)  # not in a tight loop against a failing store
            return
        updated = after_attempt(
            delivery,
            delivered=delivered,
            retryable=retryable,
            error=error,
            now=self._clock(),
            max_attempts=self._config.max_attempts,
            backoff_base=self._config.backoff_base,
            http_status=http_status,
            duration_ms=round((time.perf_counter() - began) * 1000, 1),
        )
        metrics.CALLBACK_ATTEMPT_SECONDS.observe(time.perf_counter() - began)
        outcome = "delivered" if delivered else "failed" if updated.status is DeliveryStatus.FAILED else "retry"
        tracing.record(
            "sdapi.callback",
            delivery.traceparent,
            attempt_began,
            time.time(),
            attempt=updated.attempts,
            outcome=outcome,
            http_status=http_status or 0,
        )
        metrics.CALLBACK_ATTEMPTS.labels(outcome=outcome).inc()
        recorded = await self._record_until_written(claim, updated)
        if not recorded:  # the claim ran out during the POST and another node took the delivery over
            logger.warning("callback %s: claim lost during the attempt; the other node's record stands", delivery.id)
            return
        if updated.status != delivery.status:
            logger.info(
                "callback %s for task %s: %s after %d attempt(s)%s",
                delivery.id,
                delivery.task_id,
                updated.status,
                updated.attempts,
                f" ({error})" if error else "",
            )

    async def _record_until_written(self, claim: DeliveryClaim, updated: Delivery) -> bool:
        """Record an attempt's outcome, retried while the task store fails (RECORD_RETRY_*). The receiver may have
        acknowledged the POST already: the outcome is kept here, and the delivery stays in flight on this node (not
        claimed again here), until it is written, rather than left to its claim running out and being sent again.
        Only a crash (or a stop) before the write can repeat a delivery; receivers still dedupe by webhook-id.
        False: the claim was lost meanwhile (another node took the delivery over)."""
        return await until_written(
            lambda: self._outbox.record(claim, updated),
            f"callback {claim.delivery.id}: recording the attempt ({updated.status})",
            RECORD_RETRY_FIRST_SECONDS,
            RECORD_RETRY_MAX_SECONDS,
            logger,
        )

    async def _post(self, delivery: Delivery) -> tuple[bool, bool, str | None, int | None]:
        """One POST. Returns (delivered, worth retrying, error, the receiver's HTTP status if it answered)."""
        assert self._client is not None
        try:
            task = await self._tasks.get(delivery.task_id)
            set_request_id(task.request_id)
            base_url = public_base_url(self._public_base_url, task.base_url)
            body = msgspec.json.encode(callback_body(task, self._storage, base_url))
            target = await resolve_target(delivery.url, self.policy, self._resolver, self._config.resolve_timeout)
        except CallbackRefused as refused:
            return False, False, refused.message, None
        url = httpx.URL(delivery.url)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"sdapi/{__version__}",
            # Connect to the checked address, but speak to the host the user named.
            "Host": url.netloc.decode("ascii"),
        }
        timestamp = int(self._clock())
        if self._config.secret:
            headers.update(signature_headers(self._config.secret, delivery.id, timestamp, body))
        else:
            # Unsigned, but the id still lets a receiver drop a retry it already processed.
            headers.update({"webhook-id": delivery.id, "webhook-timestamp": str(timestamp)})
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with _transport_errors(self._config.timeout):
                response = await self._client.post(
                    url.copy_with(host=target.address), content=body, headers=headers, extensions=extensions
                )
        except DeliveryAttemptFailed as failed:
            return False, failed.retryable, failed.reason, None
        if 200 <= response.status_code < 300:
            if task.finished_at is not None:
                metrics.CALLBACK_LATENCY.observe(max(0.0, self._clock() - task.finished_at.timestamp()))
            return True, False, None, response.status_code
        retryable = response.status_code == 429 or response.status_code >= 500
        return False, retryable, f"HTTP {response.status_code}", response.status_code
