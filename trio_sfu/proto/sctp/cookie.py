"""The signed State Cookie of the INIT ACK (RFC 9260 §5.1.3, §5.1.5).

The cookie lets the listening side answer an INIT without keeping state: everything needed to
build the association comes back in the COOKIE ECHO, authenticated with an HMAC under a secret
that never leaves this association, and stamped with its creation time so a replayed cookie goes
stale. Time is the caller's monotonic ``now``; the cookie is only ever read by its creator.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

_BODY = struct.Struct("!BIIIIIHHIIBdd")
_MAC_SIZE = 16
_VERSION = 1
COOKIE_SIZE = _BODY.size + _MAC_SIZE

FLAG_FORWARD_TSN = 0x01
FLAG_RECONFIG = 0x02


@dataclass(slots=True)
class StateCookie:
    local_tag: int
    local_tsn: int
    peer_tag: int
    peer_tsn: int
    peer_rwnd: int
    peer_outbound: int
    peer_inbound: int
    tie_local: int
    tie_peer: int
    peer_flags: int
    created: float
    lifetime: float


class CookieRejected(Exception):
    """``cookie`` is set only for an authentic cookie that went stale (§5.2.6 needs its tags)."""

    def __init__(
        self, reason: str, cookie: StateCookie | None = None, staleness: float = 0.0
    ) -> None:
        super().__init__(reason)
        self.cookie = cookie
        self.staleness = staleness


def seal(secret: bytes, c: StateCookie) -> bytes:
    body = _BODY.pack(
        _VERSION, c.local_tag, c.local_tsn, c.peer_tag, c.peer_tsn, c.peer_rwnd,
        c.peer_outbound, c.peer_inbound, c.tie_local, c.tie_peer, c.peer_flags, c.created,
        c.lifetime,
    )
    return body + hmac.digest(secret, body, hashlib.sha256)[:_MAC_SIZE]


def open_cookie(secret: bytes, data: bytes, now: float) -> StateCookie:
    """§5.1.5 steps 1-3: authenticate first, then check the lifetime."""
    if len(data) != COOKIE_SIZE:
        raise CookieRejected("cookie has the wrong size")
    body, mac = data[: _BODY.size], data[_BODY.size :]
    if not hmac.compare_digest(hmac.digest(secret, body, hashlib.sha256)[:_MAC_SIZE], mac):
        raise CookieRejected("cookie signature mismatch")
    (version, ltag, ltsn, ptag, ptsn, prwnd, pos, pmis, tie_l, tie_p, pflags, created,
     lifetime) = _BODY.unpack(body)
    if version != _VERSION:
        raise CookieRejected("unknown cookie version")
    cookie = StateCookie(
        ltag, ltsn, ptag, ptsn, prwnd, pos, pmis, tie_l, tie_p, pflags, created, lifetime
    )
    age = now - created
    if age > lifetime:
        raise CookieRejected("stale cookie", cookie, age - lifetime)
    return cookie
