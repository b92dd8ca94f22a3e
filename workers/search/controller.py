"""The live budget controller and the budget bank.

Between ticks, each adaptive question's candidates so far are summarised in a :class:`Tally`
(the statistics its progress events already carry: the verifier-weighted vote share of the
leading answer, its margin over the runner-up, how many candidates in a row kept the same leader,
the best and mean final scores), and :func:`decide` says what to do with the question:

- ``stop``: settled — at least ``min_candidates`` candidates, the leader holds ``stop_share`` of the
  vote (verifier-weighted, or counts under majority selection), has led for the last ``window``
  candidates and has at least 2 votes of its own (so one confident wrong sample
  cannot end a question, however low the others score);
- ``abandon``: hopeless — after ``abandon_after`` candidates the mean calibrated score is at most
  ``abandon_score`` and no answer holds ``abandon_share`` of the vote; the leader is returned,
  flagged low-confidence;
- ``continue``: sample another wave within the question's allowance;
- ``widen``: the allowance is spent, the question is uncertain but solvable (mean score at least
  ``widen_min_score``): draw another wave from the :class:`BudgetBank`, up to the question's max;
- ``done``: the allowance is spent and nothing more can be drawn.

The rules are those of Adaptive-Consistency / ESC / DeepConf-online (stop on agreement, with a
minimum and a stability window) applied to verifier-weighted votes; the thresholds are fitted on a
sample pool by ``ponder train plan`` (training/plan.py) and shipped in the model's plan table.

The bank: a question that ends below its nominal budget deposits what it did not spend; a
question that wants more than its nominal budget withdraws, never more than what it may draw.
So the questions of a batch spend at most the sum of their nominal budgets (each spend is bounded
by its allowance; allowances above nominal are funded only by deposits). A deposit may be drawn
only by the questions that were running when it was made, and expires when they have all ended:
savings fund the questions that run alongside, not later traffic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ponder.proto.errors import InvalidArgument
from ponder.workers.answers import Candidate, equivalent, vote_weight


@dataclass(frozen=True)
class ControllerConfig:
    """Thresholds of :func:`decide`. The defaults serve models without a fitted plan table
    (conservative: 4 agreeing candidates to stop); ``ponder train plan`` fits a model's own."""

    wave: int = 4  # samples launched together; the controller looks again when a wave is in
    min_candidates: int = 4
    window: int = 4
    stop_share: float = 0.75
    abandon_after: int = 12
    abandon_score: float = 0.2
    abandon_share: float = 0.5
    widen_min_score: float = 0.2

    def __post_init__(self) -> None:
        for name in ("wave", "min_candidates", "window", "abandon_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise InvalidArgument(f"plan.controller.{name}", f"must be an integer in [1, 4096], got {value!r}")
        for name in ("stop_share", "abandon_score", "abandon_share", "widen_min_score"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"plan.controller.{name}", f"must be a number in [0, 1], got {value!r}")

    @classmethod
    def from_dict(cls, data: Any) -> ControllerConfig:
        if not isinstance(data, dict):
            raise InvalidArgument("plan.controller", f"must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"plan.controller.{unknown[0]}", f"is not a controller setting ({', '.join(sorted(known))})")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Tally:
    """Running vote statistics of one question's candidates, in the order they finished."""

    answers: list[str]  # distinct answers (first spelling seen)
    weights: list[float]  # verifier-weighted votes per distinct answer
    counts: list[int]
    n: int = 0  # candidates, with or without a parsable answer
    score_sum: float = 0.0
    best_score: float = 0.0
    leader: int = -1
    stable: int = 0  # candidates in a row (the newest included) after which `leader` led
    power: float = 1.0  # a weighted vote counts score ** power (the verifier's vote power)

    @classmethod
    def empty(cls, power: float = 1.0) -> Tally:
        return cls([], [], [], power=power)

    @classmethod
    def of(cls, candidates: list[Candidate], scored: bool, weighted: bool | None = None, power: float = 1.0) -> Tally:
        t = cls.empty(power)
        for c in candidates:
            t.add(c, scored, weighted)
        return t

    def add(self, cand: Candidate, scored: bool, weighted: bool | None = None) -> None:
        """Count one finished candidate. Its vote weighs ``score ** power`` when ``weighted``
        (default: when scored), else 1 (majority voting, which is also all there is without a verifier)."""
        self.n += 1
        score = (cand.score or 0.0) if scored else 1.0
        self.score_sum += score
        self.best_score = max(self.best_score, score)
        weight = vote_weight(score, self.power) if scored and weighted is not False else 1.0
        if cand.answer is not None:
            for i, a in enumerate(self.answers):
                if equivalent(a, cand.answer):
                    break
            else:
                self.answers.append(cand.answer)
                self.weights.append(0.0)
                self.counts.append(0)
                i = len(self.answers) - 1
            self.weights[i] += weight
            self.counts[i] += 1
        lead = max(range(len(self.weights)), key=lambda j: (self.weights[j], self.counts[j], -j), default=-1)
        self.stable = self.stable + 1 if lead == self.leader and lead >= 0 else (1 if lead >= 0 else 0)
        self.leader = lead

    @property
    def total(self) -> float:
        return sum(self.weights)

    @property
    def share(self) -> float:
        """The leading answer's share of the weighted vote (0 with no answer yet)."""
        total = self.total
        return self.weights[self.leader] / total if self.leader >= 0 and total > 0 else 0.0

    @property
    def margin(self) -> float:
        total = self.total
        if self.leader < 0 or total <= 0:
            return 0.0
        second = max((w for j, w in enumerate(self.weights) if j != self.leader), default=0.0)
        return (self.weights[self.leader] - second) / total

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.n if self.n else 0.0

    @property
    def leader_votes(self) -> int:
        return self.counts[self.leader] if self.leader >= 0 else 0

    @property
    def leader_answer(self) -> str:
        return self.answers[self.leader] if self.leader >= 0 else ""


@dataclass(frozen=True)
class Action:
    kind: str  # continue | stop | abandon | widen | done
    reason: str = ""


def min_votes(cfg: ControllerConfig) -> int:
    """Votes the leading answer needs before a question may stop: never one sample alone,
    however low the others score (its stability window counts dissenting candidates too)."""
    return 2


def decide(
    t: Tally, spent: int, allowance: int, lo: int, hi: int, cfg: ControllerConfig, *, can_widen: bool = True
) -> Action:
    """What to do with a question whose launched samples have all finished (see module doc)."""
    if spent >= lo and t.n >= cfg.min_candidates:
        if t.share >= cfg.stop_share and t.stable >= cfg.window and t.leader_votes >= min_votes(cfg):
            return Action("stop", f"settled: {t.leader_answer} holds {t.share:.0%} of the weighted vote "
                                  f"(>= {cfg.stop_share:.0%}) and led the last {t.stable} candidates (>= {cfg.window})")
        if t.n >= cfg.abandon_after and t.mean_score <= cfg.abandon_score and t.share < cfg.abandon_share:
            return Action("abandon", f"hopeless: mean score {t.mean_score:.2f} (<= {cfg.abandon_score:.2f}) "
                                     f"and the leader holds only {t.share:.0%} (< {cfg.abandon_share:.0%}) after {t.n} candidates")
    if spent < allowance:
        return Action("continue")
    if can_widen and spent < hi and t.mean_score >= cfg.widen_min_score:
        return Action("widen", f"uncertain: the leader holds {t.share:.0%} (< {cfg.stop_share:.0%}) "
                               f"with mean score {t.mean_score:.2f} (>= {cfg.widen_min_score:.2f})")
    return Action("done")


class BudgetBank:
    """Generations that settled questions did not spend, for uncertain ones running beside them.

    A deposit may be drawn only by the questions that were live when it was made (not by
    questions that arrive later), and it expires once all of them have ended. ``live`` tells the
    bank which questions are running (the loop's jobs)."""

    def __init__(self, live: Callable[[], Iterable[str]] = tuple) -> None:
        self.live = live
        self.entries: list[tuple[int, frozenset[str]]] = []  # (generations, who may draw them)
        self.deposited = 0
        self.withdrawn = 0

    @property
    def balance(self) -> int:
        return sum(n for n, _ in self.entries)

    def available(self, job_id: str) -> int:
        return sum(n for n, who in self.entries if job_id in who)

    def deposit(self, n: int, by: str = "") -> None:
        eligible = frozenset(self.live()) - {by}
        if n > 0 and eligible:
            self.entries.append((n, eligible))
            self.deposited += n

    def withdraw(self, want: int, job_id: str = "") -> int:
        """Up to ``want`` generations from the deposits ``job_id`` may draw, oldest first."""
        got, kept = 0, []
        for n, who in self.entries:
            take = min(n, want - got) if job_id in who else 0
            got += take
            if n - take > 0:
                kept.append((n - take, who))
        self.entries = kept
        self.withdrawn += got
        return got

    def expire(self) -> None:
        """Drop the deposits no running question may draw any more."""
        live = set(self.live())
        self.entries = [(n, who) for n, who in self.entries if who & live]

    def reset(self) -> None:
        self.entries = []
