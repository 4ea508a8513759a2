"""A chat flood against a real server process while subscribers stop acknowledging SCTP
(issue 14 item 2): the server's memory stays bounded, the stalled members are dropped, the
others get everything; and with the default limits the flood is cut at its sender."""

from __future__ import annotations

import pytest
import trio

from tests.abuse.server import Server, run_server, tracebacks
from tests.rtc_helpers import client_certificate
from tests.test_member_limits import stall
from trio_sfu.client.sfu import SubscriberClient, http_signal

pytestmark = pytest.mark.slow

LINE = "x" * 4000  # 4 KB, as in the probe


async def join(nursery: trio.Nursery, server: Server, room: str, peer_id: str) -> SubscriberClient:
    client = SubscriberClient(peer_id, certificate=client_certificate(), consent_interval=2.0)
    await nursery.start(client.connect, http_signal(server.url, "sub", room, peer_id))
    await client.wait_open()
    return client


def chats(client: SubscriberClient) -> int:
    return sum(1 for line in client.lines if line.startswith("CHAT "))


async def test_stalled_subscribers_under_a_chat_flood_are_dropped_memory_bounded(
    nursery: trio.Nursery,
) -> None:
    lines = 10_000
    # A chat rate high enough to let the flood through: the send-buffer cap is under test.
    async with run_server(chat_rate="100000", chat_burst="10000") as server:
        healthy = await join(nursery, server, "flood", "healthy-1")
        stalled = [await join(nursery, server, "flood", f"stalled-{i}") for i in range(3)]
        sender = await join(nursery, server, "flood", "sender-1")
        rss_before = server.rss_mib()
        for client in stalled:
            stall(client)
        rss_peak = rss_before
        began = trio.current_time()
        for i in range(lines):
            sender.send(f"CHAT {LINE}")
            if i % 100 == 99:
                await sender.control.wait_buffered_amount_below(512 * 1024)
                # Paced by the healthy subscriber, which must stay under its own cap: a
                # reader slower than the flood would (rightly) lose chat too.
                with trio.fail_after(30):
                    while chats(healthy) < i - 150:
                        await trio.sleep(0.01)
                rss_peak = max(rss_peak, server.rss_mib())
        with trio.fail_after(120):
            while chats(healthy) < lines:
                rss_peak = max(rss_peak, server.rss_mib())
                await trio.sleep(0.2)
        took = trio.current_time() - began
        # Stalled members are disconnected (send buffer full, or SCTP gave up on them).
        await server.wait_metrics({"trio_sfu_subscribers": 2}, timeout=60)
        print(
            f"{lines} x 4 KB CHAT in {took:.1f} s, 3 stalled subscribers: RSS "
            f"{rss_before:.0f} → peak {rss_peak:.0f} MiB; healthy got {chats(healthy)}; "
            f"stalled dropped: {[c.pc.close_reason or 'server closed' for c in stalled]}"
        )
        # The issue measured +185 MiB for this; each stalled member may now hold ~1.25 MiB.
        assert rss_peak - rss_before < 64
        assert healthy.pc.connected and sender.pc.connected
        assert not tracebacks(server)


async def test_chat_flood_is_cut_at_the_sender_by_default(nursery: trio.Nursery) -> None:
    async with run_server() as server:
        listener = await join(nursery, server, "r", "listener-1")
        sender = await join(nursery, server, "r", "sender-1")
        began = trio.current_time()
        for _ in range(1000):
            sender.send(f"CHAT {LINE}")
            await sender.control.wait_buffered_amount_below(256 * 1024)
        error = await sender.expect("ERROR chat rate limit")
        await trio.sleep(1.0)
        got = chats(listener)
        elapsed = trio.current_time() - began
        print(f"1,000 CHAT at once: {got} relayed in {elapsed:.1f} s; the sender got {error!r}")
        # Defaults: bursts of 20, then 5 per second (what refilled while they arrived).
        assert 20 <= got <= 20 + 5 * elapsed + 1
        assert sender.pc.connected and listener.pc.connected
        assert not tracebacks(server)
