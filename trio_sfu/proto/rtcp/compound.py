"""A compound RTCP datagram (RFC 3550 §6.1) into its packets and back.

Apart from the package's ``__init__`` so that it can be compiled with mypyc
(``trio_sfu/compiled.py``): every RTCP datagram a pod takes in (a browser subscriber's
transport-cc feedback ten times a second, its reports) runs this loop, interpreted before
(issue 10). The package re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Iterable

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp._common import (
    PT_BYE,
    PT_PSFB,
    PT_RR,
    PT_RTPFB,
    PT_SDES,
    PT_SR,
    UnknownRtcp,
)
from trio_sfu.proto.rtcp.feedback import FMT_AFB, FMT_FIR, FMT_NACK, FMT_PLI, Fir, Nack, Pli, Remb
from trio_sfu.proto.rtcp.reports import Bye, ReceiverReport, Sdes, SenderReport
from trio_sfu.proto.rtcp.transport_cc import FMT_TWCC, TransportCcFeedback

__all__ = ["FeedbackPacket", "RtcpPacket", "parse_rtcp", "serialize_compound"]

RtcpPacket = (
    SenderReport
    | ReceiverReport
    | Sdes
    | Bye
    | Pli
    | Fir
    | Nack
    | Remb
    | TransportCcFeedback
    | UnknownRtcp
)

FeedbackPacket = Pli | Fir | Nack | Remb | TransportCcFeedback


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == PT_SR:
        return SenderReport.parse(count, body)
    if packet_type == PT_RR:
        return ReceiverReport.parse(count, body)
    if packet_type == PT_SDES:
        return Sdes.parse(count, body)
    if packet_type == PT_BYE:
        return Bye.parse(count, body)
    if packet_type in (PT_RTPFB, PT_PSFB):
        # RFC 4585 §6.1: every feedback message starts with sender and media SSRC.
        if len(body) < 8:
            raise RtcpError("feedback message shorter than its two SSRCs")
        if packet_type == PT_RTPFB:
            if count == FMT_NACK:
                return Nack.parse(body)
            if count == FMT_TWCC:
                return TransportCcFeedback.parse(body)
        else:
            if count == FMT_PLI:
                return Pli.parse(body)
            if count == FMT_FIR:
                return Fir.parse(body)
            if count == FMT_AFB and body[8:12] == b"REMB":
                return Remb.parse(body)
    return UnknownRtcp(packet_type, count, body)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1) or one reduced-size packet (RFC 5506).

    The first-packet-must-be-a-report rule of RFC 3550 §6.1 is not enforced because RFC 5506
    lifts it for reduced-size RTCP, which browsers negotiate (a=rtcp-rsize).
    """
    data = bytes(data)
    n = len(data)
    if n < 4:
        raise RtcpError(f"RTCP packet of {n} bytes is shorter than its 4-byte header")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise RtcpError("trailing bytes after the last RTCP packet")
        b0 = data[pos]
        packet_type = data[pos + 1]
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        if not 192 <= packet_type <= 223:
            # RFC 5761 §4: outside this range the datagram is RTP, not RTCP.
            raise RtcpError(f"packet type {packet_type} is not RTCP")
        end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        if end > n:
            raise RtcpError("RTCP length field runs past the end of the datagram")
        body = data[pos + 4 : end]
        if b0 & 0x20:
            # RFC 3550 §6.4.1: the last octet counts the padding, itself included.
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):
                raise RtcpError(f"RTCP padding count {pad} is invalid for {len(body)} bytes")
            body = body[:-pad]
        packets.append(_parse_one(packet_type, b0 & 0x1F, body))
        pos = end
    return packets


def serialize_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound datagram (RFC 3550 §6.1)."""
    return b"".join(p.serialize() for p in packets)
