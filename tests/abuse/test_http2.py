"""Cleartext HTTP/2 is off unless asked for (issue 14 item 4): the rapid-reset flood is
cheapest for an attacker there. Prior-knowledge prefaces and h2c upgrades are answered as
HTTP/1.1; with --http2-cleartext they switch protocol as Hypercorn does."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.abuse.server import run_server, tracebacks

pytestmark = pytest.mark.slow

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: sfu\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
# An HTTP/2 SETTINGS frame header: length (3 bytes), type 4, flags, stream 0.
SETTINGS_TYPE = 4


async def exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(5):
            return await stream.receive_some(4096)
    return b""


async def test_cleartext_http2_is_off_by_default() -> None:
    async with run_server() as server:
        upgraded = await exchange(server.port, UPGRADE)
        assert upgraded.startswith(b"HTTP/1.1 200"), upgraded[:80]
        assert b"101" not in upgraded.split(b"\r\n", 1)[0]
        preface = await exchange(server.port, PREFACE)
        assert preface.startswith(b"HTTP/1.1 4"), preface[:80]  # refused as HTTP/1.1
        assert not tracebacks(server)


async def test_cleartext_http2_when_asked_for() -> None:
    async with run_server(http2_cleartext="yes") as server:
        upgraded = await exchange(server.port, UPGRADE)
        assert upgraded.startswith(b"HTTP/1.1 101"), upgraded[:80]
        preface = await exchange(server.port, PREFACE)
        assert len(preface) >= 9 and preface[3] == SETTINGS_TYPE, preface[:80]


async def test_an_http2_stream_reset_flood_gets_goaway() -> None:
    """CVE-2023-44487: open and reset streams as fast as possible on one connection; the
    server closes it with GOAWAY after about ``keep_alive_max_requests`` streams (instead of
    never), and answers other clients meanwhile."""
    import h2.config
    import h2.connection
    import h2.events
    from hypercorn.config import Config as HypercornConfig

    limit = HypercornConfig.keep_alive_max_requests

    async with run_server(http2_cleartext="yes") as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        sent = 0
        goaway = None
        headers = [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"),
                   (":authority", "sfu")]  # fmt: skip
        with trio.move_on_after(30):
            while goaway is None and sent < 20 * limit:
                for _ in range(20):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers, end_stream=True)
                    conn.reset_stream(stream_id)
                    sent += 1
                try:
                    await stream.send_all(conn.data_to_send())
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.01):
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            goaway = event
        await stream.aclose()
        print(f"reset flood: {sent} streams opened and reset, GOAWAY: {goaway}")
        assert goaway is not None
        # Client-initiated stream ids are odd: how many streams the server took before GOAWAY.
        # It counts requests as they finish, so on a busy machine more slip in than the limit.
        accepted = (goaway.last_stream_id + 1) // 2
        assert limit <= accepted <= 3 * limit
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(server.url + "/healthz")).status_code == 200
        assert not tracebacks(server)
