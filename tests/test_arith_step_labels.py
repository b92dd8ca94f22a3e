"""Exact process labels of the arith task: every step before the first wrong one is good,
every step from it on is bad; checked against the task's own worked solutions and slips made
from them."""

from __future__ import annotations

import random

import pytest

from ponder.tasks import arith


@pytest.fixture(scope="module")
def questions() -> list[arith.Question]:
    return arith.questions("test", 60, seed=11)


def test_worked_solutions_are_all_good(questions: list[arith.Question]) -> None:
    for q in questions:
        assert arith.step_labels(q.steps, q.answer) == [1.0] * len(q.steps)


def _slip(step: str, delta: int) -> str:
    """The same step with its equation's result off by ``delta`` (the remainder restated with
    the wrong value, as the policy's slips look)."""
    first, *rest = step.split("\n")
    lhs, c = first.rsplit("= ", 1)
    wrong = str(int(c) + delta)
    return "\n".join([f"{lhs}= {wrong}", *[line.replace(c, wrong, 1) for line in rest]])


def test_a_slip_makes_its_step_and_every_later_step_bad(questions: list[arith.Question]) -> None:
    rng = random.Random(0)
    checked = 0
    for q in questions:
        work = len(q.steps) - 1  # the last step states the answer
        k = rng.randrange(work)
        steps = list(q.steps)
        steps[k] = _slip(steps[k], rng.choice([-10, -1, 1, 2, 10]))
        labels = arith.step_labels(steps, q.answer)
        assert labels == [1.0] * k + [0.0] * (len(steps) - k), (steps, labels)
        checked += 1
    assert checked == len(questions)


def test_a_wrong_answer_step_is_bad_and_a_right_one_good(questions: list[arith.Question]) -> None:
    q = questions[0]
    wrong = [*q.steps[:-1], f"The answer is \\boxed{{{int(q.answer) + 1}}}."]
    assert arith.step_labels(wrong, q.answer) == [1.0] * (len(q.steps) - 1) + [0.0]
    assert arith.step_valid(q.steps[-1], q.answer)


def test_right_equation_but_wrong_remainder_is_bad() -> None:
    # 48 * 3 = 144 is true, but "37 + 145 - 19" no longer equals the answer 162.
    assert arith.step_valid("48 * 3 = 144\n37 + 144 - 19", "162")
    assert not arith.step_valid("48 * 3 = 144\n37 + 145 - 19", "162")
    # ... and a false equation with a remainder that still evaluates right is bad too.
    assert not arith.step_valid("48 * 3 = 134\n37 + 144 - 19", "162")


@pytest.mark.parametrize(
    "step",
    ["", "garbage", "48 * 3 = ", "2 ** 3 = 8", "48 * 3 = 144\n2 ** 99999999", "1 + 1 = 2\n__import__('os')",
     "1 + 1 = 2\nx\ny", "48 * 3 = 144\n(37 + 144 - 19"],
)
def test_malformed_steps_are_bad_and_never_evaluated_as_code(step: str) -> None:
    assert not arith.step_valid(step, "162")
