"""The gRPC scheduler and the Redis job store."""

from ponder.scheduler.server import Scheduler, SchedulerConfig
from ponder.scheduler.store import JobStore

__all__ = ["JobStore", "Scheduler", "SchedulerConfig"]
