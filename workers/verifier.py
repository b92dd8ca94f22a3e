"""The verifier interface: a process reward model that scores the newest step of a node."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from ponder.proto.config import AGGREGATIONS
from ponder.workers.types import Node, ScoreOutput

__all__ = ["AGGREGATIONS", "NullVerifier", "Verifier", "aggregate"]


def aggregate(previous: float | None, n_previous: int, score: float, mode: str) -> float:
    """Fold a new step score into a running aggregate (plain Python twin of the kernel)."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")
    if previous is None or n_previous == 0 or mode == "last":
        return score
    if mode == "min":
        return min(previous, score)
    if mode == "prod":
        return previous * score
    return (previous * n_previous + score) / (n_previous + 1)


class Verifier(ABC):
    """Scores steps. ``score`` must handle nodes of many questions in one call."""

    name: str = "verifier"
    n_params: int = 0
    # weighted selection counts each sample as score ** vote_power (a calibration's fitted power)
    vote_power: float = 1.0
    calibration_file: Path | None = None  # the file the calibration (and vote power) came from

    @abstractmethod
    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        """Score each node's newest step; return step scores and updated aggregates."""

    def release(self, nodes: list[Node]) -> None:
        """Free verifier-side state for these nodes. Default: nothing."""


class NullVerifier(Verifier):
    """No verifier: every step scores 0.5 (used when a strategy needs no scores)."""

    name = "none"

    def score(self, nodes: list[Node], aggregation: str) -> ScoreOutput:
        scores = [0.5] * len(nodes)
        aggs = [aggregate(n.aggregate, n.n_scored, 0.5, aggregation) for n in nodes]
        return ScoreOutput(scores=scores, aggregates=aggs)
