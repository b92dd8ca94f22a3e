"""Sampling whole solutions from a root, in waves a live controller can stop or widen.

:func:`grow` extends a set of samples step by step (one batched Expand per tick, one Score
when a verifier scores steps) until each ends, and returns them as candidates.
:func:`sample_waves` launches waves of ``controller.wave`` samples; after each wave the
controller (controller.decide) stops, abandons, continues or widens the question, and every
decision is an event. With a fixed budget it launches the whole remaining allowance at once.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ponder.workers.answers import Candidate
from ponder.workers.search.base import SearchContext, candidate_of, is_complete
from ponder.workers.search.controller import Tally, decide
from ponder.workers.types import Expand, Node, Request, Score

WaveRun = Generator[Request, Any, str]


def grow(
    ctx: SearchContext, live: list[Node], root: Node, score_steps: bool, out: list[Candidate]
) -> Generator[Request, Any, str]:
    """Sample every node of ``live`` to the end of its solution, appending the candidates to
    ``out``; returns a token/FLOP cap's stop reason, or ''."""
    while live:
        children: list[Node] = yield Expand(live, ctx.sampling())
        if score_steps:
            yield Score(children)
        # Parents go only after their children are scored: a separate PRM extends the parent's
        # cached prefix to score a child.
        ctx.release([p for p in set(live) if p is not root])
        live = []
        for child in children:
            ctx.emit_step(child)
            if is_complete(child, ctx):
                _finish(ctx, child, out)
            else:
                live.append(child)
        stop = ctx.stop_reason()
        if stop:
            # Out of tokens/FLOPs: the unfinished samples compete with what they have.
            for child in live:
                _finish(ctx, child, out)
            return stop
    return ""


def _finish(ctx: SearchContext, node: Node, out: list[Candidate]) -> None:
    cand = candidate_of(node, ctx)
    ctx.emit_candidate(node, cand.answer, cand.score)
    out.append(cand)
    # A finished sample is a candidate by its text and score: its KV (the policy's blocks, a
    # verifier's cache) goes now, not when the question ends. Widened waves otherwise hold every
    # sample of every question in flight (auto N=64: 20 questions x up to 256 samples ran the
    # arith policy's 16,384-block cache out).
    ctx.release([node])


def sample_waves(
    ctx: SearchContext, root: Node, tally: Tally, candidates: list[Candidate], score_steps: bool, selection: str
) -> WaveRun:
    """Sample from ``root`` until the allowance is spent or the controller ends the question.
    The tally votes the way ``selection`` picks the answer (counts for majority, scores
    otherwise), so "settled" means settled for the answer that will be returned. Returns the
    stop reason: 'settled', 'abandoned', a cap's reason, or '' (budget spent)."""
    weighted = selection != "majority"
    cfg = ctx.controller
    lo, hi = ctx.bounds
    while True:
        spent = ctx.usage.generations
        if ctx.config.adaptive:
            action = decide(tally, spent, ctx.allowance, lo, hi, cfg, can_widen=ctx.bank is not None)
            if action.kind in ("stop", "abandon"):
                ctx.low_confidence = action.kind == "abandon"
                ctx.emit_decision(action.kind, tally, action.reason)
                ctx.give_back()
                return "settled" if action.kind == "stop" else "abandoned"
            if action.kind == "widen":
                assert ctx.bank is not None
                got = ctx.bank.withdraw(min(cfg.wave, hi - ctx.allowance), ctx.job_id)
                if got <= 0:
                    return ""
                ctx.allowance += got
                ctx.emit_decision("widen", tally, f"{action.reason}; drew {got} from the batch's bank")
            elif action.kind == "done":
                return ""
            n = min(cfg.wave, ctx.allowance - spent)
        else:
            n = ctx.allowance - spent
        if n <= 0:
            return ""
        ctx.charge_generations(n)
        new: list[Candidate] = []
        stop = yield from grow(ctx, [root] * n, root, score_steps, new)
        for cand in new:
            tally.add(cand, score_steps, weighted)
        candidates.extend(new)
        if ctx.config.adaptive and new:
            ctx.emit_progress(tally.leader_answer, tally.share)
        if stop:
            return stop
