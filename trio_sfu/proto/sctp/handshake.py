"""INIT / INIT ACK parameters: what we advertise and how we read the peer's (RFC 9260 §3.2.1,
§5.1; RFC 3758 §3.1; RFC 5061 §4.2.7 Supported Extensions; RFC 6525 §3.1).

We advertise FORWARD TSN and RE-CONFIG and nothing else: no I-DATA (RFC 8260), no zero checksum
(RFC 9653), no AUTH (RFC 4895). Chromium (dcsctp) offers some of those; their parameter types
have upper bits "10", so skipping them silently is what §3.2.1 asks of a receiver that lacks them.
"""

from __future__ import annotations

import enum

from .chunks import (
    FORWARD_TSN,
    PARAM_FORWARD_TSN_SUPPORTED,
    PARAM_STATE_COOKIE,
    PARAM_SUPPORTED_EXTENSIONS,
    PARAM_UNRECOGNIZED,
    RECONFIG,
    InitAckChunk,
    InitChunk,
    Param,
    encode_params,
)
from .cookie import FLAG_FORWARD_TSN, FLAG_RECONFIG, StateCookie, seal

MAX_STREAMS = 65535

# Parameters we understand but have no use for over DTLS: addresses (5, 6), cookie preservative
# (9), host name (11), supported address types (12).
_IGNORED = frozenset({5, 6, 9, 11, 12})


def local_extension_params() -> list[Param]:
    return [
        (PARAM_FORWARD_TSN_SUPPORTED, b""),
        (PARAM_SUPPORTED_EXTENSIONS, bytes([FORWARD_TSN, RECONFIG])),
    ]


def scan_params(params: list[Param], *, init_ack: bool) -> tuple[int, list[Param]]:
    """Return the peer's extension flags and the parameters to report as unrecognized.

    §3.2.1: the upper two bits of an unknown type say whether to stop (0x) or skip (1x) and
    whether to report it (x1).
    """
    flags = 0
    unrecognized: list[Param] = []
    for ptype, value in params:
        if ptype == PARAM_FORWARD_TSN_SUPPORTED:
            flags |= FLAG_FORWARD_TSN
        elif ptype == PARAM_SUPPORTED_EXTENSIONS:
            if FORWARD_TSN in value:
                flags |= FLAG_FORWARD_TSN
            if RECONFIG in value:
                flags |= FLAG_RECONFIG
        elif ptype in _IGNORED or (init_ack and ptype == PARAM_STATE_COOKIE):
            continue
        else:
            action = ptype >> 14
            if action & 1:
                unrecognized.append((ptype, value))
            if action < 2:
                break
    return flags, unrecognized


def make_init_ack(
    init: InitChunk,
    *,
    tag: int,
    tsn: int,
    tie_tags: tuple[int, int],
    window: int,
    secret: bytes,
    now: float,
    lifetime: float,
) -> InitAckChunk:
    """§5.1.3: everything the association will need goes into the signed cookie."""
    flags, unrecognized = scan_params(init.params, init_ack=False)
    cookie = StateCookie(
        tag, tsn, init.initiate_tag, init.initial_tsn, init.a_rwnd, init.outbound_streams,
        init.inbound_streams, tie_tags[0], tie_tags[1], flags, now, lifetime,
    )
    params = [(PARAM_STATE_COOKIE, seal(secret, cookie)), *local_extension_params()]
    for ptype, value in unrecognized:
        params.append((PARAM_UNRECOGNIZED, encode_params([(ptype, value)])))
    return InitAckChunk(tag, window, MAX_STREAMS, MAX_STREAMS, tsn, params)


class CookieCase(enum.Enum):
    NEW = "new"  # no association yet
    RESTART = "restart"  # case A: the peer restarted
    COLLISION = "collision"  # case B: both sides sent INIT
    DUPLICATE = "duplicate"  # case D: a COOKIE ECHO we already accepted
    DISCARD = "discard"  # case C, or no case of the table at all


def classify_cookie(ck: StateCookie, local_tag: int, peer_tag: int, has_tcb: bool) -> CookieCase:
    """RFC 9260 §5.2.4, table 2: compare the cookie's tags with the association's."""
    if not has_tcb:
        return CookieCase.NEW
    same_local = ck.local_tag == local_tag
    same_peer = ck.peer_tag == peer_tag
    if not same_local and not same_peer:
        if ck.tie_local == local_tag and ck.tie_peer == peer_tag:
            return CookieCase.RESTART
        return CookieCase.DISCARD
    if same_local:
        return CookieCase.DUPLICATE if same_peer else CookieCase.COLLISION
    return CookieCase.DISCARD
