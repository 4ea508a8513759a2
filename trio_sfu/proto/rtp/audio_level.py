"""The client-to-mixer audio level header extension (RFC 6464).

``urn:ietf:params:rtp-hdrext:ssrc-audio-level``: one byte, ``V`` (voice activity, §3) in
the top bit and the level in -dBov (0 = loudest, 127 = silence or quieter) in the low seven.
Read with :func:`trio_sfu.proto.rtp.packet.find_extension` and the id negotiated in SDP.
"""

from __future__ import annotations

__all__ = ["SILENCE", "audio_level", "loudness"]

SILENCE = 127
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
