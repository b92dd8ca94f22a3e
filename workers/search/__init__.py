"""Search strategies, by name in :mod:`.registry`: ``best_of_n``, ``beam``, ``lookahead``,
``dvts``, ``revision``, ``hybrid``, ``auto``."""

from ponder.workers.search.base import SearchContext, Strategy
from ponder.workers.search.registry import STRATEGY_CLASSES, make_strategy

__all__ = ["STRATEGY_CLASSES", "SearchContext", "Strategy", "make_strategy"]
