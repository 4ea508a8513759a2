"""ICE restarts leave no stale route (issue 14 item 5): the endpoint routes exactly the ufrags
the peer's agent accepts — two while a restart is pending, one once it completed — however many
restarts a client asks for, completed or not."""

from __future__ import annotations

import trio

from tests.test_ice_restart import connected_pair, echo_until
from trio_sfu.rtc.server import RtcServer

RESTARTS = 3000


async def test_thousands_of_restarts_leave_routes_at_baseline(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    endpoint = rtc_server.endpoint
    async with trio.open_nursery() as peers:
        client, spc, ssrc, back = await connected_pair(rtc_server, peers)
        baseline = endpoint.demux_entries()
        peak = baseline
        # Restarts the client never completes (a PATCH flood): one pending ufrag at most.
        for i in range(RESTARTS):
            spc.restart_ice(f"cli{i:05d}", "p" * 24)
            peak = max(peak, endpoint.demux_entries())
            if i % 500 == 0:
                await trio.lowlevel.checkpoint()
        print(f"{RESTARTS} restarts: routes {baseline} before, peak {peak}")
        assert peak <= baseline + 1
        # A restart the client completes: back to exactly the baseline.
        ufrag, pwd = client.begin_ice_restart()
        server_ufrag, server_pwd = spc.restart_ice(ufrag, pwd)
        assert await client.complete_ice_restart(server_ufrag, server_pwd)
        await echo_until(client, ssrc, back, range(50, 90))
        assert endpoint.demux_entries() == baseline
        client.close()
        with trio.fail_after(10):
            await spc.wait_closed()
    assert endpoint.demux_entries() == 0
