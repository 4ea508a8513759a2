"""3,000 ICE-restart PATCHes on one WHIP session of a real server process (issue 14 item 5):
the server's routes stay at their baseline (plus the one pending restart), a restart the client
completes brings them back to exactly the baseline, and media keeps flowing throughout."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.abuse.server import run_server, tracebacks
from tests.rtc_helpers import client_certificate
from tests.test_whip_http import WhipPeer, patch, pump, restart_frag
from trio_sfu.client.sfu import SubscriberClient, http_signal
from trio_sfu.proto.sdp.frag import parse_frag

pytestmark = pytest.mark.slow

RESTARTS = 3000


async def test_three_thousand_ice_restarts_leave_routes_at_baseline(
    nursery: trio.Nursery,
) -> None:
    async with run_server() as server, httpx.AsyncClient(
        base_url=server.url, timeout=30
    ) as http:
        sub = SubscriberClient("bob-1", certificate=client_certificate(), consent_interval=2.0)
        await nursery.start(sub.connect, http_signal(server.url, "sub", "r", "bob-1"))
        await sub.wait_open()
        publisher = WhipPeer("whip")
        assert (await publisher.post(http, "/whip/r")).status_code == 201
        await nursery.start(publisher.pc.run)
        publisher_id = (await sub.expect("PUB_JOIN whip-")).split()[1]
        await pump(publisher, lambda: sub.packets[publisher_id] >= 20)
        baseline = (await server.metrics())["trio_sfu_udp_routes"]
        rss_before = server.rss_mib()
        statuses: dict[int, int] = {}
        for i in range(RESTARTS):
            r = await patch(http, publisher.url, restart_frag(f"u{i:05d}", "p" * 24), "*")
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if i % 100 == 0:
                publisher.send_frame(keyframe=True)
        flooded = await server.metrics()
        print(
            f"{RESTARTS} restart PATCHes {statuses}: routes {baseline:.0f} → "
            f"{flooded['trio_sfu_udp_routes']:.0f}; RSS {rss_before:.0f} → "
            f"{server.rss_mib():.0f} MiB"
        )
        assert statuses == {200: RESTARTS}
        assert flooded["trio_sfu_udp_routes"] <= baseline + 1
        # A restart the client completes: exactly the baseline again, media still flowing.
        ufrag, pwd = publisher.pc.begin_ice_restart()
        r = await patch(http, publisher.url, restart_frag(ufrag, pwd), "*")
        assert r.status_code == 200, r.text
        frag = parse_frag(r.text)
        assert frag.ice_ufrag and frag.ice_pwd
        assert await publisher.pc.complete_ice_restart(
            frag.ice_ufrag, frag.ice_pwd, [c for _, c in frag.candidates]
        )
        count = sub.packets[publisher_id]
        await pump(publisher, lambda: sub.packets[publisher_id] >= count + 20)
        await server.wait_metrics({"trio_sfu_udp_routes": baseline}, timeout=10)
        assert not tracebacks(server)
