"""The claim order, as the in-memory store runs it (the SQL stores are held to the same cases by the contract
suite's claim tests)."""

from __future__ import annotations

from sdapi.core.claims import Queued, claim_order

NOW = 1_000_000.0
QUEUE = [
    Queued("old-xl", "xl", NOW - 10),
    Queued("legacy", None, NOW - 9),
    Queued("base", "base", NOW - 8),
    Queued("new-xl", "xl", NOW - 1),
]


def test_without_loaded_models_the_queue_order_holds():
    assert claim_order(QUEUE, [], 0.0, [], NOW) == ["old-xl", "legacy", "base", "new-xl"]


def test_loaded_models_first_then_the_rest_oldest_first_in_each():
    assert claim_order(QUEUE, ["base"], 3600.0, [], NOW) == ["legacy", "base", "old-xl", "new-xl"]


def test_a_task_that_waited_past_affinity_max_wait_is_not_held_back():
    assert claim_order(QUEUE, ["base"], 5.0, [], NOW) == ["old-xl", "legacy", "base", "new-xl"]


def test_skipped_models_are_left_to_other_workers_but_legacy_tasks_never_are():
    assert claim_order(QUEUE, [], 0.0, ["xl", "base"], NOW) == ["legacy"]
