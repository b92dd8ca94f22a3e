"""Search strategies. Importing this package registers every strategy by name:
``best_of_n``, ``beam``, ``lookahead``, ``dvts``, ``revision``, ``hybrid``, ``auto``."""

from ponder.workers.search import auto, beam, best_of_n, dvts, revision  # noqa: F401
from ponder.workers.search.base import STRATEGY_CLASSES, SearchContext, Strategy, make_strategy

__all__ = ["STRATEGY_CLASSES", "SearchContext", "Strategy", "make_strategy"]
