"""WebRTC data channels over one SCTP association (RFC 8831), opened with DCEP (RFC 8832).

:class:`DataChannelEndpoint` owns the :class:`SctpAssociation` and speaks the same five sans-IO
verbs, so a driver treats it exactly like the association: feed packets and timers in, take
packets and events out. Channels map one-to-one onto SCTP streams; closing a channel resets its
stream in both directions, after which the id may be reused.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .dcep import PPID_DCEP, DataChannelAck, DataChannelOpen, parse_dcep
from .errors import DcepError
from .sctp import (
    Closed,
    Established,
    MessageReceived,
    SctpAssociation,
    SctpState,
    StreamsReset,
)

# RFC 8831 §8 payload protocol identifiers.
PPID_STRING = 51
PPID_STRING_PARTIAL = 52  # deprecated; reassembled
PPID_BINARY = 53
PPID_BINARY_PARTIAL = 54  # deprecated; reassembled
PPID_STRING_EMPTY = 56
PPID_BINARY_EMPTY = 57

_MAX_ID = 65534  # stream 65535 is reserved (RFC 8832 §6)


class ChannelState(enum.Enum):
    CONNECTING = "connecting"  # waiting for the association
    OPEN = "open"
    CLOSING = "closing"  # our or the peer's stream reset is under way


@dataclass(slots=True)
class ChannelInfo:
    channel_id: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None  # milliseconds, as in WebRTC
    priority: int
    negotiated: bool
    locally_opened: bool
    state: ChannelState = ChannelState.CONNECTING
    acked: bool = False  # DATA_CHANNEL_ACK seen (or not needed)

    @property
    def reliability(self) -> tuple[str, int | None]:
        if self.max_retransmits is not None:
            return ("max_retransmits", self.max_retransmits)
        if self.max_packet_lifetime is not None:
            return ("max_packet_lifetime", self.max_packet_lifetime)
        return ("reliable", None)


@dataclass(slots=True)
class AssociationEstablished:
    restarted: bool = False


@dataclass(slots=True)
class ChannelOpened:
    channel_id: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None
    priority: int
    negotiated: bool
    locally_opened: bool


@dataclass(slots=True)
class ChannelMessage:
    channel_id: int
    data: str | bytes


@dataclass(slots=True)
class ChannelClosed:
    channel_id: int


@dataclass(slots=True)
class AssociationClosed:
    reason: str
    aborted: bool


DataChannelEvent = (
    AssociationEstablished | ChannelOpened | ChannelMessage | ChannelClosed | AssociationClosed
)


class DataChannelEndpoint:
    def __init__(
        self,
        *,
        is_dtls_client: bool,
        max_message_size: int = 262144,
        remote_max_message_size: int = 65536,
        local_port: int = 5000,
        remote_port: int = 5000,
        mtu: int = 1200,
        rng: Callable[[int], bytes] | None = None,
        **sctp_options: Any,
    ) -> None:
        self.association = SctpAssociation(
            local_port=local_port,
            remote_port=remote_port,
            max_message_size=max_message_size,
            mtu=mtu,
            rng=rng,
            **sctp_options,
        )
        self.association.remote_max_message_size = remote_max_message_size
        self.is_dtls_client = is_dtls_client
        self.max_message_size = max_message_size
        self._channels: dict[int, ChannelInfo] = {}
        self._pending: list[int] = []
        self._partial: dict[int, tuple[int, list[bytes], int]] = {}
        # A list, not a deque: usually empty or one event, and an empty deque costs ~600 B
        # per peer (issue 10, memory per idle peer).
        self._events: list[DataChannelEvent] = []
        self._closed = False
        # counters
        self.dcep_errors = 0
        self.dropped_messages = 0

    @property
    def remote_max_message_size(self) -> int:
        return self.association.remote_max_message_size

    @remote_max_message_size.setter
    def remote_max_message_size(self, value: int) -> None:
        self.association.remote_max_message_size = value

    # --- sans-IO verbs ---------------------------------------------------------------------

    def connect(self, now: float) -> None:
        self.association.connect(now)

    def receive_packet(self, data: bytes, now: float) -> None:
        try:
            self.association.receive_packet(data, now)
        finally:
            self._pump(now)

    def packets_to_send(self, now: float) -> list[bytes]:
        return self.association.packets_to_send(now)

    def get_timer(self) -> float | None:
        return self.association.get_timer()

    def handle_timer(self, now: float) -> None:
        self.association.handle_timer(now)
        self._pump(now)

    def next_event(self) -> DataChannelEvent | None:
        return self._events.pop(0) if self._events else None

    def shutdown(self, now: float) -> None:
        self.association.shutdown(now)
        self._pump(now)

    def abort(self, reason: str = "") -> None:
        self.association.abort(reason)
        self._pump(0.0)

    # --- channels --------------------------------------------------------------------------

    def channel(self, channel_id: int) -> ChannelInfo:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise KeyError(channel_id)
        if ch.state is ChannelState.OPEN and self.association.stream_resetting(channel_id):
            ch.state = ChannelState.CLOSING
        return ch

    @property
    def channels(self) -> list[int]:
        return sorted(self._channels)

    def buffered_amount(self, channel_id: int) -> int:
        return self.association.buffered_amount(channel_id)

    def open_channel(
        self,
        label: str,
        now: float,
        *,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
        negotiated: bool = False,
        id: int | None = None,
        priority: int = 0,
    ) -> int:
        """Open a channel and return its id (the SCTP stream id)."""
        if self._closed:
            raise ValueError("the association is closed")
        # Validates the options and the label/protocol sizes.
        open_msg = DataChannelOpen.for_channel(
            label=label, protocol=protocol, ordered=ordered, max_retransmits=max_retransmits,
            max_packet_lifetime=max_packet_lifetime, priority=priority,
        )
        open_msg.encode()
        if negotiated:
            if id is None or not 0 <= id <= _MAX_ID:
                raise ValueError("a negotiated channel needs an id in 0..65534")
            if id in self._channels or self.association.stream_resetting(id):
                raise ValueError(f"channel id {id} is in use")
            channel_id = id
        else:
            if id is not None:
                raise ValueError("an id can only be chosen for a negotiated channel")
            channel_id = self._allocate_id()
        ch = ChannelInfo(
            channel_id, label, protocol, ordered, max_retransmits, max_packet_lifetime, priority,
            negotiated, locally_opened=True,
        )
        self._channels[channel_id] = ch
        if self.association.state is SctpState.ESTABLISHED:
            self._start(ch, now)
        else:
            self._pending.append(channel_id)
        return channel_id

    def _allocate_id(self) -> int:
        """RFC 8832 §6: the DTLS client takes even stream ids, the DTLS server odd ones."""
        limit = self.association.outbound_streams or _MAX_ID + 1
        cid = 0 if self.is_dtls_client else 1
        while cid < limit and cid <= _MAX_ID:
            if cid not in self._channels and not self.association.stream_resetting(cid):
                return cid
            cid += 2
        raise ValueError("no free stream id")

    def _start(self, ch: ChannelInfo, now: float) -> None:
        if not ch.negotiated:
            open_msg = DataChannelOpen.for_channel(
                label=ch.label, protocol=ch.protocol, ordered=ch.ordered,
                max_retransmits=ch.max_retransmits, max_packet_lifetime=ch.max_packet_lifetime,
                priority=ch.priority,
            )
            # RFC 8832 §6: the OPEN goes ordered and reliable on the channel's own stream.
            self.association.send(ch.channel_id, PPID_DCEP, open_msg.encode(), now)
        else:
            ch.acked = True
        ch.state = ChannelState.OPEN
        self._opened(ch)

    def _opened(self, ch: ChannelInfo) -> None:
        self._events.append(
            ChannelOpened(
                ch.channel_id, ch.label, ch.protocol, ch.ordered, ch.max_retransmits,
                ch.max_packet_lifetime, ch.priority, ch.negotiated, ch.locally_opened,
            )
        )

    def send(self, channel_id: int, data: str | bytes, now: float) -> None:
        ch = self._channels.get(channel_id)
        if ch is None or self.channel(channel_id).state is not ChannelState.OPEN:
            raise ValueError(f"channel {channel_id} is not open")
        if isinstance(data, str):
            payload = data.encode("utf-8")
            ppid = PPID_STRING if payload else PPID_STRING_EMPTY
        else:
            payload = bytes(data)
            ppid = PPID_BINARY if payload else PPID_BINARY_EMPTY
        if not payload:
            payload = b"\x00"  # RFC 8831 §6.6: an empty message travels as one zero byte
        lifetime = ch.max_packet_lifetime
        self.association.send(
            channel_id, ppid, payload, now,
            # RFC 8832 §6: ordered until the peer's ACK shows it knows the channel.
            ordered=ch.ordered or not ch.acked,
            max_retransmits=ch.max_retransmits,
            max_lifetime=None if lifetime is None else lifetime / 1000.0,
        )

    def close_channel(self, channel_id: int, now: float) -> None:
        """Close by resetting the channel's stream (RFC 8831 §6.7); ChannelClosed follows."""
        ch = self._channels.get(channel_id)
        if ch is None or ch.state is ChannelState.CLOSING:
            return
        if ch.state is ChannelState.CONNECTING:
            self._pending.remove(channel_id)
            self._drop(channel_id)
            return
        ch.state = ChannelState.CLOSING
        if self.association.stream_resetting(channel_id):
            return  # the peer started closing; our reset is already queued
        try:
            self.association.reset_streams([channel_id], now)
        except ValueError:
            self._drop(channel_id)  # the association is going away; close locally

    def _drop(self, channel_id: int) -> None:
        if self._channels.pop(channel_id, None) is not None:
            self._partial.pop(channel_id, None)
            self._events.append(ChannelClosed(channel_id))

    # --- association events ----------------------------------------------------------------

    def _pump(self, now: float) -> None:
        assoc = self.association
        while (ev := assoc.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._on_message(ev, now)
            elif isinstance(ev, Established):
                self._events.append(AssociationEstablished(ev.restarted))
                pending, self._pending = self._pending, []
                for cid in pending:
                    ch = self._channels.get(cid)
                    if ch is not None:
                        self._start(ch, now)
            elif isinstance(ev, StreamsReset):
                for sid in ev.stream_ids:
                    self._drop(sid)
            elif isinstance(ev, Closed):
                self._closed = True
                for cid in sorted(self._channels):
                    self._drop(cid)
                self._pending = []
                self._events.append(AssociationClosed(ev.reason, ev.aborted))

    def _on_message(self, ev: MessageReceived, now: float) -> None:
        sid, ppid, data = ev.stream_id, ev.ppid, ev.data
        if ppid == PPID_DCEP:
            self._on_dcep(sid, data, now)
            return
        ch = self._channels.get(sid)
        if ch is None:
            self.dropped_messages += 1
            return
        # Any user message on the stream proves the peer processed our OPEN: an implicit ACK
        # (as Chromium treats it), so unordered sending may start.
        ch.acked = True
        if ppid in (PPID_STRING_PARTIAL, PPID_BINARY_PARTIAL):
            kind, parts, size = self._partial.get(sid, (ppid, [], 0))
            size += len(data)
            if kind != ppid or size > self.max_message_size:
                self._partial.pop(sid, None)
                self.dropped_messages += 1
                return
            parts.append(data)
            self._partial[sid] = (kind, parts, size)
            return
        if sid in self._partial:
            kind, parts, _ = self._partial.pop(sid)
            if (kind, ppid) not in ((PPID_STRING_PARTIAL, PPID_STRING),
                                    (PPID_BINARY_PARTIAL, PPID_BINARY)):
                self.dropped_messages += 1
                return
            data = b"".join([*parts, data])
        message: str | bytes
        if ppid == PPID_STRING:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                self.dropped_messages += 1
                return
        elif ppid == PPID_BINARY:
            message = data
        elif ppid == PPID_STRING_EMPTY:
            message = ""
        elif ppid == PPID_BINARY_EMPTY:
            message = b""
        else:
            self.dropped_messages += 1
            return
        self._events.append(ChannelMessage(sid, message))

    def _on_dcep(self, sid: int, data: bytes, now: float) -> None:
        try:
            msg = parse_dcep(data)
        except DcepError:
            self.dcep_errors += 1
            return
        if isinstance(msg, DataChannelAck):
            ch = self._channels.get(sid)
            if ch is not None:
                ch.acked = True
            return
        if sid in self._channels or sid > _MAX_ID:
            self.dcep_errors += 1  # an OPEN for a stream already in use
            return
        ch = ChannelInfo(
            sid, msg.label, msg.protocol, msg.ordered, msg.max_retransmits,
            msg.max_packet_lifetime, msg.priority, negotiated=False, locally_opened=False,
            state=ChannelState.OPEN, acked=True,
        )
        self._channels[sid] = ch
        # If the association is shutting down the ACK cannot go; the channel closes with it.
        with contextlib.suppress(ValueError):
            self.association.send(sid, PPID_DCEP, DataChannelAck().encode(), now)
        self._opened(ch)
