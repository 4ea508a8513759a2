"""RTCP (RFC 3550 §6) and the feedback an SFU needs: RFC 4585/5104, REMB, transport-cc.

:func:`parse_rtcp` accepts a compound packet or a single reduced-size one (RFC 5506) and turns
each packet into a dataclass; types we do not interpret survive as :class:`UnknownRtcp` so they
can be counted or relayed. Any malformed input raises :class:`RtcpError` and nothing else.
"""

from __future__ import annotations

import dataclasses

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
from trio_sfu.proto.rtcp.compound import (
    FeedbackPacket,
    RtcpPacket,
    parse_rtcp,
    serialize_compound,
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
