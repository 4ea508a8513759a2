"""The client-to-mixer audio level header extension (RFC 6464).

``urn:ietf:params:rtp-hdrext:ssrc-audio-level``: one byte, ``V`` (voice activity, §3) in
the top bit and the level in -dBov (0 = loudest, 127 = silence or quieter) in the low seven.
Read with :func:`trio_sfu.proto.rtp.packet.find_extension` and the id negotiated in SDP.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SILENCE", "audio_level", "loudness", "packet_loudness"]

SILENCE: Final = 127
"""The level meaning -127 dBov or quieter (RFC 6464 §3)."""


def audio_level(value: bytes | None) -> int:
    """The level (0..127, -dBov) of an extension value; :data:`SILENCE` if absent/malformed.

    RFC 6464 §3 allows a one-byte element; a two-byte-header element may pad it, so only the
    first byte counts. An empty or missing value is treated as silence, never an error: a
    speaker detector must not fail on one odd packet.
    """
    if not value:
        return SILENCE
    return value[0] & 0x7F


def loudness(value: bytes | None) -> int:
    """``127 - level``: 0 for silence, 127 for 0 dBov; larger is louder (what detectors sum)."""
    return SILENCE - audio_level(value)


def packet_loudness(data: bytes, ext_id: int) -> int:
    """:func:`loudness` of the packet's extension ``ext_id``, read in place (the per-packet
    path: no slice, no tuple, only small ints). 0 (silence) if absent or malformed.

    Scans the RFC 8285 block as :func:`~trio_sfu.proto.rtp.packet.find_extension` does:
    §4.2 one-byte elements (id 0 is padding, 15 stops), §4.3 two-byte elements.
    """
    n = len(data)
    if n < 16 or not data[0] & 0x10:
        return 0
    pos = 12 + 4 * (data[0] & 0x0F)
    if pos + 4 > n:
        return 0
    profile = (data[pos] << 8) | data[pos + 1]
    i = pos + 4
    end = i + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if end > n:
        return 0
    if profile == 0xBEDE:
        while i < end:
            byte = data[i]
            eid = byte >> 4
            if eid == 0:
                i += 1
                continue
            if eid == 15 or i + 2 + (byte & 0x0F) > end:
                return 0
            if eid == ext_id:
                return SILENCE - (data[i + 1] & 0x7F)
            i += 2 + (byte & 0x0F)
    elif profile & 0xFFF0 == 0x1000:
        while i < end:
            eid = data[i]
            if eid == 0:
                i += 1
                continue
            if i + 2 > end:
                return 0
            length = data[i + 1]
            if i + 2 + length > end:
                return 0
            if eid == ext_id:
                return SILENCE - (data[i + 2] & 0x7F) if length else 0
            i += 2 + length
    return 0
