"""The server side: ICE-lite peers on the process's one UDP endpoint.

:class:`RtcServer` is the process-wide context (certificate, endpoint, advertised candidates);
:class:`ServerPeerConnection` is one browser (or bot) talking to us.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Any

import trio
from aioice import Candidate

from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.ice import IceLiteAgent, IceReply
from trio_sfu.proto.jsep import RemoteChanges
from trio_sfu.proto.stun import Message
from trio_sfu.rtc.peer import Address, PeerConnection, random_ice_credentials
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


class RtcServer:
    """What every server peer shares: one certificate, one UDP port, one candidate list.

    ``public_addresses`` are what we advertise (NAT 1:1 / a node's public IP); the socket
    itself may be bound to a wildcard address.
    """

    def __init__(
        self,
        endpoint: UdpEndpoint,
        certificate: Certificate,
        public_addresses: list[str],
        *,
        consent_timeout: float = 30.0,
    ) -> None:
        if not public_addresses:
            raise ValueError("at least one address to advertise is needed")
        for address in public_addresses:
            ipaddress.ip_address(address)  # ValueError names a bad address early
        self.endpoint = endpoint
        self.certificate = certificate
        self.public_addresses = list(public_addresses)
        self.consent_timeout = consent_timeout
        port = endpoint.local_address[1]
        count = len(public_addresses)
        self.candidates = [
            host_candidate(ip, port, local_preference=65535 - i)
            for i, ip in enumerate(public_addresses)
        ]
        assert len(self.candidates) == count

    @classmethod
    def bind(
        cls,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        public_addresses: list[str] | None = None,
        consent_timeout: float = 30.0,
        certificate: Certificate | None = None,
    ) -> RtcServer:
        endpoint = UdpEndpoint.bind(host, port)
        if public_addresses is None:
            public_addresses = [host if host not in ("0.0.0.0", "::") else "127.0.0.1"]
        return cls(
            endpoint,
            certificate or Certificate.generate(),
            public_addresses,
            consent_timeout=consent_timeout,
        )

    async def serve(self) -> None:
        """Read the UDP port until cancelled (one task for the whole process)."""
        await self.endpoint.serve()

    def create_peer(self, name: str = "", **options: Any) -> ServerPeerConnection:
        return ServerPeerConnection(self, name=name, **options)

    def close(self) -> None:
        self.endpoint.close()


class ServerPeerConnection(PeerConnection):
    """One remote peer of the server: ICE-lite, DTLS server, answers first.

    Its address book lives in the shared endpoint: registered under its ICE ufrag at
    creation, every address a valid check came from routes here, all of it forgotten on
    teardown — a peer that leaves leaves no demux entry behind.
    """

    def __init__(self, server: RtcServer, *, name: str = "", **options: Any) -> None:
        ufrag, pwd = random_ice_credentials()
        options.setdefault("connect_timeout", server.consent_timeout)
        super().__init__(
            certificate=server.certificate,
            ice_ufrag=ufrag,
            ice_pwd=pwd,
            ice_lite=True,
            candidates=server.candidates,
            setup_when_answering="passive",
            name=name,
            **options,
        )
        self.server = server
        self.ice_agent = IceLiteAgent(
            ufrag, pwd, consent_timeout=server.consent_timeout, now=trio.current_time()
        )
        self._endpoint = server.endpoint
        self._endpoint.register(self)

    def abandon(self) -> None:
        """Forget a peer that will never run (its offer was refused): drop its routes."""
        self.closing = True
        self._endpoint.unregister(self)

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
        log.info("ICE restart", extra={"peer": self.name})
        return ufrag, pwd

    # -- called by the endpoint -----------------------------------------------------------

    def check_received(self, msg: Message, data: bytes, addr: Address, now: float) -> IceReply:
        """One STUN Binding request carrying our ufrag: the lite agent validates it and applies
        the path rule (docs/security.md, "Path changes"); media follows its choice."""
        agent = self.ice_agent
        agent.heard(self.heard_at)
        reply = agent.handle_request(msg, data, addr, now)
        if reply.valid:
            self._follow_path(now)
        return reply

    def _follow_path(self, now: float) -> None:
        selected = self.ice_agent.selected
        if selected == self.remote_address:
            return
        if self.remote_address is not None:
            log.info(
                "peer address changed",
                extra={"peer": self.name, "old": self.remote_address, "new": selected},
            )
        self.remote_address = selected
        self.heard_at = now

    # -- PeerConnection hooks -------------------------------------------------------------

    def _ice_authenticated(self, addr: Address, now: float) -> None:
        agent = self.ice_agent
        agent.heard(self.heard_at)
        agent.authenticated(addr, now)
        self._follow_path(now)

    def _send_datagram(self, data: bytes) -> None:
        addr = self.remote_address
        if addr is not None:
            self._endpoint.sendto(data, addr)

    def _ice_remote_credentials(
        self,
        ufrag: str,
        pwd: str,
        candidates: list[Candidate],
        changes: RemoteChanges,
        now: float,
    ) -> None:
        agent = self.ice_agent
        transport = self.jsep.transport
        if transport.ice_ufrag != agent.local_ufrag:
            # Our answer to an ICE restart carries fresh local credentials (RFC 8839 §4.4.1.1.2).
            agent.restart(transport.ice_ufrag, transport.ice_pwd)
            self._endpoint.register_ufrags(self)
        agent.set_remote_credentials(ufrag, pwd)

    def _ice_ready(self) -> bool:
        return self.remote_address is not None

    def _ice_deadline(self) -> float | None:
        agent = self.ice_agent
        agent.heard(self.heard_at)
        path = agent.path_deadline
        consent = agent.consent_expires_at
        return consent if path is None else min(path, consent)

    def _ice_handle_timer(self, now: float) -> None:
        agent = self.ice_agent
        agent.heard(self.heard_at)
        if agent.handle_timer(now):
            self._follow_path(now)
        if agent.consent_expired(now):
            self.close("consent timeout")

    def _teardown(self) -> None:
        self._endpoint.unregister(self)
        super()._teardown()
