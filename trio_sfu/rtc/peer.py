"""One WebRTC peer connection on Trio: the sans-IO cores, wired together and driven.

Lifetime: :meth:`PeerConnection.run` opens the peer's nursery and returns only when the peer is
finished — remote close (DTLS close_notify or alert), SCTP ABORT, consent timeout, a local
:meth:`close`, or cancellation from above (server shutdown). Every task of the peer lives in that
nursery, including the ones the SFU starts with :meth:`start_soon`, so leaving provably ends
them all.

Two paths, two shapes (DESIGN.md, hot path):

* Media: the UDP reader calls :meth:`datagram_received` directly; SRTP is removed and the
  ``on_rtp``/``on_rtcp`` callbacks run right there, synchronously — no channel hop, no task
  switch, no await. ``send_rtp``/``send_rtcp`` are synchronous too.
* Control: DTLS and SCTP are pumped synchronously after each input or timer; their outcomes for
  the application (connected, data channel open/message/close, closed) go through
  :attr:`events`, a memory channel the SFU consumes with ordinary async code.

Subclasses supply the ICE side and the socket: :class:`~trio_sfu.rtc.server.ServerPeerConnection`
(ICE-lite on the shared UDP endpoint) and :class:`~trio_sfu.client.peer.ClientPeerConnection`
(controlling agent on its own socket).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aioice import Candidate

from trio_sfu.proto.capabilities import URI_MID, URI_REPAIRED_RID, URI_RID
from trio_sfu.proto.datachannel import (
    AssociationClosed,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    DataChannelEndpoint,
)
from trio_sfu.proto.dtls import ApplicationData, Certificate, DtlsTransport, HandshakeComplete
from trio_sfu.proto.dtls import Closed as DtlsClosed
from trio_sfu.proto.errors import DtlsError, RtcpError, SctpError, SrtpError
from trio_sfu.proto.jsep import JsepSession, LocalTransport, RemoteChanges, Transceiver
from trio_sfu.proto.rtcp import RtcpPacket, parse_rtcp
from trio_sfu.proto.rtp import find_extension
from trio_sfu.proto.sctp import WEBRTC_TIMERS
from trio_sfu.proto.sctp.association import TimerOptions
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc.datachannel import DataChannel
from trio_sfu.rtc.demux import Kind
from trio_sfu.rtc.events import (
    Closed,
    Connected,
    DataChannelClose,
    DataChannelMessage,
    DataChannelOpen,
    IncomingStream,
    PeerEvent,
)
from trio_sfu.rtc.stats import PeerStats

log = logging.getLogger(__name__)

Address = tuple[str, int]
RtpCallback = Callable[[IncomingStream, bytes, float], None]
RtcpCallback = Callable[[list[RtcpPacket], float], None]

#: DTLS datagrams are capped at this size; SCTP packets leave room for the record overhead.
DTLS_MTU = 1200
DTLS_RECORD_OVERHEAD = 64
#: A peer whose application stops reading events is closed rather than buffering forever.
MAX_EVENT_BACKLOG = 10_000
#: At most this many remote SSRCs per peer (simulcast × RTX × tracks fits easily).
MAX_STREAMS = 256


def random_ice_credentials() -> tuple[str, str]:
    """RFC 8839 §5.4: ufrag ≥ 24 bits and pwd ≥ 128 bits of randomness, ice-chars only."""
    return secrets.token_hex(4), secrets.token_hex(16)


class PeerConnection:
    """The shared machinery of server and client peers (see the module docstring)."""

    def __init__(
        self,
        *,
        certificate: Certificate,
        ice_ufrag: str,
        ice_pwd: str,
        ice_lite: bool,
        candidates: list[Candidate],
        setup_when_answering: str,
        name: str = "",
        max_message_size: int = 262144,
        connect_timeout: float = 30.0,
        sctp_max_retransmits: int | None = None,
        new_transceiver_direction: str = "recvonly",
        jsep_options: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.certificate = certificate
        transport = LocalTransport(
            ice_ufrag=ice_ufrag,
            ice_pwd=ice_pwd,
            fingerprints=certificate.fingerprints,
            candidates=candidates,
            ice_lite=ice_lite,
            max_message_size=max_message_size,
            setup_when_answering=setup_when_answering,  # type: ignore[arg-type]
        )
        self.jsep = JsepSession(
            transport,
            new_transceiver_direction=new_transceiver_direction,  # type: ignore[arg-type]
            **(jsep_options or {}),
        )
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        #: RFC 9260 Association.Max.Retrans; None: never give up (Chromium's choice)
        self.sctp_max_retransmits = sctp_max_retransmits
        #: the nominated (server) or selected (client) remote address: where media goes, and
        #: the address whose authenticated input counts as hearing the peer (a server that
        #: moved on a check alone keeps the old one until media comes over the new path)
        self.remote_address: Address | None = None
        #: When authenticated SRTP/SRTCP last came from :attr:`remote_address` (written on the
        #: hot path; the ICE side reads it lazily for consent, RFC 7675).
        self.heard_at = trio.current_time()
        self._dtls_authenticated = 0  # DTLS records that decrypted (handshake or data)
        self.stats = PeerStats()
        #: fields of this connection's log lines; the SFU replaces them with its own
        #: vocabulary (room, peer = the connection id, role), see Member
        self.log_extra: dict[str, str] = {"peer": self.name}
        #: hot-path callbacks, set by the application
        self.on_rtp: RtpCallback | None = None
        self.on_rtcp: RtcpCallback | None = None

        self._dtls: DtlsTransport | None = None
        self._srtp: SrtpContext | None = None
        self._dc: DataChannelEndpoint | None = None
        self._channels: dict[int, DataChannel] = {}
        self._unassigned_channels: list[DataChannel] = []
        self._streams: dict[int, IncomingStream] = {}
        self._mid_ext_id: int | None = None
        self._rid_ext_id: int | None = None
        self._rrid_ext_id: int | None = None

        send, recv = trio.open_memory_channel[PeerEvent](math.inf)
        self._event_send: trio.MemorySendChannel[PeerEvent] = send
        #: control events for the application; ends after :class:`Closed`
        self.events: trio.MemoryReceiveChannel[PeerEvent] = recv

        self._created_at = trio.current_time()
        self._connected = trio.Event()
        self._closed = trio.Event()  # close requested: the nursery is being cancelled
        self._finished = trio.Event()  # teardown done: no task, key or route is left
        self._buffer_event = trio.Event()
        self._wakeup = trio.Event()
        self._armed_deadline = math.inf
        self._nursery: trio.Nursery | None = None
        self.closing = False
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or id(self)}>"

    # ------------------------------------------------------------------------------------
    # lifetime

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
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        log.info("peer closing", extra={**self.log_extra, "reason": reason})
        dtls = self._dtls
        try:
            # Both calls are no-ops when that layer already ended (a remote ABORT or alert).
            if self._dc is not None and dtls is not None and self._connected.is_set():
                self._dc.abort(reason[:64])
                for packet in self._dc.packets_to_send(trio.current_time()):
                    dtls.send(packet)
            if dtls is not None:
                dtls.close()
                for datagram in dtls.datagrams_to_send():
                    self._send_datagram(datagram)
        except (DtlsError, SctpError) as exc:  # best effort: the peer may already be gone
            log.debug("close notification failed", extra={**self.log_extra, "error": str(exc)})
        for channel in self._channels.values():
            channel.ready_state = "closed"
        self._closed.set()
        self._buffer_event.set()

    def _teardown(self) -> None:
        """Drop every resource (keys, routes); runs once, after the nursery is gone."""
        self._srtp = None
        self._dc = None
        self._streams.clear()
        self._channels.clear()
        self._unassigned_channels.clear()
        self._emit(Closed(self.close_reason or "closed"))
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

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and not self.closing

    @property
    def transport_rtt(self) -> float | None:
        """Smoothed round-trip time (s) of this peer's transport, from the SCTP association
        riding the same DTLS/ICE path (RFC 9260 §6.3.1 SRTT); None without data channels or
        before the first measurement. The publisher leg's NACK timing uses it: RFC 3550 lets
        only the sender of an SR measure RTT, and the SFU sends none to a publisher."""
        dc = self._dc
        sender = dc.association.sender if dc is not None else None
        return sender.srtt if sender is not None else None

    # ------------------------------------------------------------------------------------
    # negotiation

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

        Returns what was tolerated in it (e.g. a stopped section answered with a live port).
        """
        changes = self.jsep.set_remote_description(sdp, "answer")
        self._apply_remote(changes)
        return changes.tolerated

    def rollback(self) -> None:
        """Withdraw our pending offer (RFC 8829 §4.1.10): back to the last agreed state."""
        self.jsep.rollback()

    def handle_offer(self, sdp: str) -> str:
        """Apply a remote offer and return our answer (SdpError if unacceptable)."""
        changes = self.jsep.set_remote_description(sdp, "offer")
        answer = self.jsep.create_answer().serialize()
        self._apply_remote(changes)
        return answer

    def _apply_remote(self, changes: RemoteChanges) -> None:
        jsep = self.jsep
        now = trio.current_time()
        if jsep.remote_ice_ufrag and jsep.remote_ice_pwd:
            self._ice_remote_credentials(
                jsep.remote_ice_ufrag, jsep.remote_ice_pwd, jsep.remote_candidates, changes, now
            )
        role = jsep.dtls_role
        if self._dtls is None and role is not None:
            self._dtls = DtlsTransport(
                self.certificate,
                is_server=role == "server",
                remote_fingerprints=jsep.remote_fingerprints,
                mtu=DTLS_MTU,
                handshake_timeout=None,  # the peer's own connect deadline covers it
            )
            if role == "server" or self._ice_ready():
                self._dtls.start(now)
        elif self._dtls is not None and changes.fingerprint_changed:
            try:
                self._dtls.remote_fingerprints = jsep.remote_fingerprints
            except DtlsError as exc:
                self.close(f"dtls: {exc}")
                return
        if jsep.data_mid is not None and self._dc is None and role is not None:
            sctp_timers: TimerOptions = {
                **WEBRTC_TIMERS,
                "max_retransmits": self.sctp_max_retransmits,
            }
            self._dc = DataChannelEndpoint(
                is_dtls_client=role == "client",
                max_message_size=self.max_message_size,
                remote_max_message_size=jsep.remote_max_message_size or 65536,
                mtu=DTLS_MTU - DTLS_RECORD_OVERHEAD,
                # Chromium's dcsctp timers (short RTOs); liveness left to ICE consent unless
                # a retransmission limit is set (the server's, against stalled peers).
                **sctp_timers,
            )
            if self._connected.is_set() and role == "client":
                self._dc.connect(now)
            pending, self._unassigned_channels = self._unassigned_channels, []
            for channel in pending:
                self._open_channel(channel, now)
        elif self._dc is not None and jsep.remote_max_message_size:
            self._dc.remote_max_message_size = jsep.remote_max_message_size
        self._refresh_streams(changes)
        self._pump(now)

    def _refresh_streams(self, changes: RemoteChanges) -> None:
        """Rebuild SSRC routing from the SDP: declared SSRCs route immediately; others (rid-only
        simulcast, SSRC-less offers) are learned from the first packet's MID/RID extensions."""
        for t in changes.stopped:
            for ssrc in [s for s, st in self._streams.items() if st.transceiver is t]:
                del self._streams[ssrc]
        for t in self.jsep.transceivers:
            if t.stopped or t.mid is None:
                continue
            for ssrc in t.remote_ssrcs:
                if ssrc not in self._streams:
                    self._streams[ssrc] = IncomingStream(ssrc, t)
            for media, repair in t.remote_rtx_ssrcs.items():
                if repair not in self._streams:
                    self._streams[repair] = IncomingStream(repair, t, repairs=media)
            self._mid_ext_id = t.extension_id(URI_MID) or self._mid_ext_id
            self._rid_ext_id = t.extension_id(URI_RID) or self._rid_ext_id
            self._rrid_ext_id = t.extension_id(URI_REPAIRED_RID) or self._rrid_ext_id

    # ------------------------------------------------------------------------------------
    # data channels

    def create_data_channel(
        self,
        label: str,
        *,
        protocol: str = "",
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
        negotiated: bool = False,
        id: int | None = None,
    ) -> DataChannel:
        """A new channel; it opens once the association is up (DCEP unless ``negotiated``)."""
        self.jsep.add_data_channel()
        channel = DataChannel(
            self,
            label,
            id=id,
            protocol=protocol,
            ordered=ordered,
            max_retransmits=max_retransmits,
            max_packet_lifetime=max_packet_lifetime,
            negotiated=negotiated,
        )
        if self._dc is None:
            self._unassigned_channels.append(channel)
        else:
            now = trio.current_time()
            self._open_channel(channel, now)
            self._pump(now)
        return channel

    def _open_channel(self, channel: DataChannel, now: float) -> None:
        assert self._dc is not None
        channel.id = self._dc.open_channel(
            channel.label,
            now,
            protocol=channel.protocol,
            ordered=channel.ordered,
            max_retransmits=channel.max_retransmits,
            max_packet_lifetime=channel.max_packet_lifetime,
            negotiated=channel.negotiated,
            id=channel.id,
        )
        self._channels[channel.id] = channel

    @property
    def data_channels(self) -> list[DataChannel]:
        return list(self._channels.values())

    def _channel_send(self, channel_id: int, data: str | bytes) -> None:
        if self._dc is None or self.closing:
            raise RuntimeError("the peer connection is closed")
        now = trio.current_time()
        self._dc.send(channel_id, data, now)
        self._pump(now)

    def _channel_close(self, channel_id: int) -> None:
        if self._dc is None or self.closing:
            return
        now = trio.current_time()
        self._dc.close_channel(channel_id, now)
        self._pump(now)

    def _channel_buffered(self, channel_id: int) -> int:
        return self._dc.buffered_amount(channel_id) if self._dc is not None else 0

    async def _buffer_changed(self) -> None:
        await self._buffer_event.wait()

    def _dc_event(self, event: object) -> None:
        if isinstance(event, ChannelMessage):
            channel = self._channels.get(event.channel_id)
            if channel is not None:
                self.stats.dc_messages_in += 1
                self._emit(DataChannelMessage(channel, event.data))
        elif isinstance(event, ChannelOpened):
            channel = self._channels.get(event.channel_id)
            if channel is None:
                channel = DataChannel(
                    self,
                    event.label,
                    id=event.channel_id,
                    protocol=event.protocol,
                    ordered=event.ordered,
                    max_retransmits=event.max_retransmits,
                    max_packet_lifetime=event.max_packet_lifetime,
                    negotiated=event.negotiated,
                )
                self._channels[event.channel_id] = channel
            channel.ready_state = "open"
            self._emit(DataChannelOpen(channel))
        elif isinstance(event, ChannelClosed):
            channel = self._channels.pop(event.channel_id, None)
            if channel is not None:
                channel.ready_state = "closed"
                self._emit(DataChannelClose(channel))
        elif isinstance(event, AssociationClosed):
            self.close(f"sctp {'abort' if event.aborted else 'shutdown'}: {event.reason}")

    # ------------------------------------------------------------------------------------
    # input (called synchronously by the UDP reader)

    def datagram_received(self, kind: Kind, data: bytes, addr: Address, now: float) -> None:
        """One DTLS or SRTP/SRTCP datagram from a validated address."""
        if kind is Kind.SRTP:
            srtp = self._srtp
            if srtp is None or len(data) < 12:
                self.stats.media_dropped += 1
                return
            if 192 <= data[1] <= 223:  # RFC 5761 §4: RTCP packet types 192..223
                self._rtcp_received(srtp, data, addr, now)
                return
            try:
                plain = srtp.unprotect_rtp(data)
            except SrtpError:
                self.stats.srtp_rejected += 1
                return
            if addr == self.remote_address:
                self.heard_at = now
            else:
                self._ice_authenticated(addr, now)
            ssrc = int.from_bytes(plain[8:12], "big")
            stream = self._streams.get(ssrc)
            if stream is None:
                stream = self._learn_stream(ssrc, plain)
                if stream is None:
                    self.stats.rtp_unknown_ssrc += 1
                    return
            stream.packets += 1
            stream.octets += len(plain)
            self.stats.rtp_in += 1
            on_rtp = self.on_rtp
            if on_rtp is not None:
                on_rtp(stream, plain, now)
        elif kind is Kind.DTLS:
            dtls = self._dtls
            if dtls is None or self.closing:
                self.stats.dtls_dropped += 1
                return
            before = self._dtls_authenticated
            dtls.receive_datagram(data, now)
            self._pump(now)
            if self._dtls_authenticated != before and not self.closing:
                # A record that decrypted under the session keys (OpenSSL checks its MAC and
                # the DTLS replay window, RFC 6347 §4.1.2.6): proof of the peer, not a replay.
                self._ice_authenticated(addr, now)

    def _rtcp_received(self, srtp: SrtpContext, data: bytes, addr: Address, now: float) -> None:
        try:
            plain = srtp.unprotect_rtcp(data)
        except SrtpError:
            self.stats.srtcp_rejected += 1
            return
        if addr == self.remote_address:
            self.heard_at = now
        else:
            self._ice_authenticated(addr, now)
        try:
            packets = parse_rtcp(plain)
        except RtcpError:
            self.stats.rtcp_malformed += 1
            return
        self.stats.rtcp_in += 1
        on_rtcp = self.on_rtcp
        if on_rtcp is not None:
            on_rtcp(packets, now)

    def _learn_stream(self, ssrc: int, packet: bytes) -> IncomingStream | None:
        """An SSRC the SDP did not declare: route it by its MID (RFC 8843 §9.2) and RID
        (RFC 8852) header extensions, else by a payload type only one receiving section
        negotiated (RFC 8843 §9.2; GStreamer 1.22 sends neither ssrc lines nor MID), else to
        the only receiving transceiver there is."""
        if len(self._streams) >= MAX_STREAMS:
            return None
        transceiver: Transceiver | None = None
        receiving = [t for t in self.jsep.transceivers if t.receiving and not t.stopped]
        if self._mid_ext_id is not None:
            mid = find_extension(packet, self._mid_ext_id)
            if mid is not None:
                wanted = mid.decode("ascii", "replace")
                transceiver = next((t for t in receiving if t.mid == wanted), None)
        pt = packet[1] & 0x7F
        if transceiver is None:
            owners = [t for t in receiving if t.codec(pt) is not None]
            transceiver = owners[0] if len(owners) == 1 else None
        if transceiver is None and len(receiving) == 1:
            transceiver = receiving[0]
        if transceiver is None:
            return None
        rid: str | None = None
        repairs: int | None = None
        codec = transceiver.codec(pt)
        if codec is not None and codec.is_rtx:  # RFC 4588: repairs this section's one stream
            media = [s.ssrc for s in self._streams.values()
                     if s.transceiver is transceiver and s.repairs is None]
            repairs = media[0] if len(media) == 1 else None
        if self._rid_ext_id is not None:
            value = find_extension(packet, self._rid_ext_id)
            rid = value.decode("ascii", "replace") if value else None
        if rid is None and self._rrid_ext_id is not None:
            value = find_extension(packet, self._rrid_ext_id)
            if value:
                rid = value.decode("ascii", "replace")
                repairs = next(
                    (s.ssrc for s in self._streams.values() if s.rid == rid and s.repairs is None),
                    None,
                )
        stream = IncomingStream(ssrc, transceiver, rid=rid, repairs=repairs)
        self._streams[ssrc] = stream
        return stream

    @property
    def incoming_streams(self) -> list[IncomingStream]:
        return list(self._streams.values())

    # ------------------------------------------------------------------------------------
    # output

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet now (drop and count if not connected)."""
        srtp = self._srtp
        if srtp is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return
        try:
            protected = srtp.protect_rtp(packet)
        except SrtpError:
            self.stats.media_not_sent += 1
            return
        self.stats.rtp_out += 1
        self._send_datagram(protected)

    def send_rtp_as(self, packet: bytes, ssrc: int, twcc_offset: int, twcc_seq: int) -> None:
        """Protect and send a forwarding group's packet as this peer's stream ``ssrc``, with
        this transport's transport-cc number at ``twcc_offset`` (-1: none) — see
        :meth:`SrtpContext.protect_rtp_as`."""
        srtp = self._srtp
        if srtp is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return
        try:
            protected = srtp.protect_rtp_as(packet, ssrc, twcc_offset, twcc_seq)
        except SrtpError:
            self.stats.media_not_sent += 1
            return
        self.stats.rtp_out += 1
        self._send_datagram(protected)

    def send_rtcp(self, packet: bytes) -> None:
        srtp = self._srtp
        if srtp is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return
        try:
            protected = srtp.protect_rtcp(packet)
        except SrtpError:
            self.stats.media_not_sent += 1
            return
        self.stats.rtcp_out += 1
        self._send_datagram(protected)

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._event_send.send_nowait(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        if self._event_send.statistics().current_buffer_used > MAX_EVENT_BACKLOG:
            self.close("application stopped reading events")

    # ------------------------------------------------------------------------------------
    # the control pump and timers

    def _pump(self, now: float) -> None:
        """Move DTLS and SCTP forward after any input, timer or local action."""
        dtls = self._dtls
        if dtls is None:
            return
        dc = self._dc
        while (event := dtls.next_event()) is not None:
            if isinstance(event, (ApplicationData, HandshakeComplete)):
                self._dtls_authenticated += 1
            if isinstance(event, ApplicationData):
                if dc is not None:
                    try:
                        dc.receive_packet(event.data, now)
                    except SctpError:
                        self.stats.sctp_malformed += 1
                    # Handle SCTP's outcome before any later DTLS event (an ABORT followed
                    # by close_notify must close the peer as an ABORT).
                    self._drain_dc_events(dc)
            elif isinstance(event, HandshakeComplete):
                self._dtls_connected(event, now)
            elif isinstance(event, DtlsClosed):
                self.close(f"dtls {'failure' if event.error else 'closed'}: {event.reason}")
            if self.closing:
                return
        if dc is not None:
            self._drain_dc_events(dc)
            if self.closing:
                return
            for packet in dc.packets_to_send(now):
                dtls.send(packet)
            self._buffer_event.set()
            self._buffer_event = trio.Event()
        for datagram in dtls.datagrams_to_send():
            self._send_datagram(datagram)
        if self._next_deadline() < self._armed_deadline:
            self._wakeup.set()

    def _drain_dc_events(self, dc: DataChannelEndpoint) -> None:
        while not self.closing and (event := dc.next_event()) is not None:
            self._dc_event(event)

    def _dtls_connected(self, event: HandshakeComplete, now: float) -> None:
        if event.srtp_profile is not None:
            self._srtp = event.srtp_context()
        log.info(
            "peer connected",
            extra={**self.log_extra, "srtp": event.srtp_profile, "addr": self.remote_address},
        )
        self._connected.set()
        self._emit(Connected())
        if self._dc is not None and event.is_client:
            self._dc.connect(now)

    def _next_deadline(self) -> float:
        deadline = math.inf
        if not self._connected.is_set():
            deadline = self._created_at + self.connect_timeout
        for timer in (
            self._dtls.get_timer() if self._dtls is not None else None,
            self._dc.get_timer() if self._dc is not None else None,
            self._ice_deadline(),
        ):
            if timer is not None and timer < deadline:
                deadline = timer
        return deadline

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
            self._handle_timers(trio.current_time())
            await trio.lowlevel.checkpoint()

    def _handle_timers(self, now: float) -> None:
        if not self._connected.is_set() and now >= self._created_at + self.connect_timeout:
            self.close("connect timeout")
            return
        self._ice_handle_timer(now)
        if self.closing:
            return
        dtls = self._dtls
        if dtls is not None:
            timer = dtls.get_timer()
            if timer is not None and timer <= now:
                dtls.handle_timer(now)
        dc = self._dc
        if dc is not None:
            timer = dc.get_timer()
            if timer is not None and timer <= now:
                dc.handle_timer(now)
        self._pump(now)

    # ------------------------------------------------------------------------------------
    # the ICE side and the socket (subclasses)

    async def _start_io(self, nursery: trio.Nursery) -> None:
        """Start the subclass's own tasks (the client's socket reader)."""

    def _send_datagram(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _ice_remote_credentials(
        self,
        ufrag: str,
        pwd: str,
        candidates: list[Candidate],
        changes: RemoteChanges,
        now: float,
    ) -> None:
        raise NotImplementedError

    def _ice_ready(self) -> bool:
        """Whether a DTLS client may send its ClientHello (ICE has a working pair)."""
        raise NotImplementedError

    def _ice_deadline(self) -> float | None:
        raise NotImplementedError

    def _ice_handle_timer(self, now: float) -> None:
        raise NotImplementedError

    def _ice_authenticated(self, addr: Address, now: float) -> None:
        """Authenticated SRTP/SRTCP/DTLS from ``addr`` (a DTLS record, or media from an
        address other than :attr:`remote_address`): the ICE side may move the path there."""
