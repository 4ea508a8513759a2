"""A peer's data-channel handles by stream id (a module of its own: it names both the handles
and the events about them, which name the handles; issue 16's no import cycle)."""

from __future__ import annotations

from trio_sfu.proto.datachannel import ChannelClosed, ChannelMessage, ChannelOpened
from trio_sfu.rtc.datachannel import ChannelTransport, DataChannel
from trio_sfu.rtc.events import DataChannelClose, DataChannelMessage, DataChannelOpen, PeerEvent


class ChannelTable:
    """One peer's channel handles by stream id: the core's channel events (which know only
    ids) become the application's events about these handles."""

    __slots__ = ("_by_id", "_pc")

    def __init__(self, pc: ChannelTransport) -> None:
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
