"""Typed errors raised at service boundaries, each mapped to one gRPC status code name."""

from __future__ import annotations


class PonderError(Exception):
    """Base of ponder's typed errors. ``code`` is a gRPC status code name."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = ""  # set by the clients once a job exists
        self.retry_after_s: float | None = None  # RESOURCE_EXHAUSTED: the server's hint


class InvalidArgument(PonderError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unauthenticated(PonderError):
    code = "UNAUTHENTICATED"


class PermissionDenied(PonderError):
    code = "PERMISSION_DENIED"


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


_BY_CODE: dict[str, type[PonderError]] = {
    cls.code: cls
    for cls in (PonderError, NotFound, ResourceExhausted, Unavailable, Cancelled, DeadlineExceeded,
                Unauthenticated, PermissionDenied)
}


def from_status(code: str, message: str) -> PonderError:
    """The typed error for a gRPC status code name (as the client raises it)."""
    if code == "INVALID_ARGUMENT":
        field, _, rest = message.partition(": ")
        return InvalidArgument(field, rest) if rest else InvalidArgument("request", message)
    cls = _BY_CODE.get(code, PonderError)
    err = cls(message)
    if cls is PonderError:
        err.code = code or "INTERNAL"
    return err
