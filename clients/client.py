"""Python clients over the generated stubs: :class:`Client` (blocking) and :class:`AsyncClient`.

``solve`` yields every event as it streams; ``ask`` waits for the final answer and returns it.
Server errors surface as the typed errors of :mod:`ponder.proto.errors`. A Solve or Watch stream
cut by a scheduler shutdown (UNAVAILABLE) resumes transparently with Watch from the last event
seen, through whichever scheduler answers at the same address, for as long as the outage is
shorter than ``resume_timeout`` seconds and the call's own deadline allows; every error raised
after the job was created names the job (``err.job_id``) and where to resume it.

Security: ``tls=Tls(ca=...)`` (and ``cert``/``key`` for mutual TLS); the bearer token comes from
``token=``, $PONDER_TOKEN or the file named by $PONDER_TOKEN_FILE.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import grpc

from ponder.proto import pb, pb_grpc
from ponder.proto.config import SolveConfig
from ponder.proto.errors import PonderError, from_status

DEFAULT_TARGET = "localhost:50051"
TOKEN_ENV = "PONDER_TOKEN"  # the bearer token itself
TOKEN_FILE_ENV = "PONDER_TOKEN_FILE"  # or a file holding it
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)
RESUME_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Tls:
    """TLS for the channel: the CA that signed the server's certificate (None: the system's
    roots) and, for mutual TLS, this client's certificate and key (PEM files)."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if bool(self.cert) != bool(self.key):
            raise ValueError("Tls: mutual TLS needs both cert and key")
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def find_token(token: str | None = None) -> str | None:
    """The bearer token: ``token``, else $PONDER_TOKEN, else the file named by
    $PONDER_TOKEN_FILE (never a command-line argument: ``ps`` shows those)."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = os.environ.get(TOKEN_FILE_ENV)
    return Path(path).read_text().strip() if path else None


def _channel_args(tls: Tls | None, token: str | None) -> tuple[Any, tuple[tuple[str, str], ...]]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return (tls.credentials() if tls is not None else None), metadata


def build_request(question: str | SolveConfig, **options: Any) -> pb.SolveRequest:
    """A SolveRequest from a question and SolveConfig fields. The server validates it (its
    limits may differ from the defaults), so nothing is rejected here."""
    cfg = question if isinstance(question, SolveConfig) else SolveConfig(question=question, **options)
    return cfg.to_proto()


def _typed(exc: grpc.RpcError, job_id: str = "", last: str = "") -> PonderError:
    code = exc.code()
    err = from_status(code.name if code else "UNKNOWN", exc.details() or "")
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-s":
            err.retry_after_s = float(value)
    if job_id:  # after submit, every error says which job it was and how to pick it up again
        err.job_id = job_id
        err.message = f"{err.message} [job {job_id}; resume: watch({job_id!r}, after_event_id={last or '0'!r})]"
        err.args = (err.message,)
    return err


@contextmanager
def _typed_errors() -> Iterator[None]:
    """gRPC errors of a unary call surface as ponder's typed errors."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _typed(exc) from None


def _final_of(events: list[pb.SolveEvent]) -> pb.Final:
    for event in reversed(events):
        kind = event.WhichOneof("kind")
        if kind == "final":
            return event.final
        if kind == "error":
            err = from_status(event.error.code, event.error.message)
            err.job_id = event.job_id
            raise err
    raise PonderError("the stream ended without a final event")


def _job_id_of(call: Any) -> str:
    """The job id a Solve call announced in its initial metadata ("" if none arrived)."""
    try:
        return str(dict(call.initial_metadata() or ()).get("ponder-job-id", ""))
    except Exception:
        return ""


async def _job_id_of_async(call: Any) -> str:
    try:
        return str(dict(await call.initial_metadata() or ()).get("ponder-job-id", ""))
    except Exception:
        return ""


class _Resume:
    """When to pick a cut stream up again: while the outage is younger than ``window`` seconds
    and the call's own deadline has not passed (a bounded time, not a count of tries)."""

    def __init__(self, window: float, timeout: float | None) -> None:
        self.window = window
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.since: float | None = None
        self.tries = 0

    def ok(self) -> None:
        self.since, self.tries = None, 0

    def wait(self) -> float | None:
        """Seconds to sleep before the next try, or None to give up."""
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        self.tries += 1
        left = self.since + self.window - now
        if self.deadline is not None:
            left = min(left, self.deadline - now)
        if left <= 0.01:
            return None
        return min(2.0, 0.1 * 2.0**self.tries, left)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())


class Client:
    """Blocking client. ``with Client("host:port") as c: print(c.ask("What is 2+2?").answer)``."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls: Tls | None = None,
        resume_timeout: float = RESUME_TIMEOUT_S,
    ) -> None:
        self.target = target
        creds, self.metadata = _channel_args(tls, find_token(token))
        self.channel = grpc.secure_channel(target, creds) if creds is not None else grpc.insecure_channel(target)
        self.stub = pb_grpc.ReasonerStub(self.channel)
        self.resume_timeout = resume_timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def solve(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> Iterator[Any]:
        """Submit and yield events until the final (or error) event."""
        req = build_request(question, **options)
        call = self.stub.Solve(req, timeout=timeout, metadata=self.metadata)
        yield from self._follow(call, "", "", timeout)

    def watch(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> Iterator[Any]:
        call = self.stub.Watch(
            pb.WatchRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout, metadata=self.metadata
        )
        yield from self._follow(call, job_id, after_event_id, timeout)

    def _follow(self, call: Any, job_id: str, last: str, timeout: float | None) -> Iterator[Any]:
        resume = _Resume(self.resume_timeout, timeout)
        while True:
            try:
                for event in call:
                    job_id, last = event.job_id, event.event_id
                    resume.ok()
                    yield event
                return
            except grpc.RpcError as exc:
                job_id = job_id or _job_id_of(call)
                delay = resume.wait() if exc.code() in _RESUMABLE and job_id else None
                if delay is None:
                    raise _typed(exc, job_id, last) from None
                time.sleep(delay)
                call = self.stub.Watch(
                    pb.WatchRequest(job_id=job_id, after_event_id=last),
                    timeout=resume.remaining(), metadata=self.metadata,
                )

    def ask(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> pb.Final:
        """Solve and return the Final message (raises the typed error of an error event)."""
        return _final_of(list(self.solve(question, timeout=timeout, **options)))

    def submit(self, question: str | SolveConfig, **options: Any) -> str:
        with _typed_errors():
            return str(self.stub.Submit(build_request(question, **options), metadata=self.metadata).job_id)

    def cancel(self, job_id: str) -> str:
        with _typed_errors():
            return str(self.stub.Cancel(pb.JobRef(job_id=job_id), metadata=self.metadata).state)

    def result(self, job_id: str) -> pb.ResultResponse:
        with _typed_errors():
            result: pb.ResultResponse = self.stub.GetResult(pb.JobRef(job_id=job_id), metadata=self.metadata)
            return result

    def info(self) -> pb.ServerInfoResponse:
        with _typed_errors():
            info: pb.ServerInfoResponse = self.stub.ServerInfo(pb.ServerInfoRequest(), metadata=self.metadata)
            return info

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


class AsyncClient:
    """Async client with the same calls; ``solve``/``watch`` are async iterators. It runs on
    asyncio, and so from anyio code on the asyncio backend (``anyio.run(main,
    backend="asyncio")``, or any anyio task group there): grpc.aio, underneath, exists for
    asyncio only, so trio is not supported."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls: Tls | None = None,
        resume_timeout: float = RESUME_TIMEOUT_S,
    ) -> None:
        self.target = target
        creds, self.metadata = _channel_args(tls, find_token(token))
        self.channel = (
            grpc.aio.secure_channel(target, creds) if creds is not None else grpc.aio.insecure_channel(target)
        )
        self.stub = pb_grpc.ReasonerStub(self.channel)
        self.resume_timeout = resume_timeout

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def solve(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> AsyncIterator[Any]:
        call = self.stub.Solve(build_request(question, **options), timeout=timeout, metadata=self.metadata)
        async for event in self._follow(call, "", "", timeout):
            yield event

    async def watch(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> AsyncIterator[Any]:
        call = self.stub.Watch(
            pb.WatchRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout, metadata=self.metadata
        )
        async for event in self._follow(call, job_id, after_event_id, timeout):
            yield event

    async def _follow(self, call: Any, job_id: str, last: str, timeout: float | None) -> AsyncIterator[Any]:
        resume = _Resume(self.resume_timeout, timeout)
        while True:
            try:
                async for event in call:
                    job_id, last = event.job_id, event.event_id
                    resume.ok()
                    yield event
                return
            except grpc.RpcError as exc:
                job_id = job_id or await _job_id_of_async(call)
                delay = resume.wait() if exc.code() in _RESUMABLE and job_id else None
                if delay is None:
                    raise _typed(exc, job_id, last) from None
                await anyio.sleep(delay)
                call = self.stub.Watch(
                    pb.WatchRequest(job_id=job_id, after_event_id=last),
                    timeout=resume.remaining(), metadata=self.metadata,
                )

    async def ask(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> pb.Final:
        return _final_of([e async for e in self.solve(question, timeout=timeout, **options)])

    async def submit(self, question: str | SolveConfig, **options: Any) -> str:
        with _typed_errors():
            return str((await self.stub.Submit(build_request(question, **options), metadata=self.metadata)).job_id)

    async def cancel(self, job_id: str) -> str:
        with _typed_errors():
            return str((await self.stub.Cancel(pb.JobRef(job_id=job_id), metadata=self.metadata)).state)

    async def result(self, job_id: str) -> pb.ResultResponse:
        with _typed_errors():
            result: pb.ResultResponse = await self.stub.GetResult(pb.JobRef(job_id=job_id), metadata=self.metadata)
            return result

    async def info(self) -> pb.ServerInfoResponse:
        with _typed_errors():
            info: pb.ServerInfoResponse = await self.stub.ServerInfo(pb.ServerInfoRequest(), metadata=self.metadata)
            return info
