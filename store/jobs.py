"""The job store: every read and write of job state in Redis, for schedulers and workers alike.

Payloads are protobuf bytes (never pickle). See :mod:`ponder.store.keys` for the layout.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ponder.store import keys as K

log = logging.getLogger(__name__)
TERMINAL_KINDS = ("final", "error")
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, the only job ids the store makes
EVENT_ID = re.compile(r"(0|[0-9]{1,20}(-[0-9]{1,20})?)")
# Connections a process may open to Redis. Calls wait for a free one (up to POOL_TIMEOUT_S)
# instead of failing; the scheduler's streams share one reader (:mod:`ponder.scheduler.hub`),
# so this bounds unary calls and worker traffic only.
RELEASED = "~released"  # the consumer that holds entries handed back by draining workers
POOL_SIZE = 64
POOL_TIMEOUT_S = 10.0


def check_job_id(job_id: str) -> str:
    """``job_id`` as the store made it, or InvalidArgument (never a key built from input)."""
    if not JOB_ID.fullmatch(job_id or ""):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "…"
        raise InvalidArgument("job_id", f"{shown!r} is not a job id (32 lowercase hex digits)")
    return job_id


def parse_event_id(event_id: str, field: str = "after_event_id") -> tuple[int, int]:
    """A Redis stream id (``ms-seq``, ``ms`` or ``0``) as a comparable pair."""
    if not EVENT_ID.fullmatch(event_id or ""):
        shown = event_id if len(event_id) <= 40 else event_id[:40] + "…"
        raise InvalidArgument(field, f"{shown!r} is not an event id (like '1733100000000-0', or '0' for the start)")
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


@dataclass
class QueuedJob:
    queue: str
    entry: str
    job_id: str
    reclaimed: bool = False  # taken over from a worker that stopped renewing its lease


@dataclass
class JobRecord:
    job_id: str
    config: SolveConfig
    created: float
    cancel: bool
    lost: int = 0  # times the job was lost with a worker that died (see keys.CLAIM)


def fingerprint(cfg: SolveConfig) -> str:
    """What makes two submissions the same request: everything but the deadline (a retry has
    less time left) and the idempotency key itself."""
    import hashlib

    same = cfg.replace(timeout_s=0.0, request_id="").to_proto().SerializeToString(deterministic=True)
    return hashlib.sha256(same).hexdigest()


def decode_event(entry_id: str, fields: dict[bytes, bytes]) -> pb.SolveEvent:
    """A SolveEvent from its stream entry, with the seq and event id the relay gives it."""
    event = pb.SolveEvent.FromString(fields[b"data"])
    event.seq = int(fields[b"seq"])
    event.event_id = entry_id
    return event


class JobStore:
    """Async access to jobs in Redis. One instance per process; safe for concurrent tasks."""

    def __init__(self, client: aioredis.Redis, prefix: str = K.DEFAULT_PREFIX, ttl_s: int = 86_400) -> None:
        # Any: redis-py types every reply as bytes | str (either decode_responses); this client
        # never decodes, so every reply is bytes, which its annotations cannot say
        self.r: Any = client
        self.k = K.Keys(prefix)
        self.ttl_s = ttl_s
        self._submit = client.register_script(K.SUBMIT)
        self._claim = client.register_script(K.CLAIM)
        self._publish = client.register_script(K.PUBLISH)
        self._cancel = client.register_script(K.CANCEL)
        self._renew = client.register_script(K.RENEW)
        self._release = client.register_script(K.RELEASE)

    @classmethod
    def from_url(cls, url: str, prefix: str = K.DEFAULT_PREFIX, ttl_s: int = 86_400) -> JobStore:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_TIMEOUT_S, health_check_interval=30
        )
        return cls(aioredis.Redis(connection_pool=pool, decode_responses=False), prefix, ttl_s)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> None:
        try:
            await self.r.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from exc

    async def ensure_groups(self) -> int:
        """Create the consumer groups that are missing (all of them after Redis lost its data);
        returns how many were created."""
        created = 0
        for q in [*self.k.queues, self.k.solo]:
            try:
                await self.r.xgroup_create(q, K.GROUP, id="0", mkstream=True)
                created += 1
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    # -- scheduler side ---------------------------------------------------------------------

    async def submit(self, cfg: SolveConfig, owner: str = "", max_queued: int = 0) -> tuple[str, bool]:
        """Queue a job; returns (job_id, created). A request_id the same owner used before
        returns its job. With ``max_queued`` > 0, a priority queue holding that many jobs no
        worker has taken yet refuses with ResourceExhausted (and writes nothing)."""
        job_id = uuid.uuid4().hex
        priority = K.priority_name(cfg.priority)
        depth = await self.queue_depth()
        queued = pb.SolveEvent(
            job_id=job_id, time=time.time(),
            queued=pb.Queued(queue_depth=depth, request_id=cfg.request_id),
        )
        created, jid = await self._submit(
            keys=[self.k.job(job_id), self.k.events(job_id), self.k.queue(priority),
                  self.k.request(cfg.request_id, owner)],
            args=[job_id, cfg.to_proto().SerializeToString(), repr(time.time()), cfg.request_id,
                  self.ttl_s, queued.SerializeToString(), max_queued, owner, fingerprint(cfg), self.k.job("")],
        )
        if int(created) == -2:
            raise InvalidArgument(
                "request_id", f"{cfg.request_id!r} was used for a different request (job {jid.decode()}); "
                "an idempotency key names one request"
            )
        if int(created) < 0:
            raise ResourceExhausted(
                f"the {priority} queue is full: {int(jid)} jobs wait for a worker (the limit is {max_queued}); "
                "retry later, or with another priority"
            )
        return jid.decode(), bool(created)

    async def owner(self, job_id: str) -> str | None:
        """Who created the job (empty without authentication); None: no such job."""
        h = await self.r.hmget(self.k.job(job_id), ["state", "owner"])
        if h[0] is None:
            return None
        return (h[1] or b"").decode()

    async def last_event_id(self, job_id: str) -> str | None:
        """The id of the job's newest event (None: no events)."""
        last = await self.r.xrevrange(self.k.events(job_id), count=1)
        return last[0][0].decode() if last else None

    async def exists(self, job_id: str) -> bool:
        return bool(await self.r.exists(self.k.job(job_id)))

    async def events(
        self, job_id: str, after: str = "0", block_ms: int = 500, stop: Any = None
    ) -> AsyncIterator[pb.SolveEvent]:
        """Yield the job's events after ``after`` until its terminal event, holding one
        connection in a blocking read (for one-off readers; the scheduler's streams share one
        reader, :class:`ponder.scheduler.hub.EventHub`).

        ``stop`` (an asyncio.Event) ends the iteration early, between reads.
        """
        if not await self.exists(job_id):
            raise NotFound(f"no job {job_id!r} (unknown, or expired)")
        key = self.k.events(job_id)
        last = after or "0"
        while stop is None or not stop.is_set():
            resp = await self.r.xread({key: last}, count=100, block=block_ms)
            if not resp:
                state = await self.r.hget(self.k.job(job_id), "state")
                if state is None:
                    raise NotFound(f"job {job_id!r} expired while being watched")
                if state.decode() in K.TERMINAL:
                    # the terminal event was written before the state: one last look, then done
                    resp = await self.r.xread({key: last}, count=100)
                    if not resp:
                        return
                else:
                    continue
            for entry_id, fields in resp[0][1]:
                if stop is not None and stop.is_set():
                    return  # the caller resumes after the last event it was given
                last = entry_id.decode()
                event = decode_event(last, fields)
                yield event
                if event.WhichOneof("kind") in TERMINAL_KINDS:
                    return

    async def cancel(self, job_id: str, reason: str = "cancelled by the client") -> str:
        err = pb.Error(code="CANCELLED", message=reason)
        event = pb.SolveEvent(job_id=job_id, time=time.time(), error=err)
        state = await self._cancel(
            keys=[self.k.job(job_id), self.k.events(job_id)],
            args=[event.SerializeToString(), err.SerializeToString(), repr(time.time()), self.ttl_s],
        )
        state = state.decode() if isinstance(state, bytes) else str(state)
        if state == "missing":
            raise NotFound(f"no job {job_id!r}")
        return state

    async def result(self, job_id: str) -> pb.ResultResponse:
        h = await self.r.hgetall(self.k.job(job_id))
        if not h:
            raise NotFound(f"no job {job_id!r} (unknown, or expired)")
        resp = pb.ResultResponse(job_id=job_id, state=h[b"state"].decode())
        if b"result" in h:
            resp.final.CopyFrom(pb.Final.FromString(h[b"result"]))
        if b"error" in h:
            resp.error.CopyFrom(pb.Error.FromString(h[b"error"]))
        return resp

    async def queue_depth(self) -> int:
        """Jobs waiting (not yet taken by a worker), over all priorities."""
        return sum((await self.queue_depths()).values())

    async def queue_depths(self) -> dict[str, int]:
        """Jobs waiting per queue (high, normal, low, solo)."""
        out = {}
        for name in [*K.PRIORITIES, K.SOLO]:
            q = self.k.queue(name)
            try:
                n = await self.r.xlen(q)
                pending = (await self.r.xpending(q, K.GROUP))["pending"]
            except ResponseError:  # no group yet
                out[name] = 0
                continue
            out[name] = max(0, n - pending)
        return out

    async def running(self) -> int:
        total = 0
        for q in [*self.k.queues, self.k.solo]:
            try:
                total += (await self.r.xpending(q, K.GROUP))["pending"]
            except ResponseError:
                continue
        return total

    async def workers(self, alive_within_s: float = 15.0, forget_after_s: float = 60.0) -> list[Any]:
        """Workers whose heartbeat is recent; entries silent for ``forget_after_s`` (a worker
        that died without saying goodbye) are removed."""
        now = time.time()
        out, gone = [], []
        for wid, raw in (await self.r.hgetall(self.k.workers)).items():
            info = pb.WorkerInfo.FromString(raw)
            if now - info.last_seen <= alive_within_s:
                out.append(info)
            elif now - info.last_seen > forget_after_s:
                gone.append(wid)
        if gone:
            await self.r.hdel(self.k.workers, *gone)
        return sorted(out, key=lambda w: w.worker_id)

    # -- worker side ------------------------------------------------------------------------

    async def read_jobs(self, consumer: str, count: int, block_ms: int, solo: bool = False) -> list[QueuedJob]:
        """New jobs for this worker, highest priority first; ``solo``: one isolated job from
        the solo queue instead (for a worker that runs nothing else)."""
        if count <= 0:
            return []
        if solo:
            return self._jobs(await self._nogroup_safe(
                self.r.xreadgroup, K.GROUP, consumer, {self.k.solo: ">"}, count=1))
        for q in self.k.queues:  # a quick non-blocking pass in priority order
            resp = await self._nogroup_safe(self.r.xreadgroup, K.GROUP, consumer, {q: ">"}, count=count)
            if resp:
                return self._jobs(resp)
        resp = await self._nogroup_safe(
            self.r.xreadgroup, K.GROUP, consumer, {q: ">" for q in self.k.queues}, count=count, block=block_ms
        )
        return self._jobs(resp)

    async def _nogroup_safe(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call``, re-creating the consumer groups once if Redis lost them (a restart without
        persistence) instead of failing until someone restarts the worker."""
        try:
            return await call(*args, **kwargs)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            log.warning("the job queues' consumer groups were gone (Redis lost its data?); re-creating them")
            await self.ensure_groups()
            return await call(*args, **kwargs)

    async def solo_waiting(self, lease_ms: int) -> int:
        """Isolated jobs waiting for a worker: not taken yet, or held by a worker silent for
        ``lease_ms`` (which died running them)."""
        try:
            n = await self.r.xlen(self.k.solo)
            if not n:
                return 0
            pending = (await self.r.xpending(self.k.solo, K.GROUP))["pending"]
            stale = await self.r.xpending_range(self.k.solo, K.GROUP, "-", "+", 8, idle=lease_ms)
        except ResponseError:
            return 0
        return max(0, int(n) - int(pending)) + len(stale)

    @staticmethod
    def _jobs(resp: Any) -> list[QueuedJob]:
        out = []
        for stream, entries in resp or []:
            for entry_id, fields in entries:
                if fields:  # a deleted entry comes back with no fields
                    out.append(QueuedJob(stream.decode(), entry_id.decode(), fields[b"job"].decode()))
        return out

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int, solo: bool = False) -> list[QueuedJob]:
        """Take over jobs whose worker stopped renewing its lease (XAUTOCLAIM). The solo queue
        is searched only with ``solo`` (by a worker that runs nothing else)."""
        out: list[QueuedJob] = []
        for q in [self.k.solo] if solo else self.k.queues:
            if len(out) >= count:
                break
            resp = await self._nogroup_safe(
                self.r.xautoclaim, q, K.GROUP, consumer, min_idle_ms, "0-0", count=count - len(out)
            )
            for entry_id, fields in resp[1]:
                if fields:
                    out.append(QueuedJob(q, entry_id.decode(), fields[b"job"].decode(), reclaimed=True))
                else:  # the job's entry was deleted: nothing to run, drop it from the PEL
                    await self.r.xack(q, K.GROUP, entry_id)
        return out

    async def forget_consumers(self, alive: set[str], idle_ms: int) -> list[str]:
        """Remove consumers of the job queues that hold no job, are not among the ``alive``
        workers and have been idle for ``idle_ms`` (workers that died); returns their names."""
        removed = []
        for q in [*self.k.queues, self.k.solo]:
            try:
                consumers = await self.r.xinfo_consumers(q, K.GROUP)
            except ResponseError:
                continue
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
                if name not in alive and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
                    await self.r.xgroup_delconsumer(q, K.GROUP, name)
                    removed.append(name)
        return removed

    async def claim(
        self, qjob: QueuedJob, worker: str, *, alone: bool = False, isolate_after: int = 2, max_solo_losses: int = 2
    ) -> tuple[int, str]:
        """Start an attempt (see ``keys.CLAIM``): (attempt, "running"), (0, state) when the job
        must not run, (-1, "isolated") when it was moved to the solo queue."""
        err = pb.Error(
            code="INTERNAL",
            message=f"job {qjob.job_id} failed: {max_solo_losses} workers died while running it alone "
                    "(it is the job that kills them; it will not be retried)",
        )
        event = pb.SolveEvent(job_id=qjob.job_id, time=time.time(), error=err)
        attempt, state = await self._claim(
            keys=[self.k.job(qjob.job_id), self.k.events(qjob.job_id), qjob.queue, self.k.solo],
            args=[worker, repr(time.time()), int(qjob.reclaimed), int(alone), isolate_after, max_solo_losses,
                  event.SerializeToString(), err.SerializeToString(), self.ttl_s, qjob.entry, qjob.job_id],
        )
        return int(attempt), state.decode() if isinstance(state, bytes) else str(state)

    async def load(self, job_id: str) -> JobRecord:
        h = await self.r.hmget(self.k.job(job_id), ["request", "created", "cancel", "lost"])
        if h[0] is None:
            raise NotFound(f"no job {job_id!r}")
        cfg = SolveConfig.from_proto(pb.SolveRequest.FromString(h[0]))
        return JobRecord(job_id, cfg, float(h[1] or time.time()), h[2] == b"1", int(h[3] or 0))

    async def publish(self, job_id: str, attempt: int, event: Any) -> int:
        """Append one event; a final or error event also ends the job. -1: not ours any more."""
        kind = event.WhichOneof("kind")
        terminal, field, payload = "", "", b""
        if kind == "final":
            terminal, field, payload = "done", "result", event.final.SerializeToString()
        elif kind == "error":
            terminal = "cancelled" if event.error.code == "CANCELLED" else "failed"
            field, payload = "error", event.error.SerializeToString()
        seq = await self._publish(
            keys=[self.k.job(job_id), self.k.events(job_id)],
            args=[attempt, event.SerializeToString(), terminal, field, payload, repr(time.time()), self.ttl_s],
        )
        return int(seq)

    async def release(self, job: QueuedJob, consumer: str, attempt: int, idle_ms: int) -> int:
        """Hand a running job back without charging it a loss (see ``keys.RELEASE``)."""
        return int(await self._release(keys=[self.k.job(job.job_id), job.queue],
                                       args=[attempt, K.GROUP, consumer, job.entry, idle_ms, RELEASED]))

    async def reserve_solo(self, worker: str, ttl_ms: int) -> bool:
        """Whether ``worker`` is (or now becomes) the one that drains for the next solo job."""
        key = self.k.solo_reservation
        if await self.r.set(key, worker, nx=True, px=ttl_ms):
            return True
        if (await self.r.get(key) or b"").decode() == worker:
            await self.r.pexpire(key, ttl_ms)
            return True
        return False

    async def unreserve_solo(self, worker: str) -> None:
        if (await self.r.get(self.k.solo_reservation) or b"").decode() == worker:
            await self.r.delete(self.k.solo_reservation)

    async def ack(self, job: QueuedJob) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(job.queue, K.GROUP, job.entry)
        pipe.xdel(job.queue, job.entry)
        try:
            await pipe.execute()
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            await self.r.xdel(job.queue, job.entry)  # the group was lost, its pending list with it

    async def renew(self, consumer: str, jobs: list[QueuedJob]) -> int:
        renewed = 0
        by_queue: dict[str, list[str]] = {}
        for j in jobs:
            by_queue.setdefault(j.queue, []).append(j.entry)
        for q, entries in by_queue.items():
            renewed += int(await self._nogroup_safe(self._renew, keys=[q], args=[K.GROUP, consumer, *entries]))
        return renewed

    async def cancel_flags(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for j in job_ids:
            pipe.hget(self.k.job(j), "cancel")
        flags = await pipe.execute()
        return {j for j, f in zip(job_ids, flags) if f == b"1"}

    async def heartbeat(self, info: Any) -> None:
        await self.r.hset(self.k.workers, info.worker_id, info.SerializeToString())

    async def remove_worker(self, worker_id: str) -> None:
        await self.r.hdel(self.k.workers, worker_id)
