"""The gRPC scheduler: validates requests, writes jobs to the store and relays their events.

:class:`ponder.scheduler.server.Scheduler` runs it; :class:`ponder.scheduler.config.SchedulerConfig`
configures it. This package imports nothing itself, so reading the config (as the CLI does for
its defaults) loads no gRPC; the job store it shares with the workers is :mod:`ponder.store`.
"""
