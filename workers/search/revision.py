"""Sequential revisions and the sequential:parallel hybrid (Snell et al. §6).

A *chain* is a sequence of attempts at one question in which attempt i is prompted with the
question and attempts 1..i−1, each with the verifier's score of it (``Prompt(question,
attempts, scores)``; the reviser's prompt format keeps 4 in context, as the paper's revision
model was trained with: the newest, or for a format that sorts by score the best-scored).
Each attempt is one generation, so a chain of n attempts costs n.

``revision`` runs one chain of N attempts. ``hybrid`` splits N into parallel chains: with
``sequential_ratio`` r in [0, 1] — the share of the budget spent sequentially, on a log scale —
each chain is about N**r attempts long and there are N / N**r chains. r = 0 is best-of-N, r = 1
a single chain, r = 0.5 the paper's balanced √N × √N split. Lengths are spread so they sum to N
exactly (N=10, r=0.5: chains of 4, 3 and 3).

Every chain's current attempt advances in the same Expand request, so the chains (and the
questions of other jobs) share one batched policy call per tick. About 38% of correct answers
are revised into wrong ones (§6.1), so the answer is selected across every attempt of every
chain — PRM-weighted vote when a verifier scores the steps, majority otherwise — never by
taking the last attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ponder.workers.answers import Candidate
from ponder.workers.search.base import (
    SearchContext,
    Strategy,
    StrategyRun,
    candidate_of,
    conclude,
    default_selection,
    is_complete,
)
from ponder.workers.types import Expand, Node, Prefill, Prompt, Score

DEFAULT_SEQUENTIAL_RATIO = 0.5


def split_budget(budget: int, ratio: float) -> list[int]:
    """Chain lengths for ``budget`` attempts at a log-scale sequential share ``ratio``."""
    if budget < 1:
        return []
    ratio = min(1.0, max(0.0, ratio))
    length = max(1, min(budget, round(budget**ratio)))
    chains = max(1, budget // length)
    base, extra = divmod(budget, chains)
    return [base + (1 if i < extra else 0) for i in range(chains)]


@dataclass
class Chain:
    index: int
    length: int  # attempts this chain may make
    attempts: list[str] = field(default_factory=list)  # finished attempts' solutions
    scores: list[float | None] = field(default_factory=list)  # their verifier scores
    current: Node | None = None  # the newest node of the attempt in progress
    root: Node | None = None

    @property
    def started(self) -> int:
        return len(self.attempts) + (1 if self.current is not None else 0)


class ChainsStrategy(Strategy):
    """Parallel chains of sequential revisions; subclasses choose the chain lengths."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self.score_steps = ctx.has_verifier

    def lengths(self) -> list[int]:
        raise NotImplementedError

    def plan(self) -> str:
        lengths = self.lengths()
        return (
            f"{self.name} chains={len(lengths)} attempts={'+'.join(map(str, lengths))} "
            f"select={default_selection(self.ctx, self.score_steps)}"
        )

    def run(self) -> StrategyRun:
        ctx = self.ctx
        chains = [Chain(i, n) for i, n in enumerate(self.lengths())]
        candidates: list[Candidate] = []
        stop = ""
        while True:
            starting = [c for c in chains if c.current is None and c.started < c.length]
            if starting and not stop:
                ctx.charge_generations(len(starting))
                prompts = [Prompt(ctx.config.question, tuple(c.attempts), tuple(c.scores)) for c in starting]
                roots: list[Node] = yield Prefill(prompts)
                for chain, root in zip(starting, roots):
                    chain.current = chain.root = root
            live = [c for c in chains if c.current is not None]
            if not live:
                break
            parents = [c.current for c in live]
            children: list[Node] = yield Expand(parents, ctx.sampling())  # type: ignore[arg-type]
            if self.score_steps:
                yield Score(children)
            ctx.release([p for p in parents if p is not None])
            for chain, child in zip(live, children):
                ctx.emit_step(child)
                chain.current = child
                if is_complete(child, ctx):
                    self._finish(chain, candidates)
            stop = ctx.stop_reason()
            if stop:
                for chain in chains:  # attempts in progress compete with what they have
                    if chain.current is not None:
                        self._finish(chain, candidates)
                break
        return conclude(ctx, candidates, default_selection(ctx, self.score_steps), stop)

    def _finish(self, chain: Chain, candidates: list[Candidate]) -> None:
        node = chain.current
        assert node is not None
        cand = candidate_of(node, self.ctx)
        attempt = len(chain.attempts)
        cand.ref = (chain.index, attempt, node)
        self.ctx.emit_candidate(node, cand.answer, cand.score, attempt_index=attempt)
        candidates.append(cand)
        chain.attempts.append(cand.solution)
        chain.scores.append(cand.score)
        chain.current = None
        self.ctx.release([node])


class Revision(ChainsStrategy):
    name = "revision"

    def lengths(self) -> list[int]:
        return split_budget(max(1, self.ctx.budget), 1.0)


class Hybrid(ChainsStrategy):
    name = "hybrid"

    def lengths(self) -> list[int]:
        r = self.ctx.config.sequential_ratio
        return split_budget(max(1, self.ctx.budget), DEFAULT_SEQUENTIAL_RATIO if r is None else r)
