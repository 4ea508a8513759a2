"""RTP packets (RFC 3550 §5) with RFC 8285 header extensions, and hot-path readers.

:func:`parse_rtp` / :class:`RtpPacket` build a full dataclass and are for tests, tooling and
the rare slow path. The forwarding path never builds one: it reads the fields it routes on with
``struct.unpack_from`` (:func:`read_header`, :func:`find_extension`), without exceptions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from trio_sfu.proto.errors import RtpError

__all__ = [
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpPacket",
    "SequenceUnwrapper",
    "find_extension",
    "is_rtcp",
    "parse_rtp",
    "payload_offset",
    "payload_size",
    "read_header",
    "rtp_marker",
    "rtp_payload_type",
    "rtp_sequence",
    "rtp_ssrc",
    "rtp_timestamp",
    "seq_delta",
]

#: RFC 8285 §4.2: the "defined by profile" value announcing one-byte extension elements.
ONE_BYTE_PROFILE: Final = 0xBEDE
#: RFC 8285 §4.3: 0x100 followed by 4 "appbits"; we write 0 appbits unless preserving a parse.
TWO_BYTE_PROFILE: Final = 0x1000

_FIXED: Final = struct.Struct("!BBHII")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_EXT_HEADER: Final = struct.Struct("!HH")


def is_rtcp(data: bytes) -> bool:
    """Demultiplex RTP from RTCP on one port (RFC 5761 §4).

    RTCP packet types 192..223 occupy the same second byte as RTP marker + payload types 64..95,
    which is why those payload types are never negotiated when rtcp-mux is on.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


# --- hot-path readers: no dataclass, no exception, -1/None for "not RTP" --------------------


def read_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """Return ``(marker, payload_type, sequence, timestamp, ssrc)`` from one ``unpack_from``.

    ``None`` when the datagram is too short or not version 2, so the caller drops it with an
    ``if`` rather than an ``except``.
    """
    if len(data) < 12:
        return None
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
    if b0 & 0xC0 != 0x80:
        return None
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc


def rtp_ssrc(data: bytes) -> int:
    """SSRC of an RTP packet, or -1 if it is shorter than the fixed header."""
    return _U32.unpack_from(data, 8)[0] if len(data) >= 12 else -1


def rtp_sequence(data: bytes) -> int:
    """Sequence number of an RTP packet, or -1 if it is shorter than the fixed header."""
    return _U16.unpack_from(data, 2)[0] if len(data) >= 12 else -1


def rtp_timestamp(data: bytes) -> int:
    """RTP timestamp, or -1 if the packet is shorter than the fixed header."""
    return _U32.unpack_from(data, 4)[0] if len(data) >= 12 else -1


def rtp_payload_type(data: bytes) -> int:
    """Payload type (7 bits), or -1 if the packet is shorter than the fixed header."""
    return data[1] & 0x7F if len(data) >= 12 else -1


def rtp_marker(data: bytes) -> bool:
    """Marker bit (end of a video frame); False for a packet shorter than the fixed header."""
    return len(data) >= 12 and data[1] >= 0x80


def payload_offset(data: bytes) -> int:
    """Offset of the payload (after CSRCs and extensions), or -1 if the header is malformed.

    Codec inspection (keyframe detection) needs only this, not a parsed packet.
    """
    n = len(data)
    if n < 12 or data[0] & 0xC0 != 0x80:
        return -1
    b0 = data[0]
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > n:
            return -1
        pos += 4 + 4 * _U16.unpack_from(data, pos + 2)[0]
    end = n
    if b0 & 0x20:
        end -= data[-1]
    return pos if pos <= end else -1


def payload_size(data: bytes) -> int:
    """Payload octets of an RTP packet: no header, CSRCs, extension or padding, as an SR's
    sender's octet count wants them (RFC 3550 §6.4.1); 0 for a malformed header."""
    n = len(data)
    if n < 12:
        return 0
    b0 = data[0]
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > n:
            return 0
        pos += 4 + 4 * _U16.unpack_from(data, pos + 2)[0]
    end = n - data[-1] if b0 & 0x20 else n
    return end - pos if end > pos else 0


def find_extension(data: bytes, ext_id: int) -> bytes | None:
    """Value of header extension ``ext_id`` (RFC 8285), scanning in place without a dict.

    ``None`` if absent or if the extension block is malformed.
    """
    n = len(data)
    if n < 12:
        return None
    b0 = data[0]
    if not b0 & 0x10:
        return None
    pos = 12 + 4 * (b0 & 0x0F)
    if pos + 4 > n:
        return None
    profile, words = _EXT_HEADER.unpack_from(data, pos)
    i = pos + 4
    end = i + 4 * words
    if end > n:
        return None
    if profile == ONE_BYTE_PROFILE:
        while i < end:
            byte = data[i]
            eid = byte >> 4
            if eid == 0:  # RFC 8285 §4.2: padding byte
                i += 1
                continue
            if eid == 15:  # RFC 8285 §4.2: reserved, stop processing
                return None
            length = (byte & 0x0F) + 1
            if i + 1 + length > end:
                return None
            if eid == ext_id:
                return data[i + 1 : i + 1 + length]
            i += 1 + length
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while i < end:
            eid = data[i]
            if eid == 0:  # RFC 8285 §4.3: padding byte
                i += 1
                continue
            if i + 2 > end:
                return None
            length = data[i + 1]
            if i + 2 + length > end:
                return None
            if eid == ext_id:
                return data[i + 2 : i + 2 + length]
            i += 2 + length
    return None


# --- sequence numbers -----------------------------------------------------------------------


def seq_delta(seq: int, ref: int) -> int:
    """How far the 16-bit sequence number ``seq`` lies after ``ref``, in [-32768, 32767]
    (negative: before it): the nearest position, which is how RFC 3550 A.1 places a packet
    relative to the highest one seen. ``ref`` may be extended (unwrapped): only its low 16
    bits count, so ``ref + seq_delta(seq, ref)`` is ``seq`` extended next to ``ref``.

    The one definition of 16-bit sequence arithmetic (issue 16): the packet cache, NACK
    tracking, receive statistics, the rewriter, the relay's gap check and the load client
    use it, and :class:`SequenceUnwrapper` for everyone else. A plain function, since it
    runs several times per forwarded packet (about 25 ns a call over the same lines inline).
    """
    diff = (seq - ref) & 0xFFFF
    return diff - 0x10000 if diff >= 0x8000 else diff


class SequenceUnwrapper:
    """Map wrapping 16-bit sequence numbers onto an unbounded line (RFC 3550 A.1's
    ``cycles``), for callers that keep no highest number of their own (TWCC, NACK lists).

    Each value is placed at the position nearest the highest one seen so far
    (:func:`seq_delta`), so a late packet lands just below it and a wrap (65535 → 0)
    continues upward. The first value is returned unchanged; values before it in sequence
    order come out below it (possibly negative).
    """

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest extended value seen, or None before the first."""
        return self._highest

    def reset(self) -> None:
        """Forget history, e.g. when the sender restarts its sequence space."""
        self._highest = None

    def peek(self, seq: int) -> int:
        """Extended value of ``seq`` without recording it."""
        highest = self._highest
        if highest is None:
            return seq & 0xFFFF
        return highest + seq_delta(seq, highest)

    def unwrap(self, seq: int) -> int:
        """Extended value of ``seq``; raises the highest mark when it moves forward. Twice per
        forwarded packet (transport-cc in and out), so the in-order case makes no call."""
        highest = self._highest
        if highest is None:
            ext = seq & 0xFFFF
        elif seq == (highest + 1) & 0xFFFF:
            ext = highest + 1
        else:
            ext = highest + seq_delta(seq, highest)
        if highest is None or ext > highest:
            self._highest = ext
        return ext


# --- the full packet ------------------------------------------------------------------------


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    ``extension_profile`` remembers which RFC 8285 form a parsed packet used so a round trip is
    faithful; ``None`` lets :meth:`serialize` pick the one-byte form when every element fits it.
    A profile other than 0xBEDE/0x100x (RFC 3550 §5.3.1) is kept opaque in ``extension_data``.
    ``padding`` counts padding octets including the final count octet (0 = no P bit).
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    marker: bool = False
    csrcs: list[int] = field(default_factory=list)
    extensions: dict[int, bytes] = field(default_factory=dict)
    payload: bytes = b""
    padding: int = 0
    extension_profile: int | None = None
    extension_data: bytes = b""

    def serialize(self) -> bytes:
        """Encode; raises ValueError for fields no valid packet can carry."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError("payload type must be 0..127")
        if len(self.csrcs) > 15:
            raise ValueError("at most 15 CSRCs")
        if not 0 <= self.padding <= 255:
            raise ValueError("padding must be 0..255 octets")
        ext = self._serialize_extensions()
        b0 = 0x80 | len(self.csrcs)
        if ext:
            b0 |= 0x10
        if self.padding:
            b0 |= 0x20
        parts = [
            _FIXED.pack(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        parts.extend(_U32.pack(c & 0xFFFFFFFF) for c in self.csrcs)
        parts.append(ext)
        parts.append(self.payload)
        if self.padding:
            # RFC 3550 §5.1: the last padding octet counts the padding, itself included.
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)

    def _serialize_extensions(self) -> bytes:
        profile = self.extension_profile
        if profile is not None and not _is_8285(profile):
            if self.extensions:
                raise ValueError("RFC 8285 extensions cannot use a non-8285 profile")
            if len(self.extension_data) % 4 or len(self.extension_data) > 0x3FFFC:
                raise ValueError("opaque extension data must be whole 32-bit words")
            return _EXT_HEADER.pack(profile, len(self.extension_data) // 4) + self.extension_data
        if not self.extensions and profile is None:
            return b""
        for eid, value in self.extensions.items():
            if not 1 <= eid <= 255 or len(value) > 255:
                raise ValueError(f"header extension {eid} cannot be encoded")
        one_byte_fits = all(eid <= 14 and 1 <= len(v) <= 16 for eid, v in self.extensions.items())
        body = bytearray()
        if (profile is None or profile == ONE_BYTE_PROFILE) and one_byte_fits:
            profile = ONE_BYTE_PROFILE
            for eid, value in self.extensions.items():
                body.append((eid << 4) | (len(value) - 1))
                body += value
        else:
            if profile is None or profile == ONE_BYTE_PROFILE:
                profile = TWO_BYTE_PROFILE
            for eid, value in self.extensions.items():
                body.append(eid)
                body.append(len(value))
                body += value
        body += bytes(-len(body) % 4)
        if len(body) > 0x3FFFC:
            raise ValueError("header extensions exceed the 16-bit length field")
        return _EXT_HEADER.pack(profile, len(body) // 4) + bytes(body)


def _is_8285(profile: int) -> bool:
    return profile == ONE_BYTE_PROFILE or profile & 0xFFF0 == TWO_BYTE_PROFILE


def _parse_extension_elements(profile: int, data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = start
    if profile == ONE_BYTE_PROFILE:
        while i < end:
            byte = data[i]
            eid = byte >> 4
            if eid == 0:  # RFC 8285 §4.2: padding
                i += 1
                continue
            if eid == 15:  # RFC 8285 §4.2: reserved; ignore this and everything after it
                break
            length = (byte & 0x0F) + 1
            if i + 1 + length > end:
                raise RtpError("one-byte header extension element runs past its block")
            out[eid] = bytes(data[i + 1 : i + 1 + length])
            i += 1 + length
    else:
        while i < end:
            eid = data[i]
            if eid == 0:  # RFC 8285 §4.3: padding
                i += 1
                continue
            if i + 2 > end:
                raise RtpError("two-byte header extension element header is truncated")
            length = data[i + 1]
            if i + 2 + length > end:
                raise RtpError("two-byte header extension element runs past its block")
            out[eid] = bytes(data[i + 2 : i + 2 + length])
            i += 2 + length
    return out


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet; any malformation raises :class:`RtpError` (RFC 3550 §5.1, A.1)."""
    n = len(data)
    if n < 12:
        raise RtpError(f"RTP packet of {n} bytes is shorter than the 12-byte fixed header")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    cc = b0 & 0x0F
    pos = 12 + 4 * cc
    if pos > n:
        raise RtpError(f"{cc} CSRCs run past the end of the packet")
    csrcs = list(struct.unpack_from(f"!{cc}I", data, 12)) if cc else []
    extensions: dict[int, bytes] = {}
    profile: int | None = None
    opaque = b""
    if b0 & 0x10:
        if pos + 4 > n:
            raise RtpError("header extension header is truncated")
        profile, words = _EXT_HEADER.unpack_from(data, pos)
        start = pos + 4
        pos = start + 4 * words
        if pos > n:
            raise RtpError("header extension runs past the end of the packet")
        if _is_8285(profile):
            extensions = _parse_extension_elements(profile, data, start, pos)
        else:
            opaque = bytes(data[start:pos])
    padding = 0
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or padding > n - pos:
            raise RtpError(f"padding count {padding} is invalid for {n - pos} payload bytes")
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        marker=bool(b1 & 0x80),
        csrcs=csrcs,
        extensions=extensions,
        payload=bytes(data[pos : n - padding]),
        padding=padding,
        extension_profile=profile,
        extension_data=opaque,
    )
