"""Synthetic hard negatives for a PRM that checks each step (``ponder train prm --label-kind
checker``): the arith generator's worked solutions with ONE step slipped the way the policy
slips, labelled exactly by the task's checker.

What the policy's mistakes look like (its 1,908 wrong training samples in
``artifacts/arith/prm_labels.jsonl``, first wrong step): 82% a false equation — the result off
by ±10 (a carry or borrow, 52% of those), one digit wrong (25%), a digit dropped or added in
front (12%), two digits wrong (9%), ±1 or ±100 (2%) — and 18% a true equation whose restated
remainder copies an operand wrong (``83 - 49 + 69`` for ``83 - 49 + 6``). Later steps carry the
wrong value on consistently. :func:`corrupt` makes the same slips on training-split questions,
carries the wrong value on (or, sometimes, restates the right one), and labels the result with
:func:`ponder.tasks.arith.step_labels`: the slipped step and every later one are bad.
A slip that does not change what the step says (``0 * 7`` with the 7 miscopied) is rejected,
so every corruption really is wrong at its step.

A *group* is a question's worked solution and ``k`` corruptions of it: trained in one batch, the
loss contrasts solutions that differ only in the slipped step — the contrast within a question
that the policy's own samples (4 per question, mostly alike) rarely give.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from ponder.workers.answers import extract_answer, is_correct
from ponder.tasks import arith
from ponder.training.mc_labels import LabeledSolution

# How a result is slipped, weighted as the policy's first false equations are (see above).
RESULT_SLIPS: tuple[tuple[str, float], ...] = (
    ("carry", 0.45),  # ±10: a carry or borrow lost or added
    ("digit", 0.22),  # one digit replaced
    ("length", 0.12),  # the leading digit dropped, or one added in front (46 - 44 = 12)
    ("two_digits", 0.09),  # two digits replaced
    ("unit", 0.05),  # ±1
    ("hundred", 0.04),  # ±100
    ("swap", 0.03),  # two adjacent digits swapped
)
REMAINDER_SLIPS: tuple[tuple[str, float], ...] = (("digit", 0.6), ("length", 0.25), ("carry", 0.15))
REMAINDER_SHARE = 0.18  # of corruptions: a true equation, a miscopied operand in the remainder
PROPAGATE_SHARE = 0.85  # of result slips: later steps carry the wrong value on (else the right one)
MAX_VALUE = 99_999


@dataclass(frozen=True)
class Corruption:
    solution: LabeledSolution
    step: int  # index of the slipped step
    kind: str  # "result:<slip>" or "remainder:<slip>"
    propagated: bool


def slip_value(value: int, kind: str, rng: random.Random) -> int | None:
    """``value`` slipped one way; None when that slip does not apply (or gives the same number,
    a negative one, or a leading zero)."""
    s = str(value)
    if kind == "carry":
        out = value + rng.choice((-10, 10))
    elif kind == "unit":
        out = value + rng.choice((-1, 1))
    elif kind == "hundred":
        out = value + rng.choice((-100, 100))
    elif kind in ("digit", "two_digits"):
        n = 2 if kind == "two_digits" else 1
        if len(s) < n:
            return None
        digits = list(s)
        for i in rng.sample(range(len(s)), n):
            choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(s) > 1)]
            digits[i] = rng.choice(choices)
        out = int("".join(digits))
    elif kind == "length":
        if len(s) >= 2 and rng.random() < 0.5:
            out = int(s[1:])
            if s[1] == "0":
                return None
        else:
            out = int(str(rng.randint(1, 9)) + s)
    elif kind == "swap":
        pairs = [i for i in range(len(s) - 1) if s[i] != s[i + 1] and not (i == 0 and s[1] == "0")]
        if not pairs:
            return None
        i = rng.choice(pairs)
        out = int(s[:i] + s[i + 1] + s[i] + s[i + 2 :])
    else:
        raise ValueError(f"unknown slip {kind!r}")
    return out if out != value and 0 <= out <= MAX_VALUE else None


def _pick(table: tuple[tuple[str, float], ...], rng: random.Random) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _solve_slipped(
    tokens: list[arith.Token], at: int, mode: str, kind: str, propagate: bool, rng: random.Random
) -> list[str] | None:
    """The worked steps of ``tokens`` (as :func:`arith.solve` writes them) with step ``at``
    slipped; None when the slip does not apply."""
    toks = list(tokens)
    steps: list[str] = []
    step = 0
    while len(toks) > 1:
        i = arith._next_op(toks)
        a, op, b = toks[i - 1], toks[i], toks[i + 1]
        assert isinstance(a, int) and isinstance(b, int) and isinstance(op, str)
        c = arith._apply(a, op, b)
        if c < 0 or c > MAX_VALUE:
            return None  # a carried-on slip that leaves the task's range
        shown = c
        if step == at and mode == "result":
            wrong = slip_value(c, kind, rng)
            if wrong is None:
                return None
            shown = wrong
        toks[i - 1 : i + 2] = [shown if propagate else c]
        j = i - 1
        if 0 < j < len(toks) - 1 and toks[j - 1] == "(" and toks[j + 1] == ")":
            toks[j - 1 : j + 2] = [toks[j]]
            j -= 1
        if step == at and mode == "remainder":
            others = [p for p, t in enumerate(toks) if isinstance(t, int) and p != j]
            if not others:
                return None
            p = rng.choice(others)
            wrong = slip_value(int(toks[p]), kind, rng)
            if wrong is None:
                return None
            toks[p] = wrong
        line = f"{arith._fmt([a, op, b])} = {shown}"
        steps.append(line if len(toks) == 1 else f"{line}\n{arith._fmt(toks)}")
        step += 1
    assert isinstance(toks[0], int)
    if toks[0] < 0:
        return None
    steps.append(f"The answer is \\boxed{{{toks[0]}}}.")
    return steps


def corrupt(q: arith.Question, rng: random.Random, tries: int = 20) -> Corruption | None:
    """One slipped copy of ``q``'s worked solution, labelled by the checker; None if no slip
    applied in ``tries`` draws."""
    tokens = arith.parse_expression(q.expression)
    work = len(q.steps) - 1  # working steps; the last step states the answer
    for _ in range(tries):
        at = rng.choices(range(work), weights=[1.0 / (k + 1) for k in range(work)])[0]
        # A remainder exists after every working step but the last.
        mode = "remainder" if at < work - 1 and rng.random() < REMAINDER_SHARE else "result"
        kind = _pick(REMAINDER_SLIPS if mode == "remainder" else RESULT_SLIPS, rng)
        propagate = mode == "remainder" or rng.random() < PROPAGATE_SHARE
        steps = _solve_slipped(tokens, at, mode, kind, propagate, rng)
        if steps is None:
            continue
        labels = arith.step_labels(steps, q.answer)
        if labels != [1.0] * at + [0.0] * (len(steps) - at):
            continue  # the slip did not change what the step says (0 * 7 miscopied as 0 * 1)
        correct = is_correct(extract_answer(steps[-1]), q.answer)
        sol = LabeledSolution(q.question, q.answer, steps, labels, correct)
        return Corruption(sol, at, f"{mode}:{kind}", propagate)
    return None


def group(q: arith.Question, negatives: int, rng: random.Random) -> list[LabeledSolution]:
    """``q``'s worked solution (every step good) and up to ``negatives`` distinct corruptions."""
    if q.split != "train":
        raise ValueError(f"synthetic negatives come from training questions only, got a {q.split} one")
    out = [LabeledSolution(q.question, q.answer, list(q.steps), [1.0] * len(q.steps), True)]
    seen = {q.solution}
    for _ in range(3 * negatives):
        if len(out) > negatives:
            break
        c = corrupt(q, rng)
        if c is not None and c.solution.text() not in seen:
            seen.add(c.solution.text())
            out.append(c.solution)
    return out


def groups(negatives: int, seed: int, mix: arith.Mix = arith.EVAL_MIX) -> Iterator[list[LabeledSolution]]:
    """An endless seeded stream of groups on fresh training-split questions."""
    rng = random.Random(f"checker:{seed}")
    for q in arith.stream("train", seed, mix):
        yield group(q, negatives, rng)
