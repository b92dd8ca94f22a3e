"""The job store shared by schedulers and workers: every read and write of job state in Redis
(:mod:`ponder.store.jobs`) and the key scheme (:mod:`ponder.store.keys`).

Importing it loads neither the gRPC server nor the worker.
"""

from ponder.store.jobs import JobStore, QueuedJob

__all__ = ["JobStore", "QueuedJob"]
