"""Classify a datagram by its first byte, as RFC 7983 §7 prescribes for a multiplexed port.

Shared by the server's single UDP endpoint and the client's own socket, so both agree on which
core a datagram belongs to.
"""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    STUN = 0
    DTLS = 1
    SRTP = 2
    UNKNOWN = 3


def _build_table() -> tuple[Kind, ...]:
    # RFC 7983 §7: [0..3] STUN, [16..19] ZRTP, [20..63] DTLS, [64..79] TURN channel,
    # [128..191] RTP/RTCP. Everything else is dropped.
    table = []
    for b in range(256):
        if b <= 3:
            table.append(Kind.STUN)
        elif 20 <= b <= 63:
            table.append(Kind.DTLS)
        elif 128 <= b <= 191:
            table.append(Kind.SRTP)
        else:
            table.append(Kind.UNKNOWN)
    return tuple(table)


KIND_BY_FIRST_BYTE: tuple[Kind, ...] = _build_table()
