"""Abusive joins against a real server process (issue 14, "Proof, in CI"): resets during POST,
a half-open flood from one address, a burst of a thousand joins. Limits are asserted; RSS and
latencies are printed, never asserted."""

from __future__ import annotations

import random
import socket
import struct
import sys

import httpx
import pytest
import trio

from tests.abuse.server import Server, run_server, tracebacks

pytestmark = pytest.mark.slow

SDP = {"Content-Type": "application/sdp"}
#: The attacker and the legitimate client are different loopback addresses.
ATTACKER = "127.0.0.1"
LEGIT = "127.0.0.2"


def request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: sfu\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def post_then_reset(port: int, path: str, body: bytes, delay: float) -> None:
    """A complete POST, then a TCP reset (SO_LINGER 0) ``delay`` seconds later."""
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
        await sock.send(request(path, body))
        await trio.sleep(delay)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


#: A legitimate client in its own process, so that the test's own flood of requests does not
#: delay it: it reports the status and how long the request took, measured in that process.
LEGIT_CLIENT = """
import sys, time, httpx
url, path = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read()
transport = httpx.HTTPTransport(local_address=sys.argv[3])
with httpx.Client(transport=transport, timeout=30) as http:
    began = time.monotonic()
    r = http.post(url + path, content=body, headers={"Content-Type": "application/sdp"})
    print(r.status_code, time.monotonic() - began)
"""


async def legit_join(server: Server, offer: bytes, room: str, peer: str) -> tuple[int, float]:
    """A join from another address: its status and how long it took."""
    done = await trio.run_process(
        [sys.executable, "-c", LEGIT_CLIENT, server.url, f"/sub/{room}/{peer}", LEGIT],
        stdin=offer,
        capture_stdout=True,
    )
    status, seconds = done.stdout.decode().split()
    return int(status), float(seconds)


async def test_reset_during_post_to_new_rooms_leaves_nothing(sub_offer: bytes) -> None:
    """500 × (complete POST /sub to a new room, reset 0-12 ms later) → 0 rooms, 0 peers, 0
    routes once the connect timeout has passed for the joins that did complete."""
    unlimited = "1000000"
    async with run_server(
        connect_timeout="2",
        max_joins_per_ip=unlimited,
        max_joins=unlimited,
        max_half_open_per_ip=unlimited,
        max_half_open=unlimited,
        max_rooms=unlimited,
    ) as server:
        rss_before = server.rss_mib()
        rng = random.Random(14)
        async with trio.open_nursery() as nursery:
            for i in range(500):
                delay = rng.uniform(0, 0.012)
                nursery.start_soon(
                    post_then_reset, server.port, f"/sub/reset-{i}/u-{i}", sub_offer, delay
                )
                if i % 25 == 24:
                    await trio.sleep(0.05)  # bounded concurrency, like the probe
        peak = await server.metrics()
        print(f"after 500 resets: rooms {peak['trio_sfu_rooms']:.0f}, "
              f"peers {peak['trio_sfu_peers']:.0f}, RSS {server.rss_mib():.0f} MiB "
              f"(before {rss_before:.0f})")
        await server.wait_metrics(
            {
                "trio_sfu_rooms": 0,
                "trio_sfu_subscribers": 0,
                "trio_sfu_peers": 0,
                "trio_sfu_udp_routes": 0,
                "trio_sfu_half_open": 0,
            }
        )
        # No deaf room: a new member of one of those rooms hears it.
        status, _ = await legit_join(server, sub_offer, "reset-7", "late-1")
        assert status == 201
        assert not tracebacks(server)


async def test_half_open_flood_from_one_address_is_refused_past_the_limit(
    pub_offer: bytes, sub_offer: bytes
) -> None:
    """5,000 POST /pub from one address, none of which ever connects: at most
    --max-half-open-per-ip live at once, the rest 429 with Retry-After; a join from another
    address meanwhile is answered 201."""
    per_ip = 20
    async with run_server(connect_timeout="3", max_half_open_per_ip=str(per_ip)) as server:
        rss_before = server.rss_mib()
        statuses: dict[int, int] = {}
        retry_after_missing = 0
        peak_half_open = 0
        legit: list[tuple[int, float]] = []
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKER, limits=limits)
        async with httpx.AsyncClient(transport=transport, timeout=30) as http:

            async def attacker(worker: int) -> None:
                nonlocal retry_after_missing
                for i in range(worker, 5000, 50):
                    r = await http.post(
                        f"{server.url}/pub/flood/a-{i}", content=pub_offer, headers=SDP
                    )
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code in (429, 503) and "retry-after" not in r.headers:
                        retry_after_missing += 1

            async def watch() -> None:
                nonlocal peak_half_open
                for n in range(10_000):
                    values = await server.metrics()
                    peak_half_open = max(peak_half_open, int(values["trio_sfu_half_open"]))
                    if n % 5 == 2:
                        legit.append(await legit_join(server, sub_offer, "other", f"ok-{n}"))
                    await trio.sleep(0.2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as attackers:
                    for worker in range(50):
                        attackers.start_soon(attacker, worker)
                nursery.cancel_scope.cancel()
        latencies = sorted(t for _, t in legit)
        print(
            f"5,000 half-open POSTs: {statuses}; peak half-open {peak_half_open}; "
            f"RSS {rss_before:.0f} → {server.rss_mib():.0f} MiB; legitimate joins "
            f"{[s for s, _ in legit]}, latency max {max(latencies, default=0):.2f} s"
        )
        assert sum(statuses.values()) == 5000
        assert set(statuses) <= {201, 429}, statuses
        assert statuses.get(201, 0) >= per_ip
        assert statuses.get(429, 0) > 0 and retry_after_missing == 0
        # Legitimate joins count too (one each), so the watcher's own may add a few.
        assert peak_half_open <= per_ip + len(legit)
        assert legit and all(status == 201 for status, _ in legit)
        assert not tracebacks(server)


async def test_a_burst_of_a_thousand_joins_is_answered_every_one(sub_offer: bytes) -> None:
    """1,000 concurrent POST /sub: every one gets an HTTP answer (201, 429 or 503, never a
    reset or a timeout), and a join from another address in the middle is admitted."""
    async with run_server() as server:
        statuses: dict[int, int] = {}
        failures: list[str] = []
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKER, limits=limits)
        legit: list[tuple[int, float]] = []
        async with httpx.AsyncClient(transport=transport, timeout=60) as http:

            async def one(i: int) -> None:
                try:
                    r = await http.post(
                        f"{server.url}/sub/burst/b-{i}", content=sub_offer, headers=SDP
                    )
                except httpx.HTTPError as error:
                    failures.append(f"{type(error).__name__}: {error}")
                    return
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

            async def legitimate() -> None:
                await trio.sleep(0.2)
                legit.append(await legit_join(server, sub_offer, "burst", "legit-1"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(legitimate)
                for i in range(1000):
                    nursery.start_soon(one, i)
        print(
            f"1,000-join burst: {statuses}, unanswered {len(failures)}; legitimate join "
            f"{legit[0][0]} in {legit[0][1]:.2f} s; RSS {server.rss_mib():.0f} MiB"
        )
        assert not failures, failures[:5]
        assert sum(statuses.values()) == 1000
        assert set(statuses) <= {201, 429, 503}, statuses
        assert legit[0][0] == 201
        assert not tracebacks(server)
