"""The application's handle on one data channel (the W3C RTCDataChannel shape, Trio-flavoured)."""

from __future__ import annotations

from typing import Protocol

import trio


class ChannelTransport(Protocol):
    """What a channel needs of its peer (``peer.PeerConnection``): named here, so this module
    does not import the one that builds on it (issue 16: no import cycle)."""

    def _channel_send(self, channel_id: int, data: str | bytes) -> None: ...
    def _channel_close(self, channel_id: int) -> None: ...
    def _channel_buffered(self, channel_id: int) -> int: ...
    async def _buffer_changed(self) -> None: ...


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
        pc: ChannelTransport,
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

