"""RTP (RFC 3550 §5, RFC 8285 header extensions) for trio-sfu.

:mod:`.packet` parses and builds whole packets and offers the allocation-free readers the
UDP path routes on; :mod:`.rewriter` rewrites a publisher's packets for one subscriber.
"""

from __future__ import annotations

from trio_sfu.proto.rtp.audio_level import audio_level, loudness, packet_loudness
from trio_sfu.proto.rtp.packet import (
    ONE_BYTE_PROFILE,
    TWO_BYTE_PROFILE,
    RtpPacket,
    SequenceUnwrapper,
    find_extension,
    is_rtcp,
    parse_rtp,
    payload_offset,
    payload_size,
    read_header,
    rtp_marker,
    rtp_payload_type,
    rtp_sequence,
    rtp_ssrc,
    rtp_timestamp,
    seq_delta,
)
from trio_sfu.proto.rtp.rewriter import RtpRewriter, TransportCcSequencer
from trio_sfu.proto.rtp.rid import rid_value

__all__ = [
    "ONE_BYTE_PROFILE",
    "TWO_BYTE_PROFILE",
    "RtpPacket",
    "RtpRewriter",
    "SequenceUnwrapper",
    "TransportCcSequencer",
    "audio_level",
    "find_extension",
    "is_rtcp",
    "loudness",
    "packet_loudness",
    "parse_rtp",
    "payload_offset",
    "payload_size",
    "read_header",
    "rid_value",
    "rtp_marker",
    "rtp_payload_type",
    "rtp_sequence",
    "rtp_ssrc",
    "rtp_timestamp",
    "seq_delta",
]
