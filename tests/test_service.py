"""The service end to end: real Redis, a real scheduler and worker process, real gRPC over
loopback, a tiny real model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_utils import Proc, kinds, start_scheduler, start_worker, wait_until, workers_alive

from ponder.clients.client import Client
from ponder.proto import pb, pb_grpc
from ponder.proto.errors import DeadlineExceeded, InvalidArgument, NotFound

QUICK = dict(generations=2, max_steps=2, max_step_tokens=8, seed=7)
# The service model's final norm is zeroed, so every logit is 0: sampling is uniform over the
# bytes and greedy decoding repeats token 0 (never EOS, never a blank line). LONG therefore
# runs 64 steps of 512 tokens — far longer than any test waits — unless it is cancelled.
LONG = dict(generations=2, max_steps=64, max_step_tokens=512, temperature=0.0)


BACKEND = "auto"  # the worker's default: our paged-KV engine for Llama-family models


def _zero_final_norm(model: Any) -> None:
    model.model.norm.weight.zero_()


@dataclass
class Service:
    redis_url: str
    prefix: str
    port: int
    scheduler: Proc
    worker: Proc

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.target)

    def stub(self) -> Any:
        return pb_grpc.ReasonerStub(grpc.insecure_channel(self.target))


@pytest.fixture(scope="module")
def service_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_model

    # a long context window so LONG is not cut short by the engine's context cap
    return make_tiny_model(
        tmp_path_factory.mktemp("service-model"), "llama", mutate=_zero_final_norm, max_position_embeddings=1 << 17
    )


@pytest.fixture(scope="module")
def svc(redis_url: str, service_model: Path) -> Iterator[Service]:
    import uuid

    prefix = f"svc{uuid.uuid4().hex[:8]}"
    sched, port = start_scheduler(redis_url, prefix)
    worker = start_worker(redis_url, prefix, str(service_model), "--capacity", "64", "--backend", BACKEND)
    try:
        wait_until(lambda: workers_alive(port) >= 1, 120, "the worker to load", [sched, worker])
        yield Service(redis_url, prefix, port, sched, worker)
    finally:
        worker.stop()
        sched.stop()


def test_solve_streams_events_in_order(svc: Service) -> None:
    with svc.client() as c:
        events = list(c.solve("What is 2 + 3?", **QUICK))
    ks = kinds(events)
    assert ks[0] == "queued" and ks[1] == "started" and ks[-1] == "final"
    assert ks[-2] == "progress"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.job_id for e in events}) == 1
    assert all(e.event_id for e in events)
    # every step's parent was announced before it (or is the root)
    seen = {-1}
    for e in events:
        if e.WhichOneof("kind") == "step":
            assert e.step.parent_id in seen
            seen.add(e.step.node_id)
    cands = [e.candidate for e in events if e.WhichOneof("kind") == "candidate"]
    assert len(cands) == QUICK["generations"]
    final = events[-1].final
    assert final.usage.generations == 2
    assert final.usage.decode_tokens > 0 and final.usage.flops > 0
    assert sum(v.count for v in final.votes) == sum(1 for c in cands if c.answer)
    assert final.latency_s > 0 and final.strategy == "best_of_n"


def test_same_seed_same_answer(svc: Service) -> None:
    with svc.client() as c:
        a = c.ask("What is 7 * 6?", **QUICK)
        b = c.ask("What is 7 * 6?", **QUICK)
    assert a.solution == b.solution and a.usage.decode_tokens == b.usage.decode_tokens


def test_watch_resumes_after_event_id(svc: Service) -> None:
    with svc.client() as c:
        job_id = c.submit("What is 5 - 1?", **QUICK)
        full = list(c.watch(job_id))
        assert kinds(full)[-1] == "final"
        k = len(full) // 2
        tail = list(c.watch(job_id, after_event_id=full[k].event_id))
        assert [e.seq for e in tail] == [e.seq for e in full[k + 1 :]]
        assert tail[-1].final == full[-1].final
        res = c.result(job_id)
        assert res.state == "done" and res.final.answer == full[-1].final.answer


def test_cancel_stops_the_job_on_the_worker(svc: Service) -> None:
    with svc.client() as c:
        job_id = c.submit("Count forever.", **LONG)
        stream = c.watch(job_id)
        for event in stream:
            if event.WhichOneof("kind") == "step":
                break  # the worker is busy with it
        t0 = time.monotonic()
        assert c.cancel(job_id) in ("running", "cancelled")
        rest = list(stream)
        assert kinds(rest)[-1] == "error" and rest[-1].error.code == "CANCELLED"
        assert time.monotonic() - t0 < 20
        assert c.result(job_id).state == "cancelled"
        # nothing is written after the terminal event
        time.sleep(0.5)
        assert list(c.watch(job_id, after_event_id=rest[-1].event_id)) == []


def test_cancel_a_queued_job_never_runs_it(svc: Service, redis_url: str) -> None:
    # a scheduler and no worker on a prefix of its own: the job stays queued
    import uuid

    prefix = f"q{uuid.uuid4().hex[:8]}"
    sched, port = start_scheduler(redis_url, prefix)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            job_id = c.submit("never runs", **QUICK)
            assert c.result(job_id).state == "queued"
            assert c.cancel(job_id) == "cancelled"
            events = list(c.watch(job_id))
            assert kinds(events) == ["queued", "error"]
            assert c.info().queue_depth == 1  # still in the stream until a worker drops it
    finally:
        sched.stop()


def test_deadline_cancels_the_job(svc: Service) -> None:
    with svc.client() as c:
        with pytest.raises(DeadlineExceeded):
            for _ in c.solve("Think long.", timeout=2.0, request_id="deadline-test", **LONG):
                pass
        # the caller's deadline reached the worker: the job ends cancelled, not left running
        info = c.info()
        # find the job through its idempotency key: resubmitting returns the same id
        job_id = c.submit("Think long.", request_id="deadline-test", **LONG)
        wait_until(lambda: c.result(job_id).state in ("cancelled", "failed"), 20, "the job to stop")
        assert info.workers_alive >= 1


@pytest.mark.parametrize(
    "fields,field",
    [
        (dict(question=""), "question"),
        (dict(question="   "), "question"),
        (dict(question="x" * 9000), "question"),
        (dict(generations=0), "budget.generations"),
        (dict(generations=-3), "budget.generations"),
        (dict(generations=100_000), "budget.generations"),
        (dict(strategy="magic"), "strategy"),
        (dict(strategy="beam", mode="adaptive"), "budget.mode"),
        (dict(mode="sometimes"), "budget.mode"),
        (dict(strategy="auto", generations=8, max_generations=4), "budget.max_generations"),
        (dict(strategy="auto", generations=8, min_generations=6, max_generations=7), "budget.max_generations"),
        (dict(strategy="auto", generations=8, min_generations=9), "budget.min_generations"),
        (dict(mode="fixed", max_generations=8), "budget.max_generations"),
        (dict(temperature=5.0), "options.temperature"),
        (dict(top_p=0.0), "options.top_p"),
        (dict(strategy="beam", beam_width=8, generations=4), "options.beam_width"),
        (dict(lookahead=99), "options.lookahead"),
        (dict(max_steps=0), "options.max_steps"),
        (dict(aggregation="median"), "options.aggregation"),
        (dict(selection="vibes"), "options.selection"),
        (dict(sequential_ratio=1.5), "options.sequential_ratio"),
        (dict(timeout_s=-1.0), "timeout_s"),
    ],
)
def test_bad_input_is_invalid_argument(svc: Service, fields: dict[str, Any], field: str) -> None:
    req = pb.SolveRequest(question=fields.pop("question", "What is 1 + 1?"), strategy=fields.pop("strategy", ""))
    for name, value in fields.items():
        if name in ("generations", "mode", "min_generations", "max_generations"):
            setattr(req.budget, name, value)
        elif name == "timeout_s":
            req.timeout_s = value
        else:
            setattr(req.options, name, value)
    stub = svc.stub()
    for call in (lambda: list(stub.Solve(req, timeout=10)), lambda: stub.Submit(req, timeout=10)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field + ":"), info.value.details()
    # the server keeps serving
    assert stub.ServerInfo(pb.ServerInfoRequest(), timeout=5).workers_alive >= 1


def test_client_raises_typed_errors(svc: Service) -> None:
    with svc.client() as c:
        with pytest.raises(InvalidArgument) as info:
            c.ask("", **QUICK)
        assert info.value.field == "question"
        with pytest.raises(NotFound):
            c.result("0" * 32)
        with pytest.raises(NotFound):
            list(c.watch("0" * 32))
        for call in (c.result, c.cancel, lambda j: list(c.watch(j))):  # malformed: never reaches Redis
            with pytest.raises(InvalidArgument) as info:
                call("no-such-job")
            assert info.value.field == "job_id"
        with pytest.raises(InvalidArgument):
            c.ask("What is 1 + 1?", model="no-such-model", **QUICK)


def test_idempotent_request_id(svc: Service) -> None:
    from ponder.clients.client import build_request

    stub = svc.stub()
    req = build_request("What is 9 + 9?", request_id="same-key-1", **QUICK)
    a = stub.Submit(req, timeout=10)
    b = stub.Submit(req, timeout=10)
    assert a.created and not b.created and a.job_id == b.job_id


def test_priorities_all_run(svc: Service) -> None:
    with svc.client() as c:
        finals = [c.ask(f"What is {p} + 1?", priority=p, **QUICK) for p in (-5, 0, 5)]
    assert all(f.usage.generations == 2 for f in finals)


def test_server_info_health_and_reflection(svc: Service) -> None:
    with svc.client() as c:
        info = c.info()
    assert info.workers_alive >= 1 and info.models and "best_of_n" in info.strategies
    assert info.workers[0].capacity == 64
    # the worker runs --dtype auto: bf16 where the CPU has native bf16 (the engine), else float32
    from ponder.workers.models import auto_dtype

    want = auto_dtype("cpu")
    assert (info.workers[0].device, info.workers[0].dtype) == ("cpu", want)
    assert info.placements == [f"{info.models[0]} on cpu ({want}) x1"]
    with grpc.insecure_channel(svc.target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ponder.v1.Reasoner"), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "ponder.v1.Reasoner" in names and "grpc.health.v1.Health" in names


def test_auto_streams_its_decisions_and_reports_the_spend(svc: Service) -> None:
    with svc.client() as c:
        info = c.info()
        events = list(c.solve("What is 2 + 3?", strategy="auto", generations=8, max_steps=2, max_step_tokens=8, seed=3))
        fixed = c.ask("What is 2 + 3?", strategy="auto", generations=6, budget_mode="fixed", max_steps=2,
                      max_step_tokens=8, seed=3)
    assert "auto" in info.strategies
    assert info.workers[0].plan  # the plan table the worker loaded (here: the default plan)
    decisions = [e.decision for e in events if e.WhichOneof("kind") == "decision"]
    assert [d.kind for d in decisions[:2]] == ["pilot", "plan"]
    assert decisions[0].candidates == 4 and decisions[0].spent == 4 and decisions[0].nominal == 8
    final = events[-1].final
    assert final.strategy == "auto" and final.nominal_generations == 8
    # one question alone: nothing in the bank, so it never spends more than its nominal budget
    assert 4 <= final.usage.generations <= 8
    assert sum(1 for e in events if e.WhichOneof("kind") == "candidate") == final.usage.generations
    assert fixed.usage.generations == 6 and fixed.nominal_generations == 6
    # the scheduler writes the default max (4 x N, under its own cap) into the job: workers may
    # run with other limits than the scheduler that accepted it
    import asyncio

    from ponder.store.jobs import JobStore

    async def stored_max() -> int | None:
        store = JobStore.from_url(svc.redis_url, svc.prefix)
        try:
            return (await store.load(events[-1].job_id)).config.max_generations
        finally:
            await store.close()

    assert asyncio.run(stored_max()) == 32


def test_fifty_concurrent_streaming_clients(svc: Service) -> None:
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with svc.client() as c:
                results[i] = list(c.solve(f"What is {i} + {i}?", generations=1, max_steps=2, max_step_tokens=6, seed=i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert len(results) == 50
    job_ids = set()
    for events in results.values():
        ks = kinds(events)
        assert ks.count("final") == 1 and ks[-1] == "final" and "error" not in ks
        job_ids.add(events[0].job_id)
    assert len(job_ids) == 50
