"""Running the service's processes: the ``ponder serve`` supervisor (:mod:`.supervisor`), the
private Redis server (:mod:`.redis_server`), and what every process shares — logging
(:mod:`.logs`) and the Prometheus metrics (:mod:`.metrics`).

Importing this package loads nothing; the worker imports :mod:`.metrics` without the scheduler.
"""
