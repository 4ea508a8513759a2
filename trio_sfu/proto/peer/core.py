"""One WebRTC peer connection, sans-IO: DTLS, SRTP, SCTP/DCEP and the ICE path rules wired
together, with datagrams and time in and datagrams, events and a deadline out.

The shape follows aioquic's ``QuicConnection`` and str0m's ``Rtc``: the driver
(:mod:`trio_sfu.rtc.peer` on Trio, a test on nothing at all) feeds

* :meth:`PeerCore.receive_datagram` — a DTLS or SRTP/SRTCP datagram and where it came from,
* :meth:`PeerCore.handle_timer` — once :meth:`PeerCore.get_timer` has passed,
* the application's actions (:meth:`~PeerCore.apply_remote`, :meth:`~PeerCore.open_channel`,
  :meth:`~PeerCore.channel_send`, :meth:`~PeerCore.close`, ...) and, on a server, the
  endpoint's path news (:meth:`~PeerCore.address_validated`, :meth:`~PeerCore.path_closed`),

and after each call collects :meth:`PeerCore.datagrams_to_send` (each with the path it goes
to: an opaque token of the driver's, a UDP address or a TCP connection) and
:meth:`PeerCore.next_event` (connected, data channel open/message/close, closed with its
reason). Nothing here reads a clock or touches a socket: ``now`` is always an argument.

The core owns the orderings that are easy to get wrong (docs/architecture.md):

* **Pump order.** DTLS events are taken one at a time, and the SCTP outcome of an
  ``ApplicationData`` record is handled before the next DTLS event of the same datagram, so a
  remote ABORT followed by close_notify closes the peer as an ABORT.
* **Close order.** A local close sends SCTP ABORT (when data channels were up) and then DTLS
  close_notify, and is final: nothing the peer sends afterwards is processed.
* **Consent and address moves** on a lite server (RFC 7675, docs/security.md "Path changes"):
  any authenticated input on the selected pair renews consent; the lite agent decides when
  media moves to another path, and the core moves it and reports it.
* **SSRC learning** (RFC 8843 §9.2, RFC 8852): streams the SDP did not declare are bound on
  their first packet by MID, else an unambiguous payload type, else the only receiving section.

The media hot path is *not* queued: SRTP input is unprotected and handed to
:attr:`PeerCore.on_rtp` / :attr:`PeerCore.on_rtcp` right there, a path move calls
:attr:`PeerCore.on_path_changed` before the packet that caused it is delivered (the SFU asks for
a keyframe and must see that before the packet), and a server's forwarded packets go out
through :meth:`PeerCore.send_rtp_as` straight to the path's ``send``. An event object per
packet would cost more than forwarding the packet does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

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
from trio_sfu.proto.ice import IceLiteAgent
from trio_sfu.proto.jsep import JsepSession, RemoteChanges, Transceiver
from trio_sfu.proto.rtcp import RtcpPacket, parse_rtcp
from trio_sfu.proto.rtp import find_extension
from trio_sfu.proto.sctp import WEBRTC_TIMERS
from trio_sfu.proto.sctp.association import TimerOptions
from trio_sfu.proto.srtp import SrtpContext

log = logging.getLogger(__name__)

Address = tuple[str, int]
P = TypeVar("P")

#: DTLS datagrams are capped at this size; SCTP packets leave room for the record overhead.
DTLS_MTU: Final = 1200
DTLS_RECORD_OVERHEAD: Final = 64
#: At most this many remote SSRCs per peer (simulcast × RTX × tracks fits easily).
MAX_STREAMS: Final = 256
#: Paths remembered per lite peer (a browser checks from several candidates), as the UDP
#: endpoint keeps addresses (``MAX_ADDRESSES_PER_PEER``).
MAX_PATHS: Final = 8


@dataclass(slots=True)
class PeerStats:
    """Per-peer counters: plain ints, bumped on the hot path, read by metrics and tests."""

    rtp_in: int = 0
    rtp_out: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    srtp_rejected: int = 0  # failed authentication or replay check (RFC 3711 §3.3)
    srtcp_rejected: int = 0
    rtcp_malformed: int = 0
    rtp_unknown_ssrc: int = 0
    media_dropped: int = 0  # SRTP before keys, or too short to be RTP
    media_not_sent: int = 0
    dtls_dropped: int = 0
    sctp_malformed: int = 0
    dc_messages_in: int = 0


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


@dataclass(slots=True, frozen=True)
class Connected:
    """DTLS is up and SRTP keys (if negotiated) are installed."""

    srtp_profile: str | None


@dataclass(slots=True, frozen=True)
class LocalCredentialsChanged:
    """A lite agent took new local ICE credentials (our answer to an ICE restart, RFC 8839
    §4.4.1.1.2): the endpoint must route checks carrying the new ufrag here."""


@dataclass(slots=True, frozen=True)
class Closed:
    """The peer is closing (the last event of the core); ``reason`` says why."""

    reason: str


CoreEvent = (
    Connected | Closed | ChannelOpened | ChannelMessage | ChannelClosed | LocalCredentialsChanged
)
RtpCallback = Callable[[IncomingStream, bytes, float], None]
RtcpCallback = Callable[[list[RtcpPacket], float], None]


class ChannelSpec(Protocol):
    """What the core needs of the application's data channel handle to open it; ``id`` is
    written once the DTLS role fixes the stream id parity (RFC 8832 §6)."""

    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None
    negotiated: bool
    id: int | None


class IceHooks(Protocol):
    """A full (controlling) ICE agent driven outside the core: the client's, with sockets of
    its own. A lite server passes its :class:`IceLiteAgent` instead, and the core applies the
    path rules itself."""

    def ice_remote_credentials(
        self, ufrag: str, pwd: str, candidates: list[Candidate], changes: RemoteChanges,
        now: float,
    ) -> None: ...

    def ice_deadline(self) -> float | None: ...

    def ice_handle_timer(self, now: float) -> None: ...


class MediaPath(Protocol):
    """What :meth:`PeerCore.send_rtp_as` needs of a path token: sending one datagram now,
    never blocking or raising (the server's :class:`~trio_sfu.rtc.path.Path`)."""

    def send(self, data: bytes | memoryview) -> None: ...


def _always_usable(path: object) -> bool:
    return True


class PeerCore(Generic[P]):
    """The state of one peer connection (see the module docstring)."""

    # Slotted: past 30 attributes Python gives each instance its own ~1.6 KiB dict (issue 10, memory
    # per idle peer).
    __slots__ = (
        "_channel_ids", "_created_at", "_dtls_authenticated", "_events", "_ice_hooks",
        "_mid_ext_id", "_out", "_path_usable", "_paths", "_pending_channels", "_rid_ext_id",
        "_rrid_ext_id", "certificate", "close_reason", "closing", "connect_timeout", "connected",
        "dc", "dtls", "heard_at", "ice", "jsep", "log_extra", "max_message_size", "on_path_changed",
        "on_rtcp", "on_rtp", "path", "path_address", "remote_address", "sctp_max_retransmits",
        "srtp", "stats", "streams",
    )

    def __init__(
        self,
        jsep: JsepSession,
        certificate: Certificate,
        *,
        now: float,
        ice_agent: IceLiteAgent | None = None,
        ice_hooks: IceHooks | None = None,
        path_usable: Callable[[P], bool] = _always_usable,
        connect_timeout: float = 30.0,
        max_message_size: int = 262144,
        sctp_max_retransmits: int | None = None,
    ) -> None:
        self.jsep = jsep
        self.certificate = certificate
        self.ice = ice_agent
        self._ice_hooks = ice_hooks
        self._path_usable = path_usable
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        #: RFC 9260 Association.Max.Retrans; None: never give up (Chromium's choice)
        self.sctp_max_retransmits = sctp_max_retransmits
        #: where datagrams go (the selected pair's path token), and its remote address
        self.path: P | None = None
        self.path_address: Address | None = None
        #: the address whose authenticated input counts as hearing the peer: a lite server
        #: that moved on a check alone keeps the old one until media comes over the new path
        self.remote_address: Address | None = None
        #: when authenticated SRTP/SRTCP last came from :attr:`remote_address` (the hot path
        #: only stores the time; the lite agent reads it lazily for consent, RFC 7675)
        self.heard_at = now
        self.stats = PeerStats()
        self.log_extra: dict[str, str] = {}
        #: hot-path callbacks, set by the application (see the module docstring)
        self.on_rtp: RtpCallback | None = None
        self.on_rtcp: RtcpCallback | None = None
        #: media moved to another path (not the first): (now, whether the peer's own media
        #: comes over it yet); called again once it does
        self.on_path_changed: Callable[[float, bool], None] | None = None

        self.dtls: DtlsTransport | None = None
        self.srtp: SrtpContext | None = None
        self.dc: DataChannelEndpoint | None = None
        self.streams: dict[int, IncomingStream] = {}
        self.connected = False
        self.closing = False
        self.close_reason: str | None = None
        self._created_at = now
        self._dtls_authenticated = 0  # DTLS records that decrypted (handshake or data)
        self._channel_ids: set[int] = set()  # channels the application knows
        self._pending_channels: list[ChannelSpec] = []
        self._mid_ext_id: int | None = None
        self._rid_ext_id: int | None = None
        self._rrid_ext_id: int | None = None
        self._paths: dict[Address, tuple[P, str]] = {}  # lite: valid checks' paths, newest last
        self._out: list[tuple[bytes | memoryview, P]] = []
        # A list, not a deque: usually empty or one event, and an empty deque costs ~600 B
        # per peer (issue 10, memory per idle peer).
        self._events: list[CoreEvent] = []

    # ------------------------------------------------------------------------------------
    # outputs

    def datagrams_to_send(self) -> list[tuple[bytes | memoryview, P]]:
        """Datagrams queued since the last call, each with the path it goes to."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> CoreEvent | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next (None: never)."""
        deadline = math.inf
        if not self.connected:
            deadline = self._created_at + self.connect_timeout
        for timer in (
            self.dtls.get_timer() if self.dtls is not None else None,
            self.dc.get_timer() if self.dc is not None else None,
            self._ice_deadline(),
        ):
            if timer is not None and timer < deadline:
                deadline = timer
        return None if deadline == math.inf else deadline

    def _send(self, data: bytes | memoryview) -> None:
        path = self.path
        if path is not None:
            self._out.append((data, path))

    # ------------------------------------------------------------------------------------
    # negotiation

    def handle_offer(self, sdp: str, now: float) -> tuple[str, list[ChannelSpec]]:
        """Apply a remote offer (SdpError if unacceptable); our answer, and the channels that
        got their ids (see :meth:`apply_remote`)."""
        changes = self.jsep.set_remote_description(sdp, "offer")
        answer = self.jsep.create_answer().serialize()
        return answer, self._remote_applied(changes, now)

    def handle_answer(self, sdp: str, now: float) -> tuple[list[str], list[ChannelSpec]]:
        """Apply the remote answer to our offer (SdpError if unacceptable; state unchanged):
        what was tolerated in it, and the channels that got their ids."""
        changes = self.jsep.set_remote_description(sdp, "answer")
        return changes.tolerated, self._remote_applied(changes, now)

    def _remote_applied(self, changes: RemoteChanges, now: float) -> list[ChannelSpec]:
        jsep = self.jsep
        ufrag, pwd = jsep.remote_ice_ufrag, jsep.remote_ice_pwd
        if ufrag and pwd:
            agent = self.ice
            if agent is not None:
                transport = jsep.transport
                if transport.ice_ufrag != agent.local_ufrag:
                    # Our answer to an ICE restart carries fresh local credentials.
                    agent.restart(transport.ice_ufrag, transport.ice_pwd)
                    if not self.closing:  # Closed stays the last event
                        self._events.append(LocalCredentialsChanged())
                agent.set_remote_credentials(ufrag, pwd)
            elif self._ice_hooks is not None:
                self._ice_hooks.ice_remote_credentials(
                    ufrag, pwd, jsep.remote_candidates, changes, now
                )
        return self.apply_remote(changes, now)

    def apply_remote(self, changes: RemoteChanges, now: float) -> list[ChannelSpec]:
        """The JSEP session applied a remote description: start DTLS and SCTP when their
        sections first appear, follow fingerprint and message-size changes, re-route SSRCs.
        Returns the channels opened before the association existed that got their ids now."""
        jsep = self.jsep
        role = jsep.dtls_role
        if self.dtls is None and role is not None:
            self.dtls = DtlsTransport(
                self.certificate,
                is_server=role == "server",
                remote_fingerprints=jsep.remote_fingerprints,
                mtu=DTLS_MTU,
                handshake_timeout=None,  # the peer's own connect deadline covers it
            )
            if role == "server" or self.remote_address is not None:
                self.dtls.start(now)
        elif self.dtls is not None and changes.fingerprint_changed:
            try:
                self.dtls.remote_fingerprints = jsep.remote_fingerprints
            except DtlsError as exc:
                self.close(f"dtls: {exc}", now)
                return []
        assigned: list[ChannelSpec] = []
        if jsep.data_mid is not None and self.dc is None and role is not None:
            sctp_timers: TimerOptions = {
                **WEBRTC_TIMERS,
                "max_retransmits": self.sctp_max_retransmits,
            }
            self.dc = DataChannelEndpoint(
                is_dtls_client=role == "client",
                max_message_size=self.max_message_size,
                remote_max_message_size=jsep.remote_max_message_size or 65536,
                mtu=DTLS_MTU - DTLS_RECORD_OVERHEAD,
                # Chromium's dcsctp timers (short RTOs); liveness left to ICE consent unless
                # a retransmission limit is set (the server's, against stalled peers).
                **sctp_timers,
            )
            if self.connected and role == "client":
                self.dc.connect(now)
            pending, self._pending_channels = self._pending_channels, []
            for channel in pending:
                self._open_channel(self.dc, channel, now)
                assigned.append(channel)
        elif self.dc is not None and jsep.remote_max_message_size:
            self.dc.remote_max_message_size = jsep.remote_max_message_size
        self._refresh_streams(changes)
        self.pump(now)
        return assigned

    def _refresh_streams(self, changes: RemoteChanges) -> None:
        """Rebuild SSRC routing from the SDP: declared SSRCs route immediately; others (rid-only
        simulcast, SSRC-less offers) are learned from the first packet's MID/RID extensions."""
        streams = self.streams
        for t in changes.stopped:
            for ssrc in [s for s, st in streams.items() if st.transceiver is t]:
                del streams[ssrc]
        for t in self.jsep.transceivers:
            if t.stopped or t.mid is None:
                continue
            for ssrc in t.remote_ssrcs:
                if ssrc not in streams:
                    streams[ssrc] = IncomingStream(ssrc, t)
            for media, repair in t.remote_rtx_ssrcs.items():
                if repair not in streams:
                    streams[repair] = IncomingStream(repair, t, repairs=media)
            self._mid_ext_id = t.extension_id(URI_MID) or self._mid_ext_id
            self._rid_ext_id = t.extension_id(URI_RID) or self._rid_ext_id
            self._rrid_ext_id = t.extension_id(URI_REPAIRED_RID) or self._rrid_ext_id

    # ------------------------------------------------------------------------------------
    # data channels

    def open_channel(self, channel: ChannelSpec, now: float) -> None:
        """Open a channel (DCEP unless negotiated) once the association exists; its ``id`` is
        set then (right away when the SCTP section is already negotiated)."""
        dc = self.dc
        if dc is None:
            self._pending_channels.append(channel)
            return
        self._open_channel(dc, channel, now)
        self.pump(now)

    def _open_channel(self, dc: DataChannelEndpoint, channel: ChannelSpec, now: float) -> None:
        channel.id = dc.open_channel(
            channel.label,
            now,
            protocol=channel.protocol,
            ordered=channel.ordered,
            max_retransmits=channel.max_retransmits,
            max_packet_lifetime=channel.max_packet_lifetime,
            negotiated=channel.negotiated,
            id=channel.id,
        )
        self._channel_ids.add(channel.id)

    def channel_send(self, channel_id: int, data: str | bytes, now: float) -> None:
        if self.dc is None or self.closing:
            raise RuntimeError("the peer connection is closed")
        self.dc.send(channel_id, data, now)
        self.pump(now)

    def channel_close(self, channel_id: int, now: float) -> None:
        if self.dc is None or self.closing:
            return
        self.dc.close_channel(channel_id, now)
        self.pump(now)

    def buffered_amount(self, channel_id: int) -> int:
        return self.dc.buffered_amount(channel_id) if self.dc is not None else 0

    @property
    def transport_rtt(self) -> float | None:
        """The SCTP association's SRTT (RFC 9260 §6.3.1) on this transport, if measured."""
        sender = self.dc.association.sender if self.dc is not None else None
        return sender.srtt if sender is not None else None

    def protect_rtp(self, packet: bytes) -> bytes | None:
        """SRTP-protect one RTP packet to send on :attr:`path` (None: not connected, counted).
        The SFU's forwarding uses :meth:`send_rtp_as`."""
        srtp = self.srtp
        if srtp is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return None
        try:
            protected = srtp.protect_rtp(packet)
        except SrtpError:
            self.stats.media_not_sent += 1
            return None
        self.stats.rtp_out += 1
        return protected

    def send_rtp_as(self, packet: bytes, ssrc: int, twcc_offset: int, twcc_seq: int) -> None:
        """Protect a forwarding group's packet as our stream ``ssrc`` with this transport's
        transport-cc number (:meth:`SrtpContext.protect_rtp_as`) and send it on :attr:`path`
        at once: the SFU's per-packet, per-subscriber send, the one output not queued in
        :meth:`datagrams_to_send` (a queue entry per packet would cost more than the send).

        Only for a driver whose path tokens can send (:class:`MediaPath`: the server's). It is
        here, not in the driver, so that with this module compiled (``trio_sfu/compiled.py``)
        a forwarded packet runs no interpreted frame between the down-track and the path:
        interpreted code reading this class's attributes pays a C getter for each
        (docs/benchmarks.md, "More modules?"). Dropped and counted while not connected."""
        srtp = self.srtp
        # A MediaPath (P is opaque elsewhere); typed so, not cast: a cast is a call per packet.
        path: MediaPath | None = self.path  # type: ignore[assignment]
        if srtp is None or path is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return
        try:
            protected = srtp.protect_rtp_as(packet, ssrc, twcc_offset, twcc_seq)
        except SrtpError:
            self.stats.media_not_sent += 1
            return
        self.stats.rtp_out += 1
        path.send(protected)

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        srtp = self.srtp
        if srtp is None or self.remote_address is None:
            self.stats.media_not_sent += 1
            return None
        try:
            protected = srtp.protect_rtcp(packet)
        except SrtpError:
            self.stats.media_not_sent += 1
            return None
        self.stats.rtcp_out += 1
        return protected

    # ------------------------------------------------------------------------------------
    # close

    def close(self, reason: str, now: float) -> None:
        """Tell the remote side — SCTP ABORT first (when data channels were up), then DTLS
        close_notify — and stop: the last event is :class:`Closed`. Idempotent."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        dtls = self.dtls
        try:
            # Both calls are no-ops when that layer already ended (a remote ABORT or alert).
            if self.dc is not None and dtls is not None and self.connected:
                self.dc.abort(reason[:64])
                for packet in self.dc.packets_to_send(now):
                    dtls.send(packet)
            if dtls is not None:
                dtls.close()
                for datagram in dtls.datagrams_to_send():
                    self._send(datagram)
        except (DtlsError, SctpError) as exc:  # best effort: the peer may already be gone
            log.debug("close notification failed", extra={**self.log_extra, "error": str(exc)})
        self._events.append(Closed(reason))

    def teardown(self) -> None:
        """Drop every key and table; the driver calls it once nothing can reach the core."""
        self.srtp = None
        self.dc = None
        self.streams.clear()
        self._channel_ids.clear()
        self._pending_channels.clear()

    # ------------------------------------------------------------------------------------
    # input

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from a validated address, classified by its first byte (RFC 7983 §7);
        STUN belongs to the ICE agent and anything else is dropped by the endpoint already."""
        if not data:
            return
        first = data[0]
        if 128 <= first <= 191:
            self.receive_srtp(data, addr, now)
        elif 20 <= first <= 63:
            self.receive_dtls(data, addr, now)

    def receive_srtp(self, data: bytes, addr: Address, now: float) -> None:
        """The hot path: unprotect and hand the packet to :attr:`on_rtp` (or :attr:`on_rtcp`)
        synchronously. Queues nothing."""
        srtp = self.srtp
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
            self.authenticated(addr, now)
        ssrc = int.from_bytes(plain[8:12], "big")
        stream = self.streams.get(ssrc)
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

    def _rtcp_received(self, srtp: SrtpContext, data: bytes, addr: Address, now: float) -> None:
        try:
            plain = srtp.unprotect_rtcp(data)
        except SrtpError:
            self.stats.srtcp_rejected += 1
            return
        if addr == self.remote_address:
            self.heard_at = now
        else:
            self.authenticated(addr, now)
        try:
            packets = parse_rtcp(plain)
        except RtcpError:
            self.stats.rtcp_malformed += 1
            return
        self.stats.rtcp_in += 1
        on_rtcp = self.on_rtcp
        if on_rtcp is not None:
            on_rtcp(packets, now)

    def receive_dtls(self, data: bytes, addr: Address, now: float) -> None:
        """A DTLS datagram: records are processed, then SCTP, then what both have to send."""
        dtls = self.dtls
        if dtls is None or self.closing:
            self.stats.dtls_dropped += 1
            return
        before = self._dtls_authenticated
        dtls.receive_datagram(data, now)
        self.pump(now)
        if self._dtls_authenticated != before and not self.closing:
            # A record that decrypted under the session keys (OpenSSL checks its MAC and the
            # DTLS replay window, RFC 6347 §4.1.2.6): proof of the peer, not a replay.
            self.authenticated(addr, now)

    def _learn_stream(self, ssrc: int, packet: bytes) -> IncomingStream | None:
        """An SSRC the SDP did not declare: route it by its MID (RFC 8843 §9.2) and RID
        (RFC 8852) header extensions, else by a payload type only one receiving section
        negotiated (RFC 8843 §9.2; GStreamer 1.22 sends neither ssrc lines nor MID), else to
        the only receiving transceiver there is."""
        streams = self.streams
        if len(streams) >= MAX_STREAMS:
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
            media = [s.ssrc for s in streams.values()
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
                    (s.ssrc for s in streams.values() if s.rid == rid and s.repairs is None),
                    None,
                )
        stream = IncomingStream(ssrc, transceiver, rid=rid, repairs=repairs)
        streams[ssrc] = stream
        return stream

    # ------------------------------------------------------------------------------------
    # the control pump and timers

    def pump(self, now: float) -> None:
        """Move DTLS and SCTP forward after any input, timer or local action."""
        dtls = self.dtls
        if dtls is None:
            return
        dc = self.dc
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
                    self._drain_dc_events(dc, now)
            elif isinstance(event, HandshakeComplete):
                self._dtls_connected(event, now)
            elif isinstance(event, DtlsClosed):
                self.close(f"dtls {'failure' if event.error else 'closed'}: {event.reason}", now)
            if self.closing:
                return
        if dc is not None:
            self._drain_dc_events(dc, now)
            if self.closing:
                return
            for packet in dc.packets_to_send(now):
                dtls.send(packet)
        for datagram in dtls.datagrams_to_send():
            self._send(datagram)

    def _drain_dc_events(self, dc: DataChannelEndpoint, now: float) -> None:
        known = self._channel_ids
        while not self.closing and (event := dc.next_event()) is not None:
            if isinstance(event, ChannelMessage):
                if event.channel_id in known:
                    self.stats.dc_messages_in += 1
                    self._events.append(event)
            elif isinstance(event, ChannelOpened):
                known.add(event.channel_id)
                self._events.append(event)
            elif isinstance(event, ChannelClosed):
                if event.channel_id in known:
                    known.discard(event.channel_id)
                    self._events.append(event)
            elif isinstance(event, AssociationClosed):
                kind = "abort" if event.aborted else "shutdown"
                self.close(f"sctp {kind}: {event.reason}", now)

    def _dtls_connected(self, event: HandshakeComplete, now: float) -> None:
        if event.srtp_profile is not None:
            self.srtp = event.srtp_context()
        self.connected = True
        self._events.append(Connected(event.srtp_profile))
        if self.dc is not None and event.is_client:
            self.dc.connect(now)

    def handle_timer(self, now: float) -> None:
        """Run whatever timer is due at ``now`` (the connect deadline, ICE, DTLS, SCTP)."""
        if self.closing:
            return
        if not self.connected and now >= self._created_at + self.connect_timeout:
            self.close("connect timeout", now)
            return
        self._ice_handle_timer(now)
        if self.closing:
            return
        dtls = self.dtls
        if dtls is not None:
            timer = dtls.get_timer()
            if timer is not None and timer <= now:
                dtls.handle_timer(now)
        dc = self.dc
        if dc is not None:
            timer = dc.get_timer()
            if timer is not None and timer <= now:
                dc.handle_timer(now)
        self.pump(now)

    # ------------------------------------------------------------------------------------
    # ICE: the lite server's path rules here, a full agent's through its hooks

    def _ice_deadline(self) -> float | None:
        agent = self.ice
        if agent is None:
            return self._ice_hooks.ice_deadline() if self._ice_hooks is not None else None
        agent.heard(self.heard_at)
        path = agent.path_deadline
        consent = agent.consent_expires_at
        return consent if path is None else min(path, consent)

    def _ice_handle_timer(self, now: float) -> None:
        agent = self.ice
        if agent is None:
            if self._ice_hooks is not None:
                self._ice_hooks.ice_handle_timer(now)
            return
        agent.heard(self.heard_at)
        if agent.handle_timer(now):
            self._follow_path(now, by_media=False)
        if agent.consent_expired(now):
            self.close("consent timeout", now)

    def address_validated(
        self, path: P, address: Address, transport: str, nominated: bool, now: float
    ) -> None:
        """A valid check came over ``path`` (the lite agent has judged it already): remember
        the path, and follow the agent's choice of where media goes. A TCP path cannot be
        spoofed, so the agent may move to it on silence alone (``trusted_candidate``)."""
        agent = self.ice
        if agent is None:
            raise RuntimeError("paths are validated by a lite agent only")
        paths = self._paths
        paths.pop(address, None)
        paths[address] = (path, transport)
        while len(paths) > MAX_PATHS:
            del paths[next(iter(paths))]
        if transport == "tcp":
            agent.heard(self.heard_at)  # the takeover rule weighs how recently we heard the peer
            agent.trusted_candidate(address, now, nominated=nominated)
        self._follow_path(now, by_media=False)

    def path_closed(self, path: P, address: Address) -> None:
        """A path (a TCP connection) ended: if it carried the media, nothing is sent until
        the client's next valid check on another path."""
        entry = self._paths.get(address)
        if entry is not None and entry[0] is path:
            del self._paths[address]
            if self.ice is not None and self.ice.candidate == address:
                # A candidate with no path left: its silence timer must not select an address
                # media cannot follow (found by test_the_path_rule_holds_under_any_sequence).
                self.ice.candidate = None
        if path is self.path:
            log.info("peer path closed", extra={**self.log_extra, "path": str(address)})
            self.path = None
            self.path_address = None
            self.remote_address = None
            if self.ice is not None:
                self.ice.selected_lost()

    def _follow_path(self, now: float, *, by_media: bool) -> None:
        """Send where the agent selected, over the path that address's checks came by.

        A move made on a check or a timer sends there at once, but the peer may still be
        sending on the old path (Chromium checks its TCP backup a second before it switches):
        :attr:`remote_address` stays the old address until the first authenticated packet over
        the new path, which is when :attr:`on_path_changed` fires again."""
        assert self.ice is not None
        selected = self.ice.selected
        current = self.path
        if selected is None or (current is not None and self.path_address == selected):
            return
        entry = self._paths.get(selected)
        if entry is None or not self._path_usable(entry[0]):
            return
        path, transport = entry
        if current is not None:
            old = self._paths.get(self.path_address) if self.path_address else None
            log.info(
                "peer path changed",
                extra={
                    **self.log_extra,
                    "old": f"{old[1] if old else '?'}:{self.path_address}",
                    "new": f"{transport}:{selected}",
                },
            )
        self.path = path
        self.path_address = selected
        if by_media or current is None:
            self.remote_address = selected
        self.heard_at = now
        dtls = self.dtls
        if current is None and dtls is not None and dtls.is_client:
            # RFC 5763 §5: the active side (an offer said a=setup:passive) sends the
            # ClientHello once ICE has a path; before one exists it has nowhere to go.
            dtls.start(now)  # a no-op once started
            self.pump(now)
        if current is not None and self.on_path_changed is not None:
            self.on_path_changed(now, by_media)

    def authenticated(self, addr: Address, now: float) -> None:
        """Authenticated SRTP/SRTCP/DTLS from ``addr`` (a DTLS record, or media from an
        address other than :attr:`remote_address`): the lite agent may move the path there."""
        agent = self.ice
        if agent is None:
            return
        agent.heard(self.heard_at)
        agent.authenticated(addr, now)
        if self.path is not None and addr == self.path_address:
            if addr != self.remote_address:
                # The first authenticated packet over a path we moved to on a check: the
                # peer's media really comes this way now. (DTLS records land here each time.)
                self.remote_address = addr
                self.heard_at = now
                if self.on_path_changed is not None:
                    self.on_path_changed(now, True)
            return
        self._follow_path(now, by_media=True)
