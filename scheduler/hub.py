"""One reader per scheduler for every open stream.

A Solve or Watch stream used to hold a pooled Redis connection in a blocking XREAD of its own,
so a scheduler served about 100 streams (redis-py's pool) and open streams starved the unary
calls. Here one task reads every watched job's event stream with a single multi-key XREAD and
fans the events out to per-call queues: a stream costs a queue, not a connection.

A new subscriber first catches up with one non-blocking read of its own (so its first events
do not wait for the reader's current block to end), then joins the shared read at the last
event it was given. Subscribers of one job may be at different positions: the reader reads the
job from the oldest position and hands each subscriber only what is newer than its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.exceptions import RedisError

from ponder.proto.errors import InvalidArgument, NotFound, PonderError, Unavailable
from ponder.store import keys as K
from ponder.store.jobs import TERMINAL_KINDS, JobStore, decode_event, parse_event_id

log = logging.getLogger(__name__)



class SlowConsumer(Unavailable):
    """A caller that reads its stream slower than the job writes it; it resumes with Watch."""


@dataclass(eq=False)
class _Sub:
    """One open stream: a bounded memory stream from the reader to the call. Its end (a
    terminal event, an error, the hub closing) closes the send side; ``end`` says why."""

    job_id: str
    last: str
    send: MemoryObjectSendStream[Any] = field(init=False)
    receive: MemoryObjectReceiveStream[Any] = field(init=False)
    done: bool = False
    end: BaseException | None = None

    def __post_init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Any](SUB_BUFFER)

    @property
    def pos(self) -> tuple[int, int]:
        return parse_event_id(self.last)


SUB_BUFFER = 4096  # events buffered per stream before its caller is told to resume


class EventHub:
    """Fan-out of job events to the scheduler's open streams, through one Redis reader."""

    def __init__(self, store: JobStore, block_ms: int = 100, idle_check_s: float = 1.0, batch: int = 256) -> None:
        self.store = store
        self.block_ms = block_ms
        self.idle_check_s = idle_check_s
        self.batch = batch
        self._subs: dict[str, set[_Sub]] = {}
        self._wake = anyio.Event()
        self._closed = False
        self._last_check = 0.0
        self._heard: set[str] = set()  # jobs with events since the last idle check

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def close(self) -> None:
        """End every stream (its caller resumes elsewhere); :meth:`run` returns."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in subs:
                self._end(sub)
        self._subs.clear()
        self._wake.set()

    async def subscribe(self, job_id: str, after: str = "0") -> AsyncIterator[Any]:
        """The job's events after ``after`` until its terminal event.

        Raises NotFound for an unknown job, InvalidArgument for an ``after`` beyond the job's
        last event (nothing would ever come), Unavailable when Redis fails mid-stream."""
        parse_event_id(after)
        if self._closed:
            raise Unavailable("the scheduler is shutting down")
        if not await self.store.exists(job_id):
            raise NotFound(f"no job {job_id!r} (unknown, or expired)")
        newest = await self.store.last_event_id(job_id)
        if after != "0" and (newest is None or parse_event_id(after) > parse_event_id(newest)):
            raise InvalidArgument(
                "after_event_id", f"{after!r} is beyond job {job_id}'s last event ({newest or 'none'})"
            )
        sub = _Sub(job_id, after)
        # catch up alone, without waiting for the shared reader's current block
        resp = await self.store.r.xread({self.store.k.events(job_id): after}, count=self.batch)
        for entry_id, fields in resp[0][1] if resp else []:
            event = decode_event(entry_id.decode(), fields)
            sub.last = event.event_id
            yield event
            if event.WhichOneof("kind") in TERMINAL_KINDS:
                return
        if self._closed:
            return
        self._subs.setdefault(job_id, set()).add(sub)
        self._wake.set()
        try:
            async with sub.receive:
                async for event in sub.receive:
                    yield event
                    if event.WhichOneof("kind") in TERMINAL_KINDS:
                        return
            if sub.end is not None:
                raise sub.end
        finally:
            self._drop(sub)

    # -- the reader -------------------------------------------------------------------------

    def _drop(self, sub: _Sub) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def _end(self, sub: _Sub, error: BaseException | None = None) -> None:
        """No more events for ``sub``: its caller reads what is buffered, then ``error`` (if
        any) is raised, else its stream just ends."""
        if sub.done:
            return
        sub.done, sub.end = True, error
        sub.send.close()

    def _deliver(self, sub: _Sub, event: Any) -> None:
        if sub.done:
            return
        try:
            sub.send.send_nowait(event)
        except anyio.WouldBlock:
            self._end(sub, SlowConsumer(
                f"the stream of job {sub.job_id} fell {SUB_BUFFER} events behind; "
                f"resume with Watch(job_id={sub.job_id!r}, after_event_id={sub.last!r})"
            ))
            self._drop(sub)
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):  # the caller went away
            sub.done = True
            self._drop(sub)
            return
        sub.last = event.event_id
        if event.WhichOneof("kind") in TERMINAL_KINDS:
            self._end(sub)

    async def run(self) -> None:
        """The reader: run it in the owner's task group (the scheduler's) until :meth:`close`."""
        while not self._closed:
            if not self._subs:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            try:
                await self._read_once()
                if time.monotonic() - self._last_check >= self.idle_check_s:
                    await self._check_idle()
            except (RedisError, OSError, PonderError) as exc:
                err = Unavailable(f"job store unavailable: {exc}")
                for subs in list(self._subs.values()):
                    for sub in subs:
                        self._end(sub, err)
                self._subs.clear()
                await anyio.sleep(0.1)
            except Exception:  # a bug: end the streams loudly rather than hang them
                log.exception("the event hub failed")
                for subs in list(self._subs.values()):
                    for sub in subs:
                        self._end(sub, Unavailable("the scheduler's event reader failed"))
                self._subs.clear()
                await anyio.sleep(0.1)

    async def _read_once(self) -> None:
        streams = {}
        for job_id, subs in self._subs.items():
            live = [s for s in subs if not s.done]
            if live:
                streams[self.store.k.events(job_id)] = min(live, key=lambda s: s.pos).last
        if not streams:
            await anyio.sleep(self.block_ms / 1000)
            return
        resp = await self.store.r.xread(streams, count=self.batch, block=self.block_ms)
        prefix, suffix = self.store.k.job(""), ":events"
        for key, entries in resp or []:
            job_id = key.decode()[len(prefix):-len(suffix)]
            self._heard.add(job_id)
            for entry_id, fields in entries:
                eid = entry_id.decode()
                pos = parse_event_id(eid)
                event = None
                for sub in list(self._subs.get(job_id, ())):
                    if sub.pos < pos:
                        event = event or decode_event(eid, fields)
                        copy = type(event)()
                        copy.CopyFrom(event)
                        self._deliver(sub, copy)

    async def _check_idle(self) -> None:
        """Jobs that wrote nothing since the last check: ended without a terminal event we can
        still read (expired, or Redis lost them) → end their streams."""
        self._last_check = time.monotonic()
        quiet = [j for j in self._subs if j not in self._heard]
        self._heard.clear()
        if not quiet:
            return
        pipe = self.store.r.pipeline(transaction=False)
        for job_id in quiet:
            pipe.hget(self.store.k.job(job_id), "state")
        states = await pipe.execute()
        for job_id, state in zip(quiet, states):
            live = self._subs.get(job_id)
            if not live:
                continue
            subs = list(live)  # those that were here before the check (a newcomer waits for the next)
            if state is None:
                err = NotFound(f"job {job_id} expired or was lost while being watched (Redis lost its data?)")
                for sub in subs:
                    self._end(sub, err)
                    self._drop(sub)
            elif state.decode() in K.TERMINAL:
                # its terminal event is written before its state: one more read, then the end
                resp = await self.store.r.xread(
                    {self.store.k.events(job_id): min(subs, key=lambda s: s.pos).last}, count=self.batch
                )
                if not resp:
                    for sub in subs:
                        self._end(sub)
                        self._drop(sub)
