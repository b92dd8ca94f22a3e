"""The scheduler under hostile input, many streams, full queues, lost Redis data and TLS with
bearer tokens: a real scheduler process, real Redis, real gRPC over loopback."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponder.clients.client import AsyncClient, Client, Tls
from ponder.proto import pb
from ponder.proto.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ponder.service.redis_server import RedisServer, free_port
from service_utils import Proc, start_scheduler, wait_until

METHODS = {  # method: streaming?
    "Solve": True, "Submit": False, "Watch": True, "Cancel": False, "GetResult": False, "ServerInfo": False,
}
# Statuses that say "the server broke" or "retry later" when the input was the problem.
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
FUZZ = Counter()  # cases run per fuzz test (the module checks the total)


@pytest.fixture(scope="module")
def sched(redis_url: str) -> Any:
    """A scheduler with no worker (nothing runs; every answer here is the scheduler's)."""
    import uuid

    proc, port = start_scheduler(redis_url, f"h{uuid.uuid4().hex[:8]}")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield proc, port, channel
    channel.close()
    proc.stop()


def _raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """Send ``payload`` as the request bytes of ``method``; the status it ends with."""
    path = f"/ponder.v1.Reasoner/{method}"
    try:
        if METHODS[method]:
            call = channel.unary_stream(path)(payload, timeout=0.3)
            for _ in call:
                pass
        else:
            channel.unary_unary(path)(payload, timeout=2)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _check(proc: Proc, method: str, payload: bytes, code: grpc.StatusCode) -> None:
    assert code not in FORBIDDEN, f"{method}({payload[:60]!r}) → {code}"
    assert proc.alive(), proc.log()


FUZZ_SETTINGS = settings(max_examples=800, deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@FUZZ_SETTINGS
@given(method=st.sampled_from(sorted(METHODS)), payload=st.binary(max_size=300))
def test_fuzz_raw_bytes(sched: Any, method: str, payload: bytes) -> None:
    proc, _, channel = sched
    _check(proc, method, payload, _raw(channel, method, payload))
    FUZZ["raw"] += 1


def _mutations(data: bytes, draw: Any) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "keep"]))
    if not data or kind == "keep":
        return data
    i = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]


TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "0", "-1", "0-", "1-2-3", "garbage", "x" * 5000,
                                                         "f" * 32, "0" * 32 + ":events", "\x00", "é" * 10]))


@st.composite
def solve_requests(draw: Any) -> bytes:
    req = pb.SolveRequest(
        question=draw(st.one_of(st.just("What is 1 + 1?"), TEXT)),
        strategy=draw(st.one_of(st.sampled_from(["best_of_n", "beam", "auto", "revision"]), TEXT)),
        request_id=draw(TEXT), priority=draw(st.integers(-(2**31), 2**31 - 1)),
        model=draw(st.one_of(st.just(""), TEXT)),
        timeout_s=draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0))),
    )
    if draw(st.booleans()):
        req.budget.generations = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        req.budget.max_flops = draw(st.floats(allow_nan=True))
        req.budget.mode = draw(st.sampled_from(["", "fixed", "adaptive", "nonsense"]))
    if draw(st.booleans()):
        req.options.temperature = draw(st.floats(allow_nan=True, width=32))
        req.options.seed = draw(st.integers(0, 2**64 - 1))
        req.options.beam_width = draw(st.integers(-(2**31), 2**31 - 1))
        req.options.selection = draw(TEXT)
    return _mutations(req.SerializeToString(), draw)


@FUZZ_SETTINGS
@given(payload=solve_requests())
def test_fuzz_solve_requests(sched: Any, payload: bytes) -> None:
    """Structured requests, mutated: Submit (a valid one is queued; the fixture has no worker)."""
    proc, _, channel = sched
    _check(proc, "Submit", payload, _raw(channel, "Submit", payload))
    FUZZ["solve"] += 1


@settings(max_examples=700, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(job_id=TEXT, after=TEXT, method=st.sampled_from(["Watch", "Cancel", "GetResult"]), data=st.data())
def test_fuzz_job_refs(sched: Any, job_id: str, after: str, method: str, data: Any) -> None:
    proc, _, channel = sched
    msg = pb.WatchRequest(job_id=job_id, after_event_id=after) if method == "Watch" else pb.JobRef(job_id=job_id)
    payload = _mutations(msg.SerializeToString(), data.draw)
    _check(proc, method, payload, _raw(channel, method, payload))
    FUZZ["refs"] += 1


def test_fuzz_totals_and_a_quiet_log(sched: Any) -> None:
    """≥ 2,000 cases ran above, and the scheduler logged no traceback for any of them."""
    proc, port, _ = sched
    assert sum(FUZZ.values()) >= 2000, FUZZ
    assert "Traceback" not in proc.log(), proc.log()
    with Client(f"127.0.0.1:{port}") as c:
        assert c.info().version  # still serving


def test_malformed_ids_and_positions_are_invalid_argument(sched: Any) -> None:
    _, port, _ = sched
    with Client(f"127.0.0.1:{port}") as c:
        job_id = c.submit("What is 1 + 1?", generations=1)
        for bad in ("garbage", "-1", "0-", "1-2-3", "9" * 30, "x" * 1_000_000):
            with pytest.raises(InvalidArgument) as info:
                list(c.watch(job_id, bad, timeout=5))
            assert info.value.field == "after_event_id", bad
        # beyond the stream's end on a live job: refused at once, not a wait until the deadline
        t0 = time.monotonic()
        with pytest.raises(InvalidArgument) as info:
            list(c.watch(job_id, "99999999999999-0", timeout=20))
        assert info.value.field == "after_event_id" and time.monotonic() - t0 < 5
        for bad in (f"{job_id}:events", job_id.upper(), job_id + "0"):
            with pytest.raises(InvalidArgument) as info:
                c.result(bad)
            assert info.value.field == "job_id"
        assert c.cancel(job_id) == "cancelled"


def test_a_thousand_streams_share_one_reader(sched: Any) -> None:
    """1,000 Watch streams on one job stay open while other calls go on, then all end with it."""
    _, port, _ = sched
    n = 1000

    async def main() -> tuple[list[Any], float]:
        async with AsyncClient(f"127.0.0.1:{port}") as c:
            job_id = await c.submit("What is 1 + 1?", generations=1)
            first = [asyncio.Event() for _ in range(n)]

            async def watch(i: int) -> list[str]:
                kinds = []
                async for e in c.watch(job_id, timeout=120):
                    kinds.append(e.WhichOneof("kind"))
                    first[i].set()
                return kinds

            tasks = [asyncio.create_task(watch(i)) for i in range(n)]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in first)), 60)
            t0 = time.monotonic()
            info = await c.info()  # the other calls are not starved by the open streams
            others = [await c.submit(f"What is {i} + 1?", generations=1) for i in range(20)]
            unary_s = time.monotonic() - t0
            assert info.queue_depth >= 1 and len(set(others)) == 20
            assert await c.cancel(job_id) == "cancelled"
            for j in others:
                await c.cancel(j)
            return await asyncio.gather(*tasks), unary_s

    results, unary_s = asyncio.run(main())
    assert all(kinds == ["queued", "error"] for kinds in results)
    assert unary_s < 10, unary_s


def test_full_queue_is_resource_exhausted_with_a_hint(redis_url: str, prefix: str) -> None:
    proc, port = start_scheduler(redis_url, prefix, extra=["--max-queued", "2"])
    try:
        with Client(f"127.0.0.1:{port}") as c:
            jobs = [c.submit("What is 1 + 1?", generations=1) for _ in range(2)]
            with pytest.raises(ResourceExhausted) as info:
                c.submit("What is 1 + 1?", generations=1)
            assert info.value.retry_after_s and "queue is full" in info.value.message
            with pytest.raises(ResourceExhausted):
                list(c.solve("What is 1 + 1?", generations=1, timeout=5))
            assert c.submit("What is 1 + 1?", generations=1, priority=1)  # its own queue
            assert c.info().queue_depth == 3
            for j in jobs:
                c.cancel(j)
    finally:
        proc.stop()


def test_errors_after_submit_name_the_job_and_resume_is_bounded_in_time(redis_url: str, prefix: str) -> None:
    proc, port = start_scheduler(redis_url, prefix)
    with Client(f"127.0.0.1:{port}", resume_timeout=2.0) as c:
        stream = c.solve("What is 1 + 1?", generations=1, timeout=60)
        queued = next(stream)
        proc.signal(9)  # the scheduler dies mid-stream and does not come back
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            next(stream)
        waited = time.monotonic() - t0
    proc.stop()
    assert info.value.job_id == queued.job_id and queued.job_id in str(info.value)
    assert 1.5 < waited < 8, waited  # resumed for the 2 s window, then gave up


# -- Redis loses its data; the context limit (a real worker) -------------------------------


def test_service_recovers_after_redis_loses_its_data() -> None:
    import uuid

    with RedisServer() as url:
        prefix = f"r{uuid.uuid4().hex[:8]}"
        sched, port = start_scheduler(url, prefix)
        worker = Proc("worker", ["worker", "--redis", url, "--prefix", prefix, "--model", "arith",
                                 "--lease", "3", "--threads", "1"])
        try:
            with Client(f"127.0.0.1:{port}") as c:
                wait_until(lambda: c.info().workers_alive >= 1, 120, "the worker", [sched, worker])
                assert c.ask("What is 2 + 3?", generations=1, max_steps=2, timeout=60).answer is not None
                # the context: 3,000 characters cannot fit arith's 1,024-token context
                with pytest.raises(InvalidArgument) as info:
                    c.ask("1 + " * 750 + "1", generations=1, timeout=30)
                assert info.value.field == "question" and "context" in info.value.message
                _flushall(url)  # a restart without persistence: every key is gone, consumer groups too
                t0 = time.monotonic()
                final = None
                while final is None and time.monotonic() - t0 < 20:
                    try:
                        final = c.ask("What is 2 + 3?", generations=1, max_steps=2, timeout=5)
                    except Exception:
                        time.sleep(0.2)
                recovered_s = time.monotonic() - t0
            assert final is not None, worker.log()
            assert recovered_s < 10, recovered_s
            assert worker.log().count("Traceback") == 0, worker.log()
        finally:
            worker.stop()
            sched.stop()


def _flushall(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushall()


# -- TLS and bearer tokens ------------------------------------------------------------------


def _certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ponder-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'localhost' if name == 'server' else 'ponder-client'}")
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


ALICE, BOB, OPS = "alice-secret-0123456789", "bob-secret-0123456789ab", "ops-secret-0123456789abc"
TOKENS = f"alice {ALICE}\nbob {BOB}\nops {OPS} admin\n"


def test_tls_and_tokens_scope_jobs_to_their_owner(redis_url: str, prefix: str, tmp_path: Path) -> None:
    c = _certs(tmp_path)
    proc, port = start_scheduler(
        redis_url, prefix, tls_ca=c["ca.pem"],
        extra=["--tls-cert", str(c["server.pem"]), "--tls-key", str(c["server.key"])],
        env={"PONDER_TOKENS": TOKENS},
    )
    target = f"localhost:{port}"
    tls = Tls(ca=c["ca.pem"])
    try:
        assert "secret" not in " ".join(proc.proc.args)  # the tokens never were on the command line
        with Client(target, tls=tls) as anon, Client(target, tls=tls, token="wrong-token-0123456789") as wrong:
            for client in (anon, wrong):
                with pytest.raises(Exception) as info:
                    client.submit("What is 1 + 1?")
                assert info.value.code == "UNAUTHENTICATED"
        with Client(target, tls=tls, token=ALICE) as alice, Client(target, tls=tls, token=BOB) as bob, \
                Client(target, tls=tls, token=OPS) as ops:
            job = alice.submit("What is 1 + 1?", request_id="same-key")
            assert alice.result(job).state == "queued"
            for call in (bob.result, bob.cancel, lambda j: list(bob.watch(j, timeout=5))):
                with pytest.raises(NotFound):
                    call(job)
            assert bob.submit("What is 1 + 1?", request_id="same-key") != job  # not alice's job
            assert alice.submit("What is 1 + 1?", request_id="same-key") == job
            assert not alice.info().workers and ops.info().version  # details are for admins
            assert alice.cancel(job) == "cancelled"
        # a plaintext client cannot talk to the TLS port
        with Client(target, token=ALICE) as plain:
            with pytest.raises(Unavailable):
                plain.info()
    finally:
        proc.stop()


def test_mutual_tls_requires_a_client_certificate(redis_url: str, prefix: str, tmp_path: Path) -> None:
    c = _certs(tmp_path)
    proc, port = start_scheduler(
        redis_url, prefix, tls_ca=c["ca.pem"], tls_client=(c["client.pem"], c["client.key"]),
        extra=["--tls-cert", str(c["server.pem"]), "--tls-key", str(c["server.key"]),
               "--tls-client-ca", str(c["ca.pem"])],
    )
    try:
        with Client(f"localhost:{port}", tls=Tls(ca=c["ca.pem"], cert=c["client.pem"], key=c["client.key"])) as ok:
            assert ok.info().version
        with Client(f"localhost:{port}", tls=Tls(ca=c["ca.pem"])) as no_cert:
            with pytest.raises(Unavailable):
                no_cert.info()
    finally:
        proc.stop()


def test_a_redis_password_is_refused_on_the_command_line() -> None:
    out = subprocess.run(
        [*Proc.command(), "scheduler", "--redis", "redis://:hunter2@127.0.0.1:1/0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "PONDER_REDIS_URL" in out.stderr and "hunter2" not in out.stderr
