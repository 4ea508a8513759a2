"""Errors the SFU reports to its callers; each carries the HTTP status it maps to.

The HTTP layer turns them into responses without knowing SFU internals, and nothing a client
can send ends as a 500: malformed SDP is an :class:`~trio_sfu.proto.errors.SdpError` (400),
everything else one of these.
"""

from __future__ import annotations


class SfuError(Exception):
    status = 400

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(SfuError):
    status = 400


class NotFound(SfuError):
    status = 404


class Conflict(SfuError):
    """A live connection already uses this id (the seed's unique-id rule)."""

    status = 409


class Unavailable(SfuError):
    """Draining, overloaded, or a cluster dependency is down: try again later."""

    status = 503


class TooMany(SfuError):
    """An admission limit (members per room, joins per second, half-open sessions from one
    address): try again after ``retry_after`` seconds (RFC 6585 §4)."""

    status = 429


# -- the backends' errors (Redis/NATS in cluster mode) -----------------------------------------
# Defined here, not in cluster/, so the SFU raises and catches them without importing the
# cluster adapters: importing those pulls in trio-asyncio, which changes asyncio's event-loop
# policy for the whole process (cluster/aio.py is imported only when cluster mode starts).
class BackendUnavailable(Exception):
    """Redis or NATS did not answer in time (or refused); callers map it to 503."""


class NodeUnreachable(Exception):
    """No pod listens on a node's subject: that node is not running (or not connected)."""
