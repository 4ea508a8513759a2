"""RTCP (RFC 3550 §6) and the feedback an SFU needs: RFC 4585/5104, REMB, transport-cc.

:func:`parse_rtcp` accepts a compound packet or a single reduced-size one (RFC 5506) and turns
each packet into a dataclass; types we do not interpret survive as :class:`UnknownRtcp` so they
can be counted or relayed. Any malformed input raises :class:`RtcpError` and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp._common import (
    PT_APP,
    PT_BYE,
    PT_PSFB,
    PT_RR,
    PT_RTPFB,
    PT_SDES,
    PT_SR,
    UnknownRtcp,
)
from trio_sfu.proto.rtcp.feedback import (
    FMT_AFB,
    FMT_FIR,
    FMT_NACK,
    FMT_PLI,
    REMB_MAX_BITRATE,
    Fir,
    FirEntry,
    Nack,
    Pli,
    Remb,
)
from trio_sfu.proto.rtcp.reports import (
    NTP_UNIX_OFFSET,
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReportBlock,
    Sdes,
    SdesChunk,
    SenderReport,
    compact_ntp,
    ntp_time,
    round_trip_time,
    seconds_to_compact,
)
from trio_sfu.proto.rtcp.transport_cc import FMT_TWCC, PacketStatus, TransportCcFeedback

__all__ = [
    "FMT_AFB",
    "FMT_FIR",
    "FMT_NACK",
    "FMT_PLI",
    "FMT_TWCC",
    "NTP_UNIX_OFFSET",
    "PT_APP",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "REMB_MAX_BITRATE",
    "SDES_CNAME",
    "Bye",
    "FeedbackPacket",
    "Fir",
    "FirEntry",
    "Nack",
    "PacketStatus",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "TransportCcFeedback",
    "UnknownRtcp",
    "compact_ntp",
    "ntp_time",
    "parse_rtcp",
    "retarget_feedback",
    "round_trip_time",
    "seconds_to_compact",
    "serialize_compound",
]

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


def retarget_feedback(
    packet: FeedbackPacket, *, sender_ssrc: int, media_ssrc: int
) -> FeedbackPacket:
    """Readdress a subscriber's feedback to the publisher's stream.

    A subscriber names the SFU's outgoing SSRC; the publisher only knows its own. The copy
    carries the SFU's ``sender_ssrc`` and the publisher's ``media_ssrc`` wherever the message
    names the media source: the header for PLI/NACK/transport-cc, the FCI entries for FIR
    (RFC 5104 §4.3.1.2), the SSRC list for REMB. NACK sequence numbers are not translated;
    see :meth:`RtpRewriter.to_input_sequence`.
    """
    if isinstance(packet, Fir):
        entries = [FirEntry(media_ssrc, e.sequence) for e in packet.entries]
        return dataclasses.replace(packet, sender_ssrc=sender_ssrc, entries=entries)
    if isinstance(packet, Remb):
        return dataclasses.replace(packet, sender_ssrc=sender_ssrc, ssrcs=[media_ssrc])
    return dataclasses.replace(packet, sender_ssrc=sender_ssrc, media_ssrc=media_ssrc)
