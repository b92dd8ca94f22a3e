"""Every strategy by name, written out in one table (nothing registers itself on import)."""

from __future__ import annotations

from ponder.proto.errors import InvalidArgument
from ponder.workers.search.auto import Auto
from ponder.workers.search.base import SearchContext, Strategy
from ponder.workers.search.beam import BeamSearch, Lookahead
from ponder.workers.search.best_of_n import BestOfN
from ponder.workers.search.dvts import DVTS
from ponder.workers.search.revision import Hybrid, Revision

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (BestOfN, BeamSearch, Lookahead, DVTS, Revision, Hybrid, Auto)
}


def make_strategy(ctx: SearchContext) -> Strategy:
    """The strategy the request names, built on its context; INVALID_ARGUMENT if unknown."""
    try:
        cls = STRATEGY_CLASSES[ctx.config.strategy]
    except KeyError:
        known = ", ".join(sorted(STRATEGY_CLASSES))
        raise InvalidArgument(
            "strategy", f"{ctx.config.strategy!r} is not available on this worker ({known})"
        ) from None
    return cls(ctx)
