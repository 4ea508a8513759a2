"""Slow and late request bodies against a real server process (issue 14 item 5): over HTTP/1.1
and cleartext HTTP/2, bodies that trickle in, end with a half-close or a reset, or go on after
the answer; HTTP/2 connections closed (GOAWAY) while a body is still arriving. The server must
answer what it can, log no traceback ("Error in ASGI Framework … BusyResourceError" before), and
stay up: before trio_sfu/http/hypercorn_fixes.py one HTTP/2 DATA frame after the answer ended
the whole process (Hypercorn's KeyError escaped into the server's nursery)."""

from __future__ import annotations

import random
import socket
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trio

from tests.abuse.server import run_server, tracebacks

pytestmark = pytest.mark.slow

#: Paths that read the body (a join), answer without reading it (405, 404), or refuse early.
PATHS = ("/sub/slow/{i}", "/healthz", "/no-such-page")
CHUNK = b"v=0\r\n" * 10


async def slow_http11(port: int, path: str, rng: random.Random) -> bytes:
    """A POST whose body trickles in, then ends one of four ways; what the server answered."""
    sock = trio.socket.socket()
    answer = b""
    try:
        await sock.connect(("127.0.0.1", port))
        await sock.send(
            f"POST {path} HTTP/1.1\r\nHost: sfu\r\nContent-Type: application/sdp\r\n"
            "Content-Length: 4000\r\n\r\n".encode()
        )
        ending = rng.choice(("eof", "reset", "close", "on-after-answer"))
        gap = rng.uniform(0.05, 0.3)
        with trio.move_on_after(rng.uniform(0.5, 7.0) if ending != "on-after-answer" else 9):
            for _ in range(80):  # 4,000 bytes: the body completes only if the client is patient
                await sock.send(CHUNK)
                await trio.sleep(gap)
                if ending == "on-after-answer" and not answer:
                    with trio.move_on_after(0):
                        answer = await sock.recv(4096)
        if ending == "eof":
            sock.shutdown(socket.SHUT_WR)
            with trio.move_on_after(7):
                answer += await sock.recv(4096)
        elif ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # the server closed first (a 408 or 413 after its drain time)
        pass
    finally:
        sock.close()
    return answer


class H2Client:
    """A cleartext HTTP/2 (prior knowledge) client that sends frames exactly as told."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.events: list[h2.events.Event] = []
        self.closed = False
        # The reader answers (SETTINGS ack, PING, WINDOW_UPDATE) while the sender sends
        # DATA: one send at a time on the stream (trio raises BusyResourceError otherwise).
        self._sending = trio.Lock()

    async def flush(self) -> None:
        async with self._sending:
            if out := self.conn.data_to_send():
                await self.stream.send_all(out)

    async def read(self) -> None:
        try:
            while data := await self.stream.receive_some(65536):
                self.events.extend(self.conn.receive_data(data))
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed = True

    def answered(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in self.events
        )


async def slow_h2(port: int, path: str, ending: str, rng: random.Random) -> H2Client:
    """A POST over h2c whose body trickles in; then DATA after the answer, or GOAWAY mid-body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = H2Client(stream)
    async with stream, trio.open_nursery() as nursery:
        client.conn.initiate_connection()
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [(":method", "POST"), (":path", path), (":scheme", "http"),
             (":authority", "sfu"), ("content-type", "application/sdp")],
        )  # fmt: skip
        await client.flush()
        nursery.start_soon(client.read)
        try:
            with trio.move_on_after(9):
                for n in range(60):
                    client.conn.send_data(stream_id, CHUNK)
                    if ending == "goaway" and n == rng.randint(3, 30):
                        client.conn.close_connection()  # GOAWAY while the body is arriving
                        await client.flush()
                        break
                    await client.flush()
                    if ending == "late-data" and client.answered(stream_id):
                        # DATA after the answer, a few frames of it (RFC 9113 §8.1 allows it).
                        for _ in range(3):
                            client.conn.send_data(stream_id, CHUNK)
                            await client.flush()
                        break
                    await trio.sleep(rng.uniform(0.05, 0.2))
        except (h2.exceptions.StreamClosedError, trio.BrokenResourceError):
            pass  # the server reset the stream (late data) or closed the connection
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    return client


async def test_slow_and_late_bodies_log_no_traceback_and_the_server_stays_up() -> None:
    rng = random.Random(14)
    async with run_server(http2_cleartext="yes") as server:
        h11_answers: list[bytes] = []
        h2_clients: list[tuple[str, H2Client]] = []

        async def http11(i: int) -> None:
            path = rng.choice(PATHS).format(i=f"h1-{i}")
            h11_answers.append(await slow_http11(server.port, path, random.Random(i)))

        async def http2(i: int, ending: str) -> None:
            path = rng.choice(PATHS[1:])  # answered without reading: late DATA is certain
            if ending == "goaway":
                path = rng.choice(PATHS).format(i=f"h2-{i}")
            h2_clients.append((ending, await slow_h2(server.port, path, ending, random.Random(i))))

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(http11, i)
            for i in range(20):
                nursery.start_soon(http2, i, "late-data" if i % 2 else "goaway")
        late = [c for ending, c in h2_clients if ending == "late-data"]
        no_error = h2.errors.ErrorCodes.NO_ERROR
        reset_no_error = sum(
            any(isinstance(e, h2.events.StreamReset) and e.error_code == no_error for e in c.events)
            for c in late
        )
        statuses = sorted({a.split(b" ", 2)[1].decode() for a in h11_answers if a[:5] == b"HTTP/"})
        print(
            f"HTTP/1.1 slow bodies: {len(h11_answers)}, statuses seen {statuses}; h2c late-DATA "
            f"clients {len(late)}, answered {sum(c.answered(1) for c in late)}, "
            f"RST_STREAM(NO_ERROR) {reset_no_error}"
        )
        assert server.pod.alive, server.pod.tail()
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(server.url + "/healthz")).status_code == 200
        assert all(c.answered(1) for c in late)  # each got its answer before its late DATA
        assert reset_no_error == len(late)  # … and was asked to stop sending, without error
        assert not tracebacks(server), "\n".join(tracebacks(server)[:40])
