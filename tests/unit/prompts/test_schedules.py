"""A1111's prompt editing and alternation (sdapi.prompts.schedules), as its wiki states them."""

from __future__ import annotations

import pytest

from sdapi.prompts.schedules import prompt_schedule, text_at


@pytest.mark.parametrize(
    "text, steps, expected",
    [
        ("a [red:blue:0.5] ball", 20, [(10, "a red ball"), (20, "a blue ball")]),  # a fraction of the steps
        ("a [red:blue:5] ball", 20, [(5, "a red ball"), (20, "a blue ball")]),  # a step number
        ("a [blue:0.25] ball", 8, [(2, "a  ball"), (8, "a blue ball")]),  # added from then on
        ("a [hat::0.5] man", 4, [(2, "a hat man"), (4, "a  man")]),  # removed then
        ("a [cat|dog] x", 4, [(1, "a cat x"), (2, "a dog x"), (3, "a cat x"), (4, "a dog x")]),
        ("[a [b:c:0.5]:d:0.75]", 8, [(4, "a b"), (6, "a c"), (8, "d")]),  # nested
        ("a (red:1.2) [blurry] ball", 20, [(20, "a (red:1.2) [blurry] ball")]),  # emphasis stays for later
        ("a [x:y:30] b", 20, [(20, "a x b")]),  # past the last step: never switches
        ("unclosed [a:b", 8, [(8, "unclosed [a:b")]),
        ("a \\\\[b:c:0.5\\\\]", 8, [(8, "a \\\\[b:c:0.5\\\\]")]),  # escaped: text
    ],
)
def test_schedules(text, steps, expected):
    assert prompt_schedule(text, steps) == expected


def test_each_step_takes_the_first_entry_that_lasts_to_it():
    schedule = [(10, "red"), (20, "blue")]
    assert [text_at(schedule, step) for step in (0, 10, 11, 19)] == [0, 0, 1, 1]


def test_hostile_nesting_is_read_in_linear_time_or_refused():
    """Without memory of what each bracket read, every level of unclosed or emphasis nesting doubled the work (40
    levels: hours on the event loop)."""
    import time

    from sdapi.prompts import PromptSyntaxError
    from sdapi.prompts.schedules import MAX_NESTING, check_prompt

    started = time.monotonic()
    for text in ("[" * MAX_NESTING + "a", "[" * MAX_NESTING + "a" + "]" * MAX_NESTING, "[x]" * 3000):
        check_prompt(text, 20)
    assert time.monotonic() - started < 5.0  # milliseconds on any machine; the doubling took hours
    for text in ("[" * (MAX_NESTING + 1) + "a", "(a:1.2.3)", "(a:" + "9" * 400 + ")", "[(a:.):b:0.5]"):
        with pytest.raises(PromptSyntaxError):
            check_prompt(text, 20)
