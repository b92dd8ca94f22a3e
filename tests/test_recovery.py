"""Failures: a worker killed mid-job (SIGKILL) and a scheduler stopped mid-stream (SIGTERM)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_utils import kinds, start_scheduler, start_worker, wait_until, workers_alive

from ponder.clients.client import Client, build_request
from ponder.proto import pb_grpc

# On the zero-norm model (see test_service) greedy decoding never stops early: this job runs
# 24 steps of 128 tokens — several seconds, long enough to kill things in the middle of it.
MEDIUM = dict(generations=2, max_steps=24, max_step_tokens=128, temperature=0.0)
BACKEND = "auto"  # the worker's default: our paged-KV engine for Llama-family models


def _zero_final_norm(model: Any) -> None:
    model.model.norm.weight.zero_()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("recovery-model"), "llama", mutate=_zero_final_norm)


def test_killed_worker_job_is_reclaimed_and_answered_once(redis_url: str, prefix: str, model_dir: Path) -> None:
    sched, port = start_scheduler(redis_url, prefix)
    a = start_worker(redis_url, prefix, str(model_dir), "--lease", "2", "--backend", BACKEND)
    b = None
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "worker A", [sched, a])
        with Client(f"127.0.0.1:{port}") as c:
            job_id = c.submit("Keep going.", **MEDIUM)
            seen: list[Any] = []
            for event in c.watch(job_id):
                seen.append(event)
                if event.WhichOneof("kind") == "step":
                    break
            a.signal(signal.SIGKILL)  # mid-job, no chance to clean up
            a.proc.wait(10)
            b = start_worker(redis_url, prefix, str(model_dir), "--lease", "2", "--backend", BACKEND)
            events = list(c.watch(job_id))
            ks = kinds(events)
            assert ks.count("final") == 1 and ks[-1] == "final"
            started = [e.started for e in events if e.WhichOneof("kind") == "started"]
            assert [s.attempt for s in started] == [1, 2]
            assert started[0].worker != started[1].worker
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert c.result(job_id).state == "done"
            assert events[-1].final.usage.generations == MEDIUM["generations"]
    finally:
        for p in (b, a, sched):
            if p is not None:
                p.stop()


def test_scheduler_sigterm_ends_streams_cleanly_and_jobs_go_on(redis_url: str, prefix: str, model_dir: Path) -> None:
    sched, port = start_scheduler(redis_url, prefix, grace=3.0)
    worker = start_worker(redis_url, prefix, str(model_dir), "--backend", BACKEND)
    sched2 = None
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "the worker", [sched, worker])
        stub = pb_grpc.ReasonerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        call = stub.Solve(build_request("Keep going.", **MEDIUM), timeout=120)
        got: list[Any] = []
        signalled = False
        with pytest.raises(grpc.RpcError) as info:
            for event in call:
                got.append(event)
                # one SIGTERM: step events already buffered in the client arrive after it, and a
                # second signal during the scheduler's own teardown is a request to die at once
                if event.WhichOneof("kind") == "step" and not signalled:
                    sched.signal(signal.SIGTERM)
                    signalled = True
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        job_id = got[0].job_id
        assert job_id in info.value.details() and "Watch" in info.value.details()
        assert sched.proc.wait(10) == 0  # it exits by itself, cleanly
        # the job went on without the scheduler; a new one relays the rest of it
        sched2, _ = start_scheduler(redis_url, prefix, port=port)
        with Client(f"127.0.0.1:{port}") as c:
            rest = list(c.watch(job_id, after_event_id=got[-1].event_id))
        assert kinds(rest)[-1] == "final"
        assert [e.seq for e in got + rest] == list(range(1, len(got) + len(rest) + 1))
    finally:
        for p in (sched2, worker, sched):
            if p is not None:
                p.stop()


def test_client_resumes_across_a_scheduler_restart(redis_url: str, prefix: str, model_dir: Path) -> None:
    sched, port = start_scheduler(redis_url, prefix, grace=1.0)
    worker = start_worker(redis_url, prefix, str(model_dir), "--backend", BACKEND)
    restarted: list[Any] = []
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "the worker", [sched, worker])
        got: list[Any] = []

        def restart() -> None:
            sched.signal(signal.SIGTERM)
            sched.proc.wait(10)
            time.sleep(0.3)
            restarted.append(start_scheduler(redis_url, prefix, port=port)[0])

        with Client(f"127.0.0.1:{port}", resume_timeout=30) as c:
            t: threading.Thread | None = None
            for event in c.solve("Keep going.", timeout=120, **MEDIUM):
                got.append(event)
                if event.WhichOneof("kind") == "step" and t is None:
                    t = threading.Thread(target=restart)
                    t.start()
            assert t is not None
            t.join()
        ks = kinds(got)
        assert ks.count("final") == 1 and ks[-1] == "final"
        assert [e.seq for e in got] == list(range(1, len(got) + 1))  # no gap, no duplicate
    finally:
        for p in (*restarted, worker, sched):
            p.stop()
