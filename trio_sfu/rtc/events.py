"""What a PeerConnection tells the layer above it, outside the media hot path.

Control events travel through a memory channel (``PeerConnection.events``) so the SFU can
handle them in ordinary async code inside the peer's nursery; RTP and RTCP do not — they are
direct callbacks (see :class:`~trio_sfu.rtc.peer.PeerConnection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trio_sfu.proto.peer import IncomingStream

if TYPE_CHECKING:
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


__all__ = [
    "Closed", "Connected", "DataChannelClose", "DataChannelMessage", "DataChannelOpen",
    "IncomingStream", "PeerEvent",
]

PeerEvent = Connected | DataChannelOpen | DataChannelMessage | DataChannelClose | Closed
