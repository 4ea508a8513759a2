"""What one node admits and what one member may cost (issue 14; docs/security.md).

Every limit is per node: a cluster's capacity is the sum of its pods'. The HTTP layer adds the
per-address join rate (``trio_sfu.http.limits``); the flags are in ``trio_sfu.config``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SfuLimits:
    """Admission limits the SFU itself enforces (docs/security.md); the HTTP layer adds the
    per-address ones. Both are per node: a cluster's capacity is the sum of its pods'."""

    #: members (publishers, subscribers, WHEP viewers) of one room on this node
    max_members_per_room: int = 200
    #: rooms with at least one member on this node
    max_rooms: int = 1000
    #: sessions from one client address still connecting (joined, DTLS not up yet)
    max_half_open_per_source: int = 20
    #: sessions still connecting, all addresses together
    max_half_open: int = 500
    #: CHAT messages per second one member may send, and how many at once (token bucket)
    chat_rate: float = 5.0
    chat_burst: int = 20
    #: bytes queued on one member's control channel before chat to it is dropped
    max_send_buffer: int = 1024 * 1024
    #: seconds a member may stay at that cap before it is disconnected
    send_stall_limit: float = 10.0


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per admitted event (joins from
    an address, a member's CHAT lines)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        if self.refill(now) >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
