"""The one UDP port of a trio-sfu process, shared by every peer (ICE-lite, RFC 8445 §2.5).

Why a raw non-blocking socket and not ``trio.socket``: the per-packet floors in DESIGN.md show
Trio's wrappers cost 2–3x the system call itself. The reader drains the socket with
``recvfrom_into`` until ``BlockingIOError`` and only then waits with
``trio.lowlevel.wait_readable``; every datagram is dispatched by a plain function call, so media
forwarding never hops through a channel or a task switch.

Security rule (the issue's ICE requirement): an address is routed to a peer only after a STUN
Binding request from it carried that peer's USERNAME and a valid MESSAGE-INTEGRITY and
FINGERPRINT, and never while another connected peer owns it. DTLS and SRTP from unknown
addresses are dropped and counted. A client whose address changed keeps its session: its valid
check registers the new address, and the lite agent moves media there once authenticated
SRTP/DTLS arrives from it (docs/security.md, "Path changes").
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from trio_sfu.proto import stun
from trio_sfu.proto.errors import StunError
from trio_sfu.proto.ice import IceLiteAgent, IceReply
from trio_sfu.proto.srtp import MAX_DATAGRAM
from trio_sfu.rtc.budget import BUDGET, Continuation
from trio_sfu.rtc.counters import CheckStats, EndpointStats
from trio_sfu.rtc.demux import KIND_BY_FIRST_BYTE, Kind
from trio_sfu.rtc.path import Address, Path
from trio_sfu.rtc.udp_path import UdpPath

log = logging.getLogger(__name__)


#: A peer keeps at most this many validated addresses (a browser checks from several local
#: candidates); the oldest non-selected one is forgotten first.
MAX_ADDRESSES_PER_PEER = 8

#: Datagrams read per pass before yielding to other tasks. Reading is cheap (≈ 2 µs); what
#: bounds a pass is SLICE, so this may exceed what a slice forwards: at overload the kernel's
#: queue is drained every pass (a consent check never waits there behind seconds of media)
#: and the excess waits in ``serve``'s own queue, where its age is known.
BATCH = 1024

#: Seconds of media dispatch after which the reader stops forwarding for this pass: what it
#: reads after that is queued (STUN and DTLS still answered at once) and it yields, so HTTP
#: requests and the peers' timers run every few ms even when the socket never runs dry. A
#: count alone cannot bound it: one incoming packet costs ≈ 20 µs to a room of one and
#: ≈ 4 ms to a room of 400 (bench/pod.py --saturate, docs/benchmarks.md).
SLICE = 0.005

#: The slice while other tasks are waiting to run (an HTTP join, a DTLS handshake, a peer's
#: timers). A join is ≈ 30 scheduling rounds of Hypercorn, Quart and the SFU, and at
#: saturation each round waits one pass of the reader: 30 × SLICE ≈ 165-200 ms p50 for a POST
#: → 201 (bench/pod.py --saturate). While others ran in its last two passes, the reader's
#: next pass is this short; a pass with nobody else to run is SLICE again, so a pod that only
#: forwards media yields no more often than before.
SHARED_SLICE = 0.001

#: Media that waited longer than this for the reader is dropped, oldest first: at overload
#: the queue would otherwise grow until the kernel's buffer is full, seconds deep at a large
#: fan-out. Consent checks never wait in this queue (they are answered as they are read), so
#: this bounds media latency and memory only; a second keeps what a pause of the process
#: (a full garbage collection of a large heap takes 0.1–0.3 s, docs/benchmarks.md) leaves
#: behind. Every subscriber of a stream loses the same packets: the loss is shared fairly.
MAX_QUEUE_AGE = 1.0

#: At most this many datagrams wait in the reader's queue (≈ 5 MiB of media, about what the
#: kernel's buffer held before), the oldest dropped first.
MAX_PENDING = 4096

#: RFC 7983 §7: a first byte of 128–191 is RTP/RTCP; what is below (STUN 0–3, DTLS 20–63) is
#: the control the reader must never let wait behind media.
FIRST_MEDIA_BYTE = 128

_clock = time.perf_counter  # a name of its own, so tests can drive the slice

# Linux <linux/in.h> / <linux/in6.h>; Python < 3.12 lacks IP_PKTINFO.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
#: Room for one in_pktinfo (12 bytes) or in6_pktinfo (20 bytes) control message.
PKTINFO_SPACE = socket.CMSG_SPACE(20)

#: The control message that makes ``sendmsg`` use a given local source address.
SourceCmsg = list[tuple[int, int, bytes]]


def source_cmsg(ancillary: list[tuple[int, int, bytes]]) -> SourceCmsg | None:
    """From a received datagram's IP_PKTINFO / IPV6_PKTINFO data, the control message that
    sends a reply from the very address the datagram was sent to (with the same interface for
    IPv6, which link-local addresses need). None if the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {ifindex; spec_dst; addr}: addr is the header's destination;
            # for sending, spec_dst is the source and ifindex 0 leaves routing to the kernel.
            return [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + data[8:12] + bytes(4))]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo {addr; ifindex}: the same layout both ways.
            return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, bytes(data[:20]))]
    return None


class EndpointPeer(Protocol):
    """What the endpoint needs from a peer connection; implemented by ``rtc.peer``."""

    ice_agent: IceLiteAgent
    remote_address: Address | None
    path: Path | None  # where media goes (the selected pair's path)
    heard_at: float  # last authenticated media on the selected pair (consent, RFC 7675)

    @property
    def connected(self) -> bool: ...

    def datagram_received(self, kind: Kind, data: bytes, addr: Address, now: float) -> None: ...

    def address_validated(self, path: Path, nominated: bool, now: float) -> None: ...

    def path_closed(self, path: Path) -> None: ...


def authenticate_check(
    data: bytes,
    addr: Address,
    now: float,
    lookup: Callable[[str], EndpointPeer | None],
    stats: CheckStats,
    *,
    owner: EndpointPeer | None = None,
) -> tuple[EndpointPeer | None, IceReply | None]:
    """Parse a STUN datagram and let the peer its USERNAME names judge it (RFC 8445 §7.3).

    Returns the peer (None for an unknown USERNAME: no answer at all, so scanners learn
    nothing) and the agent's reply, whose ``response`` goes back over the same path and whose
    ``valid`` says whether the path may be routed to that peer. Counts into ``stats``.

    ``owner`` is the peer the source address is already bound to, if any: an address bound
    to a connected peer is never handed to another session, whatever that session's
    credentials (docs/security.md, "Path changes") — a valid check of one's own session from
    a spoofed source would otherwise steal the victim's media. Such a check gets no answer.
    """
    try:
        msg = stun.parse(data)
    except StunError:
        stats.stun_malformed += 1
        return None, None
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
        stats.stun_ignored += 1
        return None, None
    try:
        local_ufrag, _ = stun.username_parts(msg)
    except StunError:
        stats.stun_rejected += 1
        return None, None
    peer = lookup(local_ufrag)
    if peer is None:
        stats.stun_unknown_user += 1
        return None, None
    if owner is not None and owner is not peer and owner.connected:
        stats.stun_address_taken += 1
        return None, None
    agent = peer.ice_agent
    agent.heard(peer.heard_at)  # the path rule weighs how recently the current pair was heard
    reply = agent.handle_request(msg, data, addr, now)
    if not reply.valid:
        stats.stun_rejected += 1
    return peer, reply


class _OthersRan(trio.abc.Instrument):
    """Notes whether a task other than the reader stepped since ``ran`` was cleared (Trio calls
    ``before_task_step`` for every task step while the instrument is installed). Installed
    only while the reader has a backlog, so an unsaturated pod pays nothing for it."""

    __slots__ = ("_installed", "_reader", "ran")

    def __init__(self, reader: trio.lowlevel.Task) -> None:
        self._reader = reader
        self._installed = False
        self.ran = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self._reader:
            self.ran = True

    def install(self) -> None:
        if not self._installed:
            trio.lowlevel.add_instrument(self)
            self._installed = True
            self.ran = False

    def uninstall(self) -> None:
        if self._installed:
            trio.lowlevel.remove_instrument(self)
            self._installed = False


class UdpEndpoint:
    """One socket, many peers: the demux tables live here and nowhere else."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # Bound to a wildcard address, the kernel would pick each reply's source address by
        # route, not by where the peer sent to: ask for the destination of every datagram
        # and send from it (bench/source_address.py measured this at ≈ 0.6 µs per packet
        # each way; a socket bound to one address needs none of it).
        host = sock.getsockname()[0]
        self._pktinfo = host in ("0.0.0.0", "::")
        if self._pktinfo:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        #: per validated remote address, the local address its checks arrive on
        self._source_of: dict[Address, SourceCmsg] = {}
        self._by_addr: dict[Address, EndpointPeer] = {}
        self._by_ufrag: dict[str, EndpointPeer] = {}
        self._addrs_of: dict[int, list[Address]] = {}  # id(peer) -> its addresses, oldest first
        self._ufrags_of: dict[int, tuple[str, ...]] = {}  # id(peer) -> the ufrags routed to it
        #: routed addresses per remote host (the ICE-TCP port keeps silent backup connections
        #: from hosts that have a live session: ``TcpEndpoint``'s parking)
        self._per_host: dict[str, int] = {}
        self.stats = EndpointStats()

    @classmethod
    def bind(cls, host: str = "0.0.0.0", port: int = 0) -> UdpEndpoint:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Room for bursts (a keyframe is dozens of packets arriving at once).
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                except OSError:  # pragma: no cover - capped by the kernel, not fatal
                    pass
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return host, port

    # -- registration ---------------------------------------------------------------------

    def register(self, peer: EndpointPeer) -> None:
        """Make ``peer`` reachable through STUN checks carrying its local ufrag."""
        for ufrag in peer.ice_agent.local_ufrags:
            other = self._by_ufrag.get(ufrag)
            if other is not None and other is not peer:
                raise ValueError(f"ICE ufrag {ufrag!r} already registered")
        self.register_ufrags(peer)

    def register_ufrags(self, peer: EndpointPeer) -> None:
        """Route exactly the ufrags the peer's agent accepts now (two during an ICE restart,
        one again once the restart completes): every restart would otherwise leave a stale
        route behind (issue 14 item 5)."""
        ufrags = peer.ice_agent.local_ufrags
        for ufrag in self._ufrags_of.get(id(peer), ()):
            if ufrag not in ufrags and self._by_ufrag.get(ufrag) is peer:
                del self._by_ufrag[ufrag]
        for ufrag in ufrags:
            self._by_ufrag.setdefault(ufrag, peer)
        self._ufrags_of[id(peer)] = ufrags
        self._addrs_of.setdefault(id(peer), [])

    def unregister(self, peer: EndpointPeer) -> None:
        """Forget every route to ``peer``; safe to call twice."""
        for ufrag in self._ufrags_of.pop(id(peer), ()):
            if self._by_ufrag.get(ufrag) is peer:
                del self._by_ufrag[ufrag]
        for addr in self._addrs_of.pop(id(peer), []):
            if self._by_addr.get(addr) is peer:
                self._unroute(addr)

    def peers(self) -> int:
        """How many peers are registered (created and not yet torn down)."""
        return len(self._addrs_of)

    def demux_entries(self) -> int:
        """How many routes exist (tests assert it returns to zero after peers leave)."""
        return (
            len(self._by_addr)
            + len(self._by_ufrag)
            + len(self._addrs_of)
            + len(self._source_of)
            + len(self._per_host)
        )

    def _add_address(self, peer: EndpointPeer, addr: Address, keep: Address | None) -> None:
        other = self._by_addr.get(addr)
        if other is peer:
            return
        if other is not None:
            # The address moved to another session whose owner never connected (a client
            # reused its socket for a new offer): the valid check from it is the newer truth.
            olds = self._addrs_of.get(id(other))
            if olds is not None and addr in olds:
                olds.remove(addr)
        else:
            self._per_host[addr[0]] = self._per_host.get(addr[0], 0) + 1
        addrs = self._addrs_of.setdefault(id(peer), [])
        addrs.append(addr)
        self._by_addr[addr] = peer
        while len(addrs) > MAX_ADDRESSES_PER_PEER:
            # Forget the oldest address that is neither the selected one nor the newest.
            victim = next((a for a in addrs[:-1] if a != keep), addrs[0])
            addrs.remove(victim)
            if self._by_addr.get(victim) is peer:
                self._unroute(victim)

    def _unroute(self, addr: Address) -> None:
        del self._by_addr[addr]
        self._source_of.pop(addr, None)
        host = addr[0]
        left = self._per_host[host] - 1
        if left:
            self._per_host[host] = left
        else:
            del self._per_host[host]

    def routes_from(self, host: str) -> int:
        """How many validated addresses of live sessions are on ``host``."""
        return self._per_host.get(host, 0)

    # -- sending --------------------------------------------------------------------------

    def sendto(
        self, data: bytes | memoryview, addr: Address, source: SourceCmsg | None = None
    ) -> None:
        """Send now or drop: a full socket buffer must never block the reader (DESIGN.md).

        From the local address ``addr``'s checks arrived on (``source``, or the one recorded
        for ``addr``), so a peer sees answers and media from the address it talks to."""
        if source is None and self._pktinfo:
            source = self._source_of.get(addr)  # only a wildcard bind records sources
        try:
            if source is None:
                self._sock.sendto(data, addr)
            else:
                self._sock.sendmsg((data,), source, 0, addr)
        except OSError as exc:
            self._send_failed(exc, addr)
            return
        stats = self.stats
        stats.datagrams_out += 1
        stats.bytes_out += len(data)

    def _send_failed(self, exc: OSError, addr: Address) -> None:
        if isinstance(exc, BlockingIOError):
            self.stats.send_dropped += 1
            return
        # ECONNREFUSED and friends come back from ICMP; the peer's consent timer decides.
        if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            log.debug("udp send failed", extra={"addr": addr, "error": str(exc)})
        self.stats.send_errors += 1

    # -- receiving ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and dispatch until cancelled or closed. Runs in the process's root nursery.

        Media is forwarded inline as it is read, for SLICE seconds per pass; once a pass has
        spent its slice, media read after that waits in ``pending`` (oldest first, dropped
        past MAX_QUEUE_AGE or MAX_PENDING) while STUN and DTLS are handled as they are read,
        and the reader yields before the next pass. So a consent check waits at most about
        one slice behind media, and the HTTP server runs between passes, however busy the
        socket."""
        sock = self._sock
        buf = bytearray(MAX_DATAGRAM)  # longer ones arrive truncated and fail SRTP checks
        view = memoryview(buf)
        recv = sock.recvfrom_into
        recvmsg = sock.recvmsg_into
        bufs = [buf]
        pktinfo = self._pktinfo
        ancillary: list[tuple[int, int, bytes]] = []
        stats = self.stats
        dispatch = self.dispatch
        pending: deque[tuple[bytes, Address, float]] = deque()
        clock = _clock
        others = _OthersRan(trio.lowlevel.current_task())
        shared = 0  # passes left with SHARED_SLICE since others last ran
        budget = BUDGET
        #: fan-outs a slice cut short (rtc/budget.py): this reader's own, so what it defers is
        #: never run by another endpoint's reader, and goes with it when it ends
        leftover: deque[Continuation] = deque()
        try:
            while True:
                if not pending and not leftover:
                    others.uninstall()
                    shared = 0
                    try:
                        await trio.lowlevel.wait_readable(sock)
                    except trio.ClosedResourceError:
                        return  # close() ends serve()
                elif sock.fileno() < 0:
                    return
                now = trio.current_time()
                deadline = clock() + (SHARED_SLICE if shared else SLICE)
                # The forwarding code defers what is past it (rtc/budget.py); reset below
                # before every await, so no other task's sends are ever deferred.
                budget.deadline = deadline
                budget.leftover = leftover
                while leftover:
                    # The rest of a packet's fan-out goes before any datagram read after it.
                    leftover.popleft()(now)
                    if clock() >= deadline:
                        break
                if pending and not leftover:
                    # What waited from earlier passes goes first, the stale part dropped unsent.
                    stale = now - MAX_QUEUE_AGE
                    while pending and pending[0][2] < stale:
                        pending.popleft()
                        stats.overload_dropped += 1
                    while pending:
                        data, addr, _ = pending.popleft()
                        # Today's time, not the arrival's: a peer's clock never runs backwards.
                        dispatch(data, addr, now)
                        if leftover or clock() >= deadline:
                            break
                for _ in range(BATCH):
                    try:
                        if pktinfo:
                            n, ancillary, _, addr = recvmsg(bufs, PKTINFO_SPACE)
                        else:
                            n, addr = recv(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        # Linux reports an earlier ICMP error on the next recv; nothing to read.
                        continue
                    stats.datagrams_in += 1
                    stats.bytes_in += n
                    if (
                        n
                        and buf[0] >= FIRST_MEDIA_BYTE
                        and (pending or leftover or clock() >= deadline)
                    ):
                        if len(pending) >= MAX_PENDING:
                            pending.popleft()
                            stats.overload_dropped += 1
                        pending.append((bytes(view[:n]), addr[:2], now))
                    else:
                        dispatch(bytes(view[:n]), addr[:2], now, ancillary)
                budget.deadline = math.inf
                if pending or leftover:
                    # The slice is spent: let the rest of the process run before the next
                    # pass, which is short if anyone did (SHARED_SLICE).
                    others.install()
                    await trio.lowlevel.checkpoint()
                    # Trio runs a pass's ready tasks in random order, so a task that runs
                    # every pass may step before the reader in one and after it in the next:
                    # what ran between two resumes says little, two such windows always
                    # hold one whole pass. So the slice stays short for two passes.
                    if others.ran:
                        others.ran = False
                        shared = 2
                    elif shared:
                        shared -= 1
        finally:
            budget.deadline = math.inf
            others.uninstall()

    def dispatch(
        self,
        data: bytes,
        addr: Address,
        now: float,
        ancillary: list[tuple[int, int, bytes]] | None = None,
    ) -> None:
        """Route one datagram. Never raises for anything the network can send. ``ancillary``
        is the datagram's IP_PKTINFO data (where it was sent to), read only for STUN."""
        if not data:
            self.stats.unknown_kind += 1
            return
        kind = KIND_BY_FIRST_BYTE[data[0]]
        if kind is Kind.SRTP or kind is Kind.DTLS:
            peer = self._by_addr.get(addr)
            if peer is None:
                self.stats.unknown_address += 1
                return
            peer.datagram_received(kind, data, addr, now)
        elif kind is Kind.STUN:
            self._stun_received(data, addr, now, source_cmsg(ancillary) if ancillary else None)
        else:
            self.stats.unknown_kind += 1

    def peer_for_ufrag(self, ufrag: str) -> EndpointPeer | None:
        """The live peer whose local ICE ufrag this is (the TCP endpoint shares the table)."""
        return self._by_ufrag.get(ufrag)

    def _stun_received(
        self, data: bytes, addr: Address, now: float, source: SourceCmsg | None = None
    ) -> None:
        peer, reply = authenticate_check(
            data, addr, now, self._by_ufrag.get, self.stats, owner=self._by_addr.get(addr)
        )
        if peer is None or reply is None:
            return
        if reply.response is not None:
            self.sendto(reply.response, addr, source)
        if not reply.valid:
            return
        if peer.ice_agent.local_ufrags != self._ufrags_of.get(id(peer)):
            self.register_ufrags(peer)  # a check with new credentials completed a restart
        self._add_address(peer, addr, keep=peer.remote_address)
        if source is not None and self._by_addr.get(addr) is peer:
            # Media to this address leaves from where its checks arrive (RFC 8445 §7.3:
            # the response's source is the request's destination; symmetric for media too).
            self._source_of[addr] = source
        peer.address_validated(UdpPath(self, addr), reply.nominated, now)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
