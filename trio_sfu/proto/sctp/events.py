"""What an :class:`~trio_sfu.proto.sctp.SctpAssociation` reports through ``next_event()``."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SctpState(enum.Enum):
    """RFC 9260 §4 states. CLOSED is both "listening" and "finished"; see ``closed``."""

    CLOSED = "closed"
    COOKIE_WAIT = "cookie-wait"
    COOKIE_ECHOED = "cookie-echoed"
    ESTABLISHED = "established"
    SHUTDOWN_PENDING = "shutdown-pending"
    SHUTDOWN_SENT = "shutdown-sent"
    SHUTDOWN_RECEIVED = "shutdown-received"
    SHUTDOWN_ACK_SENT = "shutdown-ack-sent"


@dataclass(slots=True)
class Established:
    """The association is up; ``restarted`` when the peer restarted it (RFC 9260 §5.2.4 A)."""

    restarted: bool = False


@dataclass(slots=True)
class MessageReceived:
    stream_id: int
    ppid: int
    data: bytes


@dataclass(slots=True)
class StreamsReset:
    """Both directions of these streams were reset; their ids may be used again."""

    stream_ids: tuple[int, ...]


@dataclass(slots=True)
class Closed:
    reason: str
    aborted: bool


SctpEvent = Established | MessageReceived | StreamsReset | Closed
