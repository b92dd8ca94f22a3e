"""The job store's Redis scripts against a real Redis: fencing, leases, cancel, idempotency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.scheduler.store import JobStore

Q = SolveConfig("What is 1 + 1?", generations=2)


def run(redis_url: str, prefix: str, body: Callable[[JobStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = JobStore.from_url(redis_url, prefix, ttl_s=60)
        await store.ensure_groups()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def ev(job_id: str, **kind: Any) -> Any:
    return pb.SolveEvent(job_id=job_id, time=time.time(), **kind)


async def collect(store: JobStore, job_id: str, after: str = "0") -> list[Any]:
    return [e async for e in store.events(job_id, after, block_ms=50)]


def test_submit_claim_publish_final(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        job_id, created = await store.submit(Q)
        assert created
        assert await store.queue_depth() == 1
        jobs = await store.read_jobs("w1", 10, block_ms=10)
        assert [j.job_id for j in jobs] == [job_id]
        assert await store.queue_depth() == 0 and await store.running() == 1
        attempt, state = await store.claim(job_id, "w1", 3)
        assert (attempt, state) == (1, "running")
        assert await store.publish(job_id, 1, ev(job_id, step=pb.Step(node_id=2, text="a"))) == 2
        assert await store.publish(job_id, 1, ev(job_id, final=pb.Final(answer="2"))) == 3
        await store.ack(jobs[0])
        assert await store.running() == 0
        events = await collect(store, job_id)
        assert [e.seq for e in events] == [1, 2, 3]
        assert [e.WhichOneof("kind") for e in events] == ["queued", "step", "final"]
        res = await store.result(job_id)
        assert res.state == "done" and res.final.answer == "2"
        # nothing can be written after the terminal event
        assert await store.publish(job_id, 1, ev(job_id, final=pb.Final(answer="3"))) == -1

    run(redis_url, prefix, body)


def test_stale_attempt_is_fenced_out(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        job_id, _ = await store.submit(Q)
        await store.read_jobs("w1", 1, block_ms=10)
        assert (await store.claim(job_id, "w1", 3))[0] == 1
        # w1 goes silent; w2 takes the entry over and runs attempt 2
        await asyncio.sleep(0.05)
        taken = await store.reclaim("w2", min_idle_ms=10, count=5)
        assert [j.job_id for j in taken] == [job_id]
        assert (await store.claim(job_id, "w2", 3))[0] == 2
        assert await store.publish(job_id, 1, ev(job_id, final=pb.Final(answer="stale"))) == -1
        assert await store.publish(job_id, 2, ev(job_id, final=pb.Final(answer="fresh"))) > 0
        finals = [e for e in await collect(store, job_id) if e.WhichOneof("kind") == "final"]
        assert [f.final.answer for f in finals] == ["fresh"]

    run(redis_url, prefix, body)


def test_renew_keeps_the_lease_and_never_steals(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        job_id, _ = await store.submit(Q)
        (job,) = await store.read_jobs("w1", 1, block_ms=10)
        await asyncio.sleep(0.15)
        assert await store.renew("w1", [job]) == 1
        assert await store.reclaim("w2", min_idle_ms=100, count=5) == []  # renewed: not idle
        await asyncio.sleep(0.15)
        assert [j.job_id for j in await store.reclaim("w2", min_idle_ms=100, count=5)] == [job_id]
        # w1 comes back: its renewal must not take the entry back from w2
        assert await store.renew("w1", [job]) == 0
        pending = await store.r.xpending_range(job.queue, "workers", "-", "+", 10)
        assert [p["consumer"] for p in pending] == [b"w2"]

    run(redis_url, prefix, body)


def test_claim_gives_up_after_max_attempts(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        job_id, _ = await store.submit(Q)
        assert (await store.claim(job_id, "a", 2))[0] == 1
        assert (await store.claim(job_id, "b", 2))[0] == 2
        attempt, _ = await store.claim(job_id, "c", 2)
        assert attempt == -3  # the caller publishes the failure with attempt 3

    run(redis_url, prefix, body)


def test_cancel_queued_and_running(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        queued, _ = await store.submit(Q)
        assert await store.cancel(queued) == "cancelled"
        kinds = [e.WhichOneof("kind") for e in await collect(store, queued)]
        assert kinds == ["queued", "error"]
        assert (await store.claim(queued, "w", 3)) == (0, "cancelled")  # a worker skips it

        running, _ = await store.submit(Q)
        await store.claim(running, "w", 3)
        assert await store.cancel(running) == "running"
        assert await store.cancel_flags([running, queued]) == {running, queued}

    run(redis_url, prefix, body)


def test_request_id_is_idempotent(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        a, ca = await store.submit(Q.replace(request_id="k1"))
        b, cb = await store.submit(Q.replace(request_id="k1"))
        c, cc = await store.submit(Q.replace(request_id="k2"))
        assert (ca, cb, cc) == (True, False, True) and a == b != c
        assert await store.queue_depth() == 2

    run(redis_url, prefix, body)


def test_priority_order(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        low, _ = await store.submit(Q.replace(priority=-1))
        normal, _ = await store.submit(Q)
        high, _ = await store.submit(Q.replace(priority=2))
        order = []
        for _ in range(3):
            order += [j.job_id for j in await store.read_jobs("w", 1, block_ms=10)]
        assert order == [high, normal, low]

    run(redis_url, prefix, body)


def test_resume_after_event_id(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        job_id, _ = await store.submit(Q)
        await store.claim(job_id, "w", 3)
        for i in range(5):
            await store.publish(job_id, 1, ev(job_id, step=pb.Step(node_id=i + 2)))
        await store.publish(job_id, 1, ev(job_id, final=pb.Final()))
        events = await collect(store, job_id)
        tail = await collect(store, job_id, after=events[3].event_id)
        assert [e.seq for e in tail] == [e.seq for e in events[4:]]

    run(redis_url, prefix, body)
