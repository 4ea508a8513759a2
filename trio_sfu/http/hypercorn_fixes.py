"""Three small fixes to Hypercorn's trio worker, written against Hypercorn 0.18.0 (the version
``constraints.txt`` pins; ``tests/test_hypercorn_fixes.py`` fails when another is installed,
so whoever upgrades re-checks each one against the new code).

Why they matter here: in Hypercorn's trio worker every connection's handler runs in the
*server's* nursery (``trio.serve_listeners(..., handler_nursery=server_nursery)``), so an
exception that escapes one connection's ``TCPServer.run`` does not end that connection only: it
cancels the whole HTTP server and, through ``trio_sfu.app.serve``, the process. One HTTP/2
client sending a request body after its answer was enough (issue 14).

1. **Late HTTP/2 DATA** (``H2Protocol._handle_events``). When the application answers before
   the request body is complete, Hypercorn forgets the stream (``_close_stream``) while the
   client may go on sending DATA, which RFC 9113 §8.1 allows; the next ``DataReceived``
   indexes ``self.streams[stream_id]`` and raises ``KeyError`` (upstream pgjones/hypercorn
   #329, unmerged PRs #312/#334/#365; the ``StreamEnded`` branch already guards this case).
   We take such DATA here: hand its flow-control credit back (else the connection window
   drains and every other stream of the connection stalls, RFC 9113 §6.9) and ask the client
   to stop with ``RST_STREAM(NO_ERROR)``, as RFC 9113 §8.1 says a server that answered early
   may — once our END_STREAM has gone out: Hypercorn forgets the stream before its send task
   flushes the answer's end, and a reset sent before that overtook it (the client got part of
   the answer, then the reset).
2. **A send racing ``send_eof``** (``TCPServer.protocol_send``). ``TCPServer._close`` calls
   ``stream.send_eof()`` without the send lock, and trio's ``SocketStream.send_eof`` holds the
   stream's send side across a checkpoint; a response (or a GOAWAY, a WINDOW_UPDATE) sent by
   another task in that moment gets ``trio.BusyResourceError``, which ``protocol_send`` does
   not catch (it catches ``BrokenResourceError``/``ClosedResourceError``). From an application
   task it is logged as "Error in ASGI Framework" with a traceback; from the connection's read
   loop or HTTP/2 send task it ends the server (above). Seen with slow request bodies over
   HTTP/1.1 and with an h2c connection closed (GOAWAY) while a body was still arriving. The
   only other user of the send side is ``send_eof``, so BusyResourceError there means "the
   connection is closing": we treat it exactly as ``protocol_send`` treats a closed stream —
   the data could not have been delivered after the EOF anyway.
3. **Nothing one connection does ends the server** (``TCPServer.run``). Any other exception
   escaping a connection handler is logged (with its traceback, so tests and operators see
   it) and that connection alone ends.
4. **Accept what is waiting, not one connection per scheduling round** (the listeners
   ``hypercorn.trio.run.worker_serve`` makes). ``trio.SocketListener.accept`` takes one
   connection and yields, and each scheduling round runs every runnable task: behind a burst
   of 1,000 connections in the kernel's accept queue, a client from another address waited
   for 1,000 rounds, each full of the burst's work (0.85–1.2 s measured), whatever turns the
   app gives it (``AdmitJoins``, :mod:`trio_sfu.http.limits`). :class:`BatchingListener` takes up to
   ``ACCEPT_BATCH`` queued connections at once, so every waiting request is read within a few
   rounds and takes its place in its own address's turns (0.30–0.35 s, most of the burst
   answered after it). Only Hypercorn's module sees it: ``worker_serve`` looks up
   ``trio.SocketListener`` at call time, and its ``trio`` is given a stand-in that differs
   from the real module in that one name.
"""

from __future__ import annotations

import logging
import os
import socket
import types
from collections import deque
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import trio

#: The Hypercorn release these fixes were written and tested against (constraints.txt).
HYPERCORN_VERSION = "0.18.0"

log = logging.getLogger("trio_sfu.http.server")


def apply_hypercorn_fixes() -> None:
    """Patch Hypercorn's classes once per process (idempotent)."""
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer, "_trio_sfu_fixed", False):
        return
    _fix_late_data(H2Protocol)
    _fix_send_racing_eof(TCPServer)
    _fix_escaping_errors(TCPServer)
    _batch_accepts()
    TCPServer._trio_sfu_fixed = True  # type: ignore[attr-defined]


def _fix_late_data(cls: Any) -> None:
    original = cls._handle_events

    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
        # One event at a time, in order: a RequestReceived earlier in the same batch creates
        # the stream a later DataReceived belongs to, so the check must happen in turn.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                # Until our END_STREAM has gone out (the answer's last DATA may still wait
                # in the stream's buffer), a reset would overtake it: the client got a part
                # of the answer and RST_STREAM, never END_STREAM. Then only the credit goes
                # back; DATA after the END_STREAM is reset (RFC 9113 §5.1: half-closed).
                _drop_late_data(self.connection, event, reset=_answered(self.connection, event))
                await self._flush()
            else:
                await original(self, [event])

    _handle_events.__doc__ = "Hypercorn's, but DATA for a stream already answered is dropped."
    _handle_events.__wrapped__ = original  # type: ignore[attr-defined]
    cls._handle_events = _handle_events


def _answered(connection: Any, event: h2.events.DataReceived) -> bool:
    """Whether this side already ended the stream (sent END_STREAM), or h2 forgot it."""
    stream = connection.streams.get(event.stream_id)
    return stream is None or stream.state_machine.state in (
        h2.stream.StreamState.HALF_CLOSED_LOCAL,
        h2.stream.StreamState.CLOSED,
    )


def _drop_late_data(connection: Any, event: h2.events.DataReceived, *, reset: bool = True) -> None:
    """Return the DATA's flow-control credit and reset its stream with NO_ERROR."""
    assert event.stream_id is not None
    connection.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
    if not reset:
        return
    try:  # RFC 9113 §8.1: "abort transmission of a request without error"
        connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
    except h2.exceptions.ProtocolError:  # already closed (reset by either side)
        pass


def _fix_send_racing_eof(cls: Any) -> None:
    from hypercorn.events import Closed

    original = cls.protocol_send

    async def protocol_send(self: Any, event: Any) -> None:
        try:
            await original(self, event)
        except trio.BusyResourceError:
            # _close() is in send_eof(): the connection is closing, as if the send had
            # found the stream closed (what the original does for ClosedResourceError).
            await self.protocol.handle(Closed())

    protocol_send.__doc__ = "Hypercorn's, but a send racing send_eof() is a closed stream."
    protocol_send.__wrapped__ = original  # type: ignore[attr-defined]
    cls.protocol_send = protocol_send


def _fix_escaping_errors(cls: Any) -> None:
    original = cls.run

    async def run(self: Any) -> None:
        try:
            await original(self)
        except Exception:
            # Never Cancelled (a BaseException): a server shutdown still ends every handler.
            log.exception("HTTP connection handler failed; only that connection is closed")
            with trio.CancelScope(shield=True):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    run.__doc__ = "Hypercorn's, but an error ends its own connection, not the server."
    run.__wrapped__ = original  # type: ignore[attr-defined]
    cls.run = run


#: Connections taken from the kernel's accept queue per scheduling round, at most.
ACCEPT_BATCH = 256


class BatchingListener(trio.abc.Listener[trio.SocketStream]):
    """``trio.SocketListener``, except that after each accept it also takes (without
    blocking) up to ``ACCEPT_BATCH - 1`` more connections already queued, and hands them out
    on the next calls without yielding. Errors are left to the next real accept, which
    handles them as trio does (ignorable ones such as ECONNABORTED are skipped)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._inner = trio.SocketListener(sock)
        self.socket = sock
        # A second descriptor for the same listening socket, for plain non-blocking accepts.
        self._raw = socket.socket(fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)
        self._ready: deque[trio.SocketStream] = deque()

    async def accept(self) -> trio.SocketStream:
        if self._ready:
            await trio.lowlevel.checkpoint_if_cancelled()
            return self._ready.popleft()
        stream = await self._inner.accept()
        for _ in range(ACCEPT_BATCH - 1):
            try:
                conn, _ = self._raw.accept()
            except OSError:  # nothing queued (EAGAIN), or an error for the next real accept
                break
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
        return stream

    async def aclose(self) -> None:
        while self._ready:
            await self._ready.popleft().aclose()
        self._raw.close()
        await self._inner.aclose()


def _batch_accepts() -> None:
    import hypercorn.trio.run as worker

    if getattr(worker, "trio", None) is trio:  # not yet replaced
        stand_in = types.ModuleType("trio", "trio, with batching socket listeners (trio-sfu)")
        stand_in.__dict__.update(trio.__dict__)
        stand_in.SocketListener = BatchingListener  # type: ignore[attr-defined]
        setattr(worker, "trio", stand_in)  # noqa: B010 (not an exported name)
