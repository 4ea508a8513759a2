"""INIT / INIT ACK parameters: what we advertise and how we read the peer's (RFC 9260 §3.2.1,
§5.1; RFC 3758 §3.1; RFC 5061 §4.2.7 Supported Extensions; RFC 6525 §3.1).

We advertise FORWARD TSN and RE-CONFIG and nothing else: no I-DATA (RFC 8260), no zero checksum
(RFC 9653), no AUTH (RFC 4895). Chromium (dcsctp) offers some of those; their parameter types
have upper bits "10", so skipping them silently is what §3.2.1 asks of a receiver that lacks them.
"""

from __future__ import annotations

from .chunks import (
    FORWARD_TSN,
    PARAM_FORWARD_TSN_SUPPORTED,
    PARAM_STATE_COOKIE,
    PARAM_SUPPORTED_EXTENSIONS,
    RECONFIG,
    Param,
)
from .cookie import FLAG_FORWARD_TSN, FLAG_RECONFIG

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
