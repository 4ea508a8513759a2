"""SCTP packet, chunk and parameter codec (RFC 9260 §3, RFC 3758 §3.2, RFC 6525 §3-4).

The whole packet is parsed before the association looks at any of it, so a malformed chunk
anywhere rejects the packet with :class:`SctpError` before any state changes. Chunk types we
do not implement are kept as :class:`UnknownChunk` so the association can apply the upper-two-bit
rules of §3.2 itself (it has to decide whether to report them in an ERROR chunk).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from crc32c import crc32c

from ..errors import SctpError

# Chunk types (RFC 9260 §3.2, RFC 3758 §3.2, RFC 6525 §3.1).
DATA = 0
INIT = 1
INIT_ACK = 2
SACK = 3
HEARTBEAT = 4
HEARTBEAT_ACK = 5
ABORT = 6
SHUTDOWN = 7
SHUTDOWN_ACK = 8
ERROR = 9
COOKIE_ECHO = 10
COOKIE_ACK = 11
SHUTDOWN_COMPLETE = 14
RECONFIG = 130
FORWARD_TSN = 192

# DATA chunk flags (RFC 9260 §3.3.1); I is the SACK-IMMEDIATELY bit of RFC 7053.
FLAG_END = 0x01
FLAG_BEGIN = 0x02
FLAG_UNORDERED = 0x04
FLAG_IMMEDIATE = 0x08
# The T bit of ABORT and SHUTDOWN COMPLETE (RFC 9260 §3.3.7, §3.3.13).
FLAG_T = 0x01

# INIT / INIT ACK parameter types (RFC 9260 §3.3.2, RFC 3758 §3.1, RFC 5061 §4.2.7).
PARAM_STATE_COOKIE = 7
PARAM_UNRECOGNIZED = 8
PARAM_SUPPORTED_EXTENSIONS = 0x8008
PARAM_FORWARD_TSN_SUPPORTED = 0xC000
PARAM_HEARTBEAT_INFO = 1

# RE-CONFIG parameter types (RFC 6525 §4).
RECONFIG_OUTGOING_RESET = 13
RECONFIG_INCOMING_RESET = 14
RECONFIG_SSN_TSN_RESET = 15
RECONFIG_RESPONSE = 16
RECONFIG_ADD_OUTGOING = 17
RECONFIG_ADD_INCOMING = 18

# Re-configuration Response results (RFC 6525 §4.4).
RESULT_SUCCESS_NOTHING = 0
RESULT_SUCCESS_PERFORMED = 1
RESULT_DENIED = 2
RESULT_ERROR_WRONG_SSN = 3
RESULT_ERROR_IN_PROGRESS = 4
RESULT_ERROR_BAD_SEQUENCE = 5
RESULT_IN_PROGRESS = 6

# Error cause codes (RFC 9260 §3.3.10).
CAUSE_INVALID_STREAM = 1
CAUSE_MISSING_PARAM = 2
CAUSE_STALE_COOKIE = 3
CAUSE_OUT_OF_RESOURCE = 4
CAUSE_UNRECOGNIZED_CHUNK = 6
CAUSE_INVALID_PARAM = 7
CAUSE_UNRECOGNIZED_PARAMS = 8
CAUSE_NO_USER_DATA = 9
CAUSE_COOKIE_WHILE_SHUTTING_DOWN = 10
CAUSE_USER_ABORT = 12
CAUSE_PROTOCOL_VIOLATION = 13

COMMON_HEADER_SIZE = 12
DATA_HEADER_SIZE = 16

_HEADER = struct.Struct("!HHII")
_CHUNK_HEADER = struct.Struct("!BBH")
_DATA_HEADER = struct.Struct("!BBHIHHI")
_INIT_BODY = struct.Struct("!IIHHI")
_SACK_BODY = struct.Struct("!IIHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TLV = struct.Struct("!HH")
# RFC 9260 Appendix A: the CRC32c goes on the wire least significant byte first.
_CRC = struct.Struct("<I")

ErrorCause = tuple[int, bytes]
Param = tuple[int, bytes]


def _pad(n: int) -> int:
    return (4 - (n & 3)) & 3


# --- chunks ------------------------------------------------------------------------------------


@dataclass(slots=True)
class DataChunk:
    tsn: int
    stream_id: int
    ssn: int
    ppid: int
    payload: bytes
    flags: int = FLAG_BEGIN | FLAG_END
    TYPE: ClassVar[int] = DATA

    def encode(self) -> bytes:
        return (
            _DATA_HEADER.pack(
                DATA,
                self.flags,
                DATA_HEADER_SIZE + len(self.payload),
                self.tsn,
                self.stream_id,
                self.ssn,
                self.ppid,
            )
            + self.payload
        )


@dataclass(slots=True)
class InitChunk:
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: list[Param] = field(default_factory=list)
    TYPE: ClassVar[int] = INIT

    def encode(self) -> bytes:
        return _encode_init(self.TYPE, self)


@dataclass(slots=True)
class InitAckChunk:
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: list[Param] = field(default_factory=list)
    TYPE: ClassVar[int] = INIT_ACK

    def encode(self) -> bytes:
        return _encode_init(self.TYPE, self)

    @property
    def cookie(self) -> bytes | None:
        for ptype, value in self.params:
            if ptype == PARAM_STATE_COOKIE:
                return value
        return None


@dataclass(slots=True)
class SackChunk:
    cumulative_tsn: int
    a_rwnd: int
    gaps: list[tuple[int, int]] = field(default_factory=list)  # offsets from cumulative_tsn
    duplicates: list[int] = field(default_factory=list)
    TYPE: ClassVar[int] = SACK

    def encode(self) -> bytes:
        ngaps, ndups = len(self.gaps), len(self.duplicates)
        length = 16 + 4 * ngaps + 4 * ndups
        out = bytearray(length)
        _CHUNK_HEADER.pack_into(out, 0, SACK, 0, length)
        _SACK_BODY.pack_into(out, 4, self.cumulative_tsn, self.a_rwnd, ngaps, ndups)
        pos = 16
        for start, end in self.gaps:
            struct.pack_into("!HH", out, pos, start, end)
            pos += 4
        for tsn in self.duplicates:
            _U32.pack_into(out, pos, tsn)
            pos += 4
        return bytes(out)


@dataclass(slots=True)
class HeartbeatChunk:
    info: bytes
    TYPE: ClassVar[int] = HEARTBEAT

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, encode_params([(PARAM_HEARTBEAT_INFO, self.info)]))


@dataclass(slots=True)
class HeartbeatAckChunk:
    info: bytes
    TYPE: ClassVar[int] = HEARTBEAT_ACK

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, encode_params([(PARAM_HEARTBEAT_INFO, self.info)]))


@dataclass(slots=True)
class AbortChunk:
    causes: list[ErrorCause] = field(default_factory=list)
    reflected: bool = False  # the T bit: the verification tag is the peer's own
    TYPE: ClassVar[int] = ABORT

    def encode(self) -> bytes:
        return _simple(self.TYPE, FLAG_T if self.reflected else 0, encode_params(self.causes))


@dataclass(slots=True)
class ShutdownChunk:
    cumulative_tsn: int
    TYPE: ClassVar[int] = SHUTDOWN

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, _U32.pack(self.cumulative_tsn))


@dataclass(slots=True)
class ShutdownAckChunk:
    TYPE: ClassVar[int] = SHUTDOWN_ACK

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, b"")


@dataclass(slots=True)
class ErrorChunk:
    causes: list[ErrorCause] = field(default_factory=list)
    TYPE: ClassVar[int] = ERROR

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, encode_params(self.causes))


@dataclass(slots=True)
class CookieEchoChunk:
    cookie: bytes
    TYPE: ClassVar[int] = COOKIE_ECHO

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, self.cookie)


@dataclass(slots=True)
class CookieAckChunk:
    TYPE: ClassVar[int] = COOKIE_ACK

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, b"")


@dataclass(slots=True)
class ShutdownCompleteChunk:
    reflected: bool = False
    TYPE: ClassVar[int] = SHUTDOWN_COMPLETE

    def encode(self) -> bytes:
        return _simple(self.TYPE, FLAG_T if self.reflected else 0, b"")


@dataclass(slots=True)
class ForwardTsnChunk:
    new_cumulative_tsn: int
    streams: list[tuple[int, int]] = field(default_factory=list)  # (stream id, SSN) pairs
    TYPE: ClassVar[int] = FORWARD_TSN

    def encode(self) -> bytes:
        body = _U32.pack(self.new_cumulative_tsn) + b"".join(
            struct.pack("!HH", sid, ssn) for sid, ssn in self.streams
        )
        return _simple(self.TYPE, 0, body)


@dataclass(slots=True)
class OutgoingResetRequest:
    request_seq: int
    response_seq: int
    last_tsn: int
    streams: list[int] = field(default_factory=list)  # empty means "all streams"
    TYPE: ClassVar[int] = RECONFIG_OUTGOING_RESET

    def encode_param(self) -> bytes:
        body = struct.pack("!III", self.request_seq, self.response_seq, self.last_tsn)
        return _param(self.TYPE, body + b"".join(_U16.pack(s) for s in self.streams))


@dataclass(slots=True)
class IncomingResetRequest:
    request_seq: int
    streams: list[int] = field(default_factory=list)
    TYPE: ClassVar[int] = RECONFIG_INCOMING_RESET

    def encode_param(self) -> bytes:
        body = _U32.pack(self.request_seq) + b"".join(_U16.pack(s) for s in self.streams)
        return _param(self.TYPE, body)


@dataclass(slots=True)
class ReconfigResponse:
    response_seq: int
    result: int
    sender_next_tsn: int | None = None
    receiver_next_tsn: int | None = None
    TYPE: ClassVar[int] = RECONFIG_RESPONSE

    def encode_param(self) -> bytes:
        body = struct.pack("!II", self.response_seq, self.result)
        if self.sender_next_tsn is not None and self.receiver_next_tsn is not None:
            body += struct.pack("!II", self.sender_next_tsn, self.receiver_next_tsn)
        return _param(self.TYPE, body)


@dataclass(slots=True)
class OtherReconfigRequest:
    """SSN/TSN reset and add-streams requests: we only need their sequence number to deny them."""

    type: int
    request_seq: int
    body: bytes = b""

    def encode_param(self) -> bytes:
        return _param(self.type, _U32.pack(self.request_seq) + self.body)


ReconfigParam = (
    OutgoingResetRequest | IncomingResetRequest | ReconfigResponse | OtherReconfigRequest
)


@dataclass(slots=True)
class ReconfigChunk:
    params: list[ReconfigParam] = field(default_factory=list)
    TYPE: ClassVar[int] = RECONFIG

    def encode(self) -> bytes:
        return _simple(self.TYPE, 0, _join_tlvs([p.encode_param() for p in self.params]))


@dataclass(slots=True)
class UnknownChunk:
    type: int
    flags: int
    body: bytes

    def encode(self) -> bytes:
        return _simple(self.type, self.flags, self.body)


Chunk = (
    DataChunk
    | InitChunk
    | InitAckChunk
    | SackChunk
    | HeartbeatChunk
    | HeartbeatAckChunk
    | AbortChunk
    | ShutdownChunk
    | ShutdownAckChunk
    | ErrorChunk
    | CookieEchoChunk
    | CookieAckChunk
    | ShutdownCompleteChunk
    | ForwardTsnChunk
    | ReconfigChunk
    | UnknownChunk
)


@dataclass(slots=True)
class Packet:
    source_port: int
    destination_port: int
    verification_tag: int
    chunks: list[Chunk]


# --- encoding helpers --------------------------------------------------------------------------


def _simple(ctype: int, flags: int, body: bytes) -> bytes:
    if 4 + len(body) > 0xFFFF:
        raise ValueError("chunk too long")
    return _CHUNK_HEADER.pack(ctype, flags, 4 + len(body)) + body


def _param(ptype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return _TLV.pack(ptype, length) + value + b"\x00" * _pad(length)


def encode_params(params: list[Param]) -> bytes:
    """Type-length-value list (RFC 9260 §3.2.1; error causes alike).

    Every parameter is padded to 4 bytes except the last: §3.2 counts inner padding in the
    chunk length but not the chunk's terminating padding, which the packet adds.
    """
    return _join_tlvs([_param(ptype, value) for ptype, value in params])


def _join_tlvs(parts: list[bytes]) -> bytes:
    if not parts:
        return b""
    last = parts[-1]
    parts[-1] = last[: _TLV.unpack_from(last, 0)[1]]
    return b"".join(parts)


def _encode_init(ctype: int, c: InitChunk | InitAckChunk) -> bytes:
    body = _INIT_BODY.pack(
        c.initiate_tag, c.a_rwnd, c.outbound_streams, c.inbound_streams, c.initial_tsn
    )
    return _simple(ctype, 0, body + encode_params(c.params))


def serialize_packet(
    source_port: int, destination_port: int, verification_tag: int, chunks: list[bytes]
) -> bytes:
    """Concatenate encoded chunks (each padded, §3.2) and fill in the CRC32c (Appendix A)."""
    buf = bytearray(_HEADER.pack(source_port, destination_port, verification_tag, 0))
    for chunk in chunks:
        buf += chunk
        pad = _pad(len(chunk))
        if pad:
            buf += b"\x00" * pad
    _CRC.pack_into(buf, 8, crc32c(buf))
    return bytes(buf)


def describe_causes(causes: list[ErrorCause]) -> str:
    """A short text for an ABORT's causes; user and violation causes carry readable text."""
    parts = []
    for code, body in causes:
        text = (
            body.decode("utf-8", "replace")
            if code in (CAUSE_USER_ABORT, CAUSE_PROTOCOL_VIOLATION)
            else ""
        )
        parts.append(f"cause {code}" + (f": {text}" if text else ""))
    return (" (" + "; ".join(parts) + ")") if parts else ""


# --- parsing -----------------------------------------------------------------------------------


def parse_params(data: bytes, start: int, end: int, what: str = "parameter") -> list[Param]:
    """Parse a padded TLV list; the padding of the last one may be missing (liberal receiver)."""
    params: list[Param] = []
    pos = start
    while pos < end:
        if end - pos < 4:
            raise SctpError(f"truncated {what} header")
        ptype, plen = _TLV.unpack_from(data, pos)
        if plen < 4 or pos + plen > end:
            raise SctpError(f"bad {what} length {plen}")
        params.append((ptype, bytes(data[pos + 4 : pos + plen])))
        pos += plen + _pad(plen)
    return params


def _parse_init(
    cls: type[InitChunk] | type[InitAckChunk], data: bytes, pos: int, end: int
) -> Chunk:
    if end - pos < 16:
        raise SctpError("INIT chunk too short")
    tag, a_rwnd, os_, mis, tsn = _INIT_BODY.unpack_from(data, pos)
    if tag == 0:
        # §3.3.2: a zero Initiate Tag is a protocol violation.
        raise SctpError("INIT with zero initiate tag")
    if os_ == 0 or mis == 0:
        # §3.3.2: zero stream counts are invalid.
        raise SctpError("INIT with zero stream count")
    return cls(tag, a_rwnd, os_, mis, tsn, parse_params(data, pos + 16, end))


def _parse_streams(data: bytes, pos: int, end: int) -> list[int]:
    if (end - pos) & 1:
        raise SctpError("odd stream list length")
    return [_U16.unpack_from(data, p)[0] for p in range(pos, end, 2)]


def _parse_reconfig(data: bytes, pos: int, end: int) -> ReconfigChunk:
    params: list[ReconfigParam] = []
    for ptype, value in parse_params(data, pos, end, "RE-CONFIG parameter"):
        n = len(value)
        if ptype == RECONFIG_OUTGOING_RESET:
            if n < 12:
                raise SctpError("short outgoing reset request")
            req, resp, last = struct.unpack_from("!III", value)
            params.append(OutgoingResetRequest(req, resp, last, _parse_streams(value, 12, n)))
        elif ptype == RECONFIG_INCOMING_RESET:
            if n < 4:
                raise SctpError("short incoming reset request")
            req = _U32.unpack_from(value)[0]
            params.append(IncomingResetRequest(req, _parse_streams(value, 4, n)))
        elif ptype == RECONFIG_RESPONSE:
            if n == 8:
                resp, result = struct.unpack_from("!II", value)
                params.append(ReconfigResponse(resp, result))
            elif n == 16:
                resp, result, snt, rnt = struct.unpack_from("!IIII", value)
                params.append(ReconfigResponse(resp, result, snt, rnt))
            else:
                raise SctpError("bad re-configuration response length")
        elif ptype in (RECONFIG_SSN_TSN_RESET, RECONFIG_ADD_OUTGOING, RECONFIG_ADD_INCOMING):
            if n < 4:
                raise SctpError("short re-configuration request")
            params.append(OtherReconfigRequest(ptype, _U32.unpack_from(value)[0], value[4:]))
        else:
            raise SctpError(f"unknown RE-CONFIG parameter {ptype}")
    # RFC 6525 §3.1: one or two parameters per chunk.
    if not 1 <= len(params) <= 2:
        raise SctpError("RE-CONFIG chunk must carry one or two parameters")
    return ReconfigChunk(params)


def _heartbeat_info(data: bytes, pos: int, end: int) -> bytes:
    params = parse_params(data, pos, end)
    if len(params) != 1 or params[0][0] != PARAM_HEARTBEAT_INFO:
        raise SctpError("HEARTBEAT without a Heartbeat Info parameter")
    return params[0][1]


def _parse_chunk(ctype: int, flags: int, data: bytes, pos: int, end: int) -> Chunk:
    """Parse one chunk's body in ``data[pos:end]`` (after the 4-byte header)."""
    blen = end - pos
    if ctype == DATA:
        if blen < 12:
            raise SctpError("DATA chunk too short")
        tsn, sid, ssn, ppid = struct.unpack_from("!IHHI", data, pos)
        return DataChunk(tsn, sid, ssn, ppid, bytes(data[pos + 12 : end]), flags)
    if ctype == SACK:
        if blen < 12:
            raise SctpError("SACK chunk too short")
        cum, a_rwnd, ngaps, ndups = _SACK_BODY.unpack_from(data, pos)
        if blen != 12 + 4 * (ngaps + ndups):
            raise SctpError("SACK length does not match its block counts")
        p = pos + 12
        gaps = [struct.unpack_from("!HH", data, p + 4 * i) for i in range(ngaps)]
        p += 4 * ngaps
        dups = [_U32.unpack_from(data, p + 4 * i)[0] for i in range(ndups)]
        return SackChunk(cum, a_rwnd, [(s, e) for s, e in gaps], dups)
    if ctype == INIT:
        return _parse_init(InitChunk, data, pos, end)
    if ctype == INIT_ACK:
        return _parse_init(InitAckChunk, data, pos, end)
    if ctype == HEARTBEAT:
        return HeartbeatChunk(_heartbeat_info(data, pos, end))
    if ctype == HEARTBEAT_ACK:
        return HeartbeatAckChunk(_heartbeat_info(data, pos, end))
    if ctype == ABORT:
        return AbortChunk(parse_params(data, pos, end, "error cause"), bool(flags & FLAG_T))
    if ctype == ERROR:
        return ErrorChunk(parse_params(data, pos, end, "error cause"))
    if ctype == SHUTDOWN:
        if blen != 4:
            raise SctpError("SHUTDOWN chunk must be 8 bytes")
        return ShutdownChunk(_U32.unpack_from(data, pos)[0])
    if ctype == SHUTDOWN_ACK:
        if blen:
            raise SctpError("SHUTDOWN ACK chunk must be 4 bytes")
        return ShutdownAckChunk()
    if ctype == COOKIE_ECHO:
        return CookieEchoChunk(bytes(data[pos:end]))
    if ctype == COOKIE_ACK:
        if blen:
            raise SctpError("COOKIE ACK chunk must be 4 bytes")
        return CookieAckChunk()
    if ctype == SHUTDOWN_COMPLETE:
        if blen:
            raise SctpError("SHUTDOWN COMPLETE chunk must be 4 bytes")
        return ShutdownCompleteChunk(bool(flags & FLAG_T))
    if ctype == FORWARD_TSN:
        if blen < 4 or blen & 3:
            raise SctpError("bad FORWARD TSN length")
        new_cum = _U32.unpack_from(data, pos)[0]
        pairs = [struct.unpack_from("!HH", data, p) for p in range(pos + 4, end, 4)]
        return ForwardTsnChunk(new_cum, [(s, n) for s, n in pairs])
    if ctype == RECONFIG:
        return _parse_reconfig(data, pos, end)
    return UnknownChunk(ctype, flags, bytes(data[pos:end]))


def parse_packet(data: bytes) -> Packet:
    """Verify the CRC32c and parse every chunk; any defect raises :class:`SctpError`."""
    n = len(data)
    if n < COMMON_HEADER_SIZE + 4:
        raise SctpError("packet too short")
    src, dst, vtag, _ = _HEADER.unpack_from(data, 0)
    stored = _CRC.unpack_from(data, 8)[0]
    view = memoryview(data)
    crc = crc32c(view[12:], crc32c(b"\x00\x00\x00\x00", crc32c(view[:8])))
    if crc != stored:
        raise SctpError("bad CRC32c checksum")
    chunks: list[Chunk] = []
    pos = COMMON_HEADER_SIZE
    while pos < n:
        if n - pos < 4:
            raise SctpError("truncated chunk header")
        ctype, flags, clen = _CHUNK_HEADER.unpack_from(data, pos)
        if clen < 4 or pos + clen > n:
            raise SctpError(f"bad chunk length {clen} for chunk type {ctype}")
        chunks.append(_parse_chunk(ctype, flags, data, pos + 4, pos + clen))
        pos += clen + _pad(clen)
        if pos > n:
            # §3.2: only the last chunk may omit padding; then we are exactly at the end.
            pos = n
    # §6.10: INIT, INIT ACK and SHUTDOWN COMPLETE are never bundled.
    if len(chunks) > 1:
        for c in chunks:
            if isinstance(c, InitChunk | InitAckChunk | ShutdownCompleteChunk):
                raise SctpError(f"{type(c).__name__} bundled with other chunks")
    return Packet(src, dst, vtag, chunks)
