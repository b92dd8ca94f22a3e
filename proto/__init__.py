"""The wire contract (``ponder.v1``): ``pb`` (messages) and ``pb_grpc`` (service stubs).

Loaded lazily so that ``python -m ponder.proto.generate`` works before the code exists.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "pb": "ponder.proto.ponder.v1.reasoner_pb2",
    "pb_grpc": "ponder.proto.ponder.v1.reasoner_pb2_grpc",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ponder.proto' has no attribute {name!r}")
