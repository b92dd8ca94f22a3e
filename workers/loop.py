"""The batched search loop: every live question's strategy advances one request per tick, and the
requests of all questions are served by one policy call (prefill, expand) and one verifier
call per aggregation mode (score). Accounting happens here, in one place."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ponder.kernels import topk_prune
from ponder.proto import pb
from ponder.proto.config import Limits, SolveConfig
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.service import metrics
from ponder.workers.policy import Policy
from ponder.workers.search.base import SearchContext, Strategy, usage_to_proto
from ponder.workers.search.controller import BudgetBank
from ponder.workers.search.plan import DEFAULT_PLAN, PlanTable
from ponder.workers.search.registry import make_strategy
from ponder.workers.types import Expand, Node, Outcome, Prefill, Prompt, Prune, Score
from ponder.workers.verifier import NullVerifier, Verifier

log = logging.getLogger(__name__)
T = TypeVar("T")

EventSink = Callable[[str, list[pb.SolveEvent]], None]
MAX_PRUNE_ROUNDS_PER_TICK = 8


@dataclass
class Job:
    ctx: SearchContext
    strategy: Strategy
    gen: Any
    started: float
    pending: Any = None  # the request waiting to be served
    reply: Any = None  # the reply to send on the next advance
    done: bool = False
    outcome: Outcome | None = None


class SearchLoop:
    """Runs many strategies at once over one policy and one verifier.

    Not thread-safe except :meth:`cancel`, which may be called from any thread.
    """

    def __init__(
        self,
        policy: Policy,
        verifier: Verifier | None = None,
        sink: EventSink | None = None,
        reviser: Policy | None = None,
        plan: PlanTable | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.policy = policy
        # A reviser, when given, serves every prompt that carries earlier attempts (and every
        # step under such a root); first attempts stay with the policy.
        self.reviser = reviser
        self.verifier = verifier or NullVerifier()
        self.has_verifier = not isinstance(self.verifier, NullVerifier)
        self._sink: EventSink = sink or (lambda job_id, events: None)
        self.jobs: dict[str, Job] = {}
        # auto's plan table and the live controller's thresholds (search/plan.py)
        self.plan = plan or DEFAULT_PLAN
        self.limits = limits
        # Generations settled questions did not spend, for uncertain ones running beside them
        # (search/controller.py); a deposit expires once the questions it could fund have ended.
        self.bank = BudgetBank(live=lambda: [j for j, job in self.jobs.items() if not job.done])

    @property
    def device(self) -> torch.device:
        """Where the policy computes; the loop's own tensors (prune scores) go there too."""
        return torch.device(getattr(self.policy, "device", "cpu"))

    def _owner(self, prompt: Prompt | None) -> Policy:
        """The policy that serves a prompt, and every node under the root built from it."""
        if self.reviser is not None and prompt is not None and prompt.attempts:
            return self.reviser
        return self.policy

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, job_id: str, config: SolveConfig, *, deadline: float | None = None) -> SearchContext:
        """Start a job; its strategy runs from the next tick. Raises PonderError on bad config."""
        self._check_context(config.question)
        ctx = SearchContext(
            job_id,
            config,
            step_delimiter=self.policy.step_delimiter,
            deadline=deadline,
            has_verifier=self.has_verifier,
            vote_power=self.verifier.vote_power,
            plan=self.plan,
            bank=self.bank,
            bounds=config.budget_bounds(self.limits, min_default=self.plan.controller.min_candidates),
        )
        strategy = make_strategy(ctx)
        ctx.emit(
            started=pb.Started(
                strategy=strategy.name,
                plan=strategy.plan(),
                model=self.policy.name,
                generations=ctx.budget,
                verifier=self.verifier.name if self.has_verifier else "",
            )
        )
        self.jobs[job_id] = Job(ctx=ctx, strategy=strategy, gen=strategy.run(), started=time.time())
        self._flush(self.jobs[job_id])
        return ctx

    def _check_context(self, question: str) -> None:
        """A question whose prompt fills the model's context fails alone, here, before it
        joins a batch (where its failure would fail the batch's other jobs' tick)."""
        limit = self.policy.context_tokens
        if not limit:
            return
        n = self.policy.prompt_tokens(Prompt(question))
        if n is not None and n >= limit:
            raise InvalidArgument(
                "question", f"its prompt takes {n} tokens; the model's context holds {limit}, with room to answer"
            )

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        job.ctx.cancelled = True
        return True

    def drop(self, job_id: str) -> bool:
        """Forget a job at once and free its nodes, publishing nothing more (a worker that was
        fenced out: another worker owns the job now). Returns whether the job was here."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        job.done = True
        self._release(job)
        return True

    def set_sink(self, sink: EventSink) -> None:
        """Where the events of every job go from now on (``sink(job_id, events)``)."""
        self._sink = sink

    @property
    def idle(self) -> bool:
        return not self.jobs

    # -- the tick ---------------------------------------------------------------------------

    def tick(self) -> int:
        """Advance every job by one request; return how many jobs are still live."""
        todo = list(self.jobs.values())
        # Prunes need no model: answer them and advance those jobs again at once, a bounded
        # number of times (a strategy that only ever prunes is served on the next tick).
        for _ in range(MAX_PRUNE_ROUNDS_PER_TICK):
            for job in todo:
                self._advance(job)
                self._flush(job)  # stream what the strategy just emitted before the next model call
            todo = [j for j in self.jobs.values() if not j.done and isinstance(j.pending, Prune)]
            if not todo:
                break
            self._serve_prune(todo)
        live = [j for j in self.jobs.values() if not j.done]
        self._serve_prefill([j for j in live if isinstance(j.pending, Prefill)])
        self._serve_expand([j for j in live if isinstance(j.pending, Expand)])
        self._serve_score([j for j in live if isinstance(j.pending, Score)])
        for job in list(self.jobs.values()):
            self._release(job)
            self._flush(job)
            if job.done:
                self._finish(job)
        self.bank.expire()
        return len(self.jobs)

    def run_until_idle(self, max_ticks: int = 100_000) -> None:
        for _ in range(max_ticks):
            if not self.tick():
                return
        raise RuntimeError("search loop did not go idle")

    def _advance(self, job: Job) -> None:
        if job.done or job.pending is not None:
            return
        if job.ctx.cancelled or (job.ctx.deadline is not None and time.time() >= job.ctx.deadline):
            reason = "cancelled" if job.ctx.cancelled else "deadline"
            job.gen.close()
            code = "CANCELLED" if reason == "cancelled" else "DEADLINE_EXCEEDED"
            job.ctx.emit(error=pb.Error(code=code, message=f"job stopped: {reason}"))
            job.done = True
            return
        try:
            reply, job.reply = job.reply, None
            job.pending = job.gen.send(reply)
        except StopIteration as stop:
            job.outcome = stop.value
            job.done = True
            job.ctx.give_back()  # before the other questions of this tick decide to widen
            self._emit_final(job)
        except PonderError as exc:
            self._fail(job, exc.code, exc.message)
        except Exception as exc:  # a strategy bug must not take the other questions down
            log.exception("strategy %s failed on job %s", job.strategy.name, job.ctx.job_id)
            self._fail(job, "INTERNAL", f"{type(exc).__name__}: {exc}")

    def _fail(self, job: Job, code: str, message: str) -> None:
        job.ctx.emit(error=pb.Error(code=code, message=message))
        job.done = True
        job.pending = None

    def _serve(self, jobs: list[Job], fn: Callable[[list[Job]], None]) -> None:
        """Serve the jobs' requests in one call. If the batched call fails, each job is retried
        on its own, so one bad request (or a batch too big for the KV cache) fails only the
        jobs that fail alone."""
        marks = {id(j): j.ctx.id_mark() for j in jobs}
        try:
            fn(jobs)
            return
        except Exception as exc:
            if len(jobs) == 1:
                self._fail_with(jobs[0], exc)
                return
            log.warning("batched call for %d jobs failed (%s); retrying them one by one", len(jobs), exc)
        for job in jobs:
            job.ctx.rewind_ids(marks[id(job)])  # the retry draws the same node ids, hence seeds
            try:
                fn([job])
            except Exception as exc:
                self._fail_with(job, exc)

    def _fail_with(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, PonderError):
            self._fail(job, exc.code, exc.message)
        else:
            log.error("job %s failed", job.ctx.job_id, exc_info=exc)
            self._fail(job, "INTERNAL", f"{type(exc).__name__}: {exc}")

    # -- serving requests -------------------------------------------------------------------

    def _serve_prefill(self, jobs: list[Job]) -> None:
        if not jobs:
            return

        def run(jobs: list[Job]) -> None:
            prompts = [p for j in jobs for p in j.pending.prompts]
            outs = iter(_per_owner(prompts, self._owner, lambda pol, ps: pol.prefill(ps)))
            for job in jobs:
                ctx, roots = job.ctx, []
                for prompt in job.pending.prompts:
                    out, owner = next(outs), self._owner(prompt)
                    root = Node(
                        id=ctx.new_id(), parent=None, depth=0, text=owner.format_prompt(prompt),
                        token_ids=out.token_ids, handle=out.handle, prompt=prompt,
                    )
                    ctx.nodes.append(root)
                    roots.append(root)
                    u, f = ctx.usage, 2.0 * owner.n_params
                    u.prompt_tokens += out.computed_tokens
                    u.tokens_saved += out.reused_tokens
                    u.flops += f * out.computed_tokens
                    u.flops_unshared += f * len(out.token_ids)
                job.reply, job.pending = roots, None

        self._serve(jobs, run)

    def _serve_expand(self, jobs: list[Job]) -> None:
        if not jobs:
            return

        def run(jobs: list[Job]) -> None:
            parents: list[Node] = []
            params, seeds, ids = [], [], []
            for job in jobs:
                for parent in job.pending.parents:
                    node_id = job.ctx.new_id()
                    parents.append(parent)
                    params.append(job.pending.sampling)
                    ids.append(node_id)
                    seeds.append(job.ctx.row_seed(node_id))
            rows = list(range(len(parents)))
            outs = _per_owner(
                rows,
                lambda i: self._owner(parents[i].root.prompt),
                lambda pol, idx: pol.expand([parents[i] for i in idx], [params[i] for i in idx], [seeds[i] for i in idx]),
            )
            metrics.BATCH_ROWS.observe(len(parents))
            metrics.DECODED.inc(sum(len(o.token_ids) for o in outs))
            k = 0
            for job in jobs:
                ctx, children = job.ctx, []
                for parent in job.pending.parents:
                    out = outs[k]
                    child = Node(
                        id=ids[k], parent=parent, depth=parent.depth + 1, text=out.text,
                        token_ids=out.token_ids, finished=out.finished, stop_reason=out.stop_reason,
                        hidden=out.hidden, logprobs=out.logprobs, handle=out.handle, aggregate=parent.aggregate,
                        n_scored=parent.n_scored,
                    )
                    k += 1
                    self._charge_step(ctx, parent, child, out.computed_tokens)
                    parent.n_children += 1
                    ctx.nodes.append(child)
                    children.append(child)
                job.reply, job.pending = children, None

        self._serve(jobs, run)

    def _charge_step(self, ctx: SearchContext, parent: Node, child: Node, computed: int) -> None:
        u, f = ctx.usage, 2.0 * self._owner(parent.root.prompt).n_params
        new = len(child.token_ids)
        u.decode_tokens += new
        u.prompt_tokens += max(0, computed - new)  # a re-encoded prefix is prefill work
        u.flops += f * max(computed, new)
        u.steps += 1
        # Without sharing, only the first continuation of a node reuses its cache; every other
        # child recomputes the whole prefix (prompt and earlier steps).
        unshared = new if parent.n_children == 0 else new + parent.prefix_tokens()
        u.flops_unshared += f * unshared
        u.tokens_saved += max(0, unshared - max(computed, new))

    def _serve_score(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        by_mode: dict[str, list[Job]] = {}
        for job in jobs:
            by_mode.setdefault(job.ctx.config.aggregation, []).append(job)
        for mode, group in by_mode.items():

            def run(group: list[Job], mode: str = mode) -> None:
                nodes = [n for j in group for n in j.pending.nodes]
                out = self.verifier.score(nodes, mode)
                total = max(1, len(nodes))
                k = 0
                for job in group:
                    scores = []
                    mine = len(job.pending.nodes)
                    for node in job.pending.nodes:
                        node.score = out.scores[k]
                        node.aggregate = out.aggregates[k]
                        node.n_scored += 1
                        scores.append(out.scores[k])
                        k += 1
                    # A batched PRM call's tokens and FLOPs are split by each job's share of rows.
                    job.ctx.usage.prm_tokens += round(out.prm_tokens * mine / total)
                    job.ctx.usage.flops += out.flops * mine / total
                    job.ctx.usage.flops_unshared += out.flops * mine / total
                    job.reply, job.pending = scores, None

            self._serve(group, run)

    def _serve_prune(self, jobs: list[Job]) -> None:
        """Every segment of every job's Prune request in one segmented ``topk_prune`` launch."""
        if not jobs:
            return

        def run(jobs: list[Job]) -> None:
            segments = [(job, g, keep) for job in jobs for g, keep in zip(job.pending.groups, job.pending.keep, strict=True)]
            nodes = [n for _, g, _ in segments for n in g]
            dev = self.device  # the policy's: on a GPU the prune runs as the Triton kernel there
            scores = torch.tensor(
                [n.aggregate if n.aggregate is not None else 0.0 for n in nodes], dtype=torch.float32, device=dev
            )
            offsets = torch.tensor(
                [0, *itertools.accumulate(len(g) for _, g, _ in segments)], dtype=torch.long, device=dev
            )
            k = torch.tensor([max(0, keep) for _, _, keep in segments], dtype=torch.long, device=dev)
            kept, _, kept_offsets = topk_prune(scores, offsets, k, torch.arange(len(nodes), dtype=torch.long, device=dev))
            kept_list, bounds = kept.tolist(), kept_offsets.tolist()
            replies: dict[int, list[list[Node]]] = {id(job): [] for job in jobs}
            for i, (job, _, _) in enumerate(segments):
                replies[id(job)].append([nodes[j] for j in kept_list[bounds[i] : bounds[i + 1]]])
            for job in jobs:
                job.reply, job.pending = replies[id(job)], None

        self._serve(jobs, run)

    # -- events and cleanup -----------------------------------------------------------------

    def _emit_final(self, job: Job) -> None:
        out = job.outcome
        assert out is not None
        final = pb.Final(
            answer=out.answer,
            solution=out.solution,
            usage=usage_to_proto(job.ctx.usage),
            strategy=job.strategy.name,
            stop_reason=out.stop_reason,
            latency_s=time.time() - job.started,
            nominal_generations=job.ctx.config.generations,
            low_confidence=job.ctx.low_confidence,
            difficulty_bin=job.ctx.difficulty_bin,
        )
        for vote in out.votes:
            final.votes.add(answer=vote.answer, count=vote.count, score=vote.score)
        job.ctx.emit(final=final)

    def _release(self, job: Job) -> None:
        ctx = job.ctx
        nodes = ctx.nodes if job.done else ctx.released
        todo = [n for n in nodes if not n.released]
        if todo:
            _per_owner(todo, lambda n: self._owner(n.root.prompt), _release_nodes)
            self.verifier.release(todo)
            for n in todo:
                n.released = True
        ctx.released = []

    def _flush(self, job: Job) -> None:
        if job.ctx.events:
            events, job.ctx.events = job.ctx.events, []
            self._sink(job.ctx.job_id, events)

    def _finish(self, job: Job) -> None:
        job.ctx.give_back()  # a failed or cancelled question's unspent allowance, too
        self.jobs.pop(job.ctx.job_id, None)
        job.ctx.nodes = []


def _release_nodes(policy: Policy, nodes: list[Node]) -> list[Any]:
    policy.release(nodes)
    return []


def _per_owner(items: list[T], owner: Callable[[T], Policy], call: Callable[[Policy, list[T]], list[Any]]) -> list[Any]:
    """One batched call per policy (the policy, and the reviser when there is one), results
    back in the order of ``items``."""
    groups: dict[int, tuple[Policy, list[int]]] = {}
    for i, item in enumerate(items):
        pol = owner(item)
        groups.setdefault(id(pol), (pol, []))[1].append(i)
    out: list[Any] = [None] * len(items)
    for pol, idx in groups.values():
        for i, result in zip(idx, call(pol, [items[i] for i in idx])):
            out[i] = result
    return out
