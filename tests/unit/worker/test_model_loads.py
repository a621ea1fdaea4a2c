"""A worker's failed model loads: backoff between tries, and which models' tasks it leaves to other workers."""

from __future__ import annotations

from sdapi.core.nodes import NodeInfo, Role
from sdapi.worker.model_loads import LOAD_RETRY_FIRST_SECONDS, LOAD_RETRY_MAX_SECONDS, FailedLoads


def _node(node_id: str, role: Role = Role.WORKER, failed: dict[str, str] | None = None) -> NodeInfo:
    return NodeInfo(
        id=node_id,
        role=role,
        host="h",
        pid=1,
        started_at="2026-12-01T00:00:00Z",
        storage="local",
        data_dir="/d",
        models_failed=failed or {},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tries_again_after_a_doubling_wait_that_stops_growing():
    clock = Clock()
    loads = FailedLoads("me", clock)
    waits = []
    for _ in range(12):
        loads.record("xl", "模型加载失败：missing")
        start = clock.now
        assert loads.waiting("xl") and not loads.retry_due("xl")
        while not loads.retry_due("xl"):
            clock.now += 1.0
        waits.append(clock.now - start)
    assert waits[0] == LOAD_RETRY_FIRST_SECONDS and waits[1] == 2 * LOAD_RETRY_FIRST_SECONDS
    assert max(waits) == LOAD_RETRY_MAX_SECONDS and waits[-1] == LOAD_RETRY_MAX_SECONDS
    loads.succeeded("xl")
    assert loads.message("xl") is None and not loads.any()


def test_skips_a_failed_model_only_while_another_live_worker_may_load_it():
    loads = FailedLoads("me", Clock())
    loads.record("xl", "broken")
    me = _node("me", failed={"xl": "broken"})
    assert loads.to_skip([me]) == []  # nobody else: its tasks are claimed here and fail, saying why
    assert loads.to_skip([me, _node("api", Role.API)]) == []  # an API node runs no model
    assert loads.to_skip([me, _node("other", failed={"xl": "also broken"})]) == []
    assert loads.to_skip([me, _node("other")]) == ["xl"]
    assert loads.failing() == {"xl": "broken"}
