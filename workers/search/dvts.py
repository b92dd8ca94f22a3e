"""Diverse verifier tree search (DVTS; Beeching et al., the search-and-learn extension of the
paper's beam search).

The budget of N generations is split into N/M independent subtrees. Each subtree is a greedy
search under the PRM: sample M children of its current node, score them, continue from the best
one; the subtree ends when its best child ends the solution (or at the step cap). Because the
subtrees never compete with each other, one high-scoring early step cannot take over the whole
budget, which is where beam search loses diversity at large N.

Every child that finishes is a candidate (not only a subtree's final one: it is a full solution
already paid for). The answer is chosen by PRM-weighted vote across all of them. The best child
of every subtree is one ``Prune`` request (a segment per subtree), which the search loop answers
for every question of the tick in one segmented ``topk_prune`` launch.
"""

from __future__ import annotations

from ponder.workers.answers import Candidate
from ponder.workers.search.beam import DEFAULT_BEAM_WIDTH, require_verifier
from ponder.workers.search.base import (
    SearchContext,
    Strategy,
    StrategyRun,
    candidate_of,
    conclude,
    default_selection,
    is_complete,
)
from ponder.workers.types import Expand, Node, Prefill, Prompt, Prune, Score


class DVTS(Strategy):
    name = "dvts"
    needs_verifier = True

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        require_verifier(ctx, self.name)

    def shape(self) -> tuple[int, int]:
        """(subtrees N/M, width M) for the current budget; N/M·M ≤ N generations."""
        budget = max(1, self.ctx.budget)
        width = min(self.ctx.config.beam_width or DEFAULT_BEAM_WIDTH, budget)
        return max(1, budget // width), width

    def plan(self) -> str:
        trees, m = self.shape()
        return f"dvts subtrees={trees} M={m} select={default_selection(self.ctx, True)}"

    def run(self) -> StrategyRun:
        ctx = self.ctx
        trees, m = self.shape()
        ctx.charge_generations(trees * m)
        (root,) = yield Prefill([Prompt(ctx.config.question)])
        current: list[Node] = [root] * trees  # the node each live subtree grows from
        candidates: list[Candidate] = []
        stop = ""
        while current:
            children: list[Node] = yield Expand([p for p in current for _ in range(m)], ctx.sampling())
            yield Score(children)
            ctx.release([p for p in current if p is not root])
            segments = [children[i * m : (i + 1) * m] for i in range(len(current))]
            kept: list[list[Node]] = yield Prune(segments, [1] * len(segments))
            best = [seg[0] for seg in kept]
            best_ids = {id(b) for b in best}
            for child in children:
                ctx.emit_step(child)
                if is_complete(child, ctx):
                    cand = candidate_of(child, ctx)
                    ctx.emit_candidate(child, cand.answer, cand.score)
                    candidates.append(cand)
                    ctx.release([child])
                elif id(child) not in best_ids:
                    ctx.release([child])
            current = [b for b in best if not is_complete(b, ctx)]
            stop = ctx.stop_reason()
            if stop:
                for node in current:  # unfinished subtrees compete with their best partial path
                    cand = candidate_of(node, ctx)
                    ctx.emit_candidate(node, cand.answer, cand.score)
                    candidates.append(cand)
                break
        return conclude(ctx, candidates, default_selection(ctx, True), stop)
