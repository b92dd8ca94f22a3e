"""Strategies as state machines.

A strategy's :meth:`Strategy.run` is a generator: it yields a request (:class:`Prefill`,
:class:`Expand`, :class:`Score`), receives the reply through ``send``, and finally returns an
:class:`Outcome`. It never touches a model, so the worker loop can batch the requests of every
live question into one engine call per tick, and a controller can change ``ctx.budget``
between ticks.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Any, ClassVar

from ponder.proto import pb
from ponder.proto.config import DEFAULT_STEP_DELIMITER, SolveConfig
from ponder.workers.answers import Candidate, extract_answer, select
from ponder.workers.search.controller import BudgetBank, ControllerConfig, Tally
from ponder.workers.search.plan import DEFAULT_PLAN, PlanTable
from ponder.workers.types import Node, Outcome, Request, SamplingParams, Usage

StrategyRun = Generator[Request, Any, Outcome]


class SearchContext:
    """Per-question state shared by a strategy and the loop: config, budget, usage, events."""

    def __init__(
        self,
        job_id: str,
        config: SolveConfig,
        *,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        deadline: float | None = None,
        has_verifier: bool = False,
        vote_power: float = 1.0,
        plan: PlanTable = DEFAULT_PLAN,
        bank: BudgetBank | None = None,
        bounds: tuple[int, int] | None = None,
    ) -> None:
        self.job_id = job_id
        self.config = config
        self.seed = config.seed if config.seed is not None else random.getrandbits(63)
        self.budget = config.generations  # N; a controller may change it between ticks
        # Adaptive budgets (controller.py): the generations this question may spend now (its
        # nominal budget, plus what it drew from the bank), its (min, max), the worker's plan
        # table and the bank shared with the questions running beside it.
        self.allowance = config.generations
        self.bounds = bounds or (config.generations, config.generations)
        self.plan = plan
        self.bank = bank
        self.low_confidence = False  # the controller abandoned the question
        self.difficulty_bin = 0
        # Candidates of an earlier phase (auto's pilot) that compete in the final selection, and
        # every candidate of the last selection (so a phase can hand its candidates on).
        self.carried: list[Candidate] = []
        self.concluded: list[Candidate] = []
        self.step_delimiter = step_delimiter
        self.deadline = deadline
        self.has_verifier = has_verifier
        self.vote_power = vote_power  # the verifier's: weighted votes count score ** vote_power
        self.usage = Usage()
        self.cancelled = False
        self.events: list[pb.SolveEvent] = []
        self.nodes: list[Node] = []  # every node made for this question (freed at the end)
        self.released: list[Node] = []  # nodes the strategy dropped; the loop frees them
        self._next_id = 0

    # -- ids and sampling -------------------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def id_mark(self) -> int:
        """The id counter now; :meth:`rewind_ids` returns to it, so a request served again (a
        batched call retried job by job) draws the same node ids, hence the same seeds."""
        return self._next_id

    def rewind_ids(self, mark: int) -> None:
        self._next_id = mark

    def row_seed(self, node_id: int) -> int:
        """Seed of the sampling that creates ``node_id``: same job seed, same text."""
        return (self.seed * 1_000_003 + node_id * 7919) % (2**63 - 1)

    def sampling(self, *, greedy: bool = False) -> SamplingParams:
        c = self.config
        return SamplingParams(
            temperature=0.0 if greedy else c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            max_step_tokens=c.max_step_tokens,
        )

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    # -- budget -----------------------------------------------------------------------------

    def charge_generations(self, n: int) -> None:
        self.usage.generations += n

    def give_back(self) -> None:
        """The question is done spending: what is left of its allowance goes to the bank now, so
        questions widening in this very tick can draw it."""
        unspent = self.allowance - self.usage.generations
        if self.config.adaptive and self.bank is not None and unspent > 0:
            self.bank.deposit(unspent, by=self.job_id)
            self.allowance = self.usage.generations

    @property
    def controller(self) -> ControllerConfig:
        return self.plan.controller

    def stop_reason(self) -> str:
        """Why the search must wrap up now with what it has ('' when it may go on): a token or
        FLOP cap. Cancellation and deadlines are not the strategy's business: the loop stops
        the job before its next step and reports CANCELLED / DEADLINE_EXCEEDED."""
        c = self.config
        if c.max_tokens and self.usage.tokens >= c.max_tokens:
            return "max_tokens"
        if c.max_flops and self.usage.flops >= c.max_flops:
            return "max_flops"
        return ""

    def release(self, nodes: list[Node]) -> None:
        self.released.extend(n for n in nodes if not n.released)

    # -- events -----------------------------------------------------------------------------

    def emit(self, **kind: Any) -> None:
        self.events.append(pb.SolveEvent(job_id=self.job_id, time=time.time(), **kind))

    def emit_step(self, node: Node) -> None:
        step = pb.Step(
            node_id=node.id,
            parent_id=node.parent_id,
            depth=node.depth,
            text=node.text,
            finished=node.finished,
        )
        if node.score is not None:
            step.score = node.score
        if node.aggregate is not None:
            step.aggregate = node.aggregate
        self.emit(step=step)

    def emit_candidate(
        self, node: Node, answer: str | None, score: float | None = None, attempt_index: int = 0
    ) -> None:
        cand = pb.Candidate(
            node_id=node.id,
            solution=node.solution_text(self.step_delimiter),
            answer=answer or "",
            attempt_index=attempt_index,
        )
        if score is not None:
            cand.score = score
        self.emit(candidate=cand)

    def emit_progress(self, best_answer: str, vote_share: float) -> None:
        self.emit(
            progress=pb.Progress(
                usage=usage_to_proto(self.usage), best_answer=best_answer, vote_share=vote_share
            )
        )

    def emit_decision(self, kind: str, tally: Tally, reason: str = "", **extra: Any) -> None:
        """A controller or planner decision, with the statistics it was based on."""
        self.emit(
            decision=pb.Decision(
                kind=kind, reason=reason, candidates=tally.n, spent=self.usage.generations,
                allowance=self.allowance, nominal=self.config.generations, vote_share=tally.share,
                margin=tally.margin, stable=tally.stable, best_score=tally.best_score,
                mean_score=tally.mean_score, leader=tally.leader_answer, **extra,
            )
        )


def usage_to_proto(u: Usage) -> pb.Usage:
    return pb.Usage(**u.as_dict())


class Strategy(ABC):
    """Base of all strategies. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str]
    needs_verifier: ClassVar[bool] = False

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def plan(self) -> str:
        return f"{self.name} N={self.ctx.budget}"

    @abstractmethod
    def run(self) -> StrategyRun:
        """Yield requests, receive replies, return the :class:`Outcome`."""


# -- helpers shared by the strategies --------------------------------------------------------


def is_complete(node: Node, ctx: SearchContext) -> bool:
    """A solution is complete at EOS, once it states a boxed answer, or at the step cap."""
    return node.finished or "\\boxed" in node.text or node.depth >= ctx.max_steps


def candidate_of(node: Node, ctx: SearchContext) -> Candidate:
    text = node.solution_text(ctx.step_delimiter)
    score = node.aggregate if node.n_scored else None
    return Candidate(answer=extract_answer(text, lenient=True), solution=text, score=score, ref=node)


def default_selection(ctx: SearchContext, has_scores: bool) -> str:
    if ctx.config.selection:
        return ctx.config.selection
    return "weighted" if has_scores else "majority"


def conclude(ctx: SearchContext, candidates: list[Candidate], mode: str, stop_reason: str = "") -> Outcome:
    """Select the answer across candidates (and ``ctx.carried``) and emit a last progress event."""
    candidates = [*ctx.carried, *candidates]
    ctx.concluded = candidates
    sel = select(candidates, mode, ctx.vote_power)
    # the winner's share of the vote it was selected by (the same share the live controller
    # reports); counts when no candidate has a score
    weights = sel.weights if any(sel.weights.values()) else {v.answer: float(v.count) for v in sel.votes}
    total = sum(weights.values())
    share = weights.get(sel.answer, 0.0) / total if total else 0.0
    ctx.emit_progress(sel.answer, share)
    return Outcome(answer=sel.answer, solution=sel.solution, votes=sel.votes, stop_reason=stop_reason)
