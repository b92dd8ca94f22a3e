"""Best-of-N: N independent samples, grown one step at a time in one batch, then selected by
majority, best score or PRM-weighted vote."""

from __future__ import annotations

from ponder.workers.answers import Candidate
from ponder.workers.search.base import (
    SearchContext,
    Strategy,
    StrategyRun,
    candidate_of,
    conclude,
    default_selection,
    is_complete,
    register,
)
from ponder.workers.types import Expand, Node, Prefill, Prompt, Score


@register
class BestOfN(Strategy):
    name = "best_of_n"

    def __init__(self, ctx: SearchContext, *, score_steps: bool | None = None) -> None:
        super().__init__(ctx)
        # Scores are worth their cost when a verifier exists (streamed per step, used to select).
        self.score_steps = ctx.has_verifier if score_steps is None else score_steps

    def plan(self) -> str:
        mode = default_selection(self.ctx, self.score_steps)
        return f"best_of_n N={self.ctx.budget} select={mode}"

    def run(self) -> StrategyRun:
        ctx = self.ctx
        n = ctx.budget
        ctx.charge_generations(n)
        (root,) = yield Prefill([Prompt(ctx.config.question)])
        live: list[Node] = [root] * n
        candidates: list[Candidate] = []
        stop = ""
        while live:
            children: list[Node] = yield Expand(live, ctx.sampling())
            if self.score_steps:
                yield Score(children)
            # Parents go only after their children are scored: a separate PRM extends the
            # parent's cached prefix to score a child.
            ctx.release([p for p in set(live) if p is not root])
            live = []
            for child in children:
                ctx.emit_step(child)
                if is_complete(child, ctx):
                    cand = candidate_of(child, ctx)
                    ctx.emit_candidate(child, cand.answer, cand.score)
                    candidates.append(cand)
                else:
                    live.append(child)
            stop = ctx.stop_reason()
            if stop:
                # Out of tokens/FLOPs/time: the unfinished samples compete with what they have.
                for child in live:
                    cand = candidate_of(child, ctx)
                    ctx.emit_candidate(child, cand.answer, cand.score)
                    candidates.append(cand)
                break
        return conclude(ctx, candidates, default_selection(ctx, self.score_steps), stop)
