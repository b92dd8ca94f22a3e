"""PRM-guided beam search (and, with k > 0, lookahead search).

The paper's procedure (Snell et al. §5.1) with N beams and width M:

1. sample N first steps from the question;
2. score them with the PRM (the aggregate over the path, ``last`` by default);
3. keep the best N/M, sample M children from each — N live beams again;
4. repeat until the solutions end, at most 40 rounds (``max_steps``);
5. select the answer among the N finished candidates by PRM-weighted vote.

A beam that finishes leaves the live set and becomes a candidate, so round r keeps
``ceil(live / M)`` parents for the ``live = N − finished`` slots left, and the search ends with
exactly N candidates. Until a beam finishes that is exactly N/M parents with M children each.
This also makes the compute of beam search and best-of-N at the same N comparable: both expand
about N·(solution length) steps (checked on SmolLM2 in docs/strategies.md).

Pruning is a ``Prune`` request: the search loop prunes the beams of every question of the tick in
one segmented ``ponder.kernels.topk_prune`` launch (one segment per question).

Lookahead (k > 0): every unfinished child is rolled out k more steps at temperature 0 and the
PRM's score at the end of the rollout stands for the child (§5.1, "lookahead search"). The
rollouts are charged: N beams cost N·(k+1) generations, so a budget of B generations runs
B // (k+1) beams. Rollout nodes are not part of the tree: they are scored, then released, and
no step event is emitted for them (their tokens and FLOPs are in the usage).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

from ponder.proto.errors import InvalidArgument
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
from ponder.workers.types import Expand, Node, Prefill, Prompt, Prune, Request, Score

DEFAULT_BEAM_WIDTH = 4  # the paper's M (it also tries √N; 4 did as well or better at N ≤ 64)


def require_verifier(ctx: SearchContext, name: str) -> None:
    if not ctx.has_verifier:
        raise InvalidArgument(
            "strategy", f"{name} prunes by PRM score and this worker has no verifier; use best_of_n or revision"
        )


def score_with_lookahead(
    ctx: SearchContext, children: list[Node], k: int
) -> Generator[Request, Any, None]:
    """Score ``children``; with k > 0 through k greedy rollout steps from each unfinished one."""
    if k <= 0:
        yield Score(children)
        return
    ends = list(children)
    rollout: list[Node] = []
    active = [i for i, c in enumerate(children) if not is_complete(c, ctx)]
    for _ in range(k):
        if not active:
            break
        steps: list[Node] = yield Expand([ends[i] for i in active], ctx.sampling(greedy=True))
        for i, node in zip(active, steps):
            ends[i] = node
        rollout.extend(steps)
        active = [i for i in active if not is_complete(ends[i], ctx)]
    yield Score(ends)
    for child, end in zip(children, ends):
        if end is not child:  # the rollout's verdict stands for the child
            child.score, child.aggregate, child.n_scored = end.score, end.aggregate, end.n_scored
    ctx.release(rollout)


class BeamSearch(Strategy):
    name = "beam"
    needs_verifier = True

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        require_verifier(ctx, self.name)

    def lookahead_steps(self) -> int:
        return 0

    def shape(self) -> tuple[int, int, int]:
        """(beams N, width M, lookahead k) for the current budget."""
        budget = max(1, self.ctx.budget)
        k = min(self.lookahead_steps(), budget - 1)  # at least one beam must fit the budget
        beams = budget // (k + 1)
        width = min(self.ctx.config.beam_width or DEFAULT_BEAM_WIDTH, beams)
        return beams, width, k

    def plan(self) -> str:
        n, m, k = self.shape()
        extra = f" k={k} generations={n * (k + 1)}" if self.name == "lookahead" else ""
        return f"{self.name} N={n} M={m}{extra} max_rounds={self.ctx.max_steps} select={default_selection(self.ctx, True)}"

    def run(self) -> StrategyRun:
        ctx = self.ctx
        n, m, k = self.shape()
        ctx.charge_generations(n * (k + 1))
        (root,) = yield Prefill([Prompt(ctx.config.question)])
        frontier: list[Node] = [root] * n
        candidates: list[Candidate] = []
        stop = ""
        for _ in range(ctx.max_steps):
            children: list[Node] = yield Expand(frontier, ctx.sampling())
            yield from score_with_lookahead(ctx, children, k)
            ctx.release([p for p in set(frontier) if p is not root])
            live: list[Node] = []
            for child in children:
                ctx.emit_step(child)
                if is_complete(child, ctx):
                    self._finish(child, candidates)
                else:
                    live.append(child)
            slots = n - len(candidates)
            stop = ctx.stop_reason()
            if stop or not live or slots <= 0:
                break
            (kept,) = yield Prune([live], [math.ceil(slots / m)])
            kept_ids = {id(p) for p in kept}
            ctx.release([c for c in live if id(c) not in kept_ids])
            frontier = [p for p in kept for _ in range(m)][:slots]
            live = []
        # Out of rounds, tokens, FLOPs or time: the unfinished beams compete with what they have.
        for node in live[: max(0, n - len(candidates))]:
            self._finish(node, candidates)
        return conclude(ctx, candidates, default_selection(self.ctx, True), stop)

    def _finish(self, node: Node, candidates: list[Candidate]) -> None:
        cand = candidate_of(node, self.ctx)
        self.ctx.emit_candidate(node, cand.answer, cand.score)
        candidates.append(cand)
        self.ctx.release([node])


class Lookahead(BeamSearch):
    name = "lookahead"
    # k=2: at a budget of 4 generations that still leaves one beam (4 // 3), and at 16 five.
    default_k = 2

    def lookahead_steps(self) -> int:
        k = self.ctx.config.lookahead
        return self.default_k if k is None else k
