"""Feedback messages an SFU relays and answers: PLI, FIR, generic NACK and REMB.

RFC 4585 §6.1 gives the common layout (sender SSRC, media SSRC, FCI); PLI is §6.3.1, generic
NACK §6.2.1, FIR is RFC 5104 §4.3.1 and REMB is draft-alvestrand-rmcat-remb-03 §2.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp._common import (
    PT_PSFB,
    PT_RTPFB,
    TWO_U32,
    U32,
    check_ssrc,
    pack_packet,
    truncated,
)
from trio_sfu.proto.rtp import SequenceUnwrapper

FMT_NACK: Final = 1  # RTPFB, RFC 4585 §6.2.1
FMT_PLI: Final = 1  # PSFB, RFC 4585 §6.3.1
FMT_FIR: Final = 4  # PSFB, RFC 5104 §4.3.1.1
FMT_AFB: Final = 15  # PSFB application layer feedback, RFC 4585 §6.4; REMB lives here

_NACK_ITEM: Final = struct.Struct("!HH")
_FIR_ITEM: Final = struct.Struct("!IB3x")
_REMB_MAX_MANTISSA: Final = (1 << 18) - 1
#: The largest bitrate a REMB can express: an 18-bit mantissa shifted by a 6-bit exponent.
REMB_MAX_BITRATE: Final = _REMB_MAX_MANTISSA << 63


def _header(sender_ssrc: int, media_ssrc: int) -> bytes:
    check_ssrc(sender_ssrc, "sender SSRC")
    check_ssrc(media_ssrc, "media SSRC")
    return TWO_U32.pack(sender_ssrc, media_ssrc)


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication: ask the sender of ``media_ssrc`` for a keyframe."""

    sender_ssrc: int
    media_ssrc: int

    def serialize(self) -> bytes:
        return pack_packet(PT_PSFB, FMT_PLI, _header(self.sender_ssrc, self.media_ssrc))

    @classmethod
    def parse(cls, body: bytes) -> Pli:
        # RFC 4585 §6.3.1: PLI has no FCI; anything after the SSRCs is ignored.
        return cls(*TWO_U32.unpack_from(body, 0))


@dataclass(slots=True)
class FirEntry:
    """One FCI entry of a FIR: the target SSRC and its command sequence number."""

    ssrc: int
    sequence: int


@dataclass(slots=True)
class Fir:
    """Full Intra Request (RFC 5104 §4.3.1); ``media_ssrc`` is 0 by the RFC, targets are FCI."""

    sender_ssrc: int
    entries: list[FirEntry] = field(default_factory=list)
    media_ssrc: int = 0

    def serialize(self) -> bytes:
        body = _header(self.sender_ssrc, self.media_ssrc)
        for entry in self.entries:
            check_ssrc(entry.ssrc)
            body += _FIR_ITEM.pack(entry.ssrc, entry.sequence & 0xFF)
        return pack_packet(PT_PSFB, FMT_FIR, body)

    @classmethod
    def parse(cls, body: bytes) -> Fir:
        if (len(body) - 8) % 8:
            raise RtcpError("FIR FCI is not a whole number of 8-byte entries")
        sender, media = TWO_U32.unpack_from(body, 0)
        entries = [FirEntry(*_FIR_ITEM.unpack_from(body, pos)) for pos in range(8, len(body), 8)]
        return cls(sender, entries, media)


@dataclass(slots=True)
class Nack:
    """Generic NACK (RFC 4585 §6.2.1) as raw (PID, BLP) pairs, faithful to the wire.

    :attr:`lost` and :meth:`from_lost` convert from and to plain sequence number lists.
    """

    sender_ssrc: int
    media_ssrc: int
    pairs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def lost(self) -> list[int]:
        """Every sequence number reported lost, in wire order (wrapping past 65535)."""
        out = []
        for pid, blp in self.pairs:
            out.append(pid)
            for bit in range(16):
                if blp >> bit & 1:
                    out.append((pid + bit + 1) & 0xFFFF)
        return out

    @classmethod
    def from_lost(cls, sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> Nack:
        """Pack lost sequence numbers into as few pairs as possible.

        Numbers are unwrapped in the order given, so ``[65534, 65535, 0, 1]`` becomes one pair
        (PID 65534, BLP 0b111), as RFC 4585 §6.2.1 intends across the wrap.
        """
        unwrapper = SequenceUnwrapper()
        ordered = sorted({unwrapper.unwrap(s & 0xFFFF) for s in lost})
        pairs: list[tuple[int, int]] = []
        pid = blp = 0
        for ext in ordered:
            if pairs and 1 <= ext - pid <= 16:
                blp |= 1 << (ext - pid - 1)
                pairs[-1] = (pid & 0xFFFF, blp)
            else:
                pid, blp = ext, 0
                pairs.append((pid & 0xFFFF, 0))
        return cls(sender_ssrc, media_ssrc, pairs)

    def serialize(self) -> bytes:
        body = _header(self.sender_ssrc, self.media_ssrc)
        body += b"".join(_NACK_ITEM.pack(pid & 0xFFFF, blp & 0xFFFF) for pid, blp in self.pairs)
        return pack_packet(PT_RTPFB, FMT_NACK, body)

    @classmethod
    def parse(cls, body: bytes) -> Nack:
        if len(body) % 4:
            raise RtcpError("NACK FCI is not a whole number of 32-bit words")
        sender, media = TWO_U32.unpack_from(body, 0)
        pairs = [_NACK_ITEM.unpack_from(body, pos) for pos in range(8, len(body), 4)]
        return cls(sender, media, pairs)


@dataclass(slots=True)
class Remb:
    """Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03 §2.2).

    ``bitrate`` is bits per second. Encoding keeps the top 18 significant bits (the wire
    format's mantissa) and saturates at :data:`REMB_MAX_BITRATE`, so a value read back may be
    slightly lower than the one written.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)
    media_ssrc: int = 0

    def serialize(self) -> bytes:
        if self.bitrate < 0:
            raise ValueError("REMB bitrate cannot be negative")
        if len(self.ssrcs) > 255:
            raise ValueError("REMB carries at most 255 SSRCs")
        mantissa = min(self.bitrate, REMB_MAX_BITRATE)
        exponent = max(0, mantissa.bit_length() - 18)
        mantissa >>= exponent
        body = _header(self.sender_ssrc, self.media_ssrc) + b"REMB"
        body += bytes((len(self.ssrcs), (exponent << 2) | (mantissa >> 16)))
        body += (mantissa & 0xFFFF).to_bytes(2, "big")
        for ssrc in self.ssrcs:
            check_ssrc(ssrc)
            body += U32.pack(ssrc)
        return pack_packet(PT_PSFB, FMT_AFB, body)

    @classmethod
    def parse(cls, body: bytes) -> Remb:
        if len(body) < 16:
            raise truncated("REMB")
        sender, media = TWO_U32.unpack_from(body, 0)
        count = body[12]
        exponent = body[13] >> 2
        mantissa = ((body[13] & 0x03) << 16) | (body[14] << 8) | body[15]
        if len(body) < 16 + 4 * count:
            raise truncated(f"REMB with {count} SSRCs")
        ssrcs = list(struct.unpack_from(f"!{count}I", body, 16))
        return cls(sender, mantissa << exponent, ssrcs, media)
