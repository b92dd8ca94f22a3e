"""One script per question asked of the system (``ponder bench NAME``); each prints a JSON last
line. Installed as ``ponder.benchmarks``, so ``ponder bench`` runs from a wheel as well."""
