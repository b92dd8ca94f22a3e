"""Starting real service processes for integration tests: schedulers and workers as
subprocesses (`python -m ponder.cli.main …`) against a real Redis on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ponder.proto import pb, pb_grpc
from ponder.service.redis_server import free_port

LOG_DIR = Path(os.environ.get("PONDER_TEST_LOGS", "/tmp/ponder-test-logs"))


class Proc:
    """A ponder subprocess whose output goes to a log file (shown when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*self.command(), *args], stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "ponder.cli.main"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_until(pred: Callable[[], bool], timeout: float, what: str, procs: list[Proc] = ()) -> None:  # type: ignore[assignment]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited ({p.proc.returncode}) while waiting for {what}:\n{p.log()}")
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in procs)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def start_scheduler(
    redis_url: str, prefix: str, port: int | None = None, grace: float = 5.0, *, extra: list[str] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None, tls_ca: Path | None = None, tls_client: tuple[Path, Path] | None = None,
) -> tuple[Proc, int]:
    """A scheduler subprocess, once it listens. ``tls_ca`` (and ``tls_client``, a certificate and
    key for mutual TLS): how to reach a scheduler started with ``--tls-cert``."""
    port = port or free_port()
    proc = Proc("scheduler", ["scheduler", "--redis", redis_url, "--prefix", prefix, "--port", str(port),
                              "--grace", str(grace), "--expose-workers", *extra], env=env)

    def channel() -> grpc.Channel:
        if tls_ca is None:
            return grpc.insecure_channel(f"127.0.0.1:{port}")
        key, cert = (tls_client[1].read_bytes(), tls_client[0].read_bytes()) if tls_client else (None, None)
        return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(tls_ca.read_bytes(), key, cert))

    def ready() -> bool:
        with channel() as ch:
            try:
                grpc.channel_ready_future(ch).result(timeout=0.5)
                return True
            except grpc.FutureTimeoutError:
                return False

    wait_until(ready, 60, "the scheduler to listen", [proc])
    return proc, port


def start_worker(redis_url: str, prefix: str, model: str, *extra: str) -> Proc:
    return Proc("worker", ["worker", "--redis", redis_url, "--prefix", prefix, "--model", model, *extra])


def workers_alive(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            return pb_grpc.ReasonerStub(ch).ServerInfo(pb.ServerInfoRequest(), timeout=2).workers_alive
        except grpc.RpcError:
            return 0


def kinds(events: list[Any]) -> list[str]:
    return [e.WhichOneof("kind") for e in events]
