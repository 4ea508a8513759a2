"""What a PeerConnection tells the layer above it, outside the media hot path.

Control events travel through a memory channel (``PeerConnection.events``) so the SFU can
handle them in ordinary async code inside the peer's nursery; RTP and RTCP do not — they are
direct callbacks (see :class:`~trio_sfu.rtc.peer.PeerConnection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_sfu.proto.jsep import Transceiver
    from trio_sfu.rtc.datachannel import DataChannel


@dataclass(slots=True, frozen=True)
class Connected:
    """DTLS is up and SRTP keys are installed: media can flow both ways."""


@dataclass(slots=True, frozen=True)
class DataChannelOpen:
    channel: DataChannel


@dataclass(slots=True, frozen=True)
class DataChannelMessage:
    channel: DataChannel
    data: str | bytes


@dataclass(slots=True, frozen=True)
class DataChannelClose:
    channel: DataChannel


@dataclass(slots=True, frozen=True)
class Closed:
    """The last event: the peer is gone and every one of its tasks has ended or is ending."""

    reason: str


PeerEvent = Connected | DataChannelOpen | DataChannelMessage | DataChannelClose | Closed


@dataclass(slots=True, eq=False)
class IncomingStream:
    """One remote SSRC, learned from the SDP or from the first packet's MID/RID extensions.

    The SFU hangs its own routing object on :attr:`sink` so the hot path costs one dict lookup
    per packet (SSRC → stream) and nothing more.
    """

    ssrc: int
    transceiver: Transceiver
    rid: str | None = None
    #: the media SSRC this stream repairs (RFC 4588 RTX), when known from the SDP
    repairs: int | None = None
    packets: int = 0
    octets: int = 0
    sink: Any = field(default=None)
