"""Typed errors raised at service boundaries, each mapped to one gRPC status code name."""

from __future__ import annotations


class PonderError(Exception):
    """Base of ponder's typed errors. ``code`` is a gRPC status code name."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PonderError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(PonderError):
    code = "NOT_FOUND"


class ResourceExhausted(PonderError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(PonderError):
    code = "UNAVAILABLE"


class Cancelled(PonderError):
    code = "CANCELLED"


class DeadlineExceeded(PonderError):
    code = "DEADLINE_EXCEEDED"
