"""Search strategies. Importing this package registers every strategy by name."""

from ponder.workers.search import best_of_n  # noqa: F401
from ponder.workers.search.base import STRATEGY_CLASSES, SearchContext, Strategy, make_strategy

__all__ = ["STRATEGY_CLASSES", "SearchContext", "Strategy", "make_strategy"]
