"""Python clients over the generated stubs: :class:`Client` (blocking) and :class:`AsyncClient`.

``solve`` yields every event as it streams; ``ask`` waits for the final answer and returns it.
Server errors surface as the typed errors of :mod:`ponder.proto.errors`. A Solve or Watch stream
cut by a scheduler shutdown (UNAVAILABLE) resumes transparently with Watch from the last event
seen, through whichever scheduler answers at the same address.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from ponder.proto import pb, pb_grpc
from ponder.proto.config import SolveConfig
from ponder.proto.errors import PonderError, from_status

DEFAULT_TARGET = "localhost:50051"
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)


def build_request(question: str | SolveConfig, **options: Any) -> Any:
    """A SolveRequest from a question and SolveConfig fields. The server validates it (its
    limits may differ from the defaults), so nothing is rejected here."""
    cfg = question if isinstance(question, SolveConfig) else SolveConfig(question=question, **options)
    return cfg.to_proto()


def _typed(exc: grpc.RpcError) -> PonderError:
    code = exc.code()
    return from_status(code.name if code else "UNKNOWN", exc.details() or "")


@contextmanager
def _typed_errors() -> Iterator[None]:
    """gRPC errors of a unary call surface as ponder's typed errors."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _typed(exc) from None


def _final_of(events: list[Any]) -> Any:
    for event in reversed(events):
        kind = event.WhichOneof("kind")
        if kind == "final":
            return event.final
        if kind == "error":
            raise from_status(event.error.code, event.error.message)
    raise PonderError("the stream ended without a final event")


class Client:
    """Blocking client. ``with Client("host:port") as c: print(c.ask("What is 2+2?").answer)``."""

    def __init__(self, target: str = DEFAULT_TARGET, *, resume_attempts: int = 5) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ReasonerStub(self.channel)
        self.resume_attempts = resume_attempts

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def solve(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> Iterator[Any]:
        """Submit and yield events until the final (or error) event."""
        req = build_request(question, **options)
        call = self.stub.Solve(req, timeout=timeout)
        yield from self._follow(call, timeout)

    def watch(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> Iterator[Any]:
        call = self.stub.Watch(pb.WatchRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout)
        yield from self._follow(call, timeout)

    def _follow(self, call: Any, timeout: float | None) -> Iterator[Any]:
        job_id, last = "", ""
        tries = 0
        while True:
            try:
                for event in call:
                    job_id, last = event.job_id, event.event_id
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in _RESUMABLE or not job_id or tries >= self.resume_attempts:
                    raise _typed(exc) from None
                tries += 1
                time.sleep(min(2.0, 0.2 * 2**tries))
                call = self.stub.Watch(pb.WatchRequest(job_id=job_id, after_event_id=last), timeout=timeout)

    def ask(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> Any:
        """Solve and return the Final message (raises the typed error of an error event)."""
        return _final_of(list(self.solve(question, timeout=timeout, **options)))

    def submit(self, question: str | SolveConfig, **options: Any) -> str:
        with _typed_errors():
            return self.stub.Submit(build_request(question, **options)).job_id

    def cancel(self, job_id: str) -> str:
        with _typed_errors():
            return self.stub.Cancel(pb.JobRef(job_id=job_id)).state

    def result(self, job_id: str) -> Any:
        with _typed_errors():
            return self.stub.GetResult(pb.JobRef(job_id=job_id))

    def info(self) -> Any:
        with _typed_errors():
            return self.stub.ServerInfo(pb.ServerInfoRequest())

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


class AsyncClient:
    """asyncio client with the same calls; ``solve``/``watch`` are async iterators."""

    def __init__(self, target: str = DEFAULT_TARGET, *, resume_attempts: int = 5) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ReasonerStub(self.channel)
        self.resume_attempts = resume_attempts

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def solve(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> AsyncIterator[Any]:
        call = self.stub.Solve(build_request(question, **options), timeout=timeout)
        async for event in self._follow(call, timeout):
            yield event

    async def watch(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> AsyncIterator[Any]:
        call = self.stub.Watch(pb.WatchRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout)
        async for event in self._follow(call, timeout):
            yield event

    async def _follow(self, call: Any, timeout: float | None) -> AsyncIterator[Any]:
        import asyncio

        job_id, last = "", ""
        tries = 0
        while True:
            try:
                async for event in call:
                    job_id, last = event.job_id, event.event_id
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in _RESUMABLE or not job_id or tries >= self.resume_attempts:
                    raise _typed(exc) from None
                tries += 1
                await asyncio.sleep(min(2.0, 0.2 * 2**tries))
                call = self.stub.Watch(pb.WatchRequest(job_id=job_id, after_event_id=last), timeout=timeout)

    async def ask(self, question: str | SolveConfig, *, timeout: float | None = None, **options: Any) -> Any:
        return _final_of([e async for e in self.solve(question, timeout=timeout, **options)])

    async def submit(self, question: str | SolveConfig, **options: Any) -> str:
        with _typed_errors():
            return (await self.stub.Submit(build_request(question, **options))).job_id

    async def cancel(self, job_id: str) -> str:
        with _typed_errors():
            return (await self.stub.Cancel(pb.JobRef(job_id=job_id))).state

    async def result(self, job_id: str) -> Any:
        with _typed_errors():
            return await self.stub.GetResult(pb.JobRef(job_id=job_id))

    async def info(self) -> Any:
        with _typed_errors():
            return await self.stub.ServerInfo(pb.ServerInfoRequest())
