"""Who may call the scheduler: bearer tokens, TLS credentials, and undecodable requests.

Tokens live in a file (``--tokens FILE``) or in the ``PONDER_TOKENS`` environment variable,
never on a command line (``ps`` shows those). One token per line, ``#`` starts a comment::

    # name   secret                              [admin]
    alice    9f2c…a71b
    ops      4be0…19d2                           admin

A caller sends ``authorization: Bearer <secret>``. Its jobs belong to its token's *name*: another
token cannot watch, read, cancel or reuse the request ids of them (they are NOT_FOUND to it).
``admin`` tokens also see the worker details of ``ServerInfo`` (hosts and process ids).
Without a tokens file the scheduler is open, every job belongs to the same anonymous owner,
and ``ServerInfo`` omits worker details unless ``--expose-workers`` is given.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ponder.proto.errors import InvalidArgument

TOKENS_ENV = "PONDER_TOKENS"
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_SECRET = 16


@dataclass(frozen=True)
class Principal:
    name: str  # "" without authentication
    admin: bool


ANONYMOUS = Principal("", False)


class Tokens:
    """The accepted bearer tokens."""

    def __init__(self, entries: list[tuple[str, str, bool]]) -> None:
        if not entries:
            raise InvalidArgument("tokens", "the tokens file holds no token")
        names = [n for n, _, _ in entries]
        if len(set(names)) != len(names):
            raise InvalidArgument("tokens", "token names must be unique")
        self._entries = [(secret.encode(), Principal(name, admin)) for name, secret, admin in entries]

    @classmethod
    def parse(cls, text: str, source: str = "tokens") -> Tokens:
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
                raise InvalidArgument(source, f"line {n}: expected 'NAME SECRET [admin]'")
            name, secret = parts[0], parts[1]
            if not NAME.fullmatch(name) or name == "-":  # "-" is the anonymous owner
                raise InvalidArgument(source, f"line {n}: a name is 1-64 of A-Z a-z 0-9 _ . @ -")
            if len(secret) < MIN_SECRET:
                raise InvalidArgument(source, f"line {n}: the secret of {name!r} is shorter than {MIN_SECRET} characters")
            entries.append((name, secret, len(parts) == 3))
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path | None) -> Tokens | None:
        """From ``path``, else from $PONDER_TOKENS, else None (no authentication)."""
        if path:
            try:
                return cls.parse(Path(path).read_text(), "tokens")
            except OSError as exc:
                raise InvalidArgument("tokens", f"cannot read {path}: {exc.strerror}") from None
        text = os.environ.get(TOKENS_ENV, "")
        return cls.parse(text, TOKENS_ENV) if text.strip() else None

    def lookup(self, secret: str) -> Principal | None:
        """The token's principal; every entry is compared (constant time per entry)."""
        found = None
        given = secret.encode()
        for known, principal in self._entries:
            if hmac.compare_digest(known, given):
                found = principal
        return found

    def __len__(self) -> int:
        return len(self._entries)


def bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key (PEM), and optionally the CA whose client certificates
    it requires (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        def read(field: str, path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise InvalidArgument(field, f"cannot read {path}: {exc.strerror}") from None

        pair = [(read("tls_key", self.key), read("tls_cert", self.cert))]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(
            pair, root_certificates=read("tls_client_ca", self.client_ca), require_client_auth=True
        )


class Undecodable:
    """What a request that does not parse as its message becomes (instead of an UNKNOWN status
    and a traceback in the log): the servicer answers INVALID_ARGUMENT."""

    def __init__(self, message: str, error: str) -> None:
        self.message = message
        self.error = error


def safe_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    name = message_type.DESCRIPTOR.name

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, anything the parser refuses
            return Undecodable(name, type(exc).__name__)

    return parse
