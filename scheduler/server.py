"""The gRPC scheduler: validates requests, queues jobs in Redis, relays job events to callers.

Stateless: every replica reads and writes the same Redis, so a client can Watch a job through
any of them. On SIGTERM the server stops taking calls, ends in-flight streams with UNAVAILABLE
(and the job id and last event id to resume from with Watch) and leaves the jobs running.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from ponder.proto import pb, pb_grpc
from ponder.proto.config import STRATEGIES, SolveConfig
from ponder.proto.errors import InvalidArgument, PonderError
from ponder.scheduler.auth import ANONYMOUS, Principal, Undecodable, bearer, safe_deserializer
from ponder.store import keys as K
from ponder.service import metrics
from ponder.service.signals import serve_until_signalled
from ponder.scheduler.config import SchedulerConfig
from ponder.scheduler.hub import EventHub
from ponder.store.jobs import JobStore, check_job_id, parse_event_id

log = logging.getLogger(__name__)
SERVICE = "ponder.v1.Reasoner"
VERSION = "0.1.0"
T = TypeVar("T")
RETRY_AFTER_S = 5  # the hint sent with RESOURCE_EXHAUSTED (trailing metadata retry-after-s)
_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("ponder_principal", default=ANONYMOUS)


def caller() -> str:
    """The name of the token that made the current call ("" without authentication)."""
    return _PRINCIPAL.get().name


class Reasoner(pb_grpc.ReasonerServicer):
    def __init__(self, store: JobStore, cfg: SchedulerConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.stopping = anyio.Event()
        self.hub = EventHub(store)

    # -- helpers ----------------------------------------------------------------------------

    async def _guard(self, context: grpc.aio.ServicerContext, coro: Awaitable[T]) -> T:
        """Run a store call; typed errors become gRPC statuses."""
        try:
            return await coro
        except PonderError as exc:
            if exc.code == "RESOURCE_EXHAUSTED":  # a hint for clients that retry
                context.set_trailing_metadata((("retry-after-s", str(RETRY_AFTER_S)),))
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        except (RedisError, OSError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"job store unavailable: {exc}")
        raise AssertionError("unreachable")

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> str:
        """A well-formed job id of a job this caller may see (others' jobs are NOT_FOUND)."""
        try:
            check_job_id(job_id)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        owner = await self._guard(context, self.store.owner(job_id))
        if owner is None or owner != caller():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r} (unknown, or expired)")
        return job_id

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
            too_long = _context_check(cfg, [w for w in workers if not cfg.model or cfg.model in w.models])
            if too_long:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, too_long)
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
            async for event in self.hub.subscribe(job_id, after):
                last = event.event_id
                yield event
                if event.WhichOneof("kind") in ("final", "error"):
                    finished = True
                    return
        except (anyio.get_cancelled_exc_class(), GeneratorExit):
            # The caller went away (cancel or deadline; also while grpc was writing to it, when
            # the stream is closed instead): its job is cancelled on the worker.
            if cancel_on_exit and not finished:
                with anyio.CancelScope(shield=True):  # this call's own cleanup, then the cancel goes on
                    await self._cancel_quietly(job_id, "the caller cancelled or its deadline passed")
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

    async def _submit(self, cfg: SolveConfig, context: grpc.aio.ServicerContext) -> tuple[str, bool]:
        job_id, created = await self._guard(context, self.store.submit(cfg, caller(), self.cfg.max_queued))
        if created:
            metrics.SUBMITTED.labels(K.priority_name(cfg.priority)).inc()
        return job_id, created

    async def Solve(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        cfg = await self._config(request, context)
        job_id, _ = await self._submit(cfg, context)
        try:
            await context.send_initial_metadata((("ponder-job-id", job_id),))
        except anyio.get_cancelled_exc_class():  # gone before it learnt the job id: no orphan
            with anyio.CancelScope(shield=True):
                await self._cancel_quietly(job_id, "the caller went away before the job started")
            raise
        async for event in self._relay(job_id, "0", context, cancel_on_exit=True):
            yield event

    async def Submit(self, request: pb.SolveRequest, context: grpc.aio.ServicerContext) -> pb.SubmitResponse:
        cfg = await self._config(request, context)
        if context.time_remaining() is not None:  # Submit's own deadline is not the job's
            cfg = cfg.replace(timeout_s=SolveConfig.from_proto(request).timeout_s)
        job_id, created = await self._submit(cfg, context)
        return pb.SubmitResponse(job_id=job_id, created=created)

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SolveEvent]:
        after = request.after_event_id or "0"
        try:
            parse_event_id(after)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        job_id = await self._job(request.job_id, context)
        async for event in self._relay(job_id, after, context, cancel_on_exit=False):
            yield event

    async def Cancel(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        job_id = await self._job(request.job_id, context)
        state = await self._guard(context, self.store.cancel(job_id))
        return pb.CancelResponse(job_id=job_id, state=state)

    async def GetResult(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.ResultResponse:
        job_id = await self._job(request.job_id, context)
        return await self._guard(context, self.store.result(job_id))

    async def ServerInfo(self, request: pb.ServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfoResponse:
        principal = _PRINCIPAL.get()
        details = principal.admin or (self.cfg.tokens is None and self.cfg.expose_workers)

        async def collect() -> pb.ServerInfoResponse:
            workers = await self.store.workers(self.cfg.worker_alive_s)
            strategies = sorted({s for w in workers for s in w.strategies}, key=_strategy_order)
            return pb.ServerInfoResponse(
                version=VERSION,
                models=sorted({m for w in workers for m in w.models}),
                strategies=strategies or list(STRATEGIES),
                workers_alive=len(workers),
                queue_depth=await self.store.queue_depth(),
                jobs_running=await self.store.running(),
                workers=workers if details else [],
                placements=_placements(workers),
                max_generations=self.cfg.limits.max_generations,
                max_question_chars=self.cfg.limits.max_question_chars,
            )

        return await self._guard(context, collect())


    # -- admission: every call passes here before its method runs --------------------------

    async def admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Authenticate the caller (UNAUTHENTICATED) and refuse undecodable requests
        (INVALID_ARGUMENT), so neither reaches Redis, a worker or the log as a traceback."""
        if self.cfg.tokens is not None:
            secret = bearer(context)
            principal = self.cfg.tokens.lookup(secret) if secret else None
            if principal is None:
                what = "no bearer token" if secret is None else "an unknown bearer token"
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authorization: {what}")
            assert principal is not None  # abort() raises
            _PRINCIPAL.set(principal)
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: the payload is not a valid {request.message} ({request.error})",
            )

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, each admitted first and with a deserializer that
        turns undecodable bytes into :class:`Undecodable` instead of an UNKNOWN status."""

        def counted(name: str, context: grpc.aio.ServicerContext, failed: bool, cancelled: bool = False) -> None:
            code = getattr(context, "code", lambda: None)() if failed else None
            label = (code.name if isinstance(code, grpc.StatusCode) else
                     "CANCELLED" if cancelled else "UNKNOWN" if failed else "OK")
            metrics.REQUESTS.labels(name, label).inc()

        def unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                failed, cancelled = True, False
                try:
                    await self.admit(request, context)
                    result = await method(request, context)
                    failed = False
                    return result
                except anyio.get_cancelled_exc_class():
                    cancelled = True
                    raise
                finally:
                    counted(method.__name__, context, failed, cancelled)
            return call

        def stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                failed, cancelled = True, False
                metrics.STREAMS.inc()
                try:
                    await self.admit(request, context)
                    async for item in method(request, context):
                        yield item
                    failed = False
                except (anyio.get_cancelled_exc_class(), GeneratorExit):
                    cancelled = True
                    raise
                finally:
                    metrics.STREAMS.dec()
                    counted(method.__name__, context, failed, cancelled)
            return call

        methods: dict[str, tuple[Callable[..., Any], Any, Any]] = {
            "Solve": (stream, pb.SolveRequest, pb.SolveEvent),
            "Submit": (unary, pb.SolveRequest, pb.SubmitResponse),
            "Watch": (stream, pb.WatchRequest, pb.SolveEvent),
            "Cancel": (unary, pb.JobRef, pb.CancelResponse),
            "GetResult": (unary, pb.JobRef, pb.ResultResponse),
            "ServerInfo": (unary, pb.ServerInfoRequest, pb.ServerInfoResponse),
        }
        table = {}
        for name, (wrap, req, resp) in methods.items():
            make = grpc.unary_stream_rpc_method_handler if wrap is stream else grpc.unary_unary_rpc_method_handler
            table[name] = make(
                wrap(getattr(self, name)),
                request_deserializer=safe_deserializer(req),
                response_serializer=resp.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, table)


def _placements(workers: list[Any]) -> list[str]:
    counts: dict[str, int] = {}
    for w in workers:
        for m in w.models:
            key = f"{m} on {w.device or 'cpu'} ({w.dtype or 'float32'})"
            counts[key] = counts.get(key, 0) + 1
    return [f"{k} x{n}" for k, n in sorted(counts.items())]


def _context_check(cfg: SolveConfig, workers: list[Any]) -> str:
    """Why the question cannot fit any of these workers' context ("" if it may): a question of
    C characters takes at least C / max_token_chars tokens. Workers that advertise no limit
    (older ones) may take anything; the worker checks the exact count before the search."""
    best = 0.0
    for w in workers:
        if not w.context_tokens or not w.max_token_chars:
            return ""
        best = max(best, w.context_tokens * w.max_token_chars)
    if workers and len(cfg.question) >= best:
        return (
            f"question: {len(cfg.question)} characters cannot fit the model's context "
            f"({max(w.context_tokens for w in workers)} tokens)"
        )
    return ""


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
        self._tg: Any = None  # the task group of the health watch and the event reader
        self.metrics_port: int | None = None
        self._metrics: Any = None

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> int:
        """Listen, and start the health watch and the event reader in a task group that
        :meth:`stop` closes (call both from the same task, or use ``async with``). A failure
        half-way stops what was started."""
        try:
            return await self._start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop()
            raise

    async def _start(self) -> int:
        await self.store.ping()
        await self.store.ensure_groups()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((self.service.handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.cfg.host}:{self.cfg.port}"
        if self.cfg.tls is not None:
            self.port = self.server.add_secure_port(address, self.cfg.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {self.cfg.host}:{self.cfg.port}")
        await self.server.start()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._watch_redis, name="health")
        self._tg.start_soon(self.service.hub.run, name="event-hub")
        self._metrics = metrics.serve_metrics(self.cfg.metrics_port)
        if self._metrics is not None:
            self.metrics_port = self._metrics.server_port
            log.info("metrics on http://127.0.0.1:%d/metrics", self.metrics_port)
        log.info("scheduler listening on %s:%d", self.cfg.host, self.port)
        return self.port

    async def _watch_redis(self) -> None:
        """Health follows Redis: NOT_SERVING while the job store is unreachable or its queues'
        consumer groups are missing (Redis restarted without its data), which this re-creates."""
        down = False
        while True:
            try:
                await self.store.r.ping()
                if await self.store.ensure_groups():
                    log.warning("the job queues' consumer groups were missing (Redis lost its data?); re-created them")
                    status = health_pb2.HealthCheckResponse.NOT_SERVING  # SERVING from the next check
                else:
                    status = health_pb2.HealthCheckResponse.SERVING
                    if down:
                        log.info("job store reachable again")
                    down = False
                await self._sample_metrics()
            except Exception as exc:
                if not down:  # one line per outage
                    log.warning("job store unreachable (%s: %s); health NOT_SERVING", type(exc).__name__, exc)
                down = True
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE):
                await self.health.set(name, status)
            await anyio.sleep(1.0)

    async def _sample_metrics(self) -> None:
        for name, depth in (await self.store.queue_depths()).items():
            metrics.QUEUE_DEPTH.labels(name).set(depth)
        metrics.RUNNING.set(await self.store.running())
        metrics.WORKERS.set(len(await self.store.workers(self.cfg.worker_alive_s)))

    async def stop(self) -> None:
        """Graceful stop: refuse new calls, end streams with a resumable UNAVAILABLE, then
        close the task group (nothing of the scheduler's is left running)."""
        await self.health.enter_graceful_shutdown()
        self.service.stopping.set()
        await self.service.hub.close()
        if self.server is not None:
            await self.server.stop(self.cfg.grace_s)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics = None
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
        await self.store.close()

    async def serve_forever(self, stop: Any = None) -> None:
        """Start, then run until ``stop`` is set (default: until SIGTERM or SIGINT)."""
        if stop is None:
            await serve_until_signalled(self.serve_forever)
            return
        async with self:
            await stop.wait()
