"""The job store: every read and write of job state in Redis, for schedulers and workers alike.

Payloads are protobuf bytes (never pickle). See :mod:`ponder.scheduler.keys` for the layout.
"""

from __future__ import annotations

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
from ponder.proto.errors import NotFound, Unavailable
from ponder.scheduler import keys as K

TERMINAL_KINDS = ("final", "error")


@dataclass
class QueuedJob:
    queue: str
    entry: str
    job_id: str


@dataclass
class JobRecord:
    job_id: str
    config: SolveConfig
    created: float
    cancel: bool


class JobStore:
    """Async access to jobs in Redis. One instance per process; safe for concurrent tasks."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ponder", ttl_s: int = 86_400) -> None:
        self.r = client
        self.k = K.Keys(prefix)
        self.ttl_s = ttl_s
        self._submit = client.register_script(K.SUBMIT)
        self._claim = client.register_script(K.CLAIM)
        self._publish = client.register_script(K.PUBLISH)
        self._cancel = client.register_script(K.CANCEL)
        self._renew = client.register_script(K.RENEW)

    @classmethod
    def from_url(cls, url: str, prefix: str = "ponder", ttl_s: int = 86_400) -> JobStore:
        client = aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)
        return cls(client, prefix, ttl_s)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> None:
        try:
            await self.r.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from exc

    async def ensure_groups(self) -> None:
        for q in self.k.queues:
            try:
                await self.r.xgroup_create(q, K.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- scheduler side ---------------------------------------------------------------------

    async def submit(self, cfg: SolveConfig) -> tuple[str, bool]:
        """Queue a job; returns (job_id, created). A known request_id returns its job."""
        job_id = uuid.uuid4().hex
        queue = self.k.queue(K.priority_name(cfg.priority))
        depth = await self.queue_depth()
        queued = pb.SolveEvent(
            job_id=job_id, time=time.time(),
            queued=pb.Queued(queue_depth=depth, request_id=cfg.request_id),
        )
        created, jid = await self._submit(
            keys=[self.k.job(job_id), self.k.events(job_id), queue,
                  self.k.request(cfg.request_id) if cfg.request_id else self.k.request("-")],
            args=[job_id, cfg.to_proto().SerializeToString(), repr(time.time()), cfg.request_id,
                  self.ttl_s, queued.SerializeToString()],
        )
        return jid.decode(), bool(created)

    async def exists(self, job_id: str) -> bool:
        return bool(await self.r.exists(self.k.job(job_id)))

    async def events(
        self, job_id: str, after: str = "0", block_ms: int = 500, stop: Any = None
    ) -> AsyncIterator[pb.SolveEvent]:
        """Yield the job's events after ``after`` until its terminal event.

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
                event = pb.SolveEvent.FromString(fields[b"data"])
                event.seq = int(fields[b"seq"])
                event.event_id = last
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

    async def result(self, job_id: str) -> Any:
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
        total = 0
        for q in self.k.queues:
            try:
                n = await self.r.xlen(q)
                pending = (await self.r.xpending(q, K.GROUP))["pending"]
            except ResponseError:  # no group yet
                continue
            total += max(0, n - pending)
        return total

    async def running(self) -> int:
        total = 0
        for q in self.k.queues:
            try:
                total += (await self.r.xpending(q, K.GROUP))["pending"]
            except ResponseError:
                continue
        return total

    async def workers(self, alive_within_s: float = 15.0, forget_after_s: float = 3600.0) -> list[Any]:
        """Workers whose heartbeat is recent; entries silent for an hour are removed."""
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

    async def read_jobs(self, consumer: str, count: int, block_ms: int) -> list[QueuedJob]:
        """New jobs for this worker, highest priority first."""
        if count <= 0:
            return []
        for q in self.k.queues:  # a quick non-blocking pass in priority order
            resp = await self.r.xreadgroup(K.GROUP, consumer, {q: ">"}, count=count)
            if resp:
                return self._jobs(resp)
        resp = await self.r.xreadgroup(
            K.GROUP, consumer, {q: ">" for q in self.k.queues}, count=count, block=block_ms
        )
        return self._jobs(resp)

    @staticmethod
    def _jobs(resp: Any) -> list[QueuedJob]:
        out = []
        for stream, entries in resp or []:
            for entry_id, fields in entries:
                if fields:  # a deleted entry comes back with no fields
                    out.append(QueuedJob(stream.decode(), entry_id.decode(), fields[b"job"].decode()))
        return out

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[QueuedJob]:
        """Take over jobs whose worker stopped renewing its lease (XAUTOCLAIM)."""
        out: list[QueuedJob] = []
        for q in self.k.queues:
            if len(out) >= count:
                break
            resp = await self.r.xautoclaim(q, K.GROUP, consumer, min_idle_ms, "0-0", count=count - len(out))
            for entry_id, fields in resp[1]:
                if fields:
                    out.append(QueuedJob(q, entry_id.decode(), fields[b"job"].decode()))
                else:  # the job's entry was deleted: nothing to run, drop it from the PEL
                    await self.r.xack(q, K.GROUP, entry_id)
        return out

    async def claim(self, job_id: str, worker: str, max_attempts: int) -> tuple[int, str]:
        attempt, state = await self._claim(
            keys=[self.k.job(job_id), self.k.events(job_id)],
            args=[worker, repr(time.time()), max_attempts],
        )
        return int(attempt), state.decode() if isinstance(state, bytes) else str(state)

    async def load(self, job_id: str) -> JobRecord:
        h = await self.r.hmget(self.k.job(job_id), ["request", "created", "cancel"])
        if h[0] is None:
            raise NotFound(f"no job {job_id!r}")
        cfg = SolveConfig.from_proto(pb.SolveRequest.FromString(h[0]))
        return JobRecord(job_id, cfg, float(h[1] or time.time()), h[2] == b"1")

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

    async def ack(self, job: QueuedJob) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(job.queue, K.GROUP, job.entry)
        pipe.xdel(job.queue, job.entry)
        await pipe.execute()

    async def renew(self, consumer: str, jobs: list[QueuedJob]) -> int:
        renewed = 0
        by_queue: dict[str, list[str]] = {}
        for j in jobs:
            by_queue.setdefault(j.queue, []).append(j.entry)
        for q, entries in by_queue.items():
            renewed += int(await self._renew(keys=[q], args=[K.GROUP, consumer, *entries]))
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
