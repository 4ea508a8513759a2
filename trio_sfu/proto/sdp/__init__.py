"""SDP for WebRTC: a typed model, a parser that raises only SdpError, and a serializer.

RFC 8866 (SDP) with the attributes WebRTC uses: RFC 8839 (ICE), RFC 8842 (DTLS), RFC 8843
(BUNDLE), RFC 8841 (SCTP), RFC 8853 (simulcast), RFC 8851 (rid), RFC 8285 (extmap), RFC 5576
(ssrc). Offer/answer logic lives in :mod:`trio_sfu.proto.jsep`.
"""

from __future__ import annotations

from .model import (
    DIRECTIONS,
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    Group,
    HeaderExtension,
    IceCandidate,
    MediaSection,
    MsidSemantic,
    Origin,
    Rid,
    RtpCodec,
    SessionDescription,
    Simulcast,
    SimulcastRid,
    SsrcAttribute,
    SsrcGroup,
    Timing,
    parse_parameters,
    reverse_direction,
)
from .parser import MAX_MEDIA_SECTIONS, MAX_SDP_LENGTH, parse

__all__ = [
    "DIRECTIONS",
    "MAX_MEDIA_SECTIONS",
    "MAX_SDP_LENGTH",
    "Attribute",
    "Bandwidth",
    "Connection",
    "Direction",
    "Group",
    "HeaderExtension",
    "IceCandidate",
    "MediaSection",
    "MsidSemantic",
    "Origin",
    "Rid",
    "RtpCodec",
    "SessionDescription",
    "Simulcast",
    "SimulcastRid",
    "SsrcAttribute",
    "SsrcGroup",
    "Timing",
    "parse",
    "parse_parameters",
    "reverse_direction",
]
