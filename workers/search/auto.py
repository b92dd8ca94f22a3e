"""``auto``: the compute-optimal strategy (Snell et al. §3), with a live budget per question.

1. **Pilot.** ``plan.pilot`` samples (best-of-N, scored) are drawn from the question. They are
   candidates of the final answer and their cost is the question's.
2. **Difficulty.** Their mean final verifier score is the predicted difficulty; the plan table's
   edges put it in one of 5 bins (1 = easiest). Event: ``decision{kind: pilot}``.
3. **Plan.** The table's strategy for that bin and the request's budget. Event:
   ``decision{kind: plan}``. With an adaptive budget, a question the pilot already settles (or
   shows hopeless) ends here, before the plan spends anything.
4. **Run.** best-of-N plans continue in waves under the live controller (stop, abandon, widen
   from the batch's bank). Tree and revision plans (beam, lookahead, DVTS, revision, hybrid) run
   with the rest of the allowance, then any generations they leave unspent (a rounding of beams
   to the width, lookahead's k+1) go to more best-of-N samples; an adaptive question may widen there.
5. **Answer.** Selected across every candidate — pilot, plan and waves — by the plan's selection
   (verifier-weighted vote by default).

A fixed budget (``budget.mode = fixed``) gets exactly N generations: pilot + plan + top-up.
Without a verifier there is no difficulty estimate (bin 0) and the plan is majority best-of-N.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ponder.workers.answers import Candidate
from ponder.workers.search.base import SearchContext, Strategy, StrategyRun, conclude, default_selection
from ponder.workers.search.beam import BeamSearch, Lookahead
from ponder.workers.search.best_of_n import BestOfN
from ponder.workers.search.controller import Tally, decide
from ponder.workers.search.dvts import DVTS
from ponder.workers.search.plan import StrategyPlan
from ponder.workers.search.revision import Hybrid, Revision
from ponder.workers.search.waves import grow, sample_waves
from ponder.workers.types import Prefill, Prompt, Request

NEEDS_VERIFIER = ("beam", "lookahead", "dvts")
# The strategies a plan cell may name: auto runs one of them with the rest of the allowance.
DELEGATES: dict[str, type[Strategy]] = {cls.name: cls for cls in (BestOfN, BeamSearch, Lookahead, DVTS, Revision, Hybrid)}


class Auto(Strategy):
    name = "auto"

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self.scored = ctx.has_verifier

    def plan(self) -> str:
        lo, hi = self.ctx.bounds
        budget = f"adaptive [{lo}..{hi}]" if self.ctx.config.adaptive else "fixed"
        return f"auto N={self.ctx.budget} {budget} pilot={min(self.ctx.plan.pilot, self.ctx.budget)} ({self.ctx.plan.source})"

    def choose(self, difficulty_bin: int) -> StrategyPlan:
        plan = self.ctx.plan.lookup(difficulty_bin, self.ctx.config.generations)
        if not self.scored and plan.strategy in NEEDS_VERIFIER:
            return StrategyPlan("best_of_n", selection="majority")
        return plan

    def run(self) -> StrategyRun:
        ctx = self.ctx
        table = ctx.plan
        (root,) = yield Prefill([Prompt(ctx.config.question)])
        candidates: list[Candidate] = []
        pilot = min(table.pilot, ctx.allowance)
        ctx.charge_generations(pilot)
        stop = yield from grow(ctx, [root] * pilot, root, self.scored, candidates)
        tally = Tally.of(candidates, self.scored, power=ctx.vote_power)
        ctx.difficulty_bin = table.bin_of(tally.mean_score) if self.scored else 0
        ctx.emit_decision(
            "pilot", tally,
            f"{pilot} pilot samples, mean score {tally.mean_score:.3f} -> difficulty bin {ctx.difficulty_bin or '?'}",
            difficulty_bin=ctx.difficulty_bin,
        )
        plan = self.choose(ctx.difficulty_bin)
        # the request's own selection wins over the plan's; the controller votes the same way
        selection = ctx.config.selection or plan.selection or default_selection(ctx, self.scored)
        tally = Tally.of(candidates, self.scored, selection != "majority", ctx.vote_power)
        ctx.emit_decision("plan", tally, f"bin {ctx.difficulty_bin or '?'}, N={ctx.config.generations}: {plan.describe()}",
                          difficulty_bin=ctx.difficulty_bin, plan=plan.describe())
        if stop:
            return conclude(ctx, candidates, selection, stop)
        if plan.strategy != "best_of_n" and ctx.allowance > ctx.usage.generations:
            if ctx.config.adaptive:
                lo, hi = ctx.bounds
                action = decide(tally, ctx.usage.generations, ctx.usage.generations + 1, lo, hi, ctx.controller)
                if action.kind in ("stop", "abandon"):
                    ctx.low_confidence = action.kind == "abandon"
                    ctx.emit_decision(action.kind, tally, action.reason)
                    ctx.give_back()
                    return conclude(ctx, candidates, selection, "settled" if action.kind == "stop" else "abandoned")
            stop = yield from self._run_plan(plan, candidates)
            candidates = ctx.concluded
            ctx.carried = []
            tally = Tally.of(candidates, self.scored, selection != "majority", ctx.vote_power)
            if stop:
                return conclude(ctx, candidates, selection, stop)
        stop = yield from sample_waves(ctx, root, tally, candidates, self.scored, selection)
        return conclude(ctx, candidates, selection, stop)

    def _run_plan(self, plan: StrategyPlan, pilot: list[Candidate]) -> Generator[Request, Any, str]:
        """Run the planned strategy with the rest of the allowance; the pilot's candidates are
        carried into its selection. Returns its stop reason."""
        ctx = self.ctx
        ctx.carried = list(pilot)
        overrides = {k: v for k, v in plan.overrides().items() if k not in ("strategy", "selection")}
        request, budget = ctx.config, ctx.budget
        ctx.config = request.replace(strategy=plan.strategy, budget_mode="fixed", min_generations=None,
                                     max_generations=None, **overrides)
        ctx.budget = ctx.allowance - ctx.usage.generations
        try:
            sub = DELEGATES[plan.strategy](ctx)
            outcome = yield from sub.run()
        finally:
            ctx.config, ctx.budget = request, budget
        return outcome.stop_reason
