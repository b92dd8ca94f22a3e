"""The gRPC scheduler: validates requests, writes jobs to the store and relays their events.

The job store it shares with the workers lives in :mod:`ponder.store`.
"""

from ponder.scheduler.server import Scheduler, SchedulerConfig

__all__ = ["Scheduler", "SchedulerConfig"]
