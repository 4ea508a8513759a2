"""The server side: ICE-lite peers on the process's one UDP endpoint.

:class:`RtcServer` is the process-wide context (certificate, endpoint, advertised candidates);
:class:`ServerPeerConnection` is one browser (or bot) talking to us.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable
from typing import Any

import trio
from aioice import Candidate

from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.ice import IceLiteAgent
from trio_sfu.rtc.path import Address, Path
from trio_sfu.rtc.peer import PeerConnection, random_ice_credentials
from trio_sfu.rtc.tcp import TcpEndpoint
from trio_sfu.rtc.udp import UdpEndpoint

log = logging.getLogger(__name__)

def host_candidate(ip: str, port: int, local_preference: int = 65535) -> Candidate:
    """A UDP host candidate with the RFC 8445 §5.1.2.1 priority formula (type pref 126)."""
    priority = (126 << 24) | (local_preference << 8) | (256 - 1)
    foundation = secrets.token_hex(4)
    return Candidate(
        foundation=foundation,
        component=1,
        transport="udp",
        priority=priority,
        host=ip,
        port=port,
        type="host",
    )


#: RFC 9260 §16's recommended Association.Max.Retrans.
SCTP_MAX_RETRANS = 10


def tcp_passive_candidate(ip: str, port: int, other_preference: int = 8191) -> Candidate:
    """A passive ICE-TCP host candidate (RFC 6544 §4.5), ranked below every UDP candidate.

    RFC 6544 §4.2: local preference = 2^13 · direction-pref + other-pref, with direction-pref
    4 for a passive host candidate; that is at most 40959, below the 65535 of our UDP
    candidates, so a client that can use UDP does.
    """
    local_preference = (4 << 13) | (other_preference & 0x1FFF)
    priority = (126 << 24) | (local_preference << 8) | (256 - 1)
    return Candidate(
        foundation=secrets.token_hex(4),
        component=1,
        transport="tcp",
        priority=priority,
        host=ip,
        port=port,
        type="host",
        tcptype="passive",
    )


class RtcServer:
    """What every server peer shares: one certificate, one UDP port, one candidate list, and
    (unless turned off) one ICE-TCP port.

    ``public_addresses`` are what we advertise (NAT 1:1 / a node's public IP); the sockets
    themselves may be bound to a wildcard address. ``tcp_public_port`` is the TCP port to
    advertise when a pass-through load balancer maps another one to ours (default: ours).
    """

    def __init__(
        self,
        endpoint: UdpEndpoint,
        certificate: Certificate,
        public_addresses: list[str],
        *,
        consent_timeout: float = 30.0,
        connect_timeout: float | None = None,
        tcp: TcpEndpoint | None = None,
        tcp_public_port: int | None = None,
    ) -> None:
        if not public_addresses:
            raise ValueError("at least one address to advertise is needed")
        for address in public_addresses:
            ipaddress.ip_address(address)  # ValueError names a bad address early
        self.endpoint = endpoint
        self.certificate = certificate
        self.public_addresses = list(public_addresses)
        self.consent_timeout = consent_timeout
        #: how long a new peer has to get ICE and DTLS up (default: the consent timeout); a
        #: half-open session holds ~100 KiB, so servers facing the internet keep this short
        self.connect_timeout = consent_timeout if connect_timeout is None else connect_timeout
        #: RFC 9260 §8.1 Association.Max.Retrans: a peer whose SCTP stops acknowledging (while
        #: its ICE consent stays alive) is aborted after this many unanswered retransmissions,
        #: ~20 s with WebRTC's 3 s RTO cap, instead of buffering for it forever.
        self.sctp_max_retransmits = SCTP_MAX_RETRANS
        self.tcp = tcp
        #: called (synchronously, from the peer's teardown) each time a peer's routes are
        #: dropped: the pod's garbage-collection policy compacts after leaves
        #: (trio_sfu/gcpolicy.py); may be called twice for one peer
        self.on_peer_left: Callable[[], None] | None = None
        port = endpoint.local_address[1]
        self.candidates = [
            host_candidate(ip, port, local_preference=65535 - i)
            for i, ip in enumerate(public_addresses)
        ]
        if tcp is not None:
            tcp_port = tcp_public_port or tcp.local_address[1]
            self.candidates += [
                tcp_passive_candidate(ip, tcp_port, other_preference=8191 - i)
                for i, ip in enumerate(public_addresses)
            ]

    @classmethod
    def bind(
        cls,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        public_addresses: list[str] | None = None,
        consent_timeout: float = 30.0,
        connect_timeout: float | None = None,
        certificate: Certificate | None = None,
        tcp_port: int | None = None,
        tcp_public_port: int | None = None,
    ) -> RtcServer:
        """Bind the UDP port and, unless ``tcp_port`` is None, the ICE-TCP port on the same
        host. ``tcp_port`` -1 means "the same number as the UDP port" (with a UDP port of 0,
        a free number both protocols have; a few tries, since another process may take the
        TCP one between the two binds)."""
        if public_addresses is None:
            public_addresses = [host if host not in ("0.0.0.0", "::") else "127.0.0.1"]
        endpoint, tcp = _bind_endpoints(host, port, tcp_port)
        try:
            return cls(
                endpoint,
                certificate or Certificate.generate(),
                public_addresses,
                consent_timeout=consent_timeout,
                connect_timeout=connect_timeout,
                tcp=tcp,
                tcp_public_port=tcp_public_port,
            )
        except BaseException:
            endpoint.close()
            if tcp is not None:
                tcp.close()
            raise

    async def serve(self) -> None:
        """Read the UDP port (and serve the TCP one) until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.tcp is not None:
                nursery.start_soon(self.tcp.serve)
            await self.endpoint.serve()
            nursery.cancel_scope.cancel()

    def create_peer(self, name: str = "", **options: Any) -> ServerPeerConnection:
        return ServerPeerConnection(self, name=name, **options)

    def close(self) -> None:
        self.endpoint.close()
        if self.tcp is not None:
            self.tcp.close()


#: RtcServer.bind's ``tcp_port`` value for "the same number as the UDP port".
SAME_AS_UDP = -1


def _bind_endpoints(
    host: str, port: int, tcp_port: int | None
) -> tuple[UdpEndpoint, TcpEndpoint | None]:
    tries = 20 if port == 0 and tcp_port == SAME_AS_UDP else 1
    for attempt in range(tries):
        endpoint = UdpEndpoint.bind(host, port)
        if tcp_port is None:
            return endpoint, None
        number = endpoint.local_address[1] if tcp_port == SAME_AS_UDP else tcp_port
        try:
            return endpoint, TcpEndpoint.bind(
                host, number, endpoint.peer_for_ufrag, routes_from=endpoint.routes_from
            )
        except OSError as exc:
            endpoint.close()
            if attempt == tries - 1:
                # Name the port: "[Errno 98] Address already in use" alone says nothing.
                raise OSError(
                    exc.errno, f"ICE-TCP port {host}:{number} (--tcp-port): {exc.strerror}"
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover


class ServerPeerConnection(PeerConnection):
    """One remote peer of the server: ICE-lite, DTLS server, answers first.

    Its address book lives in the shared endpoint: registered under its ICE ufrag at
    creation, every address a valid check came from routes here, all of it forgotten on
    teardown — a peer that leaves leaves no demux entry behind. Which path media takes
    (consent, address moves) is the core's lite rules (:class:`~trio_sfu.proto.peer.PeerCore`);
    the core names a path by the :class:`~trio_sfu.rtc.path.Path` object itself, opaque to it.
    """

    _path_is_address = False

    def __init__(self, server: RtcServer, *, name: str = "", **options: Any) -> None:
        ufrag, pwd = random_ice_credentials()
        options.setdefault("connect_timeout", server.connect_timeout)
        options.setdefault("sctp_max_retransmits", server.sctp_max_retransmits)
        agent = IceLiteAgent(
            ufrag, pwd, consent_timeout=server.consent_timeout, now=trio.current_time()
        )
        super().__init__(
            certificate=server.certificate,
            ice_ufrag=ufrag,
            ice_pwd=pwd,
            ice_lite=True,
            candidates=server.candidates,
            setup_when_answering="passive",
            name=name,
            ice_agent=agent,
            path_usable=_usable,
            **options,
        )
        self.server = server
        self.ice_agent = agent
        #: the SFU's per-packet, per-subscriber send (``DownTrack``): protect a forwarding
        #: group's packet as (our SSRC, transport-cc offset, number) and send it on the media
        #: path — the core's own method (:meth:`PeerCore.send_rtp_as`), so that compiled,
        #: nothing interpreted runs between the down-track and the path's ``send``
        self.send_rtp_as: Callable[[bytes, int, int, int], None] = self._core.send_rtp_as
        self._endpoint = server.endpoint
        self._endpoint.register(self)

    @property
    def path(self) -> Path | None:
        """Where media goes: the selected pair's path (None until a valid check)."""
        path: Path | None = self._core.path
        return path

    @path.setter
    def path(self, path: Path | None) -> None:
        self._core.path = path
        self._core.path_address = path.address if path is not None else None

    @property
    def on_path_changed(self) -> Callable[[float, bool], None] | None:
        """Called when media moves to another path (not for the first one) with whether the
        peer's own media comes over it yet, and again once it does: the SFU asks for
        keyframes, since whatever was sent on the old path meanwhile is lost."""
        return self._core.on_path_changed

    @on_path_changed.setter
    def on_path_changed(self, callback: Callable[[float, bool], None] | None) -> None:
        self._core.on_path_changed = callback

    def abandon(self) -> None:
        """Forget a peer that will never run (its offer was refused): drop its routes."""
        self.closing = True
        self._unregister()

    def _unregister(self) -> None:
        self._endpoint.unregister(self)
        if self.server.tcp is not None:
            self.server.tcp.unregister(self)
        if self.server.on_peer_left is not None:
            self.server.on_peer_left()

    def restart_ice(self, remote_ufrag: str, remote_pwd: str) -> tuple[str, str]:
        """An ICE restart signalled outside SDP (a WHIP/WHEP PATCH carrying an RFC 8840
        fragment): fresh local credentials, returned for the answer fragment.

        Make before break (RFC 8445 §9): the lite agent keeps accepting the previous
        credentials, and the endpoint keeps routing the previous ufrag, until a check with the
        new ones arrives, so media and consent go on over the old pair meanwhile and a restart
        the client never completes costs nothing. The JSEP transport learns both sides' new
        credentials too, so a later offer/answer neither carries stale ones nor mistakes them
        for another restart.
        """
        ufrag, pwd = random_ice_credentials()
        transport = self.jsep.transport
        transport.ice_ufrag, transport.ice_pwd = ufrag, pwd
        self.jsep.remote_ice_ufrag, self.jsep.remote_ice_pwd = remote_ufrag, remote_pwd
        self.ice_agent.restart(ufrag, pwd)
        self.ice_agent.set_remote_credentials(remote_ufrag, remote_pwd)
        self._endpoint.register_ufrags(self)
        log.info("ICE restart", extra=self.log_extra)
        return ufrag, pwd

    # -- called by the endpoint -----------------------------------------------------------

    def address_validated(self, path: Path, nominated: bool, now: float) -> None:
        """A valid check came over ``path``; the lite agent has applied the path rule to it
        (docs/security.md, "Path changes"), and media follows the agent's choice. A client
        whose address changed, or that moved between UDP and TCP, gets the new path once
        authenticated media comes over it or the old one goes silent."""
        core = self._core
        first_path = core.path is None and core.dtls is not None and core.dtls.is_client
        core.address_validated(path, path.address, path.transport, nominated, now)
        if first_path:
            self._flush()  # the first path may have started the DTLS client's handshake

    def path_closed(self, path: Path) -> None:
        """A TCP connection ended: if it carried the media, nothing is sent until the client's
        next valid check on another path (an ICE restart, or consent expiry closes us)."""
        self._core.path_closed(path, path.address)

    # -- PeerConnection hooks -------------------------------------------------------------

    def _ice_authenticated(self, addr: Address, now: float) -> None:
        self._core.authenticated(addr, now)

    def _send_datagram(self, data: bytes | memoryview) -> None:
        path = self._core.path
        if path is not None:
            path.send(data)

    def _send_to(self, data: bytes | memoryview, path: Path) -> None:
        path.send(data)

    def _local_credentials_changed(self) -> None:
        self._endpoint.register_ufrags(self)

    def _teardown(self) -> None:
        self._unregister()
        super()._teardown()


def _usable(path: Path) -> bool:
    """Whether a path can still carry datagrams (a TCP connection closing is not yet
    reported closed): the core asks before moving media to it."""
    return path.usable
