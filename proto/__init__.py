"""The wire contract (``ponder.v1``): ``pb`` (messages) and ``pb_grpc`` (service stubs).

Loaded lazily so that ``python -m ponder.proto.generate`` works before the code exists; type
checkers see the generated modules (and ``reasoner_pb2.pyi``) through the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ponder.proto.ponder.v1 import reasoner_pb2 as pb
    from ponder.proto.ponder.v1 import reasoner_pb2_grpc as pb_grpc

_LAZY = {
    "pb": "ponder.proto.ponder.v1.reasoner_pb2",
    "pb_grpc": "ponder.proto.ponder.v1.reasoner_pb2_grpc",
}

__all__ = ["pb", "pb_grpc"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ponder.proto' has no attribute {name!r}")
