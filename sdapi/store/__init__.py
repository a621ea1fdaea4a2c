"""The task database, split by concern: tasks (with their leases), the callback outbox, init images, the node
registry and the change feed. All async, so a network database fits behind the same interfaces.

sqlite.py implements them on one SQLite file (the zero-setup default), postgres.py on PostgreSQL (several API nodes
and workers). Both run the same lease-and-fence protocol and pass the same contract tests (tests/store/):

- a worker `claim`s the oldest pending task in one statement: status processing, attempts + 1, a new lease token,
  a lease expiry from the database clock;
- it `renew`s the lease while it works; a reaper (`expired` + `reap`) returns expired leases to pending, or fails
  them when their attempts are spent;
- `settle` writes the outcome only while the lease is still the worker's (`WHERE lease_token = ...`), with the
  callback delivery in the same transaction: a worker that lost its lease writes nothing and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sdapi.core.deliveries import Delivery
from sdapi.core.nodes import NodeInfo
from sdapi.core.tasks import Progress, Task, TaskStatus
from sdapi.previews import Preview

SCHEMA_TOO_NEW = (
    "the {database} schema is at version {found}, newer than this sdapi knows ({known}): "
    "a newer sdapi migrated it. Upgrade this node, or restore a backup taken before the upgrade"
)


@dataclass(frozen=True)
class Lease:
    """A claimed task and the token that fences its writes: only the holder of the current token may settle it."""

    task: Task
    token: str
    # The image keys the run holding it staged before uploading (as expired() reads them): what the reaper deletes.
    staged_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunRequests:
    """What clients asked of a running task, as its worker learns on each progress report: to cancel it, and how
    many times to skip its current image (a count, so that no request is lost between two reports)."""

    cancel: bool = False
    skips: int = 0


NO_REQUESTS = RunRequests()


@dataclass(frozen=True)
class TaskRecord:
    """A task as one read finds it: with its callback delivery, its place in the queue order (`seq`, what list
    cursors hold) and, while pending, how many tasks and how much work (megapixel-steps) are ahead of it (running
    tasks count half their work)."""

    task: Task
    delivery: Delivery | None
    seq: int
    queue_position: int | None = None
    work_ahead: float | None = None


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's Idempotency-Key, scoped to its owner, with the fingerprint of the request it came with."""

    owner: str
    key: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True)
class Admission:
    """What add_once did: admitted the new task, or found the key already used (by `existing_task_id`, for the
    same request or not), or neither (the queue or the owner's limit is full)."""

    admitted: bool
    existing_task_id: str | None = None
    same_request: bool = True


@dataclass(frozen=True)
class DeliveryClaim:
    """A delivery taken by one node for one attempt; `token` fences the write of its outcome."""

    delivery: Delivery
    token: str


class TaskStore(Protocol):
    """Durable storage of tasks. Transitions are decided in sdapi.core.tasks and persisted here under leases, with
    two the store makes itself, each in one statement so that no two nodes can both win it: the claim (pending ->
    processing, attempts + 1, a new lease) and the reaper's return of an expired lease."""

    async def add(
        self, task: Task, init_image: bytes | None, max_pending: int, owner_max_pending: int | None = None
    ) -> bool:
        """Admit a new pending task if fewer than `max_pending` tasks are pending (and, when given, fewer than
        `owner_max_pending` of its owner's), in one atomic step across every node (no count-then-insert race);
        its init image bytes are kept apart from the task body. Return whether it was admitted. Workers are
        notified."""

    async def add_once(
        self,
        task: Task,
        init_image: bytes | None,
        max_pending: int,
        owner_max_pending: int | None,
        idempotency: IdempotencyKey,
    ) -> Admission:
        """`add`, unless `idempotency.key` of this owner was used within its TTL: then nothing is added and the
        task it made is named. The look-up and the insert are one atomic step."""

    async def get(self, task_id: str) -> Task:
        """The task with this id; raise TaskNotFound."""

    async def read(self, task_id: str) -> TaskRecord:
        """The task with its delivery and queue place in one statement: what every poll of a task needs. Raise
        TaskNotFound."""

    async def list_tasks(
        self, owner: str | None, status: TaskStatus | None, before_seq: int | None, limit: int
    ) -> list[TaskRecord]:
        """Up to `limit` tasks, newest first, older than `before_seq` when given, of `owner` and `status` when
        given."""

    async def states(self, task_ids: list[str]) -> dict[str, str]:
        """A token per task that changes whenever its status, progress or anything else written changes."""

    async def count(self, status: TaskStatus, owner: str | None = None) -> int:
        """How many tasks have `status` (of `owner`, when given)."""

    async def claim(
        self,
        worker_id: str,
        lease_seconds: float,
        loaded: Sequence[str] = (),
        affinity_max_wait: float = 0.0,
        skip: Sequence[str] = (),
    ) -> Lease | None:
        """Take a pending task, or None: processing, one more attempt, a new lease token, expiring `lease_seconds`
        from now by the database clock. The oldest task for one of the `loaded` models (or one that has waited more
        than `affinity_max_wait` seconds) comes first; then the oldest of the rest. No `loaded`: the oldest. Tasks
        of the `skip` models (which this worker cannot load now) are left to other workers."""

    async def claim_companions(self, worker_id: str, lease_seconds: float, first: Task, room: int) -> list[Lease]:
        """Take pending tasks that can share a denoising batch with `first` (a task this worker holds: equal
        sdapi.core.batching keys), oldest first, while their images number at most `room` in all; each under its
        own lease, as claim() takes one. None taken when `first` always runs alone."""

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        """Extend the lease to `lease_seconds` from now; False when it is no longer this lease (reaped)."""

    async def settle(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        """Write `task` (completed, failed, or pending again) if the lease is still current and the task still
        processing; `delivery` is recorded in the same transaction. A finished task's init image is dropped in
        the same write. Return whether it was written: False means the lease was lost and nothing changed."""

    async def stage(self, lease: Lease, keys: Sequence[str]) -> bool:
        """Record, under the lease, the image keys the run is about to upload (settle and reap clear them); False
        when the lease is no longer this one (nothing recorded: the run must not upload)."""

    async def report_progress(self, lease: Lease, progress: Progress) -> RunRequests:
        """Record a running task's progress under its lease; return what clients asked of the run meanwhile
        (nothing when the lease is no longer this one: renew says that)."""

    async def cancel_pending(self, task: Task, cancelled: Task, delivery: Delivery | None) -> bool:
        """End a task that is still pending (`cancelled`, with its delivery in the same transaction); False when
        it is no longer pending (a worker took it, or it ended)."""

    async def request_skip(self, task_id: str) -> bool:
        """Ask the worker running `task_id` to end its current image early and go on (A1111's skip); False when the
        task is not running. Workers are notified as for a cancel."""

    async def request_cancel(self, task_id: str) -> bool:
        """Ask the worker running a processing task to stop it (it sees this on its next progress report);
        False when the task is not processing. Workers are notified."""

    async def sweep(self, older_than_seconds: float, limit: int) -> list[Task]:
        """Delete up to `limit` finished tasks last changed more than `older_than_seconds` ago (by the database
        clock), with their init images, delivery records and idempotency keys, and return them (their images are
        the caller's to delete). One node sweeps at a time: a node that finds another sweeping gets []."""

    async def expired(self, limit: int) -> list[Lease]:
        """Processing tasks whose lease has run out (by the database clock), oldest first."""

    async def reap(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        """`settle` for the reaper: also only while the lease is still expired (a renewal that won the race keeps
        its task)."""


class ThroughputLog(Protocol):
    """Measured generation speed per engine, shared by every node: seconds per megapixel-step, a moving average."""

    async def record(self, engine: str, seconds_per_work: float) -> None:
        """Fold one measurement into the engine's moving average."""

    async def rates(self) -> dict[str, float]:
        """The moving average of each engine measured so far."""


class CallbackOutbox(Protocol):
    """Callback deliveries: written with the task's final state (TaskStore.settle/reap), then claimed, sent and
    recorded by whichever node is free."""

    async def for_task(self, task_id: str) -> Delivery | None:
        """The callback delivery of a task, if it has one."""

    async def redeliver(self, previous: Delivery, delivery: Delivery) -> bool:
        """Replace a task's ended delivery (`previous`: delivered or failed) with a new pending one; False when it
        is still being delivered. Nodes are notified."""

    async def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[DeliveryClaim]:
        """Take up to `limit` pending deliveries due at `now` that no other node holds, soonest first, each under a
        lease of `lease_seconds` (a node that dies mid-POST leaves it to another once the lease runs out)."""

    async def record(self, claim: DeliveryClaim, delivery: Delivery) -> bool:
        """Write a delivery's state after an attempt and release the claim; False if the claim was lost."""

    async def next_due_at(self) -> float | None:
        """When the soonest pending delivery is due, or None."""


class InitImageStore(Protocol):
    """The raw init images of image-to-image tasks (written by TaskStore.add, dropped when the task ends)."""

    async def get(self, task_id: str) -> bytes | None:
        """The init image bytes of a task, None when it has none; raise TaskNotFound."""


class PreviewStore(Protocol):
    """The latest live preview of each running task, for readers in other processes (sdapi.previews.board):
    transient, replaced in place, never part of a task."""

    async def put(self, task_id: str, preview: Preview, keep_seconds: float) -> None:
        """Replace the task's preview with `preview`; drop previews older than `keep_seconds` (any task's)."""

    async def get(self, task_id: str, keep_seconds: float) -> Preview | None:
        """The task's preview if one was posted within `keep_seconds`."""

    async def delete(self, task_id: str) -> None:
        """Drop the task's preview (its run ended)."""


class NodeRegistry(Protocol):
    """Which sdapi processes are alive: each writes its entry on a heartbeat."""

    async def beat(self, node: NodeInfo) -> None:
        """Write `node`'s entry, stamped with the database clock."""

    async def live(self, within_seconds: float) -> list[NodeInfo]:
        """Entries whose last heartbeat is at most `within_seconds` old, oldest node first."""

    async def leave(self, node_id: str) -> None:
        """Remove a node's entry (a clean shutdown)."""


class ChangeFeed(Protocol):
    """Wake-ups from other processes: a task was added (or returned to pending), a delivery was recorded, a running
    task was asked to cancel."""

    async def start(
        self, on_task: Callable[[], None], on_delivery: Callable[[], None], on_cancel: Callable[[], None]
    ) -> None:
        """Call the matching function on the event loop when another process announces one (best effort: the
        loops still poll)."""

    async def stop(self) -> None:
        """Stop listening."""


class Database(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations); raise TaskStoreError."""

    async def close(self) -> None:
        """Release the database."""


class NoChangeFeed:
    """For a store without notifications (SQLite): the loops' one-second poll is the only wake-up from other
    processes, and in one process the submit path nudges the worker directly."""

    async def start(
        self, on_task: Callable[[], None], on_delivery: Callable[[], None], on_cancel: Callable[[], None]
    ) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass(frozen=True)
class Stores:
    """The stores of one database, and the handle that opens and closes it."""

    tasks: TaskStore
    outbox: CallbackOutbox
    init_images: InitImageStore
    nodes: NodeRegistry
    throughput: ThroughputLog
    feed: ChangeFeed
    previews: PreviewStore
    database: Database
