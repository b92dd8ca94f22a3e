"""The gRPC scheduler: validates requests, queues jobs in Redis, relays job events to callers.

Stateless: every replica reads and writes the same Redis, so a client can Watch a job through
any of them. On SIGTERM the server stops taking calls, ends in-flight streams with UNAVAILABLE
(and the job id and last event id to resume from with Watch) and leaves the jobs running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from ponder.proto import pb, pb_grpc
from ponder.proto.config import STRATEGIES, Limits, SolveConfig
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.scheduler.store import JobStore

log = logging.getLogger(__name__)
SERVICE = "ponder.v1.Reasoner"
VERSION = "0.1.0"
T = TypeVar("T")


@dataclass(frozen=True)
class SchedulerConfig:
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    prefix: str = "ponder"
    limits: Limits = field(default_factory=Limits)
    grace_s: float = 5.0
    result_ttl_s: int = 86_400
    worker_alive_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument("port", f"must be in [0, 65535], got {self.port}")


class Reasoner(pb_grpc.ReasonerServicer):
    def __init__(self, store: JobStore, cfg: SchedulerConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.stopping = asyncio.Event()

    # -- helpers ----------------------------------------------------------------------------

    async def _guard(self, context: grpc.aio.ServicerContext, coro: Awaitable[T]) -> T:
        """Run a store call; typed errors become gRPC statuses."""
        try:
            return await coro
        except PonderError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        except (RedisError, OSError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"job store unavailable: {exc}")
        raise AssertionError("unreachable")

    async def _config(self, request: Any, context: grpc.aio.ServicerContext) -> SolveConfig:
        try:
            cfg = SolveConfig.from_proto(request).validate(self.cfg.limits)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        # What live workers offer (a job for nobody would wait forever). With no worker alive
        # the job is queued for the workers to come.
        workers = await self._guard(context, self.store.workers(self.cfg.worker_alive_s))
        if workers:
            models = {m for w in workers for m in w.models}
            if cfg.model and cfg.model not in models:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"model: no live worker serves {cfg.model!r} (available: {', '.join(sorted(models))})",
                )
            strategies = {s for w in workers for s in w.strategies}
            if strategies and cfg.strategy not in strategies:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"strategy: {cfg.strategy!r} is not offered by any live worker "
                    f"(available: {', '.join(sorted(strategies, key=_strategy_order))})",
                )
        if cfg.adaptive and cfg.max_generations is None:
            # the default max (4 x N) under this server's cap, resolved here: workers may run
            # with other limits than the scheduler that accepted the job
            cfg = cfg.replace(max_generations=cfg.budget_bounds(self.cfg.limits)[1])
        remaining = context.time_remaining()
        if remaining is not None:  # the caller's deadline also bounds the job on the worker
            timeout = min(cfg.timeout_s or remaining, remaining)
            cfg = cfg.replace(timeout_s=max(0.001, timeout))
        return cfg

    async def _relay(
        self, job_id: str, after: str, context: grpc.aio.ServicerContext, cancel_on_exit: bool
    ) -> AsyncIterator[Any]:
        last = after
        finished = False
        try:
            async for event in self.store.events(job_id, after, stop=self.stopping):
                last = event.event_id
                yield event
                if event.WhichOneof("kind") in ("final", "error"):
                    finished = True
                    return
        except asyncio.CancelledError:
            # The caller went away (cancel or deadline): its job is cancelled on the worker.
            if cancel_on_exit and not finished:
                task = asyncio.ensure_future(self._cancel_quietly(job_id, "the caller cancelled or its deadline passed"))
                await asyncio.shield(task)
            raise
        except PonderError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        except (RedisError, OSError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"job store unavailable: {exc}")
        if self.stopping.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"scheduler shutting down; the job goes on: Watch(job_id={job_id!r}, after_event_id={last!r})",
            )

    async def _cancel_quietly(self, job_id: str, reason: str) -> None:
        try:
            await self.store.cancel(job_id, reason)
        except Exception:
            log.exception("could not cancel job %s", job_id)

    # -- RPCs -------------------------------------------------------------------------------

    async def Solve(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        cfg = await self._config(request, context)
        job_id, _ = await self._guard(context, self.store.submit(cfg))
        await context.send_initial_metadata((("ponder-job-id", job_id),))
        async for event in self._relay(job_id, "0", context, cancel_on_exit=True):
            yield event

    async def Submit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cfg = await self._config(request, context)
        if context.time_remaining() is not None:  # Submit's own deadline is not the job's
            cfg = cfg.replace(timeout_s=SolveConfig.from_proto(request).timeout_s)
        job_id, created = await self._guard(context, self.store.submit(cfg))
        return pb.SubmitResponse(job_id=job_id, created=created)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if not request.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty")
        async for event in self._relay(request.job_id, request.after_event_id or "0", context, cancel_on_exit=False):
            yield event

    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty")
        state = await self._guard(context, self.store.cancel(request.job_id))
        return pb.CancelResponse(job_id=request.job_id, state=state)

    async def GetResult(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty")
        return await self._guard(context, self.store.result(request.job_id))

    async def ServerInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def gather() -> Any:
            workers = await self.store.workers(self.cfg.worker_alive_s)
            strategies = sorted({s for w in workers for s in w.strategies}, key=_strategy_order)
            return pb.ServerInfoResponse(
                version=VERSION,
                models=sorted({m for w in workers for m in w.models}),
                strategies=strategies or list(STRATEGIES),
                workers_alive=len(workers),
                queue_depth=await self.store.queue_depth(),
                jobs_running=await self.store.running(),
                workers=workers,
                max_generations=self.cfg.limits.max_generations,
                max_question_chars=self.cfg.limits.max_question_chars,
            )

        return await self._guard(context, gather())


def _strategy_order(name: str) -> int:
    return STRATEGIES.index(name) if name in STRATEGIES else len(STRATEGIES)


class Scheduler:
    """A running scheduler: the gRPC server, its health service and its Redis connection."""

    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.store = JobStore.from_url(cfg.redis_url, cfg.prefix, cfg.result_ttl_s)
        self.service = Reasoner(self.store, cfg)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None  # made in start(), on the running loop
        self.port = 0
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        await self.store.ping()
        await self.store.ensure_groups()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_ReasonerServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(f"{self.cfg.host}:{self.cfg.port}")
        if self.port == 0:
            raise OSError(f"could not bind {self.cfg.host}:{self.cfg.port}")
        await self.server.start()
        self._health_task = asyncio.create_task(self._watch_redis())
        log.info("scheduler listening on %s:%d", self.cfg.host, self.port)
        return self.port

    async def _watch_redis(self) -> None:
        """Health follows Redis: NOT_SERVING while the job store is unreachable."""
        while True:
            try:
                await self.store.r.ping()
                status = health_pb2.HealthCheckResponse.SERVING
            except Exception:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE):
                await self.health.set(name, status)
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Graceful stop: refuse new calls, end streams with a resumable UNAVAILABLE."""
        if self._health_task:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        self.service.stopping.set()
        if self.server is not None:
            await self.server.stop(self.cfg.grace_s)
        await self.store.close()

    async def serve_forever(self) -> None:
        """Start, then run until SIGTERM or SIGINT."""
        await self.start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await self.stop()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False
