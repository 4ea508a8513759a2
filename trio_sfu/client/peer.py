"""A WebRTC client on trio-sfu's own stack: offerer, controlling ICE, DTLS client.

Used by the tests, the load tester and Python bots. It owns one UDP socket (one host
candidate) and a reader task in the peer's nursery; the rest is the shared
:class:`~trio_sfu.rtc.peer.PeerConnection`.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from aioice import Candidate

from trio_sfu.proto import stun
from trio_sfu.proto.dtls import Certificate
from trio_sfu.proto.errors import StunError
from trio_sfu.proto.ice import Connected as IceConnected
from trio_sfu.proto.ice import ConsentLost, Failed, IceControllingAgent
from trio_sfu.proto.jsep import RemoteChanges
from trio_sfu.proto.srtp import MAX_DATAGRAM
from trio_sfu.rtc.demux import KIND_BY_FIRST_BYTE, Kind
from trio_sfu.rtc.peer import Address, PeerConnection, random_ice_credentials
from trio_sfu.rtc.server import host_candidate

log = logging.getLogger(__name__)


def _bind(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _IceRestart:
    """A restart in progress: a second agent checking with the new credentials (from a second
    socket when rebinding) while the current one keeps media and consent going."""

    agent: IceControllingAgent
    sock: socket.socket | None  # None: the current socket
    ufrag: str
    pwd: str
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    reader_scope: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    succeeded: bool = False


class SharedReader:
    """One task reading many clients' sockets (the load tester's hundreds of subscribers).

    Each client owning a reader task means one Trio wake-up per socket per burst; here one
    wake-up (the epoll set becoming readable) drains every socket that has data, so the tester
    is not the bottleneck as early. Pass it as ``shared_reader`` and run :meth:`run` in a
    nursery that outlives the clients.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, tuple[socket.socket, Callable[[bytes, Address, float], None]]] = {}

    def add(self, sock: socket.socket, received: Callable[[bytes, Address, float], None]) -> None:
        # A busy tester must not lose what the server sent: room for ~1 s of a subscriber's
        # media while this process catches up (the default buffer holds ≈ 90 datagrams).
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:  # pragma: no cover - capped by the kernel, not fatal
            pass
        fd = sock.fileno()
        self._clients[fd] = (sock, received)
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:  # the fd number of a socket closed before, reused
            self._epoll.modify(fd, select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and self._clients.pop(fd, None) is not None and not self._epoll.closed:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    async def run(self) -> None:
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        epoll = self._epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                now = trio.current_time()
                for fd, _ in epoll.poll(0):
                    entry = self._clients.get(fd)
                    if entry is None:
                        continue
                    sock, received = entry
                    for _ in range(64):  # the rest waits for the next round: fairness
                        try:
                            n, addr = sock.recvfrom_into(buf)
                        except BlockingIOError:
                            break
                        except OSError:
                            break
                        received(bytes(view[:n]), addr[:2], now)
        finally:
            epoll.close()


class ClientPeerConnection(PeerConnection):
    """The offering side. Typical use::

    pc = ClientPeerConnection()
    channel = pc.create_data_channel("chat")
    answer = await signal(pc.create_offer())   # e.g. one HTTP POST
    pc.handle_answer(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(pc.run)
        await pc.wait_connected()
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        certificate: Certificate | None = None,
        name: str = "",
        consent_interval: float = 5.0,
        shared_reader: SharedReader | None = None,
        **options: Any,
    ) -> None:
        ipaddress.ip_address(host)
        self._shared_reader = shared_reader
        self._sock = _bind(host)
        ufrag, pwd = random_ice_credentials()
        super().__init__(
            certificate=certificate or Certificate.generate(),
            ice_ufrag=ufrag,
            ice_pwd=pwd,
            ice_lite=False,
            candidates=[host_candidate(host, self._sock.getsockname()[1])],
            setup_when_answering="active",
            name=name,
            new_transceiver_direction=options.pop("new_transceiver_direction", "recvonly"),
            **options,
        )
        self.host = host
        # RFC 7675 §5.1: a consent check every ~5 s (randomised), well inside the server's
        # 30 s timeout; tests with a shorter server timeout shorten this too.
        self.consent_interval = consent_interval
        self.ice_agent = IceControllingAgent(ufrag, pwd, consent_interval=consent_interval)
        self._ice_started = False
        self._reader_scope: trio.CancelScope | None = None
        self._restart: _IceRestart | None = None

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return host, port

    # -- socket ---------------------------------------------------------------------------

    async def _start_io(self, nursery: trio.Nursery) -> None:
        if self._shared_reader is not None:
            self._shared_reader.add(self._sock, self._received)
            return
        self._reader_scope = await nursery.start(self._reader, self._sock)

    async def _reader(
        self,
        sock: socket.socket,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            buf = bytearray(MAX_DATAGRAM)  # longer ones arrive truncated and fail SRTP checks
            view = memoryview(buf)
            while True:
                await trio.lowlevel.wait_readable(sock)
                now = trio.current_time()
                for _ in range(256):
                    try:
                        n, addr = sock.recvfrom_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                    self._received(bytes(view[:n]), addr[:2], now)
                else:
                    await trio.lowlevel.checkpoint()

    def _received(self, data: bytes, addr: Address, now: float) -> None:
        if not data:
            return
        kind = KIND_BY_FIRST_BYTE[data[0]]
        if kind is Kind.STUN:
            try:
                msg = stun.parse(data)
            except StunError:
                return
            self.ice_agent.receive(msg, data, addr, now)
            restart = self._restart
            if restart is not None:
                # Both agents see every STUN message: each keeps only its own transactions.
                restart.agent.receive(msg, data, addr, now)
            self._ice_pump(now)
        elif kind is not Kind.UNKNOWN and addr == self.remote_address:
            self.datagram_received(kind, data, addr, now)

    def _send_datagram(self, data: bytes | memoryview) -> None:
        addr = self.remote_address
        if addr is None:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, OSError):
            self.stats.media_not_sent += 1

    async def rebind(self) -> Address:
        """Move to a new local port mid-session (a NAT rebinding, a network change). The next
        consent check goes out at once from the new port; the lite server moves the pair there
        and media continues without renegotiation."""
        if self._nursery is None:
            raise RuntimeError("the peer is not running")
        old = self._sock
        self._sock = _bind(self.host)
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self._reader_scope = await self._nursery.start(self._reader, self._sock)
        trio.lowlevel.notify_closing(old)
        old.close()
        now = trio.current_time()
        self.ice_agent.refresh(now)
        self._ice_pump(now)
        log.info("client rebound", extra={"peer": self.name, "addr": self.local_address})
        return self.local_address

    # -- ICE restart (RFC 8445 §9), signalled by the caller (e.g. a WHIP/WHEP PATCH) -------

    def begin_ice_restart(self, *, rebind: bool = False) -> tuple[str, str]:
        """New local ICE credentials to signal to the peer; nothing changes on the wire yet.

        With ``rebind`` the new checks (and, once they work, all traffic) use a new local
        port, as after a network change. Media keeps flowing on the current pair until
        :meth:`complete_ice_restart` succeeds.
        """
        if self._nursery is None or self.closing:
            raise RuntimeError("the peer is not running")
        self.abandon_ice_restart()
        ufrag, pwd = random_ice_credentials()
        agent = IceControllingAgent(
            ufrag,
            pwd,
            tie_breaker=self.ice_agent.tie_breaker,
            consent_interval=self.consent_interval,
            consent_timeout=self.ice_agent.consent_timeout,
        )
        sock = _bind(self.host) if rebind else None
        self._restart = _IceRestart(agent, sock, ufrag, pwd)
        return ufrag, pwd

    async def complete_ice_restart(
        self,
        remote_ufrag: str,
        remote_pwd: str,
        candidates: list[Candidate] | None = None,
        *,
        timeout: float = 10.0,
    ) -> bool:
        """Check the peer with its new credentials; True once the new pair carries the
        session. False (the restart abandoned, the old pair untouched) when the checks fail
        or ``timeout`` passes. ``candidates`` default to the peer's current ones (a lite
        server keeps its addresses across a restart)."""
        restart = self._restart
        if restart is None or self._nursery is None:
            raise RuntimeError("no ICE restart begun (begin_ice_restart)")
        if candidates is None:
            remote = list(self.ice_agent.remote_candidates)
        else:
            remote = self._usable_candidates(candidates)
        restart.remote_ufrag, restart.remote_pwd = remote_ufrag, remote_pwd
        if restart.sock is not None:
            restart.reader_scope = await self._nursery.start(self._reader, restart.sock)
        now = trio.current_time()
        restart.agent.set_remote(remote_ufrag, remote_pwd, remote)
        restart.agent.start(now)
        self._ice_pump(now)
        with trio.move_on_after(timeout):
            await restart.done.wait()
        if not restart.succeeded:
            if self._restart is restart:
                self.abandon_ice_restart()
            log.info("ICE restart failed", extra={"peer": self.name})
        return restart.succeeded

    def abandon_ice_restart(self) -> None:
        """Forget a restart in progress (e.g. the peer refused it); the current pair stays."""
        restart, self._restart = self._restart, None
        if restart is None:
            return
        if restart.reader_scope is not None:
            restart.reader_scope.cancel()
        if restart.sock is not None:
            trio.lowlevel.notify_closing(restart.sock)
            restart.sock.close()
        restart.done.set()

    def _restart_connected(self, restart: _IceRestart, addr: Address) -> None:
        """The new pair works: it becomes the session's (media follows, the old pair ends)."""
        self._restart = None
        self.ice_agent = restart.agent
        if restart.sock is not None:
            old = self._sock
            self._sock = restart.sock
            if self._reader_scope is not None:
                self._reader_scope.cancel()
            self._reader_scope = restart.reader_scope
            trio.lowlevel.notify_closing(old)
            old.close()
        self.remote_address = addr
        transport = self.jsep.transport
        transport.ice_ufrag, transport.ice_pwd = restart.ufrag, restart.pwd
        self.jsep.remote_ice_ufrag = restart.remote_ufrag
        self.jsep.remote_ice_pwd = restart.remote_pwd
        restart.succeeded = True
        restart.done.set()
        log.info("ICE restart done", extra={"peer": self.name, "addr": addr})

    # -- ICE ------------------------------------------------------------------------------

    def _ice_remote_credentials(
        self,
        ufrag: str,
        pwd: str,
        candidates: list[Candidate],
        changes: RemoteChanges,
        now: float,
    ) -> None:
        if self._ice_started:
            return
        self.ice_agent.set_remote(ufrag, pwd, self._usable_candidates(candidates))
        self.ice_agent.start(now)
        self._ice_started = True
        self._ice_pump(now)

    def _usable_candidates(self, candidates: list[Candidate]) -> list[Address]:
        """UDP host addresses of our family, highest priority first (mDNS names skipped)."""
        family = self._sock.family
        usable: list[tuple[int, Address]] = []
        for c in candidates:
            if c.transport.lower() != "udp" or c.component != 1:
                continue
            try:
                ip = ipaddress.ip_address(c.host)
            except ValueError:
                continue  # mDNS names are not resolved here
            if (ip.version == 6) != (family == socket.AF_INET6):
                continue
            usable.append((c.priority, (c.host, c.port)))
        usable.sort(key=lambda item: -item[0])
        return [addr for _, addr in usable]

    def _ice_pump(self, now: float) -> None:
        restart = self._restart
        if restart is not None:
            self._restart_pump(restart, now)
        agent = self.ice_agent
        for datagram, addr in agent.datagrams_to_send(now):
            try:
                self._sock.sendto(datagram, addr)
            except (BlockingIOError, OSError):
                pass
        while (event := agent.next_event()) is not None:
            if isinstance(event, IceConnected):
                self.remote_address = event.addr
                dtls = self._dtls
                if dtls is not None:
                    dtls.start(now)
                    self._pump(now)
            elif isinstance(event, Failed):
                self.close(f"ice failed: {event.reason}")
            elif isinstance(event, ConsentLost):
                self.close("consent lost")
        if self._next_deadline() < self._armed_deadline:
            self._wakeup.set()

    def _restart_pump(self, restart: _IceRestart, now: float) -> None:
        sock = restart.sock if restart.sock is not None else self._sock
        for datagram, addr in restart.agent.datagrams_to_send(now):
            try:
                sock.sendto(datagram, addr)
            except (BlockingIOError, OSError):
                pass
        while (event := restart.agent.next_event()) is not None:
            if isinstance(event, IceConnected):
                self._restart_connected(restart, event.addr)
                return
            if isinstance(event, Failed | ConsentLost):
                # A failed restart is not a failed session: the old pair goes on.
                self.abandon_ice_restart()
                return

    def _ice_ready(self) -> bool:
        return self.remote_address is not None

    def _ice_deadline(self) -> float | None:
        timer = self.ice_agent.get_timer()
        restart = self._restart
        if restart is not None:
            other = restart.agent.get_timer()
            if other is not None and (timer is None or other < timer):
                timer = other
        return timer

    def _ice_handle_timer(self, now: float) -> None:
        restart = self._restart
        if restart is not None:
            timer = restart.agent.get_timer()
            if timer is not None and timer <= now:
                restart.agent.handle_timer(now)
                self._ice_pump(now)
        timer = self.ice_agent.get_timer()
        if timer is not None and timer <= now:
            self.ice_agent.handle_timer(now)
            self._ice_pump(now)

    def _teardown(self) -> None:
        self.abandon_ice_restart()
        super()._teardown()
        if self._shared_reader is not None:
            self._shared_reader.remove(self._sock)
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
