"""Answer extraction, math-verify equivalence and the three selection modes."""

from __future__ import annotations

import pytest

from ponder.workers.answers import Candidate, equivalent, extract_answer, is_correct, select


@pytest.mark.parametrize(
    "text,expected",
    [
        ("First 2+3=5.\n\nSo the total is \\boxed{5}.", "5"),
        ("nested \\boxed{\\frac{1}{2}} here", "\\frac{1}{2}"),
        ("two boxes \\boxed{1} then \\boxed{x^{2}+1}", "x^{2}+1"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("The answer is 42.", "42"),
        ("The answer is 42. So we are done.", "42"),
        ("the answer is: 7\nmore text", "7"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The answer is 3.5 apples.", "3.5"),
        ("So the answer is 1,000 dollars", "1000"),
        ("The answer is 180 + 420 = 600 meters.", "600"),
        ("The answer is x = 5.", "5"),
        ("The answer is yes", "yes"),
    ],
)
def test_extract(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_extract_none_and_lenient() -> None:
    assert extract_answer("I think it is 5 and then 6") is None
    assert extract_answer("I think it is 5 and then 6", lenient=True) == "6"
    assert extract_answer("cut off \\boxed{12") is None  # unbalanced braces: no answer
    assert extract_answer("") is None
    prose = "The answer is the step in the problem where you do not know how many"
    assert extract_answer(prose) is None
    assert extract_answer("We had 12 eggs.\n" + prose, lenient=True) == "12"


@pytest.mark.parametrize(
    "a,b",
    [("1/2", "0.5"), ("0.5", "\\frac{1}{2}"), ("\\frac12", "1/2"), ("\\dfrac{1}{2}", "0.5"),
     ("1234", "1,234"), ("42", "42.0"), ("x^2+1", "1+x^2"), ("50\\%", "50")],
)
def test_equivalent(a: str, b: str) -> None:
    assert equivalent(a, b)
    assert equivalent(b, a)


@pytest.mark.parametrize("a,b", [("3", "4"), ("0.5", "1/3"), ("x^2", "x^3")])
def test_not_equivalent(a: str, b: str) -> None:
    assert not equivalent(a, b)


@pytest.mark.parametrize("a,b", [("277", "13"), ("7", "007"), ("+5", "5"), ("0", "-0"), ("12", "-12"), ("10", "10.0"),
                                 ("1000", "1,000"), ("3", "3.0000001")])
def test_plain_integers_agree_with_math_verify(a: str, b: str) -> None:
    """Two plain integers are compared by value without math-verify; the verdict is its verdict."""
    from math_verify import parse, verify

    assert equivalent(a, b) == bool(verify(parse(f"${a}$"), parse(f"${b}$")))


def test_is_correct() -> None:
    assert is_correct("0.5", "\\frac{1}{2}")
    assert not is_correct(None, "1")
    assert not is_correct("2", "1")


def _c(answer: str | None, score: float | None = None) -> Candidate:
    return Candidate(answer=answer, solution=f"sol {answer} {score}", score=score)


def test_majority_groups_equivalent_answers() -> None:
    cands = [_c("1/2"), _c("3"), _c("0.5"), _c("\\frac{1}{2}"), _c("3")]
    sel = select(cands, "majority")
    assert equivalent(sel.answer, "0.5")
    assert sel.votes[0].count == 3


def test_weighted_beats_majority_when_scores_say_so() -> None:
    # "7" has 3 votes with small scores (sum 0.6); "9" has 2 votes with large scores (sum 1.8).
    cands = [_c("7", 0.2), _c("9", 0.9), _c("7", 0.2), _c("9", 0.9), _c("7", 0.2)]
    assert select(cands, "majority").answer == "7"
    weighted = select(cands, "weighted")
    assert weighted.answer == "9"
    assert {v.answer: v.score for v in weighted.votes} == pytest.approx({"7": 0.6, "9": 1.8})


def test_best_picks_single_highest_score() -> None:
    cands = [_c("7", 0.5), _c("7", 0.5), _c("7", 0.5), _c("8", 0.95)]
    sel = select(cands, "best")
    assert sel.answer == "8" and sel.winner is cands[3]


def test_select_without_answers_and_bad_mode() -> None:
    sel = select([_c(None, 0.1), _c(None, 0.7)], "weighted")
    assert sel.answer == "" and sel.winner is not None and sel.winner.score == 0.7
    assert select([], "majority").answer == ""
    with pytest.raises(ValueError):
        select([_c("1")], "median")
