"""evaluation.curves: the best split of a budget between difficulty groups (the ceiling the
scaling page reports) and the budget matching it is read against."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ponder.evaluation.curves import best_allocation, matched_budget

GRID = [1, 2, 4, 8, 16]


def test_easy_questions_give_their_budget_to_the_ones_that_use_it() -> None:
    # group 0 is solved by one sample; group 1 climbs with N; group 2 is hopeless
    curves = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [0.1, 0.3, 0.5, 0.7, 0.9], [0.0, 0.0, 0.0, 0.0, 0.05]])
    weights = np.array([0.4, 0.3, 0.3])
    acc, spent, ns = best_allocation(curves, weights, GRID, budget=4)
    # the best split (brute force over every choice, the same budget rule)
    best = max(
        (sum(w * curves[g, GRID.index(n)] for g, (w, n) in enumerate(zip(weights, combo))), -sum(w * n for w, n in zip(weights, combo)), combo)
        for combo in itertools.product(GRID, repeat=3) if sum(w * n for w, n in zip(weights, combo)) <= 4 + 1e-9
    )
    assert acc == pytest.approx(best[0]) and spent == pytest.approx(-best[1]) and tuple(ns) == best[2]
    assert ns[0] == 1 and ns[1] >= 8  # the easy group's budget went to the climbing one
    uniform = float((curves[:, GRID.index(4)] * weights).sum())
    assert acc > uniform and spent <= 4


def test_never_over_budget_and_cheapest_among_equals() -> None:
    flat = np.array([[0.5] * 5, [0.5] * 5])
    acc, spent, ns = best_allocation(flat, np.array([0.5, 0.5]), GRID, budget=16)
    assert acc == pytest.approx(0.5) and ns == [1, 1] and spent == 1.0  # more samples buy nothing: spend none
    with pytest.raises(ValueError, match="must be"):
        best_allocation(flat, np.array([0.5, 0.5]), GRID[:4], budget=16)  # curves wider than the grid


def test_matched_budget_reads_the_monotone_curve_on_a_log_scale() -> None:
    curve = np.array([0.2, 0.4, 0.3, 0.6, 0.6])
    assert matched_budget(curve, GRID, 0.4) == pytest.approx(2.0)
    assert matched_budget(curve, GRID, 0.5) == pytest.approx(math.exp((math.log(4) + math.log(8)) / 2))
    assert matched_budget(curve, GRID, 0.7) == math.inf


def test_the_three_selection_rules_agree_with_the_search_loops() -> None:
    """winner (the pools' selection) picks what workers.answers.select picks in the loop: the
    most votes, the largest score sum, or the single highest score."""
    from ponder.evaluation.curves import vote, winner
    from ponder.workers.answers import Candidate, select

    answers = ["7", "7", "7", "9", "9", "12", None]
    scores = [0.2, 0.2, 0.2, 0.4, 0.4, 0.7, 0.99]
    assert winner(answers, scores, "majority") == "7"  # 3 votes
    assert winner(answers, scores, "weighted") == "9"  # a score sum of 0.8 against 0.6 and 0.7
    assert winner(answers, scores, "best") == "12"  # one sample at 0.7; the unparsed 0.99 does not count
    cands = [Candidate(solution=f"s{i}", answer=a, score=s) for i, (a, s) in enumerate(zip(answers, scores))]
    for rule in ("majority", "weighted", "best"):
        assert winner(answers, scores, rule) == select(cands, rule).answer
        assert vote([{"answer": a, "score": s} for a, s in zip(answers, scores)], selection=rule) == winner(answers, scores, rule)
    # ties: majority breaks a tie in votes by the score sum, best a tie in top score by the sum
    assert winner(["1", "2", "2"], [0.5, 0.3, 0.3], "majority") == "2"
    assert winner(["1", "1", "2"], [0.4, 0.1, 0.4], "best") == "1"
    assert winner(["1", "2"], [0.5, 0.5], "weighted") == "1"  # full tie: the earlier answer
    assert winner([None, None], [0.9, 0.1], "best") is None
    with pytest.raises(ValueError):
        winner(["1"], [1.0], "loudest")
