"""Accuracy-against-compute curves from sample pools, and the paper's budget ratio.

Used by the benchmarks that compare strategies (benchmarks/adaptive.py, benchmarks/scaling.py).
A *pool* is one ``ponder eval --out`` record per question with every sample's answer, verifier
score and correctness (best-of-N at the largest budget). Best-of-n at any smaller n is resampled
from it (draw n of the pool's samples, vote), so one pool gives the whole best-of-N curve — the
paper's procedure, and far cheaper than a run per budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ponder.workers.answers import vote_weight


def norm(answer: str | None) -> str | None:
    """The form answers are compared in here (the arith and GSM8K answers are numbers)."""
    return None if answer is None else answer.strip().rstrip(".").replace(" ", "")


def winner(
    answers: Sequence[str | None], scores: Sequence[float | None], selection: str = "weighted", power: float = 1.0
) -> str | None:
    """The answer a selection rule picks among samples (answers compared by :func:`norm`), as
    :func:`ponder.workers.answers.select` does in the search loop: ``weighted`` the largest sum
    of score ** ``power`` (the verifier's vote power), ``majority`` the most samples, ``best``
    the single highest score. Ties go to the larger count (weighted) or score sum, then to the
    earlier answer."""
    if selection not in ("weighted", "majority", "best"):
        raise ValueError(f"unknown selection {selection!r}")
    tot: dict[str, list[float]] = {}  # answer -> [weighted votes, count, best score, score sum]
    for a, s in zip(answers, scores):
        a = norm(a)
        if a is not None:
            s = s or 0.0
            t = tot.setdefault(a, [0.0, 0.0, s, 0.0])
            t[0] += vote_weight(s, power)
            t[1] += 1
            t[2] = max(t[2], s)
            t[3] += s
    if not tot:
        return None
    if selection == "weighted":
        return max(tot.items(), key=lambda kv: (kv[1][0], kv[1][1]))[0]
    if selection == "majority":
        return max(tot.items(), key=lambda kv: (kv[1][1], kv[1][3]))[0]
    return max(tot.items(), key=lambda kv: (kv[1][2], kv[1][3]))[0]


def vote(cands: Sequence[dict[str, Any]], selection: str = "weighted", power: float = 1.0) -> str | None:
    """:func:`winner` over pool candidates (``answer``, ``score``)."""
    return winner([c["answer"] for c in cands], [c["score"] for c in cands], selection, power)


def gold_answers(rec: dict[str, Any]) -> set[str | None]:
    """The answers graded correct among a pool record's candidates."""
    return {norm(c["answer"]) for c in rec["candidates"] if c["correct"]}


def pool_curve(
    pool: Sequence[dict[str, Any]], budgets: Sequence[int], draws: int, rng: random.Random, selection: str = "weighted",
    power: float = 1.0,
) -> np.ndarray:
    """(questions, budgets): expected correctness of best-of-n drawn from each question's pool,
    picked by ``selection`` (:func:`winner`, weighted votes ``score ** power``)."""
    out = np.zeros((len(pool), len(budgets)))
    for i, rec in enumerate(pool):
        cands, gold = rec["candidates"], gold_answers(rec)
        for j, n in enumerate(budgets):
            k = min(n, len(cands))
            reps = 1 if k == len(cands) else draws
            out[i, j] = sum(vote(rng.sample(cands, k), selection, power) in gold for _ in range(reps)) / reps
    return out


def pass_at_1(pool: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([float(np.mean([c["correct"] for c in rec["candidates"]])) for rec in pool])


def quintile_bins(values: np.ndarray, higher_is_easier: bool = True) -> np.ndarray:
    """The paper's 5 difficulty bins by quantiles of ``values``: 1 = easiest."""
    edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])
    # ties at an edge go to the easier bin (many questions at pass@1 = 1 must land in bin 1)
    above = np.searchsorted(edges, values, side="right")  # 0..4, higher value -> higher index
    return (5 - above) if higher_is_easier else (1 + above)


@lru_cache(maxsize=8)
def _combinations(g: int, k: int) -> np.ndarray:
    """Every choice of one of ``g`` options for each of ``k`` groups, (g^k, k); cached: the
    bootstrap asks for the same shape hundreds of times."""
    out = np.array(np.meshgrid(*[np.arange(g)] * k, indexing="ij")).reshape(k, -1).T
    out.setflags(write=False)
    return out


def best_allocation(curves: np.ndarray, weights: np.ndarray, grid: Sequence[int], budget: float) -> tuple[float, float, list[int]]:
    """The best split of an average ``budget`` between groups of questions: ``curves`` (groups,
    len(grid)) is each group's accuracy at each N of ``grid``, ``weights`` (groups,) each
    group's share of the questions. Every combination of one N per group is tried; returns the
    best accuracy whose average spend is <= ``budget``, that spend, and the N of each group.
    A group with weight 0 gets N = grid[0]."""
    g, k = len(grid), len(weights)
    if curves.shape != (k, g):
        raise ValueError(f"curves {curves.shape} must be (groups, len(grid)) = ({k}, {g})")
    combos = _combinations(g, k)  # (g^k, k): one index into grid per group
    spend = np.asarray(grid, dtype=float)[combos] @ weights
    # flat index of (group, choice) into curves: one gather instead of a fancy index per call
    acc = (curves.ravel()[combos + g * np.arange(k)]) @ weights
    acc = np.where(spend <= budget + 1e-9, acc, -np.inf)
    # ties (equal to rounding): the cheaper split
    best = int(np.argmax(np.round(acc, 10) - 1e-12 * spend))
    return float(acc[best]), float(spend[best]), [int(grid[j]) for j in combos[best]]


def matched_budget(curve: np.ndarray, budgets: Sequence[float], accuracy: float) -> float:
    """The smallest budget at which ``curve`` (made monotone) reaches ``accuracy``, interpolated
    on a log scale; inf when it never does. Below the first point it scales linearly."""
    best = np.maximum.accumulate(np.asarray(curve, dtype=float))
    if accuracy <= best[0]:
        return float(budgets[0] * (accuracy / best[0])) if best[0] > 0 else float(budgets[0])
    for j in range(1, len(budgets)):
        if best[j] >= accuracy:
            lo, hi = best[j - 1], best[j]
            t = (accuracy - lo) / (hi - lo) if hi > lo else 1.0
            return float(math.exp(math.log(budgets[j - 1]) + t * (math.log(budgets[j]) - math.log(budgets[j - 1]))))
    return math.inf


def interval(values: Sequence[float], level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval; an infinite upper end when more than
    (1 - level) / 2 of the values are infinite (the curve never matched in those resamples)."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    vals = np.asarray(values, dtype=float)
    finite = vals[np.isfinite(vals)]
    if len(finite) < len(vals) * (1 - (1 - level) / 2):
        return [float(np.percentile(finite, lo_q)) if len(finite) else math.inf, math.inf]
    return [float(np.percentile(vals, lo_q)), float(np.percentile(vals, hi_q))]


def json_finite(obj: Any, as_text: bool = False) -> Any:
    """``obj`` with every non-finite float as None, for a JSON line (JSON has no NaN or
    infinities): a budget ratio past the whole pool, an unbounded interval end. ``as_text``
    writes them as "nan", "inf", "-inf" instead, where which one it was matters (a kernel's error)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else (str(obj) if as_text else None)
    if isinstance(obj, dict):
        return {k: json_finite(v, as_text) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v, as_text) for v in obj]
    return obj


def bootstrap_indices(n: int, reps: int, rng: random.Random) -> list[np.ndarray]:
    """``reps`` resamples (with replacement) of ``n`` questions."""
    return [np.array([rng.randrange(n) for _ in range(n)]) for _ in range(reps)]


def paired_delta(a: np.ndarray, b: np.ndarray, boots: Sequence[np.ndarray]) -> dict[str, Any]:
    """mean(a - b) over questions with a 95% bootstrap interval (same resamples for both)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return {"delta": float(d.mean()), "ci": interval([float(d[ix].mean()) for ix in boots])}


def verdict(delta: dict[str, Any], expect_positive: bool = True) -> str:
    """reproduced (the interval excludes 0 on the paper's side), reversed (on the other side),
    or not reproduced (the interval holds 0)."""
    lo, hi = delta["ci"]
    if (lo > 0) if expect_positive else (hi < 0):
        return "reproduced"
    if (hi < 0) if expect_positive else (lo > 0):
        return "reversed"
    return "not reproduced"
