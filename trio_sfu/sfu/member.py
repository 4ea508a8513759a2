"""What publishers and subscribers share: a peer connection, an id, a control channel."""

from __future__ import annotations

import logging
from typing import ClassVar

import trio

from trio_sfu.rtc import events as ev
from trio_sfu.rtc.datachannel import DataChannel
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.limits import TokenBucket
from trio_sfu.sfu.model import ROLE_NAMES, Role
from trio_sfu.sfu.node_stats import Buckets

log = logging.getLogger(__name__)

#: Room above the send-buffer cap for control messages (PUB_JOIN, SDP_OFFER, ERROR): chat is
#: dropped at the cap, but what keeps the session correct still goes out until this much more.
CONTROL_HEADROOM = 256 * 1024


class Member:
    """One connection of a room (the seed's unique id: user + "-" + a per-connection suffix).

    The first data channel the client opens is the control channel (README, "Protocol");
    :meth:`serve` runs inside the peer's nursery and dispatches its commands.
    """

    #: set by each member type; :attr:`role_name` is its word in logs and metrics
    role: ClassVar[Role]

    def __init__(
        self, room: RoomContext, connection_id: str, pc: ServerPeerConnection
    ) -> None:
        self.room = room
        self.id = connection_id
        self.user = dc_protocol.user_of(connection_id)
        self.pc = pc
        self.control: DataChannel | None = None
        #: set once the SFU took it out of its room (cleanup runs once, whoever asks first)
        self.removed = False
        #: the client address while the session is still connecting (admission control)
        self.connecting_from: str | None = None
        self.limits = room.limits
        self._chat = TokenBucket(
            self.limits.chat_rate, self.limits.chat_burst, trio.current_time()
        )
        #: since when chat to this member is being dropped (its send buffer is at the cap)
        self._stalled_since: float | None = None
        self.chat_dropped = 0
        self.log_extra = {"room": room.name, "peer": connection_id, "role": self.role_name}
        pc.log_extra = self.log_extra  # one vocabulary in the rtc layer's lines too
        #: when the join was accepted (session duration, in ``left`` logs and /metrics)
        self.started = trio.current_time()

    def counters(self) -> dict[str, int]:
        """This connection's totals so far, read from the plain counters the media path
        bumps (never computed per packet): for ``left`` logs and the node's /metrics, which
        adds them to its retired totals when the member leaves."""
        stats = self.pc.stats
        return {
            "rtp_in": stats.rtp_in,
            "rtp_out": stats.rtp_out,
            "rtcp_in": stats.rtcp_in,
            "rtcp_out": stats.rtcp_out,
            "srtp_failures": stats.srtp_rejected + stats.srtcp_rejected,
            "dropped_sends": stats.media_not_sent,
        }

    def leave(self) -> None:
        """Undo what this member is to the room and the cluster (the SFU calls it once, when
        the connection ended, after taking the member out of its room)."""
        raise NotImplementedError

    def reports(self) -> tuple[Buckets, Buckets] | None:
        """The receiver's RTT and loss reports for the node's /metrics (members we send media
        to), or None."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.room.name}/{self.id}>"

    def send(self, text: str) -> bool:
        """Send one command on the control channel; False if it is not open (yet/any more).

        Control messages go out even past the send-buffer cap, up to ``CONTROL_HEADROOM``
        more; a member that far behind is disconnected (docs/security.md).
        """
        channel = self.control
        if channel is None or channel.ready_state != "open":
            return False
        if channel.buffered_amount + len(text) > self.limits.max_send_buffer + CONTROL_HEADROOM:
            self.pc.close("send buffer full")
            return False
        try:
            channel.send(text)
        except RuntimeError:
            return False
        return True

    def send_chat(self, line: str) -> bool:
        """Relay a CHAT line, unless this member's send buffer is at the cap (a
        ``bufferedAmount``-style limit): then the line is dropped and the member told once per
        stall with an ``ERROR``; still stalled after ``send_stall_limit`` seconds it is closed:
        it has stopped reading (or acknowledging), and the room should not keep paying for
        it."""
        channel = self.control
        if channel is None or channel.ready_state != "open":
            return False
        if channel.buffered_amount + len(line) <= self.limits.max_send_buffer:
            self._stalled_since = None
            return self.send(line)
        self.chat_dropped += 1
        now = trio.current_time()
        if self._stalled_since is None:
            self._stalled_since = now
            log.info("chat dropped: send buffer full", extra=self.log_extra)
            self.send(dc_protocol.error("chat to you is being dropped: your connection is behind"))
        elif now - self._stalled_since >= self.limits.send_stall_limit:
            self.pc.close("send buffer full")
        return False

    def send_event(self, line: str) -> bool:
        """Send a line the next one supersedes (``SPEAKER``, ``SPEAKERS``): dropped, silently,
        while this member's send buffer is at the cap — a late one is worth nothing."""
        channel = self.control
        if channel is None or channel.ready_state != "open":
            return False
        if channel.buffered_amount + len(line) > self.limits.max_send_buffer:
            return False
        return self.send(line)

    @property
    def role_name(self) -> str:
        return ROLE_NAMES[self.role]

    async def serve(self) -> None:
        """Handle the peer's control events until it closes (runs in the peer's nursery)."""
        async for event in self.pc.events:
            if isinstance(event, ev.DataChannelMessage):
                if event.channel is self.control:
                    await self.on_command(event.data)
            elif isinstance(event, ev.DataChannelOpen):
                if self.control is None:
                    self.control = event.channel
                    await self.on_control_open()
            elif isinstance(event, ev.Connected):
                await self.on_connected()
            elif isinstance(event, ev.DataChannelClose) and event.channel is self.control:
                self.pc.close("control channel closed")

    async def on_command(self, message: str | bytes) -> None:
        try:
            command = dc_protocol.parse_command(message)
        except dc_protocol.CommandError as exc:
            self.send(dc_protocol.error(str(exc)))
            return
        await self.handle(command)

    async def handle(self, command: dc_protocol.ClientCommand) -> None:
        if isinstance(command, dc_protocol.Stop):
            self.pc.close("stop")
        elif isinstance(command, dc_protocol.ChatCommand):
            wait = self._chat.take(trio.current_time())
            if wait:
                self.send(
                    dc_protocol.error(
                        f"chat rate limit: at most {self.limits.chat_rate:g} per second "
                        f"(bursts of {self.limits.chat_burst}); message dropped"
                    )
                )
                return
            await self.room.chat(self.id, command.text)
        else:
            name = type(command).__name__
            self.send(dc_protocol.error(f"{name} is not allowed on a {self.role_name} connection"))

    async def on_connected(self) -> None:
        log.info("connected", extra=self.log_extra)

    async def on_control_open(self) -> None:
        pass
