"""ICE over TCP on one port per process: passive host candidates (RFC 6544), RFC 4571 framing.

Why: many corporate and hotel networks drop UDP, and a browser that cannot reach the UDP port
gets no media at all. Browsers open an "active" TCP connection to our "passive" candidate and
run ICE, DTLS and SRTP over it exactly as over UDP, each datagram framed by a 16-bit length.

Rules, the same as the UDP endpoint's (``rtc/udp.py``):

* A connection is bound to a peer only after a STUN Binding request on it carried that peer's
  USERNAME and a valid MESSAGE-INTEGRITY and FINGERPRINT (RFC 8445 §7.3). Anything else first
  — garbage, an unknown USERNAME, a bad signature, DTLS or RTP, a first frame longer than any
  check — closes the connection, and one that sends nothing valid is closed after
  ``bind_timeout``. At most ``max_pending`` unbound
  connections exist at once; the oldest goes first, so a flood cannot starve real clients.
* Except a *backup*: Chromium opens its TCP connection to our passive candidate when it learns
  it, then sends nothing on it while its UDP pair works, and checks it only once UDP fails
  (its pair went weak: 2.5 s without input). Closing it at ``bind_timeout`` left a call whose
  UDP failed after 10 s with no TCP path at all (measured: the call died instead of moving).
  So a connection that has sent nothing when its ``bind_timeout`` ends is *parked* for another
  ``bind_timeout``, again and again, while its host has a validated UDP address of a live
  session, up to ``PARKED_PER_ROUTE`` per such address. A flood from any other host is closed
  as before, and one from a client's own host holds a few sockets, not the port.
* Once bound, every frame is demultiplexed by its first byte (RFC 7983) and handed to that
  peer; a check with another peer's USERNAME is refused (a connection never changes owner).
* Sending is synchronous and never blocks (DESIGN.md, hot path): a frame is written straight
  to the non-blocking socket when nothing is queued, otherwise appended to a per-connection
  buffer of at most ``send_buffer`` bytes that the connection's writer task drains. A frame that
  does not fit is dropped whole (framing stays intact) and counted: one slow TCP reader loses
  its own media and delays nobody else — not the UDP reader, not other connections.

The connection is the peer's :class:`~trio_sfu.rtc.path.Path` while it is the selected pair;
when it closes, the peer is told (``path_closed``) and waits for a check on another path (a
client that lost TCP restarts ICE or its consent expires).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import trio

from trio_sfu.proto.framing import MAX_FRAME, Deframer
from trio_sfu.rtc.counters import TcpStats
from trio_sfu.rtc.demux import KIND_BY_FIRST_BYTE, Kind
from trio_sfu.rtc.path import Address
from trio_sfu.rtc.udp import EndpointPeer, authenticate_check

log = logging.getLogger(__name__)

#: Seconds an accepted connection may take to send a valid check before it is closed.
BIND_TIMEOUT = 10.0
#: Unbound connections kept at once; a new one beyond this closes the oldest.
MAX_PENDING = 512
#: Silent connections parked per validated UDP address on their host (see the module doc):
#: Chromium keeps one per peer connection, and a host may run several.
PARKED_PER_ROUTE = 2
#: Bytes queued per connection before frames are dropped (≈ 1 s of 2 Mbit/s video).
SEND_BUFFER = 256 * 1024
#: Bytes read per ``recv`` (a dozen frames of media at a time; a busy connection reads again).
READ_SIZE = 16384
#: The longest first frame an unbound connection may announce: it must be a STUN check (a few
#: hundred bytes), so anything longer is not ICE and the connection is closed at once. With the
#: read buffer this bounds an unbound connection's memory to ≈ 20 KiB.
MAX_UNBOUND_FRAME = 2048
#: Frames handled per wake-up before yielding, so one busy connection cannot starve others.
BATCH_BYTES = 256 * 1024


class TcpConnection:
    """One accepted ICE-TCP connection: a path to at most one peer (see the module doc)."""

    __slots__ = (
        "_endpoint",
        "_flush",
        "_out",
        "_sock",
        "address",
        "bound",
        "peer",
        "scope",
        "usable",
    )
    transport = "tcp"

    def __init__(self, endpoint: TcpEndpoint, sock: socket.socket, address: Address) -> None:
        self._endpoint = endpoint
        self._sock = sock
        self.address = address
        self.peer: EndpointPeer | None = None
        self._out = bytearray()
        self._flush = trio.Event()
        self.scope = trio.CancelScope()
        self.usable = True
        self.bound = False  # ever bound to a peer

    def __repr__(self) -> str:
        return f"<TcpConnection {self.address} peer={getattr(self.peer, 'name', None)}>"

    # -- sending (synchronous, never blocks) -------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Frame ``data`` (RFC 4571) and send it now, queue it, or drop it if the queue is full."""
        stats = self._endpoint.stats
        n = len(data)
        out = self._out
        if not self.usable or n > MAX_FRAME or len(out) + n + 2 > self._endpoint.send_buffer:
            stats.send_dropped += 1
            return
        was_empty = not out
        out += n.to_bytes(2, "big")
        out += data
        stats.frames_out += 1
        stats.bytes_out += n
        if was_empty:
            self._write()
            if out:
                self._flush.set()  # the writer task waits for room in the socket

    def _write(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                log.debug("tcp send failed", extra={"addr": self.address, "error": str(exc)})
            self.close()
            return
        del out[:sent]

    async def _writer(self) -> None:
        while True:
            await self._flush.wait()
            self._flush = trio.Event()
            while self._out:
                await trio.lowlevel.wait_writable(self._sock)
                self._write()

    def close(self) -> None:
        """End the connection (its task tears it down); safe to call any number of times."""
        self.usable = False
        self.scope.cancel()


class TcpEndpoint:
    """The one listening TCP socket of a process and its connections (see the module doc)."""

    def __init__(
        self,
        sock: socket.socket,
        lookup: Callable[[str], EndpointPeer | None],
        *,
        routes_from: Callable[[str], int] = lambda host: 0,
        bind_timeout: float = BIND_TIMEOUT,
        max_pending: int = MAX_PENDING,
        send_buffer: int = SEND_BUFFER,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._lookup = lookup
        #: validated UDP addresses of live sessions on a host (``UdpEndpoint.routes_from``)
        self._routes_from = routes_from
        self.bind_timeout = bind_timeout
        self.max_pending = max_pending
        self.send_buffer = send_buffer
        self.stats = TcpStats()
        #: unbound connections, oldest first (dicts keep insertion order)
        self._pending: dict[TcpConnection, None] = {}
        #: parked silent connections per remote host (not in ``_pending``: a flood from
        #: elsewhere cannot evict a client's backup)
        self._parked: dict[str, set[TcpConnection]] = {}
        self._by_peer: dict[int, set[TcpConnection]] = {}
        self._live: set[TcpConnection] = set()

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        lookup: Callable[[str], EndpointPeer | None],
        **options: Any,
    ) -> TcpEndpoint:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(512)
        except BaseException:
            sock.close()
            raise
        return cls(sock, lookup, **options)

    @property
    def local_address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def connections(self) -> int:
        """Open connections, bound or not (tests assert it returns to zero)."""
        return len(self._live)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def parked(self) -> int:
        """Silent connections kept as some client's backup path (see the module doc)."""
        return sum(len(conns) for conns in self._parked.values())

    def routes(self) -> int:
        """Peer → connection entries (tests assert none outlive their peer)."""
        return sum(len(c) for c in self._by_peer.values())

    # -- peers ------------------------------------------------------------------------------

    def unregister(self, peer: EndpointPeer) -> None:
        """Close every connection bound to ``peer``; safe to call twice."""
        for conn in self._by_peer.pop(id(peer), ()):
            conn.peer = None
            conn.close()

    # -- accepting --------------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept and serve connections until cancelled or closed (one task per process,
        plus one reader and one writer task per connection, all in this nursery)."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError:
                    nursery.cancel_scope.cancel()
                    return
                while True:
                    try:
                        sock, addr = self._sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        # EMFILE and friends: keep serving the connections we have.
                        log.warning("tcp accept failed", extra={"error": str(exc)})
                        await trio.sleep(0.1)
                        break
                    conn = self._accepted(sock, addr[:2])
                    nursery.start_soon(self._run, conn)
                await trio.lowlevel.checkpoint()

    def _accepted(self, sock: socket.socket, addr: Address) -> TcpConnection:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not fatal
            pass
        conn = TcpConnection(self, sock, addr)
        conn.scope.deadline = trio.current_time() + self.bind_timeout
        self.stats.accepted += 1
        self._live.add(conn)
        self._pending[conn] = None
        while len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self.stats.evicted += 1
            oldest.close()
        return conn

    async def _run(self, conn: TcpConnection) -> None:
        sock = conn._sock
        deframer = Deframer()
        try:
            while True:
                with conn.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(conn._writer)
                        await self._read(conn, sock, deframer)
                        nursery.cancel_scope.cancel()
                if not (conn.peer is None and conn.scope.cancelled_caught and conn.usable):
                    break  # closed, or ended by the client
                if not self._park(conn, deframer):
                    self.stats.bind_timeouts += 1
                    break
                conn.scope = trio.CancelScope(deadline=trio.current_time() + self.bind_timeout)
        finally:
            conn.usable = False
            self._live.discard(conn)
            self._pending.pop(conn, None)
            self._unpark(conn)
            if not conn.bound:
                self.stats.closed_unbound += 1
            peer = conn.peer
            if peer is not None:
                conns = self._by_peer.get(id(peer))
                if conns is not None:
                    conns.discard(conn)
                    if not conns:
                        del self._by_peer[id(peer)]
                conn.peer = None
                peer.path_closed(conn)
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _park(self, conn: TcpConnection, deframer: Deframer) -> bool:
        """The bind deadline of a connection passed: keep it for another ``bind_timeout`` if
        it is a silent backup of a live client's host (see the module doc)."""
        if deframer.pending:
            return False  # it sent something that is not a check yet: not a waiting backup
        host = conn.address[0]
        parked = self._parked.get(host)
        allowed = PARKED_PER_ROUTE * self._routes_from(host)
        if parked is not None and conn in parked:
            if len(parked) <= allowed:
                self.stats.parked += 1
                return True
            return False  # its host's sessions ended (or fewer are left)
        if parked is None:
            parked = self._parked[host] = set()
        if len(parked) >= allowed:
            if not parked:
                del self._parked[host]
            return False
        self._pending.pop(conn, None)
        parked.add(conn)
        self.stats.parked += 1
        return True

    def _unpark(self, conn: TcpConnection) -> None:
        host = conn.address[0]
        parked = self._parked.get(host)
        if parked is not None and conn in parked:
            parked.discard(conn)
            if not parked:
                del self._parked[host]

    async def _read(self, conn: TcpConnection, sock: socket.socket, deframer: Deframer) -> None:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        stats = self.stats
        while True:
            await trio.lowlevel.wait_readable(sock)
            budget = BATCH_BYTES
            while budget > 0:
                try:
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return  # reset by the peer
                if n == 0:
                    return  # orderly close
                budget -= n
                stats.bytes_in += n
                now = trio.current_time()
                for frame in deframer.feed(view[:n]):
                    stats.frames_in += 1
                    if not self._frame(conn, frame, now):
                        return
                if conn.peer is None and (deframer.awaiting or 0) > MAX_UNBOUND_FRAME:
                    return  # a first "frame" far longer than any check: not ICE
            if budget <= 0:
                await trio.lowlevel.checkpoint()

    def _frame(self, conn: TcpConnection, data: bytes, now: float) -> bool:
        """Handle one datagram; False closes the connection."""
        kind = KIND_BY_FIRST_BYTE[data[0]] if data else Kind.UNKNOWN
        peer = conn.peer
        if peer is None:
            # Unbound: only a valid check may come first (RFC 6544 §7.1 runs ICE first).
            if kind is not Kind.STUN:
                self.stats.unknown_kind += kind is Kind.UNKNOWN
                return False
            owner, reply = authenticate_check(data, conn.address, now, self._lookup, self.stats)
            if owner is None or reply is None:
                return False
            if reply.response is not None:
                conn.send(reply.response)
            if not reply.valid:
                return False
            self._bind(conn, owner)
            owner.address_validated(conn, reply.nominated, now)
            return conn.usable
        if kind is Kind.SRTP or kind is Kind.DTLS:
            if peer.path is not conn:
                # A client sends media and DTLS only on its selected pair (RFC 8445 §12.1), and
                # this connection is authenticated (a valid check bound it; TCP cannot be
                # spoofed): the client moved here. Follow now rather than at its next
                # nominating check, which Chromium sends up to one ping interval (2.5 s) later.
                peer.address_validated(conn, True, now)
            peer.datagram_received(kind, data, conn.address, now)
        elif kind is Kind.STUN:
            owner, reply = authenticate_check(data, conn.address, now, self._lookup, self.stats)
            if owner is not peer:
                if owner is not None:
                    self.stats.wrong_peer += 1
                return True
            if reply is not None:
                if reply.response is not None:
                    conn.send(reply.response)
                if reply.valid:
                    peer.address_validated(conn, reply.nominated, now)
        else:
            self.stats.unknown_kind += 1
        return True

    def _bind(self, conn: TcpConnection, peer: EndpointPeer) -> None:
        self._pending.pop(conn, None)
        self._unpark(conn)
        conn.peer = peer
        conn.bound = True
        conn.scope.deadline = math.inf
        self._by_peer.setdefault(id(peer), set()).add(conn)
        self.stats.bound += 1
        log.debug(
            "tcp connection bound",
            extra={"peer": getattr(peer, "name", None), "addr": conn.address},
        )

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
