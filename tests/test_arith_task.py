"""The built-in arith task: seeded, splits disjoint, worked solutions grade correct and follow the
order of operations, difficulty knobs do what they say, and the prompt format round-trips
through ponder.json."""

from __future__ import annotations

import random
import re

import pytest

from ponder.workers.answers import extract_answer
from ponder.tasks import arith
from ponder.tasks.arith import Knobs, Mix, make_question, questions, solve, split_of


def test_seeded_and_distinct() -> None:
    a = questions("train", 50, seed=3)
    b = questions("train", 50, seed=3)
    c = questions("train", 50, seed=4)
    assert [q.question for q in a] == [q.question for q in b]
    assert [q.question for q in a] != [q.question for q in c]
    assert len({q.question for q in a}) == 50


def test_splits_never_share_a_question() -> None:
    seen: dict[str, set[str]] = {}
    for split in arith.SPLITS:
        qs = questions(split, 300, seed=0)
        assert all(q.split == split == split_of(q.question) for q in qs)
        seen[split] = {q.question for q in qs}
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    # The split is a function of the text alone: another seed and mix cannot move a question.
    other = questions("test", 200, seed=9, mix=arith.TRAIN_MIX)
    assert all(split_of(q.question) == "test" for q in other)


def _eval(expr: str) -> int:
    assert re.fullmatch(r"[\d\s+\-*()]+", expr)
    return int(eval(expr))  # noqa: S307  (digits, spaces, + - * and parentheses only)


def test_solutions_are_right_and_grade_correct() -> None:
    for q in questions("test", 200, seed=1):
        assert int(q.answer) == _eval(q.expression)
        assert arith.grade(q.solution, q.answer)
        assert not arith.grade(q.solution, str(int(q.answer) + 1))
        assert extract_answer(q.solution) == q.answer
        assert q.steps[-1] == f"The answer is \\boxed{{{q.answer}}}."
        assert len(q.steps) == q.knobs.n_ops + 1
        # Every step is one true operation, and what it restates evaluates to the answer.
        for step in q.steps[:-1]:
            first, *rest = step.split("\n")
            lhs, rhs = first.split(" = ")
            assert _eval(lhs) == int(rhs)
            if rest:
                assert _eval(rest[0]) == int(q.answer)
        assert arith.STEP_DELIMITER not in "".join(q.steps)


def test_order_of_operations() -> None:
    steps, ops = solve([37, "+", 48, "*", 3, "-", 19])
    assert steps == ["48 * 3 = 144\n37 + 144 - 19", "37 + 144 = 181\n181 - 19", "181 - 19 = 162", "The answer is \\boxed{162}."]
    steps, _ = solve([2, "*", "(", 3, "+", 4, "*", 5, ")"])
    assert steps[0] == "4 * 5 = 20\n2 * (3 + 20)"
    assert steps[1] == "3 + 20 = 23\n2 * 23"
    assert steps[-1] == "The answer is \\boxed{46}."


@pytest.mark.parametrize("n_ops", [1, 3, 6])
@pytest.mark.parametrize("digits", [1, 2])
def test_knobs(n_ops: int, digits: int) -> None:
    rng = random.Random(0)
    for parens in ([False, True] if n_ops > 1 else [False]):
        knobs = Knobs(n_ops, digits, parens)
        for _ in range(30):
            q = make_question(knobs, rng)
            numbers = [int(x) for x in re.findall(r"\d+", q.expression)]
            assert len(numbers) == n_ops + 1
            assert max(numbers) < 10**digits
            assert max(numbers) >= (10 ** (digits - 1) if digits > 1 else 1)
            assert ("(" in q.expression) == parens
            assert q.knobs == knobs


def test_mix_limits() -> None:
    rng = random.Random(1)
    mix = Mix(((1.0, Knobs(4, 2)),), max_value=500)
    for _ in range(50):
        q = make_question(Knobs(4, 2), rng, mix)
        _, ops = solve(_tokens(q.expression))
        assert all(0 <= c <= 500 for *_, c in ops)
        assert all(min(a, b) <= 9 for a, op, b, _ in ops if op == "*")
    with pytest.raises(ValueError):
        Knobs(n_ops=1, parens=True)
    with pytest.raises(ValueError):
        arith.questions("dev", 1)


def _tokens(expr: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.findall(r"\d+|[-+*()]", expr)]


def test_prompt_format_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tiny_models import make_tiny_model

    from ponder.workers.models import format_prompt, resolve

    d = make_tiny_model(tmp_path / "m", ponder_json=arith.PromptSpec().ponder_json())
    files = resolve(str(d))
    assert files.fmt.step_delimiter == "\n\n" and not files.fmt.use_chat_template
    assert json.loads((d / "ponder.json").read_text())["prompt_template"] == "{question}\n\n"
    q = questions("test", 1)[0]
    assert format_prompt(None, files.fmt, q.question) == q.question + "\n\n"
    revised = format_prompt(None, files.fmt, q.question, ("a\n\nb", "c"))
    assert revised == f"Attempt 1:\na\n\nb\n\nAttempt 2:\nc\n\nRevise: {q.question}\n\n"
