"""The application's handle on one data channel (the W3C RTCDataChannel shape, Trio-flavoured)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from trio_sfu.proto.datachannel import ChannelClosed, ChannelMessage, ChannelOpened
from trio_sfu.rtc.events import DataChannelClose, DataChannelMessage, DataChannelOpen, PeerEvent

if TYPE_CHECKING:
    from trio_sfu.rtc.peer import PeerConnection


class DataChannel:
    """A channel of one peer; ``send`` is synchronous and never blocks.

    Backpressure is explicit, as in browsers: a bulk sender awaits
    :meth:`wait_buffered_amount_below` between sends. ``id`` is None until the DTLS role is
    known (it fixes the stream id parity, RFC 8832 §6).
    """

    __slots__ = (
        "_pc",
        "id",
        "label",
        "max_packet_lifetime",
        "max_retransmits",
        "negotiated",
        "ordered",
        "protocol",
        "ready_state",
    )

    def __init__(
        self,
        pc: PeerConnection,
        label: str,
        *,
        id: int | None = None,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
        negotiated: bool = False,
    ) -> None:
        self._pc = pc
        self.id = id
        self.label = label
        self.protocol = protocol
        self.ordered = ordered
        self.max_retransmits = max_retransmits
        self.max_packet_lifetime = max_packet_lifetime
        self.negotiated = negotiated
        self.ready_state = "connecting"

    def __repr__(self) -> str:
        return f"<DataChannel {self.id} {self.label!r} {self.ready_state}>"

    def send(self, data: str | bytes) -> None:
        """Queue one message (str → UTF-8 text, bytes → binary, RFC 8831 §6.6)."""
        if self.ready_state != "open" or self.id is None:
            raise RuntimeError(f"data channel {self.label!r} is {self.ready_state}")
        self._pc._channel_send(self.id, data)

    def close(self) -> None:
        """Reset the stream (RFC 8831 §6.7); both sides then see the channel close."""
        if self.ready_state in ("closing", "closed"):
            return
        self.ready_state = "closing"
        if self.id is not None:
            self._pc._channel_close(self.id)

    @property
    def buffered_amount(self) -> int:
        if self.id is None:
            return 0
        return self._pc._channel_buffered(self.id)

    async def wait_buffered_amount_below(self, threshold: int) -> None:
        """Return once fewer than ``threshold`` bytes wait to be sent (W3C bufferedAmount)."""
        while self.buffered_amount >= threshold and self.ready_state == "open":
            await self._pc._buffer_changed()
        await trio.lowlevel.checkpoint()


class ChannelTable:
    """One peer's channel handles by stream id: the core's channel events (which know only
    ids) become the application's events about these handles."""

    __slots__ = ("_by_id", "_pc")

    def __init__(self, pc: PeerConnection) -> None:
        self._pc = pc
        self._by_id: dict[int, DataChannel] = {}

    def add(self, channel: DataChannel) -> None:
        assert channel.id is not None
        self._by_id[channel.id] = channel

    def values(self) -> list[DataChannel]:
        return list(self._by_id.values())

    def close_all(self, *, forget: bool = False) -> None:
        for channel in self._by_id.values():
            channel.ready_state = "closed"
        if forget:
            self._by_id.clear()

    def event(self, event: ChannelOpened | ChannelMessage | ChannelClosed) -> PeerEvent | None:
        """The application's event for one of the core's (None: a channel it never had)."""
        if isinstance(event, ChannelMessage):
            channel = self._by_id.get(event.channel_id)
            return DataChannelMessage(channel, event.data) if channel is not None else None
        if isinstance(event, ChannelOpened):
            channel = self._by_id.get(event.channel_id)
            if channel is None:  # opened by the remote side (DCEP, RFC 8832 §5.1)
                channel = self._by_id[event.channel_id] = DataChannel(
                    self._pc, event.label, id=event.channel_id, protocol=event.protocol,
                    ordered=event.ordered, max_retransmits=event.max_retransmits,
                    max_packet_lifetime=event.max_packet_lifetime, negotiated=event.negotiated,
                )
            channel.ready_state = "open"
            return DataChannelOpen(channel)
        channel = self._by_id.pop(event.channel_id, None)
        if channel is None:
            return None
        channel.ready_state = "closed"
        return DataChannelClose(channel)
