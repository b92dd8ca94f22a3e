"""Running a service until SIGTERM or SIGINT, for the scheduler and the worker alike."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio


async def serve_until_signalled(run: Callable[[anyio.Event], Awaitable[None]]) -> None:
    """``await run(stop)`` with ``stop`` set on SIGTERM or SIGINT, in one task group: when
    ``run`` returns or raises, the signal watcher goes with it."""
    stop = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals)
        await run(stop)
        tg.cancel_scope.cancel()
