"""Answer extraction, equivalence (math-verify) and selection across candidates.

``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one answer. Selection modes:
``majority`` (most votes), ``best`` (highest single score), ``weighted`` (largest sum of
scores per distinct answer — the paper's best-of-N weighted; each score raised to the verifier's
fitted vote power first, see :func:`vote_weight`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ponder.proto.errors import InvalidArgument
from ponder.workers.types import AnswerVote

logging.getLogger("math_verify").setLevel(logging.ERROR)

# "The answer is X." — X runs to the end of the sentence: a period followed by a space or the
# end of the line (so "3.5" keeps its decimal point), or the end of the line.
_ANSWER_IS = re.compile(
    r"answer\s+is[:\s]*\$?(.+?)\$?\s*(?:\.(?=\s|$)|$)", re.IGNORECASE | re.MULTILINE
)
_HASHES = re.compile(r"####\s*([^\n]+)")
# A number followed by words ("18 dollars", "3.5 apples"): the number is the answer.
_NUMBER_THEN_WORDS = re.compile(r"^\$?\s*(-?[\d,]*\.?\d+)\s*(?:[a-zA-Z][a-zA-Z\s]*)$")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: the solution was cut off


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")


def extract_answer(text: str, *, lenient: bool = False) -> str | None:
    """The final answer in a solution, or None when it states none.

    Looks for ``\\boxed{…}``, then ``#### N``, then "The answer is …". With ``lenient`` the
    last number in the text is the answer when none of those is present (weak models often
    state a result without the agreed form)."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip().rstrip(".").replace(",", "")
    found = _ANSWER_IS.findall(text)
    if found:
        ans = found[-1].strip().rstrip(".").strip().strip("$").strip()
        if "=" in ans:  # "The answer is 180 + 420 = 600 meters": the result is after the last "="
            ans = ans.rsplit("=", 1)[1].strip()
        unit = _NUMBER_THEN_WORDS.match(ans)
        if unit:
            ans = unit.group(1).replace(",", "")
        # a clause with no digit and no LaTeX is prose, not an answer ("the answer is the step
        # where ..."): fall through to the lenient reading
        if ans and (any(ch.isdigit() for ch in ans) or "\\" in ans or len(ans.split()) <= 3):
            return ans
    if lenient:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].replace(",", "").rstrip(".")
    return None


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    # math-verify's own timeout uses signals, which only work in the main thread; the search
    # loop runs in a worker thread, and our inputs are short extracted answers.
    text = answer if "$" in answer or "\\" in answer else f"${answer}$"
    result = parse(text, parsing_timeout=None)
    if not result:
        result = parse(answer, parsing_timeout=None)
    return tuple(result)


def normalize(answer: str) -> str:
    """Cheap textual normal form tried before math-verify (``\\frac12`` → ``\\frac{1}{2}``)."""
    text = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", answer)
    return re.sub(r"\s+", "", text).rstrip(".").replace("\\!", "").replace("dfrac", "frac")


@lru_cache(maxsize=8192)
def equivalent(a: str, b: str) -> bool:
    """True when two extracted answers denote the same value."""
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return True
    if _INTEGER.fullmatch(na) and _INTEGER.fullmatch(nb):
        # two plain integers ("277", "-013"): equal exactly when their values are, as math-verify
        # says at ~3 ms per first parse (decimals go to it: it rounds them before comparing)
        return int(na) == int(nb)
    from math_verify import verify

    pa, pb_ = _parsed(na), _parsed(nb)
    if not pa or not pb_:
        return False
    try:
        return bool(verify(list(pa), list(pb_), timeout_seconds=None))
    except Exception:  # math-verify raises on exotic inputs; unequal is the safe answer
        return False


def is_correct(predicted: str | None, gold: str) -> bool:
    return predicted is not None and equivalent(gold, predicted)


@dataclass
class Candidate:
    answer: str | None
    solution: str
    score: float | None = None
    ref: Any = None  # the node or attempt it came from


@dataclass
class Selection:
    answer: str
    solution: str
    votes: list[AnswerVote]
    winner: Candidate | None
    # each answer's share of the vote the mode counts: majority its samples, weighted its
    # score ** power sum, best its score sum
    weights: dict[str, float] = field(default_factory=dict)


def group(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Cluster candidates with a parsable answer into groups of equivalent answers."""
    groups: list[list[Candidate]] = []
    for cand in candidates:
        if cand.answer is None:
            continue
        for g in groups:
            if equivalent(g[0].answer or "", cand.answer):
                g.append(cand)
                break
        else:
            groups.append([cand])
    return groups


MAX_VOTE_POWER = 64.0


def check_vote_power(power: float, field: str = "vote_power", what: str = "") -> float:
    """A vote power must be a finite number in (0, 64]; INVALID_ARGUMENT on ``field`` otherwise
    (the message starting with ``what``, when given)."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.0 < power <= MAX_VOTE_POWER:
        raise InvalidArgument(field, f"{what + ' ' if what else ''}must be a number in (0, {MAX_VOTE_POWER:g}], got {power!r}")
    return float(power)


def vote_weight(score: float | None, power: float = 1.0) -> float:
    """A sample's vote under weighted selection: its score raised to ``power`` (a verifier's
    calibration fits the power; 1 sums the scores). A larger power lets one confident sample
    outvote a crowd of doubtful ones."""
    s = score or 0.0
    return s if power == 1.0 else max(s, 0.0) ** power


def select(candidates: list[Candidate], mode: str = "majority", power: float = 1.0) -> Selection:
    """Pick the answer: ``majority`` the most samples, ``weighted`` the largest sum of
    :func:`vote_weight` (score ** ``power``), ``best`` the single highest score. Ties go to the
    larger count (weighted) or score sum, then to the earlier candidate. The votes report each
    answer's count and score sum, whatever the mode."""
    if mode not in ("majority", "best", "weighted"):
        raise ValueError(f"unknown selection {mode!r}")
    groups = group(candidates)
    votes = [
        AnswerVote(answer=g[0].answer or "", count=len(g), score=sum(c.score or 0.0 for c in g))
        for g in groups
    ]
    if not groups:
        fallback = max(candidates, key=lambda c: c.score or 0.0) if candidates else None
        return Selection("", fallback.solution if fallback else "", [], fallback)
    order = {id(g): i for i, g in enumerate(groups)}

    def key(g: list[Candidate]) -> tuple[float, float, int]:
        total = sum(c.score or 0.0 for c in g)
        if mode == "majority":
            return (len(g), total, -order[id(g)])
        if mode == "weighted":
            return (sum(vote_weight(c.score, power) for c in g), len(g), -order[id(g)])
        return (max(c.score or 0.0 for c in g), total, -order[id(g)])

    best_group = max(groups, key=key)
    winner = max(best_group, key=lambda c: c.score or 0.0)
    votes.sort(key=lambda v: (v.count, v.score), reverse=True)
    weights = {g[0].answer or "": key(g)[0] if mode != "best" else key(g)[1] for g in groups}
    return Selection(best_group[0].answer or "", winner.solution, votes, winner, weights)
