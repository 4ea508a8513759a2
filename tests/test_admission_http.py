"""Joins per second per address and in total (issue 14 item 4), refused before routing with
429/503 and Retry-After (and CORS headers, so a browser on another origin can read them)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.test_http import FakeSfu, http_server
from trio_sfu.http import create_app
from trio_sfu.http.limits import JoinRateLimits

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
