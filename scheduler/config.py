"""The scheduler's configuration: one validated dataclass, whose defaults are the
``ponder scheduler`` flags' defaults. Importing it loads neither gRPC nor the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ponder.proto.config import Limits
from ponder.proto.errors import InvalidArgument
from ponder.store.keys import DEFAULT_PREFIX

if TYPE_CHECKING:
    from ponder.scheduler.auth import TlsFiles, Tokens


@dataclass(frozen=True)
class SchedulerConfig:
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    prefix: str = DEFAULT_PREFIX
    limits: Limits = field(default_factory=Limits)
    grace_s: float = 5.0
    result_ttl_s: int = 86_400
    worker_alive_s: float = 15.0
    # jobs waiting for a worker per priority before Submit/Solve answer RESOURCE_EXHAUSTED
    # (0: no cap)
    max_queued: int = 10_000
    tokens: Tokens | None = None  # None: no authentication (see ponder.scheduler.auth)
    tls: TlsFiles | None = None
    expose_workers: bool = False  # ServerInfo's worker details for everyone (no tokens)
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: a free one; None: off)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument("port", f"must be in [0, 65535], got {self.port}")
        if self.max_queued < 0:
            raise InvalidArgument("max_queued", f"must be >= 0 (0: no cap), got {self.max_queued}")
