"""The ``ponder`` command line (:mod:`ponder.cli.main`): one dispatcher for every role —
serve, scheduler, worker, gateway, ask/submit/watch, eval, train, bench, flops."""
