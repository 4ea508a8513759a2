"""The RTCP common header (RFC 3550 §6.4.1) shared by every packet type, and the opaque type."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from trio_sfu.proto.errors import RtcpError

# RFC 3550 §12.1, RFC 4585 §6.1
PT_SR: Final = 200
PT_RR: Final = 201
PT_SDES: Final = 202
PT_BYE: Final = 203
PT_APP: Final = 204
PT_RTPFB: Final = 205
PT_PSFB: Final = 206

U32: Final = struct.Struct("!I")
U16: Final = struct.Struct("!H")
TWO_U32: Final = struct.Struct("!II")


def pack_packet(packet_type: int, count: int, body: bytes) -> bytes:
    """Prefix ``body`` with a common header, padding it to 32 bits if needed.

    Padding uses the P bit with a trailing count octet (RFC 3550 §6.4.1), as libwebrtc does for
    transport-cc feedback, so any body length round-trips.
    """
    if not 0 <= count <= 31:
        raise ValueError("RTCP count/format field is 5 bits")
    pad = -len(body) % 4
    b0 = 0x80 | count
    if pad:
        b0 |= 0x20
        body = body + bytes(pad - 1) + bytes((pad,))
    words = len(body) // 4
    if words > 0xFFFF:
        raise ValueError("RTCP packet exceeds the 16-bit length field")
    return bytes((b0, packet_type)) + U16.pack(words) + body


def check_ssrc(value: int, what: str = "SSRC") -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} must be 0..2**32-1")


@dataclass(slots=True)
class UnknownRtcp:
    """Any packet we do not interpret (XR, APP, other feedback), kept so it can be relayed.

    ``count`` is the 5-bit count/FMT field; ``payload`` is everything after the common header
    with padding removed.
    """

    packet_type: int
    count: int
    payload: bytes = b""

    def serialize(self) -> bytes:
        return pack_packet(self.packet_type, self.count, self.payload)


def truncated(what: str) -> RtcpError:
    return RtcpError(f"{what} is truncated")
