"""The job store's Redis scripts against a real Redis: fencing, leases, cancel, idempotency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ponder.proto import pb
from ponder.proto.config import SolveConfig
from ponder.proto.errors import InvalidArgument
from ponder.store.jobs import JobStore, QueuedJob

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


async def qj(store: JobStore, job_id: str, reclaimed: bool = False) -> QueuedJob:
    """The queue entry of a job (as a worker would hold it)."""
    queue, entry = await store.r.hmget(store.k.job(job_id), ["queue", "entry"])
    return QueuedJob(queue.decode(), entry.decode(), job_id, reclaimed)


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
        attempt, state = await store.claim(await qj(store, job_id), "w1")
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
        assert (await store.claim(await qj(store, job_id), "w1"))[0] == 1
        # w1 goes silent; w2 takes the entry over and runs attempt 2
        await asyncio.sleep(0.05)
        taken = await store.reclaim("w2", min_idle_ms=10, count=5)
        assert [j.job_id for j in taken] == [job_id]
        assert (await store.claim(taken[0], "w2"))[0] == 2
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


def test_lost_jobs_run_alone_then_fail_only_when_they_kill_lone_workers(redis_url: str, prefix: str) -> None:
    async def lose(store: JobStore, worker: str, solo: bool = False) -> QueuedJob:
        await asyncio.sleep(0.02)
        (taken,) = await store.reclaim(worker, min_idle_ms=10, count=5, solo=solo)
        assert taken.reclaimed
        return taken

    async def body(store: JobStore) -> None:
        job_id, _ = await store.submit(Q)
        bystander, _ = await store.submit(Q)
        jobs = await store.read_jobs("w1", 5, block_ms=10)
        assert [(await store.claim(j, "w1"))[0] for j in jobs] == [1, 1]
        # a fresh claim never counts as a loss: only a take-over from a silent worker does
        assert (await store.load(job_id)).lost == 0
        # w1 dies holding both: both are re-run, neither is charged a failed attempt
        taken = await store.reclaim("w2", min_idle_ms=0, count=5)
        assert sorted(j.job_id for j in taken) == sorted([job_id, bystander])
        assert [(await store.claim(j, "w2"))[0] for j in taken] == [2, 2]
        assert (await store.load(job_id)).lost == 1
        # w2 dies too: lost twice, the job is isolated (moved to the solo queue)...
        (again, other) = sorted(await store.reclaim("w3", min_idle_ms=0, count=5), key=lambda j: j.job_id != job_id)
        assert await store.claim(again, "w3") == (-1, "isolated")
        assert await store.solo_waiting(lease_ms=10_000) == 1
        assert await store.read_jobs("w3", 5, block_ms=10) == []  # not in the priority queues
        # ...and runs alone on a worker that takes nothing else
        (solo,) = await store.read_jobs("w4", 1, block_ms=10, solo=True)
        assert solo.queue == store.k.solo
        assert await store.claim(solo, "w4", alone=True) == (4, "running")  # isolation fenced attempt 3
        assert await store.solo_waiting(lease_ms=10_000) == 0
        # one lone worker dies with it: a coincidence is possible, it runs alone once more
        assert await store.claim(await lose(store, "w5", solo=True), "w5", alone=True) == (5, "running")
        # a second lone worker dies with it: it is the job that kills them, it fails visibly
        assert await store.claim(await lose(store, "w6", solo=True), "w6", alone=True) == (0, "failed")
        res = await store.result(job_id)
        assert res.state == "failed" and job_id in res.error.message and "alone" in res.error.message
        kinds = [e.WhichOneof("kind") for e in await collect(store, job_id)]
        assert kinds[0] == "queued" and kinds[-1] == "error"

    run(redis_url, prefix, body)


def test_queue_cap_refuses_without_writing(redis_url: str, prefix: str) -> None:
    from ponder.proto.errors import ResourceExhausted

    async def body(store: JobStore) -> None:
        a, _ = await store.submit(Q.replace(request_id="cap-a"), max_queued=2)
        await store.submit(Q, max_queued=2)
        try:
            await store.submit(Q, max_queued=2)
        except ResourceExhausted as exc:
            assert "normal queue is full" in exc.message and "2 jobs" in exc.message
        else:
            raise AssertionError("a third job was queued past the cap")
        assert await store.queue_depth() == 2
        # a known request id still answers with its job; another priority has its own cap
        assert await store.submit(Q.replace(request_id="cap-a"), max_queued=2) == (a, False)
        await store.submit(Q.replace(priority=1), max_queued=2)
        # once a worker takes one, there is room again (high first, then a normal one)
        assert [j.queue for j in await store.read_jobs("w1", 1, block_ms=10)] == [store.k.queue("high")]
        assert [j.queue for j in await store.read_jobs("w1", 1, block_ms=10)] == [store.k.queue("normal")]
        await store.submit(Q, max_queued=2)

    run(redis_url, prefix, body)


def test_request_ids_and_jobs_are_scoped_to_their_owner(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        a, _ = await store.submit(Q.replace(request_id="same"), owner="alice")
        b, created = await store.submit(Q.replace(request_id="same"), owner="bob")
        assert created and a != b
        assert (await store.owner(a), await store.owner(b)) == ("alice", "bob")
        # the same key for another question is refused, not answered with the first job
        try:
            await store.submit(Q.replace(request_id="same", question="What is 2 + 2?"), owner="alice")
        except InvalidArgument as exc:
            assert exc.field == "request_id" and a in exc.message
        else:
            raise AssertionError("a reused request id returned another question's job")
        # a retry with less time left is the same request
        assert await store.submit(Q.replace(request_id="same", timeout_s=3.0), owner="alice") == (a, False)
        assert await store.owner("0" * 32) is None

    run(redis_url, prefix, body)


def test_lost_consumer_groups_are_recreated(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        await store.r.delete(*store.k.queues, store.k.solo)  # what a Redis restart without data leaves
        job_id, _ = await store.submit(Q)  # XADD re-creates the stream, not its group
        jobs = await store.read_jobs("w1", 5, block_ms=10)  # NOGROUP → groups re-created → read
        assert jobs == [] or [j.job_id for j in jobs] == [job_id]
        if not jobs:  # the groups start at the stream's end ('0': the whole stream)
            jobs = await store.read_jobs("w1", 5, block_ms=10)
        assert [j.job_id for j in jobs] == [job_id]
        assert await store.renew("w1", jobs) == 1
        await store.ack(jobs[0])
        await store.r.delete(*store.k.queues)
        assert await store.renew("w1", jobs) == 0  # no NOGROUP error either
        await store.ack(jobs[0])

    run(redis_url, prefix, body)


def test_dead_consumers_are_forgotten(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        for _ in range(3):
            await store.submit(Q)
        (job,) = await store.read_jobs("dead", 1, block_ms=10)  # dies holding a job
        (done,) = await store.read_jobs("idle-dead", 1, block_ms=10)  # finished a job, then died
        await store.ack(done)
        await store.read_jobs("alive", 1, block_ms=10)
        await asyncio.sleep(0.05)
        removed = await store.forget_consumers({"alive"}, idle_ms=10)
        assert "idle-dead" in removed and "dead" not in removed  # "dead" still holds a job
        names = {c["name"] for c in await store.r.xinfo_consumers(job.queue, "workers")}
        assert names == {b"dead", b"alive"}

    run(redis_url, prefix, body)


def test_cancel_queued_and_running(redis_url: str, prefix: str) -> None:
    async def body(store: JobStore) -> None:
        queued, _ = await store.submit(Q)
        assert await store.cancel(queued) == "cancelled"
        kinds = [e.WhichOneof("kind") for e in await collect(store, queued)]
        assert kinds == ["queued", "error"]
        assert (await store.claim(await qj(store, queued), "w")) == (0, "cancelled")  # a worker skips it

        running, _ = await store.submit(Q)
        await store.claim(await qj(store, running), "w")
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
        await store.claim(await qj(store, job_id), "w")
        for i in range(5):
            await store.publish(job_id, 1, ev(job_id, step=pb.Step(node_id=i + 2)))
        await store.publish(job_id, 1, ev(job_id, final=pb.Final()))
        events = await collect(store, job_id)
        tail = await collect(store, job_id, after=events[3].event_id)
        assert [e.seq for e in tail] == [e.seq for e in events[4:]]

    run(redis_url, prefix, body)
