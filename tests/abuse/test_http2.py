"""Cleartext HTTP/2 is off unless asked for (issue 14 item 4): the rapid-reset flood is
cheapest for an attacker there. Prior-knowledge prefaces and h2c upgrades are answered as
HTTP/1.1; with --http2-cleartext yes they switch protocol as Hypercorn does."""

from __future__ import annotations

import trio

from tests.abuse.server import run_server, tracebacks

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
