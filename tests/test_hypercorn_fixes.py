"""trio_sfu/http/hypercorn_fixes.py: each race shown on Hypercorn's own code (the original
method fails), then the fixed one. The late-DATA fix is proved on a real server process in
tests/abuse/test_slow_bodies.py."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from trio_sfu.http.hypercorn_fixes import (
    HYPERCORN_VERSION,
    BatchingListener,
    apply_hypercorn_fixes,
)

apply_hypercorn_fixes()


def test_the_fixes_are_for_the_installed_and_pinned_hypercorn() -> None:
    """Upgrading Hypercorn fails here: re-check each fix against the new code, then move the
    pin (constraints.txt) and HYPERCORN_VERSION together."""
    assert importlib.metadata.version("hypercorn") == HYPERCORN_VERSION
    constraints = (Path(__file__).parent.parent / "constraints.txt").read_text()
    assert f"Hypercorn=={HYPERCORN_VERSION}" in constraints.splitlines()


def contains(error: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(contains(inner, kind) for inner in error.exceptions)
    return isinstance(error, kind)


class RecordingProtocol:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)


def tcp_server() -> tuple[TCPServer, trio.SocketStream, RecordingProtocol]:
    ours, _theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    server = TCPServer(None, Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    protocol = RecordingProtocol()
    server.protocol = protocol  # type: ignore[assignment]
    return server, stream, protocol


async def test_a_send_while_send_eof_holds_the_stream_is_a_closed_stream() -> None:
    """``TCPServer._close`` runs ``send_eof`` outside the send lock, and trio's
    ``SocketStream.send_eof`` holds the stream's send-conflict detector across a checkpoint
    (trio/_highlevel_socket.py). Holding that detector here is that moment, made certain."""
    server, stream, protocol = tcp_server()
    original: Any = TCPServer.protocol_send.__wrapped__  # type: ignore[attr-defined]
    with stream._send_conflict_detector:  # where send_eof() is, during its checkpoint
        with pytest.raises(trio.BusyResourceError):
            await original(server, RawData(b"HTTP/1.1 200 \r\n"))
        await server.protocol_send(RawData(b"HTTP/1.1 200 \r\n"))
    assert [type(e) for e in protocol.events] == [Closed]


async def test_an_error_in_one_connection_does_not_end_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Hypercorn's trio worker runs connection handlers in the server's nursery: what escapes
    ``TCPServer.run`` cancels every connection and the server. The fix logs it and closes only
    that connection."""

    async def broken_read(self: TCPServer) -> None:
        raise KeyError(1)  # what late HTTP/2 DATA raised in H2Protocol._handle_events

    monkeypatch.setattr(TCPServer, "_read_data", broken_read)
    monkeypatch.setattr(Config, "keep_alive_timeout", 0.01)
    server, stream, _ = tcp_server()
    original: Any = TCPServer.run.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(BaseException) as raised:
        await original(server)
    assert contains(raised.value, KeyError), raised.value

    server, stream, _ = tcp_server()
    with caplog.at_level(logging.ERROR, logger="trio_sfu.http.server"):
        await server.run()  # returns: the error stays in its connection
    assert "only that connection is closed" in caplog.text
    assert stream.socket.fileno() == -1


async def test_queued_connections_are_accepted_in_one_round() -> None:
    """Behind a burst in the kernel's accept queue, every waiting connection is taken at the
    first accept and handed out without yielding, instead of one per scheduling round."""
    import socket

    import hypercorn.trio.run

    assert hypercorn.trio.run.trio.SocketListener is BatchingListener  # what worker_serve uses
    assert trio.SocketListener is not BatchingListener  # … and only it
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(64)
    listener = BatchingListener(trio.socket.from_stdlib_socket(raw))
    clients = [socket.create_connection(raw.getsockname()) for _ in range(20)]
    rounds = 0

    async def count_rounds() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_rounds)
            first = await listener.accept()  # one yield, like trio.SocketListener's
            before = rounds
            rest = [await listener.accept() for _ in range(19)]
            assert rounds == before  # the other 19 came without a scheduling round
            nursery.cancel_scope.cancel()
        peers = {s.socket.getpeername() for s in [first, *rest]}
        assert peers == {c.getsockname() for c in clients}
        for stream in [first, *rest]:
            await stream.aclose()
    finally:
        for client in clients:
            client.close()
        await listener.aclose()


async def test_late_data_resets_a_stream_only_once_its_answer_has_ended() -> None:
    """DATA for a stream Hypercorn already forgot: until its END_STREAM has gone out (it may
    still wait in the stream's send buffer), a RST_STREAM would overtake it (seen in
    tests/abuse/test_slow_bodies.py: the client got HEADERS, DATA and RST_STREAM(NO_ERROR),
    never END_STREAM), so only the flow-control credit goes back; once the answer ended, the
    stream is reset with NO_ERROR (RFC 9113 §8.1)."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    async def late_data(ended: bool) -> list[h2.events.Event]:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        client.initiate_connection()
        server.initiate_connection()
        client.send_headers(
            1, [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
        )
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())  # the SETTINGS acknowledgement
        server.send_headers(1, [(":status", "404")])
        server.send_data(1, b"not found")
        if ended:
            server.end_stream(1)
        client.receive_data(server.data_to_send())
        client.send_data(1, b"v=0\r\n" * 10)
        [data] = [e for e in server.receive_data(client.data_to_send())
                  if isinstance(e, h2.events.DataReceived)]  # fmt: skip

        class Forgotten:  # what H2Protocol holds once the app's stream is closed
            connection = server
            streams: dict[int, Any] = {}

            async def _flush(self) -> None:
                pass

        await H2Protocol._handle_events(Forgotten(), [data])  # type: ignore[arg-type]
        return client.receive_data(server.data_to_send())

    while_answering = await late_data(ended=False)
    assert not any(isinstance(e, h2.events.StreamReset) for e in while_answering)
    after = await late_data(ended=True)
    resets = [e for e in after if isinstance(e, h2.events.StreamReset)]
    assert [r.error_code for r in resets] == [h2.errors.ErrorCodes.NO_ERROR]
