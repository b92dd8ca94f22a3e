"""The layout's promises (docs/design.md): a worker process loads neither the gRPC server nor
the training or evaluation code; the scheduler loads no torch."""

from __future__ import annotations

import subprocess
import sys


def _loaded(module: str) -> set[str]:
    code = f"import {module}, sys; print('\\n'.join(m for m in sys.modules if m.startswith(('ponder', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_worker_loads_no_server_training_or_evaluation() -> None:
    mods = _loaded("ponder.workers.worker")
    assert "ponder.store.jobs" in mods
    assert not {m for m in mods if m.startswith(("ponder.scheduler", "ponder.training", "ponder.evaluation",
                                                 "ponder.clients", "ponder.cli"))}


def test_scheduler_loads_no_worker_or_torch() -> None:
    mods = _loaded("ponder.scheduler.server")
    assert not {m for m in mods if m.startswith(("ponder.workers", "torch"))}


def test_a_worker_started_by_the_cli_loads_no_server() -> None:
    """``ponder worker`` builds the whole parser (its defaults come from the config dataclasses):
    that must not load the gRPC server into the worker process."""
    code = ("import sys; from ponder.cli.main import build_parser; "
            "build_parser().parse_args(['worker', '--redis', 'redis://127.0.0.1:1/0']); "
            "print('ponder.scheduler.server' in sys.modules, 'grpc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]
