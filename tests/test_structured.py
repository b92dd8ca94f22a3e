"""Structured concurrency (anyio): the worker and the scheduler leave nothing running when they
return, a bug ends a worker at once (its jobs go to another), SIGTERM drains in time, and the
async client works from anyio code."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import anyio
import pytest
from service_utils import Proc, wait_until

from ponder.clients.client import AsyncClient
from ponder.proto.config import SolveConfig
from ponder.store import keys as K
from ponder.service.redis_server import free_port
from ponder.scheduler.config import SchedulerConfig
from ponder.scheduler.server import Scheduler
from ponder.store.jobs import JobStore

JOB = SolveConfig("Compute 5 + 8 + 3 + 7 * 7.", generations=16, max_steps=6, seed=1)


@pytest.fixture(scope="module")
def arith() -> Any:
    from ponder.workers.runtime import build_policy, build_verifier

    import torch

    torch.set_num_threads(1)
    policy = build_policy("arith")
    return policy, build_verifier("auto", policy, "arith")


def make_worker(redis_url: str, prefix: str, arith: Any, **cfg: Any) -> Any:
    from ponder.workers.worker import Worker, WorkerConfig

    policy, verifier = arith
    return Worker(WorkerConfig(redis_url=redis_url, prefix=prefix, heartbeat_s=0.2, **cfg), policy, verifier)


def compute_threads() -> int:
    return sum(t.name == "ponder-compute" and t.is_alive() for t in threading.enumerate())


async def wait_state(store: JobStore, job_id: str, states: tuple[str, ...], timeout: float) -> str:
    with anyio.fail_after(timeout):
        while True:
            state = (await store.result(job_id)).state
            if state in states:
                return state
            await anyio.sleep(0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio and redis.asyncio are asyncio libraries


@pytest.mark.anyio
async def test_worker_run_leaves_nothing_running(redis_url: str, prefix: str, arith: Any) -> None:
    before = len(asyncio.all_tasks())
    store = JobStore.from_url(redis_url, prefix)
    worker = make_worker(redis_url, prefix, arith)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run, stop)
        job_id, _ = await store.submit(JOB)
        state = await wait_state(store, job_id, ("done", "failed"), 60)
        stop.set()
    workers = await store.r.hlen(store.k.workers)
    await store.close()
    assert state == "done"
    assert len(asyncio.all_tasks()) == before and compute_threads() == 0  # nothing outlives run()
    assert workers == 0  # it said goodbye


def test_scheduler_leaves_nothing_running_and_the_async_client_works_under_anyio(redis_url: str, prefix: str) -> None:
    port = free_port()

    async def main() -> tuple[int, list[str]]:
        before = len(asyncio.all_tasks())
        stop = anyio.Event()
        kinds: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(Scheduler(SchedulerConfig(redis_url, port=port, prefix=prefix)).serve_forever, stop)
            async with AsyncClient(f"127.0.0.1:{port}") as c:
                with anyio.fail_after(30):
                    while True:
                        try:
                            await c.info()
                            break
                        except Exception:
                            await anyio.sleep(0.1)
                job_id = await c.submit("What is 1 + 1?", generations=1)

                async def watch() -> None:
                    async for e in c.watch(job_id, timeout=30):
                        kinds.append(e.WhichOneof("kind"))

                async with anyio.create_task_group() as watchers:  # a stream open on the hub
                    watchers.start_soon(watch)
                    await anyio.sleep(0.3)
                    await c.cancel(job_id)
            stop.set()
        return len(asyncio.all_tasks()) - before, kinds

    extra, kinds = anyio.run(main, backend="asyncio")
    assert kinds == ["queued", "error"]
    assert extra == 0


def test_a_bug_in_intake_ends_the_worker_at_once_and_its_job_runs_elsewhere(
    redis_url: str, prefix: str, arith: Any
) -> None:
    async def main() -> tuple[float, BaseException | None, str]:
        store = JobStore.from_url(redis_url, prefix)
        job_id, _ = await store.submit(JOB.replace(generations=32, max_steps=8))
        buggy = make_worker(redis_url, prefix, arith, lease_s=1.0)
        real_read = buggy.store.read_jobs
        calls = {"n": 0, "raised_at": 0.0}

        async def read_jobs(*args: Any, **kw: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 1 and buggy.active:  # after it took the job: a bug, not an outage
                calls["raised_at"] = time.monotonic()
                raise ZeroDivisionError("a bug in intake")
            return await real_read(*args, **kw)

        buggy.store.read_jobs = read_jobs  # type: ignore[method-assign]
        error: BaseException | None = None
        try:
            with anyio.fail_after(30):
                await buggy.run()
        except BaseException as exc:  # noqa: BLE001 (an ExceptionGroup from the task group)
            error = exc
        took = time.monotonic() - calls["raised_at"]
        # another worker takes the job over once the dead one's lease has run out
        rescuer = make_worker(redis_url, prefix, arith, lease_s=1.0)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(rescuer.run, stop)
            state = await wait_state(store, job_id, ("done", "failed"), 90)
            stop.set()
        await store.close()
        return took, error, state

    took, error, state = anyio.run(main, backend="asyncio")
    assert error is not None and "a bug in intake" in repr(error)
    assert took < 1.0, took
    assert state == "done"


def test_sigterm_drains_running_jobs_and_exits_in_time(redis_url: str, prefix: str) -> None:
    # The drain is long enough for the job to finish on a slow, shared CI machine; the worker must
    # leave when that job ends, not wait out the drain's deadline (the deadline path is tested below).
    drain = 60.0
    worker = Proc("worker", ["worker", "--redis", redis_url, "--prefix", prefix, "--model", "arith",
                             "--threads", "1", "--drain", str(drain)])

    async def submit() -> tuple[JobStore, str]:
        store = JobStore.from_url(redis_url, prefix)
        job_id, _ = await store.submit(JOB.replace(generations=48, max_steps=8))
        return store, job_id

    async def state_of(job_id: str) -> tuple[str, int]:
        store = JobStore.from_url(redis_url, prefix)
        try:
            state = (await store.result(job_id)).state
            pending = 0
            for q in [*store.k.queues, store.k.solo]:
                try:
                    pending += (await store.r.xpending(q, K.GROUP))["pending"]
                except Exception:
                    pass
            return state, pending
        finally:
            await store.close()

    try:
        wait_until(lambda: "serving model" in worker.log(), 120, "the worker", [worker])
        store, job_id = anyio.run(submit)
        anyio.run(store.close)
        wait_until(lambda: anyio.run(state_of, job_id)[0] == "running", 60, "the job to run", [worker])
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        worker.proc.wait(drain + 10)
        exited = time.monotonic() - t0
    finally:
        worker.stop()
    state, pending = anyio.run(state_of, job_id)
    assert worker.proc.returncode == 0, worker.log()
    assert state == "done" and pending == 0  # it finished during the drain; nothing left pending
    assert exited < drain / 2, exited  # it left when the job ended (a few seconds), not at the deadline


def test_jobs_the_drain_cannot_finish_are_handed_back_at_once_and_not_charged(
    redis_url: str, prefix: str, arith: Any
) -> None:
    async def main() -> tuple[str, int, str, float]:
        store = JobStore.from_url(redis_url, prefix)
        job_id, _ = await store.submit(JOB.replace(generations=256, max_steps=12, max_generations=None))
        leaving = make_worker(redis_url, prefix, arith, lease_s=30.0, drain_s=0.2)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(leaving.run, stop)
            await wait_state(store, job_id, ("running",), 60)
            stop.set()
        after_leave = (await store.result(job_id)).state
        lost = (await store.load(job_id)).lost
        # another worker with the same 30 s lease takes it without waiting for the lease
        t0 = time.monotonic()
        taker = make_worker(redis_url, prefix, arith, lease_s=30.0)
        stop2 = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(taker.run, stop2)
            await wait_state(store, job_id, ("running",), 60)
            taken_after = time.monotonic() - t0
            await store.cancel(job_id)  # no need to finish it here
            await wait_state(store, job_id, ("cancelled",), 30)
            stop2.set()
        final_state = (await store.result(job_id)).state
        await store.close()
        return after_leave, lost, final_state, taken_after

    after_leave, lost, final_state, taken_after = anyio.run(main, backend="asyncio")
    assert after_leave == "queued" and lost == 0  # handed back, not lost
    assert taken_after < 25, taken_after  # not after the 30 s lease
    assert final_state == "cancelled"
