"""The task state machine: allowed transitions, terminal states, timestamps, attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sdapi.core import tasks
from sdapi.core.tasks import TaskStatus
from sdapi.errors import InvalidTransition
from tests.support.factories import make_params

PARAMS = make_params(prompt="p", width=64, height=64, num_images=2, num_inference_steps=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_happy_path_stamps_updated_at_and_counts_attempts():
    task = tasks.create(PARAMS, now=T0)
    assert task.status is TaskStatus.PENDING and task.created_at == task.updated_at == T0
    started = tasks.start(task, now=T0 + timedelta(seconds=1))
    assert started.status is TaskStatus.PROCESSING and started.attempts == 1
    done = tasks.complete(started, ["a.png", "b.png"], "torch", now=T0 + timedelta(seconds=2))
    assert done.status is TaskStatus.COMPLETED
    assert done.result_keys == ("a.png", "b.png") and done.engine == "torch"
    assert done.updated_at == T0 + timedelta(seconds=2) and done.created_at == T0


def test_complete_needs_every_image():
    started = tasks.start(tasks.create(PARAMS))
    with pytest.raises(InvalidTransition):
        tasks.complete(started, ["only-one.png"], "torch")


@pytest.mark.parametrize("finish", [lambda t: tasks.complete(t, ["a", "b"], "torch"), lambda t: tasks.fail(t, "x")])
def test_finished_tasks_never_change_again(finish):
    finished = finish(tasks.start(tasks.create(PARAMS)))
    for move in (tasks.start, lambda t: tasks.fail(t, "y"), tasks.retry, lambda t: tasks.complete(t, ["a", "b"], "t")):
        with pytest.raises(InvalidTransition):
            move(finished)


def test_recover_interrupted_retries_then_fails_when_out_of_attempts():
    running = tasks.start(tasks.create(PARAMS))
    again = tasks.recover_interrupted(running, max_attempts=2)
    assert again.status is TaskStatus.PENDING and again.attempts == 1
    second_run = tasks.start(again)
    failed = tasks.recover_interrupted(second_run, max_attempts=2)
    assert failed.status is TaskStatus.FAILED
    assert "2" in failed.error_message


def test_a_clean_shutdown_gives_the_attempt_back():
    running = tasks.start(tasks.create(PARAMS))
    assert tasks.retry(running, count_attempt=False).attempts == 0


class TaskLifecycle(RuleBasedStateMachine):
    """Any sequence of transition attempts keeps the machine's rules."""

    def __init__(self):
        super().__init__()
        self.task = tasks.create(PARAMS)
        self.finished_as = None

    def _try(self, move):
        before = self.task
        try:
            self.task = move(self.task)
        except InvalidTransition:
            assert self.task == before
            return
        assert self.task.updated_at >= before.updated_at
        assert before.status.is_terminal is False

    @rule()
    def start(self):
        self._try(tasks.start)

    @rule()
    def complete(self):
        self._try(lambda t: tasks.complete(t, ["a", "b"], "torch"))

    @rule(message=st.text(min_size=1, max_size=5))
    def fail(self, message):
        self._try(lambda t: tasks.fail(t, message))

    @rule(count=st.booleans())
    def retry(self, count):
        self._try(lambda t: tasks.retry(t, count_attempt=count))

    @invariant()
    def terminal_states_stick(self):
        if self.finished_as is not None:
            assert self.task.status is self.finished_as
        elif self.task.status.is_terminal:
            self.finished_as = self.task.status

    @invariant()
    def results_only_when_completed(self):
        assert bool(self.task.result_keys) == (self.task.status is TaskStatus.COMPLETED)
        assert (self.task.error_message is not None) == (self.task.status is TaskStatus.FAILED)
        assert self.task.attempts >= 0


TestTaskLifecycle = TaskLifecycle.TestCase
