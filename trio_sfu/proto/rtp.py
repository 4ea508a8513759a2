"""RTP packets (RFC 3550 §5) with RFC 8285 header extensions, and the SFU's forwarding rewriter.

Two faces on purpose. :func:`parse_rtp` / :class:`RtpPacket` build a full dataclass and are for
tests, tooling and the rare slow path. The forwarding path never builds one: it reads the fields
it routes on with ``struct.unpack_from`` (:func:`read_header`, :func:`find_extension`) and rewrites
packets for a subscriber with :class:`RtpRewriter`, which keeps all per-(subscriber, track) state
precomputed and writes into a preallocated buffer.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from trio_sfu.proto.errors import RtpError

__all__ = [
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpPacket",
    "RtpRewriter",
    "SequenceUnwrapper",
    "TransportCcSequencer",
    "find_extension",
    "is_rtcp",
    "parse_rtp",
    "payload_offset",
    "read_header",
    "rtp_marker",
    "rtp_payload_type",
    "rtp_sequence",
    "rtp_ssrc",
    "rtp_timestamp",
]

#: RFC 8285 §4.2: the "defined by profile" value announcing one-byte extension elements.
ONE_BYTE_PROFILE = 0xBEDE
#: RFC 8285 §4.3: 0x100 followed by 4 "appbits"; we write 0 appbits unless preserving a parse.
TWO_BYTE_PROFILE = 0x1000

_FIXED = struct.Struct("!BBHII")
_SEQ_TS_SSRC = struct.Struct("!HII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEADER = struct.Struct("!HH")


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


class SequenceUnwrapper:
    """Map wrapping N-bit sequence numbers onto an unbounded line (RFC 3550 A.1's ``cycles``).

    Each value is placed at the position nearest the highest one seen so far, so a late packet
    lands just below it and a wrap (65535 → 0) continues upward. The first value is returned
    unchanged; values before it in sequence order come out below it (possibly negative).
    Shared by the rewriter, NACK tracking, jitter statistics and the TWCC recorder.
    """

    __slots__ = ("_half", "_highest", "_mask", "_modulus")

    def __init__(self, bits: int = 16) -> None:
        self._modulus = 1 << bits
        self._mask = self._modulus - 1
        self._half = self._modulus >> 1
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
            return seq & self._mask
        diff = (seq - highest) & self._mask
        if diff >= self._half:
            diff -= self._modulus
        return highest + diff

    def unwrap(self, seq: int) -> int:
        """Extended value of ``seq``; raises the highest mark when it moves forward."""
        ext = self.peek(seq)
        if self._highest is None or ext > self._highest:
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
        one_byte_fits = all(
            eid <= 14 and 1 <= len(v) <= 16 for eid, v in self.extensions.items()
        )
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


def _parse_extension_elements(
    profile: int, data: bytes, start: int, end: int
) -> dict[int, bytes]:
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


# --- forwarding -------------------------------------------------------------------------------


class TransportCcSequencer:
    """The transport-wide sequence space of one subscriber transport.

    transport-cc numbers every packet on a transport, whatever its stream, so all rewriters
    towards one subscriber share one of these (draft-holmer-rmcat-transport-wide-cc-extensions-01
    §2). ``ext_id`` is the id the subscriber negotiated for the extension.
    """

    __slots__ = ("ext_id", "next_seq")

    def __init__(self, ext_id: int, start: int = 0) -> None:
        if not 1 <= ext_id <= 255:
            raise ValueError("extension id must be 1..255")
        self.ext_id = ext_id
        self.next_seq = start & 0xFFFF


_NEVER = -(1 << 62)
_WINDOW = 1024  # input sequence numbers remembered for duplicate detection
_PATCH, _DROP_BLOCK, _REBUILD = 0, 1, 2
# (header mask, header signature, keep mask, new header bytes, transport-cc shift, mode)
_Plan = tuple[int, int, int, int, int, int]
_SLACK = 16  # room for an added extension header, the transport-cc element and padding


class RtpRewriter:
    """Rewrite one publisher stream for one subscriber: SSRC, PT, seq/ts offsets, extensions.

    Everything that does not depend on the packet is computed once here so :meth:`rewrite` is a
    handful of ``unpack_from``/``pack_into`` calls into a preallocated header buffer, one
    integer mask per extension block (see :meth:`_plan`) and one copy of the payload.
    Extension values pass through untouched: only ids are remapped, and elements not in the
    map (mid, rid, repaired-rid, the publisher's transport-cc) are dropped, because the
    subscriber's SDP signals its streams by SSRC.

    Sequence numbers are unwrapped (RFC 3550 A.1) so a reordered packet keeps its place; inputs
    are de-duplicated over the last 1024 sequence numbers so output numbers stay unique. Packets
    from an SSRC other than the current source, from before the first packet of the current
    source, or older than the duplicate window are dropped and counted in ``dropped``.
    """

    __slots__ = (
        "_buf",
        "_clock_rate",
        "_ext_map",
        "_in_highest",
        "_out_first",
        "_out_highest",
        "_out_ts_last",
        "_pending_ssrc",
        "_pending_ts_delta",
        "_plans",
        "_pt_map",
        "_seen",
        "_seq_off",
        "_source_first",
        "_source_ssrc",
        "_ssrc",
        "_started",
        "_ts_off",
        "_twcc",
        "_two_byte_out",
        "_view",
        "dropped",
        "octets",
        "packets",
    )

    def __init__(
        self,
        ssrc: int,
        payload_types: Mapping[int, int],
        extension_ids: Mapping[int, int] | None = None,
        *,
        clock_rate: int = 90000,
        twcc: TransportCcSequencer | None = None,
        initial_sequence: int | None = None,
        initial_timestamp: int | None = None,
        buffer_size: int = 2048,
    ) -> None:
        self._ssrc = ssrc & 0xFFFFFFFF
        # Input PT → output PT; -1 drops (e.g. a codec the subscriber did not negotiate).
        self._pt_map = [-1] * 128
        for pt_in, pt_out in payload_types.items():
            if not (0 <= pt_in <= 127 and 0 <= pt_out <= 127):
                raise ValueError("payload types must be 0..127")
            self._pt_map[pt_in] = pt_out
        self._twcc = twcc
        twcc_id = twcc.ext_id if twcc is not None else 0
        # Input extension id → output id; 0 drops (mid/rid of the publisher leg, unknown ids).
        self._ext_map = [0] * 256
        out_ids = [twcc_id] if twcc_id else []
        for id_in, id_out in (extension_ids or {}).items():
            if not (1 <= id_in <= 255 and 1 <= id_out <= 255):
                raise ValueError("extension ids must be 1..255")
            if id_out == twcc_id:
                continue  # the subscriber leg's own transport-cc sequence wins
            self._ext_map[id_in] = id_out
            out_ids.append(id_out)
        self._two_byte_out = any(i > 14 for i in out_ids)
        self._plans: dict[int, _Plan] = {}
        self._clock_rate = clock_rate
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._seen = [_NEVER] * _WINDOW
        self._started = False
        self._source_ssrc = -1
        self._source_first = 0
        self._in_highest = 0
        self._seq_off = 0
        self._ts_off = 0
        # Extended output sequence: first of the current source and highest emitted overall.
        # A random start (RFC 3550 §5.1); 15 bits keeps the SRTP rollover counter from
        # wrapping early, which receivers guess badly (RFC 3711 §3.3.1).
        start_seq = secrets.randbits(15) if initial_sequence is None else initial_sequence
        start_ts = secrets.randbits(32) if initial_timestamp is None else initial_timestamp
        self._out_highest = (start_seq & 0xFFFF) - 1
        self._out_first = self._out_highest + 1
        self._out_ts_last = start_ts & 0xFFFFFFFF  # the first packet gets exactly start_ts
        self._pending_ts_delta = 0
        self._pending_ssrc = -1
        self.packets = 0
        self.octets = 0
        self.dropped = 0

    @property
    def ssrc(self) -> int:
        """The SSRC the subscriber sees."""
        return self._ssrc

    @property
    def last_sequence(self) -> int:
        """Highest output sequence number emitted so far (16-bit)."""
        return self._out_highest & 0xFFFF

    @property
    def last_timestamp(self) -> int:
        """Output RTP timestamp of the highest-sequence packet emitted (for Sender Reports)."""
        return self._out_ts_last & 0xFFFFFFFF

    def switch_source(self, elapsed: float, ssrc: int | None = None) -> None:
        """Continue the output seamlessly from a new input stream (rejoin or simulcast switch).

        The next packet (from ``ssrc`` if given, else from any SSRC) starts the new source; it
        gets output sequence ``last + 1`` and a timestamp ``elapsed`` seconds (converted with
        the clock rate, at least one tick) after the last one emitted, so the subscriber's
        jitter buffer sees a gap, never a jump back. ``elapsed`` is wall-clock time since the
        last forwarded packet, supplied by the caller because this core reads no clock.
        """
        self._pending_ssrc = -1 if ssrc is None else ssrc & 0xFFFFFFFF
        if not self._started:
            return
        self._source_ssrc = -1
        self._pending_ts_delta = max(1, round(elapsed * self._clock_rate))

    def to_input_sequence(self, out_seq: int) -> int | None:
        """Map a subscriber's NACKed sequence back to the current source's, or None.

        None when the number belongs to an earlier source (its packets cannot be re-requested
        from the current publisher stream).
        """
        if not self._started or self._source_ssrc < 0:
            return None
        diff = (out_seq - self._out_highest) & 0xFFFF
        if diff >= 0x8000:
            diff -= 0x10000
        ext = self._out_highest + diff
        if ext < self._out_first or ext > self._out_highest:
            return None
        return (ext - self._seq_off) & 0xFFFF

    def _begin_source(self, ssrc: int, seq: int, ts: int) -> None:
        self._source_ssrc = ssrc
        self._source_first = seq
        self._in_highest = seq
        self._seen = [_NEVER] * _WINDOW
        first_out = self._out_highest + 1
        self._out_first = first_out
        self._seq_off = first_out - seq
        if self._started:
            self._ts_off = (self._out_ts_last + self._pending_ts_delta - ts) & 0xFFFFFFFF
        else:
            self._ts_off = (self._out_ts_last - ts) & 0xFFFFFFFF
            self._started = True

    def rewrite(self, packet: bytes) -> bytes | None:
        """The rewritten packet, or None to drop it (unmapped PT, other SSRC, duplicate, bad)."""
        n = len(packet)
        if n < 12:
            self.dropped += 1
            return None
        b0 = packet[0]
        b1 = packet[1]
        pt = self._pt_map[b1 & 0x7F]
        if pt < 0 or b0 & 0xC0 != 0x80:
            self.dropped += 1
            return None
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if ssrc != self._source_ssrc:
            if self._source_ssrc >= 0 or (self._pending_ssrc >= 0 and ssrc != self._pending_ssrc):
                self.dropped += 1
                return None
            self._begin_source(ssrc, seq, ts)

        # RFC 3550 A.1: place the packet relative to the highest input seen.
        highest = self._in_highest
        diff = (seq - highest) & 0xFFFF
        if diff >= 0x8000:
            diff -= 0x10000
        ext = highest + diff
        if ext < self._source_first or ext <= highest - _WINDOW:
            self.dropped += 1
            return None
        slot = ext & (_WINDOW - 1)
        if self._seen[slot] == ext:
            self.dropped += 1
            return None

        pos = 12 + 4 * (b0 & 0x0F)
        buf = self._buf
        if b0 & 0x10:
            if pos + 4 > n:
                self.dropped += 1
                return None
            hdr_end = pos + 4 + 4 * _U16.unpack_from(packet, pos + 2)[0]
            if hdr_end > n:
                self.dropped += 1
                return None
            if 2 * hdr_end + _SLACK > len(buf):
                # A rebuild into the two-byte form grows each element by at most one byte.
                buf = self._grow(2 * hdr_end)
            block = int.from_bytes(packet[pos:hdr_end])
            plan = self._plans.get(hdr_end - pos)
            if plan is None or block & plan[0] != plan[1]:
                plan = self._plan(packet, pos, hdr_end)
                if plan is None:
                    self.dropped += 1
                    return None
            mode = plan[5]
            if mode == _PATCH:
                block = (block & plan[2]) | plan[3]
                if plan[4] >= 0:
                    twcc = self._twcc
                    assert twcc is not None
                    tseq = twcc.next_seq
                    twcc.next_seq = (tseq + 1) & 0xFFFF
                    block |= tseq << plan[4]
                buf[pos:hdr_end] = block.to_bytes(hdr_end - pos)
                out = hdr_end
            elif mode == _DROP_BLOCK:
                out = pos
            else:
                out = self._write_extensions(packet, pos, hdr_end)
        else:
            hdr_end = pos
            if pos > n:
                self.dropped += 1
                return None
            out = pos if self._twcc is None else self._write_extensions(packet, pos, pos)
        if pos > 12:
            buf[12:pos] = packet[12:pos]

        if ext > highest:
            self._in_highest = ext
        self._seen[slot] = ext
        out_ext = ext + self._seq_off
        out_ts = (ts + self._ts_off) & 0xFFFFFFFF
        if out_ext > self._out_highest:
            self._out_highest = out_ext
            self._out_ts_last = out_ts
        _FIXED.pack_into(
            buf,
            0,
            (b0 & 0xEF) | (0x10 if out > pos else 0),
            (b1 & 0x80) | pt,
            out_ext & 0xFFFF,
            out_ts,
            self._ssrc,
        )
        self.packets += 1
        self.octets += n - hdr_end
        # One allocation for the whole packet; the payload is copied exactly once.
        return self._view[:out].tobytes() + packet[hdr_end:]

    def _grow(self, n: int) -> bytearray:
        self._buf = bytearray(n + 2 * _SLACK)
        self._view = memoryview(self._buf)
        return self._buf

    def _plan(self, packet: bytes, pos: int, end: int) -> _Plan | None:
        """Work out, once per extension layout, how to remap it with integer masks.

        Publishers repeat a handful of layouts (which extensions, in which order), so the
        per-packet work becomes: check the layout's header bytes with one mask and compare,
        then ``(block & keep) | headers | transport_seq << shift`` — no per-element loop.
        Kept elements get their new id, dropped ones become RFC 8285 padding (zero bytes),
        and the subscriber's transport-cc number reuses the slot of a dropped 2-byte element
        (normally the publisher's own transport-cc), so the block keeps its size. Layouts
        that cannot be remapped in place are flagged for a rebuild. None if malformed.
        """
        size = end - pos
        mask = bytearray(size)
        sig = bytearray(size)
        keep = bytearray(size)
        put = bytearray(size)
        mask[0:4] = b"\xff\xff\xff\xff"
        sig[0:4] = packet[pos : pos + 4]
        keep[0:4] = b"\xff\xff\xff\xff"
        profile = _U16.unpack_from(packet, pos)[0]
        twcc = self._twcc
        twcc_shift = -1
        mode = _PATCH
        kept = False
        ext_map = self._ext_map
        i = 4
        if profile == ONE_BYTE_PROFILE:
            if self._two_byte_out:
                mode = _REBUILD
            while i < size:
                byte = packet[pos + i]
                mask[i] = 0xFF
                sig[i] = byte
                eid = byte >> 4
                if eid == 0:  # RFC 8285 §4.2: padding
                    i += 1
                    continue
                if eid == 15:  # RFC 8285 §4.2: stop; the rebuild drops the rest
                    mode = _REBUILD
                    break
                length = (byte & 0x0F) + 1
                if i + 1 + length > size:
                    return None
                oid = ext_map[eid]
                if mode != _PATCH:
                    pass  # only the signature matters: the rebuild re-walks the block
                elif oid:
                    put[i] = (oid << 4) | (length - 1)
                    keep[i + 1 : i + 1 + length] = b"\xff" * length
                    kept = True
                elif twcc is not None and twcc_shift < 0 and length == 2:
                    put[i] = (twcc.ext_id << 4) | 1
                    twcc_shift = 8 * (size - i - 3)
                i += 1 + length
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            if not self._two_byte_out:
                mode = _REBUILD
            while i < size:
                eid = packet[pos + i]
                mask[i] = 0xFF
                sig[i] = eid
                if eid == 0:  # RFC 8285 §4.3: padding
                    i += 1
                    continue
                if i + 2 > size:
                    return None
                length = packet[pos + i + 1]
                mask[i + 1] = 0xFF
                sig[i + 1] = length
                if i + 2 + length > size:
                    return None
                oid = ext_map[eid]
                if oid:
                    put[i] = oid
                    put[i + 1] = length
                    keep[i + 2 : i + 2 + length] = b"\xff" * length
                    kept = True
                elif twcc is not None and twcc_shift < 0 and length == 2:
                    put[i] = twcc.ext_id
                    put[i + 1] = 2
                    twcc_shift = 8 * (size - i - 4)
                i += 2 + length
        else:
            mode = _REBUILD  # RFC 3550 §5.3.1 profile-specific data: nothing to keep
        if mode == _PATCH:
            if twcc is not None and twcc_shift < 0:
                mode = _REBUILD
            elif not kept and twcc is None:
                mode = _DROP_BLOCK
        plan: _Plan = (
            int.from_bytes(mask),
            int.from_bytes(sig),
            int.from_bytes(keep),
            int.from_bytes(put),
            twcc_shift,
            mode,
        )
        self._plans[size] = plan
        return plan

    def _write_extensions(self, packet: bytes, pos: int, end: int) -> int:
        """Rebuild the extension block at ``pos`` from ``packet``'s block ``[pos, end)``.

        The slow path: used when the output form differs from the input's or transport-cc
        needs a new element. Returns the new header end (``pos`` when nothing survives, so
        the X bit follows from it) or -1 if the input block is malformed.
        """
        profile = _U16.unpack_from(packet, pos)[0] if end > pos else 0
        two_byte = self._two_byte_out
        while True:
            res = self._write_elements(packet, profile, pos + 4, end, pos, two_byte)
            if res != -2:
                return res
            two_byte = True  # an element does not fit the one-byte form; redo in two-byte

    def _write_elements(
        self, packet: bytes, profile: int, start: int, end: int, out: int, two_byte: bool
    ) -> int:
        buf = self._buf
        ext_map = self._ext_map
        p = out + 4
        i = start
        if profile == ONE_BYTE_PROFILE:
            while i < end:
                byte = packet[i]
                eid = byte >> 4
                if eid == 0:
                    i += 1
                    continue
                if eid == 15:
                    break
                length = (byte & 0x0F) + 1
                if i + 1 + length > end:
                    return -1
                oid = ext_map[eid]
                if oid:
                    if two_byte:
                        buf[p] = oid
                        buf[p + 1] = length
                        p += 2
                    else:
                        buf[p] = (oid << 4) | (length - 1)
                        p += 1
                    buf[p : p + length] = packet[i + 1 : i + 1 + length]
                    p += length
                i += 1 + length
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while i < end:
                eid = packet[i]
                if eid == 0:
                    i += 1
                    continue
                if i + 2 > end:
                    return -1
                length = packet[i + 1]
                if i + 2 + length > end:
                    return -1
                oid = ext_map[eid]
                if oid:
                    if two_byte:
                        buf[p] = oid
                        buf[p + 1] = length
                        p += 2
                    elif 1 <= length <= 16:
                        buf[p] = (oid << 4) | (length - 1)
                        p += 1
                    else:
                        return -2
                    buf[p : p + length] = packet[i + 2 : i + 2 + length]
                    p += length
                i += 2 + length
        twcc = self._twcc
        if twcc is not None:
            seq = twcc.next_seq
            twcc.next_seq = (seq + 1) & 0xFFFF
            if two_byte:
                buf[p] = twcc.ext_id
                buf[p + 1] = 2
                p += 2
            else:
                buf[p] = (twcc.ext_id << 4) | 1
                p += 1
            _U16.pack_into(buf, p, seq)
            p += 2
        if p == out + 4:
            return out
        while (p - out) & 3:
            buf[p] = 0
            p += 1
        _EXT_HEADER.pack_into(
            buf, out, TWO_BYTE_PROFILE if two_byte else ONE_BYTE_PROFILE, (p - out - 4) >> 2
        )
        return p
