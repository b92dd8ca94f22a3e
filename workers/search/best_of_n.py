"""Best-of-N: N independent samples, grown one step at a time in one batch, then selected by
majority, best score or PRM-weighted vote.

With an adaptive budget (``budget.mode = adaptive``) the samples are drawn in waves and the live
controller (controller.py) may stop the question once it is settled, abandon it when it is
hopeless, or widen it with generations other questions of the batch did not spend."""

from __future__ import annotations

from ponder.workers.answers import Candidate
from ponder.workers.search.base import SearchContext, Strategy, StrategyRun, conclude, default_selection
from ponder.workers.search.controller import Tally
from ponder.workers.search.waves import grow, sample_waves
from ponder.workers.types import Node, Prefill, Prompt


class BestOfN(Strategy):
    name = "best_of_n"

    def __init__(self, ctx: SearchContext, *, score_steps: bool | None = None) -> None:
        super().__init__(ctx)
        # Scores are worth their cost when a verifier exists (streamed per step, used to select).
        self.score_steps = ctx.has_verifier if score_steps is None else score_steps

    def plan(self) -> str:
        mode = default_selection(self.ctx, self.score_steps)
        if self.ctx.config.adaptive:
            lo, hi = self.ctx.bounds
            return f"best_of_n N={self.ctx.budget} adaptive [{lo}..{hi}] wave={self.ctx.controller.wave} select={mode}"
        return f"best_of_n N={self.ctx.budget} select={mode}"

    def run(self) -> StrategyRun:
        ctx = self.ctx
        (root,) = yield Prefill([Prompt(ctx.config.question)])
        candidates: list[Candidate] = []
        selection = default_selection(ctx, self.score_steps)
        if ctx.config.adaptive:
            stop = yield from sample_waves(ctx, root, Tally.empty(ctx.vote_power), candidates, self.score_steps, selection)
        else:
            n = ctx.budget
            ctx.charge_generations(n)
            live: list[Node] = [root] * n
            stop = yield from grow(ctx, live, root, self.score_steps, candidates)
        return conclude(ctx, candidates, selection, stop)
