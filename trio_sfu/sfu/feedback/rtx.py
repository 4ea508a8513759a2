"""RTP retransmission payload format (RFC 4588) for both legs of the SFU.

Towards a subscriber that negotiated ``rtx`` the SFU answers a NACK with an RTX packet on the
subscriber's RTX SSRC and payload type; from a publisher it receives RTX repairs of the packets
it NACKed and turns them back into the original packets before forwarding and caching them.
Both directions are one header rewrite and one copy, with no parsed packet object.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["rtx_unwrap", "rtx_wrap"]

_FIXED: Final = struct.Struct("!BBHII")
_U16: Final = struct.Struct("!H")


def _payload_bounds(packet: bytes) -> tuple[int, int]:
    """``(payload start, payload end)`` without padding, or ``(-1, -1)`` if malformed."""
    n = len(packet)
    if n < 12:
        return -1, -1
    b0 = packet[0]
    if b0 & 0xC0 != 0x80:
        return -1, -1
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > n:
            return -1, -1
        pos += 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
    if pos > n:
        return -1, -1
    end = n
    if b0 & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding, itself included.
        pad = packet[-1]
        if pad == 0 or pad > n - pos:
            return -1, -1
        end -= pad
    return pos, end


def rtx_wrap(packet: bytes, rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> bytes | None:
    """The RTX packet retransmitting ``packet``, or None if ``packet`` is malformed.

    RFC 4588 §4: same marker, timestamp, CSRCs and header extensions as the original; the
    RTX stream's own SSRC, payload type and sequence number; the payload is the original
    sequence number (OSN) followed by the original payload. The original's padding is not
    payload and is dropped (the P bit is cleared).
    """
    pos, end = _payload_bounds(packet)
    if pos < 0:
        return None
    b0, b1, seq, ts, _ssrc = _FIXED.unpack_from(packet, 0)
    return (
        _FIXED.pack(
            b0 & 0xDF, (b1 & 0x80) | (rtx_pt & 0x7F), rtx_seq & 0xFFFF, ts, rtx_ssrc & 0xFFFFFFFF
        )
        + packet[12:pos]
        + _U16.pack(seq)
        + packet[pos:end]
    )


def rtx_unwrap(packet: bytes, media_ssrc: int, media_pt: int) -> tuple[int, bytes] | None:
    """``(OSN, original packet)`` rebuilt from an RTX packet, or None.

    The caller knows the media SSRC and payload type the RTX stream repairs (from ``a=ssrc-group:
    FID`` or ``repaired-rid``, and the ``apt`` fmtp, RFC 4588 §8). None for a malformed packet
    and for one without an OSN, such as the padding-only packets browsers send on the RTX SSRC
    to probe bandwidth: those repair nothing.
    """
    pos, end = _payload_bounds(packet)
    if pos < 0 or end - pos < 2:
        return None
    b0, b1, _seq, ts, _ssrc = _FIXED.unpack_from(packet, 0)
    osn = _U16.unpack_from(packet, pos)[0]
    original = (
        _FIXED.pack(b0 & 0xDF, (b1 & 0x80) | (media_pt & 0x7F), osn, ts, media_ssrc & 0xFFFFFFFF)
        + packet[12:pos]
        + packet[pos + 2 : end]
    )
    return osn, original
