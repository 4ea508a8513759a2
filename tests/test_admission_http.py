"""Joins per second per address and in total (issue 14 item 4), refused before routing with
429/503 and Retry-After (and CORS headers, so a browser on another origin can read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from tests.test_http import FakeSfu, http_server
from trio_sfu.http import create_app
from trio_sfu.http.limits import JOIN_TURNS_PER_ADDRESS, AdmitJoins, JoinRateLimits

SDP = {"Content-Type": "application/sdp"}
OFFER = b"v=0\r\n"


async def test_joins_per_address_and_in_total(tmp_path: Path) -> None:
    fake = FakeSfu()
    app = create_app(
        fake,
        site_dir=tmp_path,
        cors_origins=["https://app.example"],
        join_limits=JoinRateLimits(per_source=2.0, total=3.0),
    )
    async with http_server(app) as url:
        one = httpx.AsyncClient(
            base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1")
        )
        two = httpx.AsyncClient(
            base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        )
        async with one, two:
            # Bursts of twice the rate from one address, then 429 naming the address.
            got = [
                (await one.post(f"/sub/r/a-{i}", content=OFFER, headers=SDP)).status_code
                for i in range(6)
            ]
            assert got[:4] == [201] * 4 and got[4:] == [429, 429], got
            r = await one.post(
                "/pub/r/a-9", content=OFFER, headers={**SDP, "Origin": "https://app.example"}
            )
            assert r.status_code == 429
            assert "127.0.0.1" in r.text and int(r.headers["retry-after"]) >= 1
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            # Another address has its own allowance, until the node's total runs out (6/burst).
            got = [
                (await two.post(f"/sub/r/b-{i}", content=OFFER, headers=SDP)).status_code
                for i in range(3)
            ]
            assert got == [201, 201, 503], got
            # Refused joins never reached the SFU; other routes are not limited.
            assert len([c for c in fake.calls if c[0] == "subscribe"]) == 6
            assert (await one.get("/healthz")).status_code == 200
            # The allowance comes back with time.
            await trio.sleep(1.1)
            r = await two.post("/sub/r/b-9", content=OFFER, headers=SDP)
            assert r.status_code == 201


async def test_joins_of_one_address_take_turns_and_another_address_goes_first() -> None:
    """A burst of joins from one address runs at most JOIN_TURNS_PER_ADDRESS at once, the
    rest waiting in order; a join from another address meanwhile reaches the app at once
    instead of sharing the scheduler with the whole burst; nothing is left behind."""
    inside: dict[str, int] = {}
    peak: dict[str, int] = {}
    release = trio.Event()
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        host = scope["client"][0]
        inside[host] = inside.get(host, 0) + 1
        peak[host] = max(peak.get(host, 0), inside[host])
        order.append(host)
        if host == "192.0.2.1":
            await release.wait()
        inside[host] -= 1

    limits = JoinRateLimits(per_source=1e6, total=1e6)
    admit = AdmitJoins(app, limits)

    async def join(host: str, n: int) -> None:
        scope = {"type": "http", "method": "POST", "path": f"/sub/room/p-{host}-{n}",
                 "client": (host, 40000 + n), "headers": []}
        await admit(scope, None, None)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(join, "192.0.2.1", n)
        await trio.testing.wait_all_tasks_blocked()
        assert inside["192.0.2.1"] == JOIN_TURNS_PER_ADDRESS
        nursery.start_soon(join, "192.0.2.2", 0)
        await trio.testing.wait_all_tasks_blocked()
        # The other address went in while 168 of the burst still wait their turn.
        assert order[-1] == "192.0.2.2" and order.count("192.0.2.1") == JOIN_TURNS_PER_ADDRESS
        assert admit.addresses_waiting == 1
        release.set()
    assert peak["192.0.2.1"] == JOIN_TURNS_PER_ADDRESS and order.count("192.0.2.1") == 200
    assert admit.addresses_waiting == 0
    # GETs and other paths never take a turn.
    await admit({"type": "http", "method": "GET", "path": "/rooms", "client": ("192.0.2.3", 1),
                 "headers": []}, None, None)  # type: ignore[arg-type]
    assert admit.addresses_waiting == 0 and order[-1] == "192.0.2.3"
