"""One WebRTC peer connection on Trio: the Trio driver of the sans-IO :class:`PeerCore`.

Everything about sequencing — pump order, close order, SSRC learning, consent and path moves —
lives in :mod:`trio_sfu.proto.peer` and is tested there without Trio. This module only feeds the
core (datagrams, the timer, the application's calls), sends what it queues to the path each
datagram names, and turns its events into :attr:`PeerConnection.events` and data channels.

Lifetime: :meth:`PeerConnection.run` opens the peer's nursery and returns only when the peer is
finished — remote close (DTLS close_notify or alert), SCTP ABORT, consent timeout, a local
:meth:`close`, or cancellation from above (server shutdown). Every task of the peer lives in that
nursery, including the ones the SFU starts with :meth:`start_soon`, so leaving ends them all.

Media is a direct call both ways (DESIGN.md, hot path): the endpoint's reader calls
:meth:`datagram_received`, the core unprotects and calls ``on_rtp``/``on_rtcp`` right there;
``send_rtp``/``send_rtcp`` (and a server's ``send_rtp_as``) protect and send synchronously.
Subclasses supply the socket and, for a full agent, the ICE hooks:
:class:`~trio_sfu.rtc.server.ServerPeerConnection` (ICE-lite on the shared endpoints) and
:class:`~trio_sfu.client.peer.ClientPeerConnection`.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from aioice import Candidate

from trio_sfu.proto import peer as core_mod
from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.ice import IceLiteAgent
from trio_sfu.proto.jsep import JsepSession, LocalTransport, RemoteChanges, Transceiver
from trio_sfu.proto.peer import PeerCore
from trio_sfu.proto.peer.core import ChannelSpec
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.channels import ChannelTable
from trio_sfu.rtc.datachannel import DataChannel
from trio_sfu.rtc.demux import Kind

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: A peer whose application stops reading events is closed rather than buffering forever.
MAX_EVENT_BACKLOG = 10_000


def random_ice_credentials() -> tuple[str, str]:
    """RFC 8839 §5.4: ufrag ≥ 24 bits and pwd ≥ 128 bits of randomness, ice-chars only."""
    return secrets.token_hex(4), secrets.token_hex(16)


def _core_field(name: str) -> Any:
    """A property reading and writing the core's attribute ``name`` (kept so the layers above
    see the attributes they always have)."""

    def get(self: PeerConnection) -> Any:
        return getattr(self._core, name)

    def set_(self: PeerConnection, value: Any) -> None:
        setattr(self._core, name, value)

    return property(get, set_)


class _Hooks:
    """A full agent's ICE, as the core asks for it (:class:`~trio_sfu.proto.peer.IceHooks`)."""

    def __init__(self, pc: PeerConnection) -> None:
        self.ice_remote_credentials = pc._ice_remote_credentials
        self.ice_deadline = pc._ice_deadline
        self.ice_handle_timer = pc._ice_handle_timer


class PeerConnection:
    """The shared machinery of server and client peers (see the module docstring)."""

    #: whether the core's path token is the remote address itself (the client's own socket)
    _path_is_address = True

    def __init__(
        self, *, certificate: Certificate, ice_ufrag: str, ice_pwd: str, ice_lite: bool,
        candidates: list[Candidate], setup_when_answering: str, name: str = "",
        max_message_size: int = 262144, connect_timeout: float = 30.0,
        sctp_max_retransmits: int | None = None, new_transceiver_direction: str = "recvonly",
        jsep_options: dict[str, Any] | None = None, ice_agent: IceLiteAgent | None = None,
        path_usable: Callable[[Any], bool] = lambda path: True,
    ) -> None:
        self.name = name
        self.certificate = certificate
        transport = LocalTransport(
            ice_ufrag=ice_ufrag, ice_pwd=ice_pwd, fingerprints=certificate.fingerprints,
            candidates=candidates, ice_lite=ice_lite, max_message_size=max_message_size,
            setup_when_answering=setup_when_answering,  # type: ignore[arg-type]
        )
        self.jsep = JsepSession(
            transport,
            new_transceiver_direction=new_transceiver_direction,  # type: ignore[arg-type]
            **(jsep_options or {}),
        )
        self._core: PeerCore[Any] = PeerCore(
            self.jsep, certificate, now=trio.current_time(), ice_agent=ice_agent,
            ice_hooks=None if ice_agent is not None else _Hooks(self), path_usable=path_usable,
            connect_timeout=connect_timeout, max_message_size=max_message_size,
            sctp_max_retransmits=sctp_max_retransmits,
        )
        self._core.log_extra = {"peer": name}
        self.stats = self._core.stats
        self._channels = ChannelTable(self)
        send, recv = trio.open_memory_channel[ev.PeerEvent](math.inf)
        self._event_send: trio.MemorySendChannel[ev.PeerEvent] = send
        #: control events for the application; ends after :class:`~trio_sfu.rtc.events.Closed`
        self.events: trio.MemoryReceiveChannel[ev.PeerEvent] = recv
        self._connected = trio.Event()
        self._closed = trio.Event()  # close requested: the nursery is being cancelled
        self._finished = trio.Event()  # teardown done: no task, key or route is left
        self._buffer_event = trio.Event()
        self._wakeup = trio.Event()
        self._armed_deadline = math.inf
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or id(self)}>"

    # -- the core's state, as the layers above have always seen it ------------------------

    heard_at = _core_field("heard_at")
    log_extra = _core_field("log_extra")
    on_rtp = _core_field("on_rtp")
    on_rtcp = _core_field("on_rtcp")
    close_reason = _core_field("close_reason")
    closing = _core_field("closing")
    _srtp = _core_field("srtp")
    _dtls = _core_field("dtls")  # the client starts DTLS once its ICE pair works
    _dc = _core_field("dc")

    @property
    def remote_address(self) -> Address | None:
        """Where the peer's authenticated input counts as hearing it (and, for the client,
        where everything goes)."""
        return self._core.remote_address

    @remote_address.setter
    def remote_address(self, value: Address | None) -> None:
        self._core.remote_address = value
        if self._path_is_address:
            self._core.path = self._core.path_address = value

    @property
    def connected(self) -> bool:
        return self._core.connected and not self._core.closing

    @property
    def transport_rtt(self) -> float | None:
        """SCTP's SRTT on this transport (RFC 9260 §6.3.1); the publisher leg's NACK timing
        uses it (RFC 3550 lets only an SR's sender measure RTT; the SFU sends a publisher none)."""
        return self._core.transport_rtt

    @property
    def incoming_streams(self) -> list[ev.IncomingStream]:
        return list(self._core.streams.values())

    @property
    def data_channels(self) -> list[DataChannel]:
        return self._channels.values()

    # -- lifetime -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the peer until it is finished; cancellation from above closes it too."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer_loop)
                await self._start_io(nursery)
                task_status.started()
                await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            if not self.closing:
                self.close("cancelled")
            self._teardown()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn`` inside this peer's nursery: it ends when the peer does."""
        if self._nursery is None:
            raise RuntimeError("the peer is not running")
        self._nursery.start_soon(fn, *args)

    def close(self, reason: str = "closed") -> None:
        """Tell the remote side (SCTP ABORT, DTLS close_notify), then end the peer's nursery."""
        self._core.close(reason, trio.current_time())
        self._flush()

    def _teardown(self) -> None:
        """Drop every resource (keys, routes); runs once, after the nursery is gone."""
        self._core.teardown()
        self._channels.close_all(forget=True)
        self._emit(ev.Closed(self.close_reason or "closed"))
        self._event_send.close()
        self._nursery = None
        self._finished.set()

    async def wait_connected(self) -> None:
        """Return once DTLS is up; raise if the peer closes first."""
        async with trio.open_nursery() as nursery:

            async def closed() -> None:
                await self._closed.wait()
                raise ConnectionError(f"peer closed before connecting: {self.close_reason}")

            nursery.start_soon(closed)
            await self._connected.wait()
            nursery.cancel_scope.cancel()

    async def wait_closed(self) -> None:
        """Return once the peer is completely gone (its ``run`` has finished tearing down)."""
        await self._finished.wait()

    # -- negotiation ----------------------------------------------------------------------

    def add_transceiver(
        self, kind: str, direction: str = "sendrecv", **options: Any
    ) -> Transceiver:
        return self.jsep.add_transceiver(kind, direction, **options)  # type: ignore[arg-type]

    def stop_transceiver(self, transceiver: Transceiver) -> None:
        self.jsep.stop_transceiver(transceiver)

    @property
    def transceivers(self) -> list[Transceiver]:
        return self.jsep.transceivers

    def create_offer(self, *, ice_restart: bool = False) -> str:
        return self.jsep.create_offer(ice_restart=ice_restart).serialize()

    def handle_answer(self, sdp: str) -> list[str]:
        """Apply the remote answer to our offer (SdpError if unacceptable; state unchanged).
        Returns what was tolerated in it (e.g. a stopped section answered with a live port)."""
        tolerated, assigned = self._core.handle_answer(sdp, trio.current_time())
        self._adopt(assigned)
        return tolerated

    def rollback(self) -> None:
        """Withdraw our pending offer (RFC 8829 §4.1.10): back to the last agreed state."""
        self.jsep.rollback()

    def handle_offer(self, sdp: str) -> str:
        """Apply a remote offer and return our answer (SdpError if unacceptable)."""
        answer, assigned = self._core.handle_offer(sdp, trio.current_time())
        self._adopt(assigned)
        return answer

    def _adopt(self, assigned: list[ChannelSpec]) -> None:
        for channel in assigned:  # opened before the SCTP role was known: ids now
            self._channels.add(cast(DataChannel, channel))
        self._flush()

    # -- data channels --------------------------------------------------------------------

    def create_data_channel(
        self, label: str, *, protocol: str = "", ordered: bool = True,
        max_retransmits: int | None = None, max_packet_lifetime: int | None = None,
        negotiated: bool = False, id: int | None = None,
    ) -> DataChannel:
        """A new channel; it opens once the association is up (DCEP unless ``negotiated``)."""
        self.jsep.add_data_channel()
        channel = DataChannel(
            self, label, id=id, protocol=protocol, ordered=ordered,
            max_retransmits=max_retransmits, max_packet_lifetime=max_packet_lifetime,
            negotiated=negotiated,
        )
        self._core.open_channel(channel, trio.current_time())
        if channel.id is not None and self._core.dc is not None:
            self._channels.add(channel)
            self._flush()
        return channel

    def _channel_send(self, channel_id: int, data: str | bytes) -> None:
        self._core.channel_send(channel_id, data, trio.current_time())
        self._flush()

    def _channel_close(self, channel_id: int) -> None:
        self._core.channel_close(channel_id, trio.current_time())
        self._flush()

    def _channel_buffered(self, channel_id: int) -> int:
        return self._core.buffered_amount(channel_id)

    async def _buffer_changed(self) -> None:
        await self._buffer_event.wait()

    # -- input (called synchronously by the endpoint's reader) ----------------------------

    def datagram_received(self, kind: Kind, data: bytes, addr: Address, now: float) -> None:
        """One DTLS or SRTP/SRTCP datagram from a validated address. SRTP queues nothing in
        the core (it is delivered to ``on_rtp`` there), so only DTLS needs a flush."""
        if kind is Kind.SRTP:
            self._core.receive_srtp(data, addr, now)
        else:
            self._core.receive_dtls(data, addr, now)
            self._flush()

    # -- output ---------------------------------------------------------------------------

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet now (drop and count if not connected)."""
        protected = self._core.protect_rtp(packet)
        if protected is not None:
            self._send_datagram(protected)

    def send_rtcp(self, packet: bytes) -> None:  # RTCP rate: one call more is nothing
        protected = self._core.protect_rtcp(packet)
        if protected is not None:
            self._send_datagram(protected)

    def _emit(self, event: ev.PeerEvent) -> None:
        try:
            self._event_send.send_nowait(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        if self._event_send.statistics().current_buffer_used > MAX_EVENT_BACKLOG:
            self._core.close("application stopped reading events", trio.current_time())

    # -- the core's output ----------------------------------------------------------------

    def _pump(self, now: float) -> None:  # the client's, after it started DTLS
        self._core.pump(now)
        self._flush()

    def _flush(self) -> None:
        """Deliver the core's events, send its datagrams, re-arm the timer if it moved closer."""
        core = self._core
        while (event := core.next_event()) is not None:
            self._dispatch(event)
        for data, path in core.datagrams_to_send():
            self._send_to(data, path)
        if core.dc is not None:
            self._buffer_event.set()
            self._buffer_event = trio.Event()
        if self._next_deadline() < self._armed_deadline:
            self._wakeup.set()

    def _dispatch(self, event: core_mod.CoreEvent) -> None:
        if isinstance(event, core_mod.Connected):
            log.info("peer connected", extra={
                **self.log_extra, "srtp": event.srtp_profile, "addr": self.remote_address})
            self._connected.set()
            self._emit(ev.Connected())
        elif isinstance(event, core_mod.Closed):
            log.info("peer closing", extra={**self.log_extra, "reason": event.reason})
            self._channels.close_all()
            self._closed.set()
            self._buffer_event.set()
        elif isinstance(event, core_mod.LocalCredentialsChanged):
            self._local_credentials_changed()
        elif (mapped := self._channels.event(event)) is not None:
            self._emit(mapped)

    def _next_deadline(self) -> float:
        timer = self._core.get_timer()
        return math.inf if timer is None else timer

    async def _timer_loop(self) -> None:
        while not self.closing:
            self._wakeup = trio.Event()
            deadline = self._next_deadline()
            self._armed_deadline = deadline
            if deadline > trio.current_time():
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                continue
            self._armed_deadline = math.inf
            self._core.handle_timer(trio.current_time())
            self._flush()
            await trio.lowlevel.checkpoint()

    # -- the socket and a full agent's ICE (subclasses) -----------------------------------

    async def _start_io(self, nursery: trio.Nursery) -> None:
        """Start the subclass's own tasks (the client's socket reader)."""

    def _send_datagram(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _send_to(self, data: bytes | memoryview, path: Any) -> None:
        """Send a datagram the core queued for ``path`` (the client's is its remote address)."""
        self._send_datagram(data)

    def _ice_remote_credentials(self, ufrag: str, pwd: str, candidates: list[Candidate],
                                changes: RemoteChanges, now: float) -> None:
        raise NotImplementedError

    def _local_credentials_changed(self) -> None:
        """A lite agent's new ufrag must be routed (the server's endpoint)."""

    def _ice_deadline(self) -> float | None:
        raise NotImplementedError

    def _ice_handle_timer(self, now: float) -> None:
        raise NotImplementedError
