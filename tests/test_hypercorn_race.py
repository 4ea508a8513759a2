"""A response sent while Hypercorn closes the connection (issue 14 item 5: "Error in ASGI
Framework … BusyResourceError" tracebacks): ``TCPServer._close`` runs ``send_eof`` outside the
send lock, and a trio ``SocketStream`` holds its send-conflict detector across a checkpoint in
``send_eof``; a ``send_all`` in that window raised into the application."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

from trio_sfu.http.limits import tolerate_send_racing_close


async def test_a_real_socket_stream_refuses_a_send_during_send_eof() -> None:
    """The window exists: ``SocketStream.send_eof`` suspended at its checkpoint (driven by
    hand, so no scheduling luck is involved) makes ``send_all`` raise BusyResourceError."""
    a, b = trio.socket.socketpair()
    stream = trio.SocketStream(a)
    eof = stream.send_eof()
    eof.send(None)  # runs to its checkpoint, inside the send-conflict detector
    with pytest.raises(trio.BusyResourceError):
        await stream.send_all(b"x")
    eof.close()
    await stream.aclose()
    b.close()


class RecordingProtocol:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


class ClosingStream:
    """What Hypercorn's TCPServer sees of a SocketStream in that window: ``send_eof`` under
    way (until the test lets it finish), ``send_all`` refused meanwhile, as above."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.in_eof = False
        self.sent = b""

    async def send_eof(self) -> None:
        self.in_eof = True
        await self.go.wait()
        self.in_eof = False

    async def send_all(self, data: bytes) -> None:
        if self.in_eof:
            raise trio.BusyResourceError("another task is currently sending data")
        self.sent += data

    async def aclose(self) -> None:
        pass


async def race() -> tuple[RecordingProtocol, BaseException | None, bytes]:
    stream = ClosingStream()
    server = TCPServer(None, HypercornConfig(), None, None, stream)  # type: ignore[arg-type]
    protocol = RecordingProtocol()
    server.protocol = protocol  # type: ignore[assignment]
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._close)  # the connection is closing: send_eof under way
        await trio.testing.wait_all_tasks_blocked()
        try:  # the application's response, in that window
            await server.protocol_send(RawData(b"HTTP/1.1 200 OK\r\n\r\n"))
        except trio.BusyResourceError as exc:
            error = exc
        stream.go.set()
    return protocol, error, stream.sent


async def test_a_response_racing_the_close_is_dropped_not_raised() -> None:
    tolerate_send_racing_close()
    protocol, error, sent = await race()
    assert error is None and sent == b""
    assert any(isinstance(e, Closed) for e in protocol.events)  # handled as a closed peer


async def test_without_the_fix_the_application_gets_busy_resource_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the Hypercorn the project pins, the unpatched ``protocol_send`` raises it into the
    application (a traceback per request); when Hypercorn fixes it, this fails and the patch
    can go."""
    tolerate_send_racing_close()
    monkeypatch.setattr(TCPServer, "protocol_send", TCPServer._trio_sfu_original_send)  # type: ignore[attr-defined]
    _, error, _ = await race()
    assert isinstance(error, trio.BusyResourceError)
