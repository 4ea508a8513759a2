"""A minimal HTTP/3 client on aioquic (asyncio, run in a worker thread by the trio tests):
enough to send signaling requests and see that they travelled over QUIC."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


@dataclass
class H3Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.waiting: dict[int, tuple[asyncio.Future[H3Response], H3Response]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.http.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived | DataReceived):
            return
        entry = self.waiting.get(event.stream_id)
        if entry is None:
            return
        future, response = entry
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                if name == b":status":
                    response.status = int(value)
                else:
                    response.headers[name.decode()] = value.decode()
        else:
            response.body += event.data
        if event.stream_ended and not future.done():
            future.set_result(response)

    async def request(self, method: str, authority: str, path: str, body: bytes,
                      headers: dict[str, str]) -> H3Response:
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[H3Response] = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = (future, H3Response(0, {}))
        self.http.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", path.encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ], end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(future, 10)


def h3_request(port: int, method: str, path: str, *, cafile: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> H3Response:
    """One request over a fresh QUIC connection to 127.0.0.1:``port`` (blocking)."""

    async def run() -> H3Response:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
        configuration.load_verify_locations(cafile)
        configuration.server_name = "localhost"
        async with connect("127.0.0.1", port, configuration=configuration,
                           create_protocol=_Client, wait_connected=True) as client:
            assert isinstance(client, _Client)
            return await client.request(method, f"localhost:{port}", path, body,
                                        headers or {})

    return asyncio.run(run())
