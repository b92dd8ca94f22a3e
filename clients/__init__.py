"""Clients for the ponder service: :class:`Client` (blocking) and :class:`AsyncClient`."""

from ponder.clients.client import AsyncClient, Client, build_request

__all__ = ["AsyncClient", "Client", "build_request"]
