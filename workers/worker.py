"""The worker process: takes jobs from the Redis consumer group, runs them all in one batched
search loop, publishes their events, acknowledges them.

Two halves: an async side doing all Redis I/O (intake, reclaim, leases, cancel polling,
publishing, heartbeats) as one anyio task group, and one compute thread running
:class:`SearchLoop` ticks. The compute thread hands events to the publisher through a bounded
anyio memory stream (``anyio.from_thread.run``: when Redis is slow the thread waits instead of
growing memory, and says so in the log); the async side hands jobs and cancels to the thread
through a ``queue.Queue`` (bounded by ``capacity``: it holds at most one start per job). A
child of the task group that fails with anything but a Redis outage (a bug) cancels its
siblings and ``run`` raises: the process exits non-zero, and its jobs are reclaimed by the
other workers once its lease runs out.

Failure handling: a job's queue entry stays pending until its final event is written. Each
worker renews the idle time of its own entries every ``lease_s / 3``; a worker that dies stops
renewing, and after ``lease_s`` another worker takes the entry over with XAUTOCLAIM and runs the
job again with a higher attempt number. Events are fenced by attempt number, so a stale worker
cannot write, and the client sees exactly one final event.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from redis.exceptions import RedisError

from ponder.proto import pb
from ponder.proto.config import STRATEGIES, Limits, SolveConfig
from ponder.proto.errors import InvalidArgument, PonderError, Unavailable
from ponder.service import metrics
from ponder.store.jobs import JobStore, QueuedJob
from ponder.store.keys import DEFAULT_PREFIX
from ponder.workers.loop import SearchLoop
from ponder.workers.policy import Policy
from ponder.workers.search.plan import PlanTable
from ponder.workers.search.registry import STRATEGY_CLASSES
from ponder.workers.verifier import Verifier

log = logging.getLogger(__name__)
# What a worker rides out with retries (Redis down, restarting, slow); anything else is a bug.
TRANSIENT: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, Unavailable)
OUTBOX = 1024  # event batches buffered between the compute thread and the publisher
SOLO_CHECK_S = 0.25  # how often intake looks for an isolated job waiting (and refreshes its reservation)


# -- the compute thread's inbox: what the async side asks of the search loop -------------------


@dataclass(frozen=True)
class Start:
    """Start searching a claimed job."""

    job_id: str
    config: SolveConfig
    deadline: float | None


@dataclass(frozen=True)
class Cancel:
    """Stop a job before its next model call (it ends with ``error{CANCELLED}``)."""

    job_id: str


@dataclass(frozen=True)
class Drop:
    """Forget a job and publish nothing more: another worker owns it now (fenced out)."""

    job_id: str


Message = Start | Cancel | Drop


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str
    prefix: str = DEFAULT_PREFIX
    capacity: int = 16  # questions searched at once
    lease_s: float = 30.0  # a job whose worker is silent this long is re-run elsewhere
    # A job lost with a dying worker is re-run; after `isolate_after` losses it runs alone, and
    # if `max_solo_losses` workers die while running it alone it fails (see keys.CLAIM).
    isolate_after: int = 2
    max_solo_losses: int = 2
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: a free one; None: off)
    heartbeat_s: float = 2.0
    cancel_poll_s: float = 0.25
    drain_s: float = 30.0  # on SIGTERM, how long running jobs may finish before we leave
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise InvalidArgument("capacity", f"must be >= 1, got {self.capacity}")
        if self.lease_s <= 0.3:
            raise InvalidArgument("lease_s", f"must be > 0.3 s, got {self.lease_s}")
        if self.isolate_after < 1:
            raise InvalidArgument("isolate_after", f"must be >= 1, got {self.isolate_after}")
        if self.max_solo_losses < 1:
            raise InvalidArgument("max_solo_losses", f"must be >= 1, got {self.max_solo_losses}")


@dataclass
class Active:
    qjob: QueuedJob
    attempt: int
    created: float
    started: float
    lost: int = 0  # earlier attempts lost with their workers


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        policy: Policy,
        verifier: Verifier | None = None,
        reviser: Policy | None = None,
        plan: PlanTable | None = None,
    ) -> None:
        self.cfg = config
        self.policy = policy
        self.verifier = verifier
        self.store = JobStore.from_url(config.redis_url, config.prefix)
        self.active: dict[str, Active] = {}
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._outbox: MemoryObjectSendStream[tuple[str, list[pb.SolveEvent]]] | None = None
        self._token: Any = None  # the event loop's, for calls from the compute thread
        self._stop = threading.Event()
        self._drained: anyio.Event | None = None  # set when the last running job ends while draining
        self._backpressure = False
        self._draining = False
        self.loop = SearchLoop(policy, verifier, sink=self._sink, reviser=reviser, plan=plan, limits=config.limits)
        self.jobs_done = 0
        self.failed = False
        self.solo: str | None = None  # the isolated job this worker runs alone, if any
        self._stop_event: Any = None

    # -- compute thread ---------------------------------------------------------------------

    def _sink(self, job_id: str, events: list[pb.SolveEvent]) -> None:
        """Hand events to the publisher; blocks while its buffer is full (backpressure)."""
        assert self._outbox is not None
        # (the stream is not thread-safe: every send goes through the event loop; the buffer
        # statistics read here only decide what to log)
        full = self._outbox.statistics().current_buffer_used >= OUTBOX
        if full != self._backpressure:
            self._backpressure = full
            if full:
                log.warning("event buffer full (%d batches): the compute thread waits for Redis", OUTBOX)
            else:
                log.info("event buffer has room again")
        try:
            anyio.from_thread.run(self._outbox.send, (job_id, events), token=self._token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
            return  # shutting down: the job is released or reclaimed elsewhere

    def _compute_main(self) -> None:
        try:
            self._compute_loop()
        except BaseException:
            # The loop contains every error of a job; reaching here is a bug or a dying process.
            # Stop the worker: its jobs are reclaimed by the others once its lease runs out.
            log.exception("the compute thread died; stopping this worker")
            self.failed = True
            if self._token is not None and self._stop_event is not None:
                try:
                    anyio.from_thread.run_sync(self._stop_event.set, token=self._token)
                except RuntimeError:  # the event loop is gone already
                    pass

    def _compute_loop(self) -> None:
        while not self._stop.is_set():
            try:
                timeout = 0.2 if self.loop.idle else 0.0
                while True:
                    message = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
                    timeout = 0.0
                    self._handle(message)
            except queue.Empty:
                pass
            if not self.loop.idle:
                self.loop.tick()

    def _handle(self, message: Message) -> None:
        match message:
            case Start(job_id, config, deadline):
                try:
                    self.loop.submit(job_id, config, deadline=deadline)
                except PonderError as exc:
                    self._sink(job_id, [pb.SolveEvent(job_id=job_id, time=time.time(),
                                                      error=pb.Error(code=exc.code, message=exc.message))])
            case Cancel(job_id):
                self.loop.cancel(job_id)
            case Drop(job_id):
                self.loop.drop(job_id)

    # -- async side (anyio) -------------------------------------------------------------------

    async def run(self, stop: Any = None) -> None:
        """Serve until ``stop`` (an event) is set, then drain (see WorkerConfig.drain_s) and
        return. Raises when a child task fails with a bug: nothing is left running either way."""
        stop = stop or anyio.Event()
        self._stop_event = stop
        self._token = anyio.lowlevel.current_token()
        send, receive = anyio.create_memory_object_stream[tuple[str, list[pb.SolveEvent]]](OUTBOX)
        self._outbox = send
        await self.store.ping()
        await self.store.ensure_groups()
        metrics_server = metrics.serve_metrics(self.cfg.metrics_port)
        if metrics_server is not None:
            log.info("metrics on http://127.0.0.1:%d/metrics", metrics_server.server_port)
        compute = threading.Thread(target=self._compute_main, name="ponder-compute", daemon=True)
        compute.start()
        log.info("worker %s serving model %s", self.cfg.worker_id, self.policy.name)
        try:
            async with anyio.create_task_group() as tg:
                intake = anyio.CancelScope()  # stopped first: no job is taken once draining starts

                async def take_jobs() -> None:
                    with intake:
                        await self._intake(stop)

                tg.start_soon(take_jobs, name="intake")
                tg.start_soon(self._publisher, receive, name="publisher")
                tg.start_soon(self._leases, name="leases")
                tg.start_soon(self._heartbeats, name="heartbeat")
                await stop.wait()
                intake.cancel()
                await self._drain()
                await self._release_unfinished()
                tg.cancel_scope.cancel()
        finally:
            self._stop.set()
            send.close()
            if metrics_server is not None:
                metrics_server.shutdown()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(compute.join, 5.0)
                try:
                    await self.store.remove_worker(self.cfg.worker_id)
                except Exception:  # Redis may already be gone on shutdown
                    pass
                await self.store.close()

    async def _drain(self) -> None:
        """Stop taking jobs; give running ones ``drain_s`` seconds to finish (a cancel scope
        with a deadline, woken the moment the last one ends)."""
        self._draining = True
        if self.failed:
            self.active.clear()  # nothing can finish them here
        self._drained = anyio.Event()
        if not self.active:
            self._drained.set()
        with anyio.move_on_after(self.cfg.drain_s):
            await self._drained.wait()
        if self.active:
            log.warning("leaving %d unfinished jobs to be reclaimed by other workers", len(self.active))

    async def _release_unfinished(self) -> None:
        """Hand jobs the drain did not finish back at once, as never started (not lost): the
        next worker takes them without waiting for this one's lease, and they are not charged
        a loss (see keys.RELEASE)."""
        if not self.active or self.failed:
            return
        released = 0
        for job_id, act in list(self.active.items()):
            self.active.pop(job_id, None)  # nothing of ours is left to finish or renew
            try:
                released += await self.store.release(act.qjob, self.cfg.worker_id, act.attempt,
                                                     int(self.cfg.lease_s * 1000))
            except TRANSIENT as exc:  # Redis is down: the lease runs out and they are reclaimed
                log.warning("could not release job %s (%s: %s)", job_id, type(exc).__name__, exc)
        log.info("released %d unfinished job(s) to the other workers", released)

    def _finished(self, job_id: str) -> None:
        self.active.pop(job_id, None)
        if self._drained is not None and not self.active:
            self._drained.set()

    async def _intake(self, stop: Any) -> None:
        last_reclaim = last_forget = last_solo = 0.0
        lease_ms = int(self.cfg.lease_s * 1000)
        failing = reserved = False
        while not stop.is_set():
            try:
                if self.solo is not None and self.solo in self.active:
                    await anyio.sleep(0.05)  # an isolated job runs alone
                    continue
                self.solo = None
                if time.monotonic() - last_solo >= SOLO_CHECK_S:  # not on every pass: the loop spins when full
                    last_solo = time.monotonic()
                    reserved = bool(await self.store.solo_waiting(lease_ms)) and await self.store.reserve_solo(
                        self.cfg.worker_id, lease_ms)
                if reserved:
                    # this worker (one per waiting solo job, by reservation) lets its batch
                    # finish, then takes the isolated job alone; the others go on as usual
                    if self.active:
                        await anyio.sleep(0.05)
                        continue
                    jobs = await self.store.reclaim(self.cfg.worker_id, lease_ms, 1, solo=True)
                    jobs = jobs or await self.store.read_jobs(self.cfg.worker_id, 1, block_ms=0, solo=True)
                    for qjob in jobs:
                        await self._start(qjob, alone=True)
                    if jobs:
                        await self.store.unreserve_solo(self.cfg.worker_id)
                    reserved = False
                    continue
                free = self.cfg.capacity - len(self.active)
                if free <= 0:
                    await anyio.sleep(0.02)
                    continue
                jobs = []
                if time.monotonic() - last_reclaim >= min(1.0, self.cfg.lease_s / 4):
                    last_reclaim = time.monotonic()
                    jobs = await self.store.reclaim(self.cfg.worker_id, lease_ms, free)
                if time.monotonic() - last_forget >= self.cfg.lease_s:
                    last_forget = time.monotonic()
                    alive = {w.worker_id for w in await self.store.workers(3 * self.cfg.heartbeat_s + 1)}
                    gone = await self.store.forget_consumers(alive | {self.cfg.worker_id}, 2 * lease_ms)
                    if gone:
                        log.info("removed %d dead consumers from the job queues: %s", len(gone), ", ".join(gone))
                if not jobs:
                    jobs = await self.store.read_jobs(self.cfg.worker_id, free, block_ms=200)
                for qjob in jobs:
                    await self._start(qjob)
                if failing:
                    log.info("intake recovered")
                failing = False
            except TRANSIENT as exc:
                # one line per outage, not a traceback twice a second; anything else is a bug
                # and ends the worker (the task group cancels its siblings, run() raises)
                if not failing:
                    log.warning("intake failed (%s: %s); retrying every 0.5 s", type(exc).__name__, exc)
                failing = True
                await anyio.sleep(0.5)

    async def _start(self, qjob: QueuedJob, alone: bool = False) -> None:
        # shielded: a drain that cancels intake waits for a claim to be registered as active
        # (a claimed job nobody lists could be neither finished nor released)
        with anyio.CancelScope(shield=True):
            await self._start_now(qjob, alone)

    async def _start_now(self, qjob: QueuedJob, alone: bool) -> None:
        attempt, state = await self.store.claim(
            qjob, self.cfg.worker_id, alone=alone,
            isolate_after=self.cfg.isolate_after, max_solo_losses=self.cfg.max_solo_losses,
        )
        if attempt < 0:  # isolated: moved to the solo queue for a worker that runs nothing else
            log.warning("job %s was lost with %d workers; it will run alone", qjob.job_id, self.cfg.isolate_after)
            return
        if attempt == 0:  # finished, cancelled while queued, or failed for killing workers
            if state == "failed" and qjob.reclaimed:
                log.error("job %s failed: workers died while running it alone", qjob.job_id)
            await self.store.ack(qjob)
            return
        if alone:
            self.solo = qjob.job_id
        try:
            rec = await self.store.load(qjob.job_id)
            config = rec.config.validate(self.cfg.limits)
            self._check_model(config)
        except PonderError as exc:
            event = pb.SolveEvent(job_id=qjob.job_id, time=time.time(), error=pb.Error(code=exc.code, message=exc.message))
            await self.store.publish(qjob.job_id, attempt, event)
            await self.store.ack(qjob)
            return
        now = time.time()
        self.active[qjob.job_id] = Active(qjob, attempt, rec.created, now, rec.lost)
        log.info("job %s started (attempt %d, %s)", qjob.job_id, attempt, config.strategy,
                 extra={"job_id": qjob.job_id, "attempt": attempt, "worker": self.cfg.worker_id,
                        "strategy": config.strategy})
        deadline = rec.created + config.timeout_s if config.timeout_s else None
        self._inbox.put(Start(qjob.job_id, config, deadline))
        if rec.cancel:
            self._inbox.put(Cancel(qjob.job_id))

    def _check_model(self, config: SolveConfig) -> None:
        if config.model and config.model not in (self.policy.name, getattr(self.policy, "source", "")):
            raise InvalidArgument("model", f"this worker serves {self.policy.name!r}, not {config.model!r}")

    async def _publisher(self, receive: ObjectReceiveStream[tuple[str, list[pb.SolveEvent]]]) -> None:
        async with receive:  # closed on the way out: the compute thread's sends fail, not hang
            async for job_id, events in receive:
                await self._publish_batch(job_id, events)

    async def _publish_batch(self, job_id: str, events: list[pb.SolveEvent]) -> None:
        act = self.active.get(job_id)
        if act is None:
            return
        for event in events:
            kind = event.WhichOneof("kind")
            if kind == "started":
                event.started.attempt = act.attempt
                event.started.worker = self.cfg.worker_id
                if act.attempt > 1:  # watchers drop what the earlier attempts streamed
                    event.started.restart_reason = (
                        f"attempt {act.attempt}: an earlier attempt's worker stopped "
                        f"(lost {act.lost} time{'s' if act.lost != 1 else ''}); its steps are void"
                    )
            elif kind == "final":
                event.final.latency_s = time.time() - act.created
                event.final.queue_s = act.started - act.created
                _observe_final(event.final)
            elif kind == "decision":
                metrics.DECISIONS.labels(event.decision.kind).inc()
            seq = await self._publish_retrying(job_id, act.attempt, event)
            if seq == -1:  # another worker re-ran this job: stop ours, write nothing more
                log.warning("job %s attempt %d was taken over; dropping it", job_id, act.attempt,
                            extra={"job_id": job_id, "attempt": act.attempt, "worker": self.cfg.worker_id})
                self._inbox.put(Drop(job_id))
                self._finished(job_id)
                break
            if kind in ("final", "error") and seq > 0:
                state = "done" if kind == "final" else "cancelled" if event.error.code == "CANCELLED" else "failed"
                metrics.FINISHED.labels(state).inc()
                latency = round(time.time() - act.created, 3)
                log.info("job %s %s after %.2f s", job_id, state, latency,
                         extra={"job_id": job_id, "attempt": act.attempt, "worker": self.cfg.worker_id,
                                "state": state, "latency_s": latency})
                try:
                    await self.store.ack(act.qjob)
                except TRANSIENT as exc:  # the job is over; a later reclaim sees it done and acks it
                    log.warning("acknowledging job %s failed (%s: %s)", job_id, type(exc).__name__, exc)
                self._finished(job_id)
                self.jobs_done += 1
                break

    async def _publish_retrying(self, job_id: str, attempt: int, event: pb.SolveEvent) -> int:
        """Publish, retrying while Redis is unreachable: an event is never dropped. If the
        outage outlasts the lease, the job is re-run elsewhere and this returns -1 (fenced)."""
        delay = 0.1
        while True:
            try:
                return await self.store.publish(job_id, attempt, event)
            except TRANSIENT as exc:
                if delay == 0.1:  # one line per outage, not a traceback per retry
                    log.warning("publishing an event of job %s failed (%s: %s); retrying", job_id, type(exc).__name__, exc)
                await anyio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _leases(self) -> None:
        last_renew = 0.0
        failing = False
        while True:
            await anyio.sleep(self.cfg.cancel_poll_s)
            try:
                ids = list(self.active)
                for job_id in await self.store.cancel_flags(ids):
                    self._inbox.put(Cancel(job_id))
                if time.monotonic() - last_renew >= self.cfg.lease_s / 3:
                    last_renew = time.monotonic()
                    await self.store.renew(self.cfg.worker_id, [a.qjob for a in list(self.active.values())])
                failing = False
            except TRANSIENT as exc:
                if not failing:
                    log.warning("lease renewal / cancel poll failed (%s: %s); retrying", type(exc).__name__, exc)
                failing = True

    async def _heartbeats(self) -> None:
        host = socket.gethostname()
        while True:
            info = pb.WorkerInfo(
                worker_id=self.cfg.worker_id, host=host, models=[self.policy.name],
                active_jobs=len(self.active), capacity=0 if self._draining else self.cfg.capacity,
                last_seen=time.time(), strategies=available_strategies(),
                verifier=self.loop.verifier.name if self.loop.has_verifier else "",
                plan=self.loop.plan.summary(),
                context_tokens=self.policy.context_tokens,
                device=self.policy.device, dtype=self.policy.dtype,
                max_token_chars=self.policy.max_token_chars,
            )
            _sample_metrics(self)
            try:
                await self.store.heartbeat(info)
            except TRANSIENT as exc:
                log.debug("heartbeat failed (%s: %s)", type(exc).__name__, exc)  # intake logs the outage
            await anyio.sleep(self.cfg.heartbeat_s)


def _observe_final(final: Any) -> None:
    u = final.usage
    metrics.LATENCY.observe(final.latency_s)
    metrics.QUEUE_TIME.observe(final.queue_s)
    metrics.ANSWER_GENERATIONS.observe(u.generations)
    metrics.ANSWER_TOKENS.observe(u.prompt_tokens + u.decode_tokens + u.prm_tokens)
    metrics.ANSWER_FLOPS.observe(u.flops)


def _sample_metrics(worker: Worker) -> None:
    metrics.ACTIVE.set(len(worker.active))
    engine = getattr(worker.policy, "engine", None)
    if engine is not None:
        st = engine.stats()
        metrics.KV_BLOCKS.labels("in_use").set(st.referenced_blocks)
        metrics.KV_BLOCKS.labels("cached").set(st.cached_blocks)
        metrics.KV_BLOCKS.labels("free").set(st.free_blocks)
        metrics.KV_REUSED.set(st.reused_tokens)


def available_strategies() -> list[str]:
    return [s for s in STRATEGIES if s in STRATEGY_CLASSES]
