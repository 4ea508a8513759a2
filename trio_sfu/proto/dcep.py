"""Data Channel Establishment Protocol messages (RFC 8832 §5).

DCEP rides on SCTP with PPID 50. The opener sends DATA_CHANNEL_OPEN on the stream it picked; the
peer answers DATA_CHANNEL_ACK on the same stream. Parsing is strict (exact lengths, known channel
types, UTF-8 label and protocol) and raises only :class:`DcepError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import DcepError

PPID_DCEP = 50

MSG_ACK = 0x02
MSG_OPEN = 0x03

_OPEN_HEADER = struct.Struct("!BBHIHH")
_UNORDERED = 0x80


class ChannelType(enum.IntEnum):
    """RFC 8832 §5.1 channel types; the 0x80 bit means unordered."""

    RELIABLE = 0x00
    PARTIAL_RELIABLE_REXMIT = 0x01
    PARTIAL_RELIABLE_TIMED = 0x02
    RELIABLE_UNORDERED = 0x80
    PARTIAL_RELIABLE_REXMIT_UNORDERED = 0x81
    PARTIAL_RELIABLE_TIMED_UNORDERED = 0x82

    @property
    def ordered(self) -> bool:
        return not self & _UNORDERED

    @property
    def reliability_kind(self) -> int:
        """0 reliable, 1 limited retransmissions, 2 limited lifetime (milliseconds)."""
        return self & 0x7F


@dataclass(slots=True)
class DataChannelOpen:
    channel_type: ChannelType
    priority: int = 0
    reliability: int = 0  # retransmissions or lifetime in ms, per channel_type; 0 if reliable
    label: str = ""
    protocol: str = ""

    @property
    def ordered(self) -> bool:
        return self.channel_type.ordered

    @property
    def max_retransmits(self) -> int | None:
        return self.reliability if self.channel_type.reliability_kind == 1 else None

    @property
    def max_packet_lifetime(self) -> int | None:
        return self.reliability if self.channel_type.reliability_kind == 2 else None

    @classmethod
    def for_channel(
        cls,
        *,
        label: str,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
        priority: int = 0,
    ) -> DataChannelOpen:
        """Build the OPEN for W3C-style channel options (at most one reliability limit)."""
        if max_retransmits is not None and max_packet_lifetime is not None:
            raise ValueError("max_retransmits and max_packet_lifetime are exclusive")
        if max_retransmits is not None:
            kind, param = 1, max_retransmits
        elif max_packet_lifetime is not None:
            kind, param = 2, max_packet_lifetime
        else:
            kind, param = 0, 0
        ctype = ChannelType(kind | (0 if ordered else _UNORDERED))
        return cls(ctype, priority, param, label, protocol)

    def encode(self) -> bytes:
        label = self.label.encode("utf-8")
        protocol = self.protocol.encode("utf-8")
        if len(label) > 0xFFFF or len(protocol) > 0xFFFF:
            raise ValueError("label or protocol longer than 65535 bytes")
        if not 0 <= self.priority <= 0xFFFF or not 0 <= self.reliability <= 0xFFFFFFFF:
            raise ValueError("priority or reliability parameter out of range")
        header = _OPEN_HEADER.pack(
            MSG_OPEN, self.channel_type, self.priority, self.reliability, len(label),
            len(protocol),
        )
        return header + label + protocol


@dataclass(slots=True)
class DataChannelAck:
    def encode(self) -> bytes:
        return bytes([MSG_ACK])


DcepMessage = DataChannelOpen | DataChannelAck


def parse_dcep(data: bytes) -> DcepMessage:
    if not data:
        raise DcepError("empty DCEP message")
    mtype = data[0]
    if mtype == MSG_ACK:
        if len(data) != 1:
            raise DcepError("DATA_CHANNEL_ACK must be one byte")
        return DataChannelAck()
    if mtype != MSG_OPEN:
        raise DcepError(f"unknown DCEP message type {mtype:#x}")
    if len(data) < _OPEN_HEADER.size:
        raise DcepError("DATA_CHANNEL_OPEN too short")
    _, ctype, priority, reliability, label_len, proto_len = _OPEN_HEADER.unpack_from(data)
    if len(data) != _OPEN_HEADER.size + label_len + proto_len:
        raise DcepError("DATA_CHANNEL_OPEN length does not match label and protocol lengths")
    try:
        channel_type = ChannelType(ctype)
    except ValueError:
        raise DcepError(f"unknown channel type {ctype:#x}") from None
    end = _OPEN_HEADER.size + label_len
    try:
        label = bytes(data[_OPEN_HEADER.size : end]).decode("utf-8")
        protocol = bytes(data[end:]).decode("utf-8")
    except UnicodeDecodeError:
        raise DcepError("label or protocol is not UTF-8") from None
    return DataChannelOpen(channel_type, priority, reliability, label, protocol)
