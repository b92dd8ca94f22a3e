"""`ponder serve`: the whole service in one command.

Without ``--redis`` it starts a private Redis-protocol server on a free local port; then a
scheduler in this process and ``--workers N`` worker processes, and stops them all on exit,
Ctrl-C or SIGTERM. With ``--demo QUESTION`` it asks that question through gRPC, prints the
streamed reasoning, and shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import anyio

from ponder.proto.config import Limits
from ponder.service.redis_server import RedisServer
from ponder.scheduler.config import SchedulerConfig
from ponder.scheduler.server import Scheduler

log = logging.getLogger(__name__)


def worker_command(args: Any) -> list[str]:
    """The worker's command line; its Redis URL travels in $PONDER_REDIS_URL (see worker_env),
    so a password in it never shows in ps."""
    cmd = [
        sys.executable, "-m", "ponder.cli.main", "worker", "--model", args.model,
        "--backend", args.backend, "--prefix", args.prefix, "--capacity", str(args.capacity),
        "--drain", "2", "--verifier", args.verifier, "--reviser", args.reviser, "--threads", str(args.threads),
        "--plan", args.plan, "--device", args.device, "--dtype", args.dtype,
    ]
    return cmd


def worker_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "PONDER_REDIS_URL": redis_url}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _wait_for_workers(sched: Scheduler, n: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    with anyio.fail_after(timeout):
        while True:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited with code {dead[0].returncode} while loading (see its log above)")
            if len(await sched.store.workers()) >= n:
                return
            await anyio.sleep(0.2)


async def serve(args: Any) -> int:
    """Redis (unless given), a scheduler in this process and worker subprocesses, supervised
    together: whatever ends first (the demo, a signal, a failure), every part is stopped."""
    redis: RedisServer | None = None
    url = args.redis
    if not url:
        redis = RedisServer(avoid=(args.port,))
        url = redis.start()
        _say(f"· private Redis ({os.path.basename(redis.binary)}) on {url}")
    procs: list[subprocess.Popen[bytes]] = []
    sched = Scheduler(
        SchedulerConfig(redis_url=url, host=args.host, port=args.port, prefix=args.prefix,
                        limits=Limits(max_generations=args.max_generations),
                        metrics_port=getattr(args, "metrics_port", None))
    )
    code = 0
    try:
        async with sched, contextlib.AsyncExitStack() as stack:
            _say(f"· scheduler on {args.host}:{sched.port}")
            for _ in range(args.workers):
                procs.append(subprocess.Popen(worker_command(args), env=worker_env(url)))
            _say(f"· starting {args.workers} worker(s) with model {args.model!r} (loading the model takes a while)…")
            try:
                await _wait_for_workers(sched, args.workers, procs, args.ready_timeout)
            except TimeoutError:
                raise TimeoutError(f"workers not ready after {args.ready_timeout:.0f} s") from None
            _say("· ready")
            if getattr(args, "http", None) is not None:
                from ponder.clients.gateway import Gateway, bound_port, run_gateway

                local = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
                gateway = Gateway(f"{local}:{sched.port}")
                runner = await run_gateway(gateway, args.host, args.http)
                stack.push_async_callback(gateway.close)
                stack.push_async_callback(runner.cleanup)
                _say(f"· OpenAI-compatible gateway on http://{args.host}:{bound_port(runner)}/v1")
            if args.demo:
                code = await anyio.to_thread.run_sync(_demo, f"localhost:{sched.port}", args)
            else:
                _say(f"· serving; try: ponder ask \"{args.demo_question}\" --server localhost:{sched.port}   (Ctrl-C stops)")
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
            _say("· shutting down")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        with anyio.CancelScope(shield=True):
            for p in procs:
                try:
                    await anyio.to_thread.run_sync(p.wait, 10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if redis is not None:
            redis.stop()
    return code


def _demo(target: str, args: Any) -> int:
    from ponder.clients.client import Client
    from ponder.clients.render import render

    _say(f"· asking over gRPC ({target}): {args.demo}")
    with Client(target) as client:
        final = None
        for event in client.solve(args.demo, strategy=args.strategy, generations=args.budget):
            print(render(event), flush=True)
            if event.WhichOneof("kind") == "final":
                final = event.final
            elif event.WhichOneof("kind") == "error":
                return 1
    return 0 if final is not None else 1
