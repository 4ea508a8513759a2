"""Sender/Receiver Reports, SDES and BYE (RFC 3550 §6.4-6.6), plus NTP time helpers."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp._common import (
    PT_BYE,
    PT_RR,
    PT_SDES,
    PT_SR,
    U32,
    check_ssrc,
    pack_packet,
    truncated,
)

_BLOCK: Final = struct.Struct("!IIIIII")
_SENDER_INFO: Final = struct.Struct("!IIIII")

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970), RFC 868.
NTP_UNIX_OFFSET: Final = 2208988800

SDES_CNAME: Final = 1


def ntp_time(unix_seconds: float) -> tuple[int, int]:
    """64-bit NTP timestamp ``(msw, lsw)`` for a Unix time (RFC 3550 §4).

    The caller passes the wall clock in, keeping this core free of clock reads.
    """
    whole = int(unix_seconds // 1)
    frac = unix_seconds - whole
    lsw = int(frac * (1 << 32))
    if lsw > 0xFFFFFFFF:  # float rounding right below a whole second
        lsw = 0xFFFFFFFF
    return (whole + NTP_UNIX_OFFSET) & 0xFFFFFFFF, lsw


def compact_ntp(msw: int, lsw: int) -> int:
    """Middle 32 bits of an NTP timestamp: the LSR format of report blocks (RFC 3550 §6.4.1)."""
    return ((msw & 0xFFFF) << 16) | (lsw >> 16)


def seconds_to_compact(seconds: float) -> int:
    """A duration in units of 1/65536 s, the DLSR format (RFC 3550 §6.4.1)."""
    return max(0, min(0xFFFFFFFF, round(seconds * 65536)))


def round_trip_time(arrival_compact: int, lsr: int, dlsr: int) -> float | None:
    """RTT in seconds from a report block: A - LSR - DLSR (RFC 3550 §6.4.1, Figure 2).

    ``arrival_compact`` is :func:`compact_ntp` of the time the report arrived. None when the
    block carries no LSR yet (0) or the result would be negative (clock trouble).
    """
    if lsr == 0:
        return None
    rtt = (arrival_compact - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return None
    return rtt / 65536


@dataclass(slots=True)
class ReportBlock:
    """Reception statistics for one source (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0  # cumulative, signed 24-bit
    highest_sequence: int = 0  # extended highest sequence number received
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def serialize(self) -> bytes:
        check_ssrc(self.ssrc)
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError("fraction lost is 8 bits")
        # RFC 3550 §6.4.1: the cumulative count saturates rather than wrapping.
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc,
            (self.fraction_lost << 24) | lost,
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


def _parse_blocks(body: bytes, offset: int, count: int, what: str) -> list[ReportBlock]:
    if len(body) < offset + 24 * count:
        raise truncated(f"{what} with {count} report blocks")
    return [ReportBlock.parse(body, offset + 24 * i) for i in range(count)]


def _check_blocks(reports: list[ReportBlock]) -> None:
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks per packet")


@dataclass(slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1). ``extension`` keeps profile-specific trailing data verbatim."""

    ssrc: int
    ntp_msw: int = 0
    ntp_lsw: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    def serialize(self) -> bytes:
        check_ssrc(self.ssrc)
        _check_blocks(self.reports)
        body = U32.pack(self.ssrc) + _SENDER_INFO.pack(
            self.ntp_msw & 0xFFFFFFFF,
            self.ntp_lsw & 0xFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        body += b"".join(r.serialize() for r in self.reports) + self.extension
        return pack_packet(PT_SR, len(self.reports), body)

    @property
    def compact_ntp(self) -> int:
        """This SR's timestamp as a receiver will echo it in LSR."""
        return compact_ntp(self.ntp_msw, self.ntp_lsw)

    @classmethod
    def parse(cls, count: int, body: bytes) -> SenderReport:
        if len(body) < 24:
            raise truncated("sender report")
        ssrc = U32.unpack_from(body, 0)[0]
        msw, lsw, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body, 4)
        reports = _parse_blocks(body, 24, count, "sender report")
        return cls(ssrc, msw, lsw, rtp_ts, packets, octets, reports, bytes(body[24 + 24 * count :]))


@dataclass(slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2). ``extension`` keeps profile-specific trailing data verbatim."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    def serialize(self) -> bytes:
        check_ssrc(self.ssrc)
        _check_blocks(self.reports)
        body = U32.pack(self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return pack_packet(PT_RR, len(self.reports), body + self.extension)

    @classmethod
    def parse(cls, count: int, body: bytes) -> ReceiverReport:
        if len(body) < 4:
            raise truncated("receiver report")
        reports = _parse_blocks(body, 4, count, "receiver report")
        return cls(U32.unpack_from(body, 0)[0], reports, bytes(body[4 + 24 * count :]))


@dataclass(slots=True)
class SdesChunk:
    """One source's SDES items as ``(type, value)`` pairs (RFC 3550 §6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        """The CNAME item (RFC 3550 §6.5.1), decoded leniently; None if absent."""
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class Sdes:
    """SDES (RFC 3550 §6.5)."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def cname_for(cls, ssrc: int, cname: str) -> Sdes:
        """The common case: one chunk carrying one CNAME."""
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])])

    def serialize(self) -> bytes:
        if len(self.chunks) > 31:
            raise ValueError("at most 31 SDES chunks per packet")
        body = bytearray()
        for chunk in self.chunks:
            check_ssrc(chunk.ssrc)
            body += U32.pack(chunk.ssrc)
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise ValueError("SDES item type must be 1..255 and its value ≤ 255 bytes")
                body.append(kind)
                body.append(len(value))
                body += value
            # RFC 3550 §6.5: one null octet ends the list, more pad to the next 32-bit word.
            body += bytes(4 - len(body) % 4)
        return pack_packet(PT_SDES, len(self.chunks), bytes(body))

    @classmethod
    def parse(cls, count: int, body: bytes) -> Sdes:
        chunks = []
        pos = 0
        n = len(body)
        for _ in range(count):
            if pos + 4 > n:
                raise truncated("SDES chunk")
            chunk = SdesChunk(U32.unpack_from(body, pos)[0])
            pos += 4
            while True:
                if pos >= n:
                    raise RtcpError("SDES chunk has no terminating null item")
                kind = body[pos]
                if kind == 0:
                    pos = (pos + 4) & ~3  # skip the null octet and the padding after it
                    break
                if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                    raise truncated("SDES item")
                length = body[pos + 1]
                chunk.items.append((kind, bytes(body[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            chunks.append(chunk)
        return cls(chunks)


@dataclass(slots=True)
class Bye:
    """BYE (RFC 3550 §6.6) with an optional reason (raw bytes; UTF-8 by the RFC)."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes | None = None

    def serialize(self) -> bytes:
        if len(self.ssrcs) > 31:
            raise ValueError("at most 31 SSRCs per BYE")
        for ssrc in self.ssrcs:
            check_ssrc(ssrc)
        body = b"".join(U32.pack(s) for s in self.ssrcs)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError("BYE reason is at most 255 bytes")
            reason = bytes((len(self.reason),)) + self.reason
            body += reason + bytes(-len(reason) % 4)
        return pack_packet(PT_BYE, len(self.ssrcs), body)

    @classmethod
    def parse(cls, count: int, body: bytes) -> Bye:
        end = 4 * count
        if len(body) < end:
            raise truncated(f"BYE with {count} SSRCs")
        ssrcs = list(struct.unpack_from(f"!{count}I", body, 0))
        reason = None
        if len(body) > end:
            length = body[end]
            if end + 1 + length > len(body):
                raise truncated("BYE reason")
            reason = bytes(body[end + 1 : end + 1 + length])
        return cls(ssrcs, reason)
