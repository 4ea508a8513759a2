"""Sans-IO SCTP over DTLS for WebRTC data channels (RFC 8261, RFC 9260 subset, RFC 3758,
RFC 6525). See :class:`SctpAssociation`."""

from __future__ import annotations

from .association import WEBRTC_TIMERS, SctpAssociation
from .events import Closed, Established, MessageReceived, SctpEvent, SctpState, StreamsReset

__all__ = [
    "WEBRTC_TIMERS",
    "Closed",
    "Established",
    "MessageReceived",
    "SctpAssociation",
    "SctpEvent",
    "SctpState",
    "StreamsReset",
]
