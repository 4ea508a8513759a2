"""Joins during a NATS outage (issue 9 item 4, issue 14 item 1), pods as processes: every join
is refused with 503 while NATS is down, none leaves a room on the pod, and once NATS is back a
new member of that room on that pod hears the room (PUB_JOIN for a publisher on another pod,
before and after it joined, and CHAT)."""

from __future__ import annotations

import functools

import httpx
import pytest
import trio

from tests.cluster_helpers import run_pods
from tests.services import NatsServer, RedisServer
from tests.test_cluster import flowing, join, metrics, publisher, stream_until, subscriber
from trio_sfu.client.sfu import PublisherClient, SignalingError, SubscriberClient

pytestmark = pytest.mark.slow


async def test_joins_during_a_nats_outage_are_refused_and_leave_no_deaf_room(
    redis_srv: RedisServer, nats_srv: NatsServer, nursery: trio.Nursery
) -> None:
    async with run_pods(["a", "b"], redis_url=redis_srv.url, nats_url=nats_srv.url) as pods:
        alice = await join(nursery, publisher("alice-1"), pods["a"].url, "pub", "r")
        watcher = await join(nursery, subscriber("watcher-1"), pods["b"].url, "sub", "other")
        assert isinstance(alice, PublisherClient) and isinstance(watcher, SubscriberClient)
        nats_srv.stop()
        try:
            statuses = []
            async with httpx.AsyncClient(timeout=10) as http:
                for i, room in enumerate(["r", "r", "other", "fresh"]):
                    probe = subscriber(f"probe-{i}")
                    r = await http.post(
                        f"{pods['b'].url}/sub/{room}/probe-{i}",
                        content=probe.pc.create_offer().encode(),
                        headers={"Content-Type": "application/sdp"},
                    )
                    probe.pc.close("unused")
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        assert int(r.headers["Retry-After"]) > 0
            print(f"joins on pod b while NATS is down: {statuses}")
            assert statuses == [503, 503, 503, 503]
            b = await metrics(pods["b"])
            assert b["trio_sfu_rooms"] == 1  # "other", held by its member; nothing new
            assert b["trio_sfu_peers"] == 1
        finally:
            nats_srv.start()
        # NATS is back: a new member of "r" on pod b hears the room.
        with trio.fail_after(20):
            while True:
                carol = subscriber("carol-1")
                try:
                    await join(nursery, carol, pods["b"].url, "sub", "r")
                    break
                except SignalingError as exc:
                    assert exc.status == 503, exc
                    carol.pc.close("retry")
                    await trio.sleep(0.5)
        assert isinstance(carol, SubscriberClient)
        assert await carol.expect("PUB_JOIN alice-1", timeout=10)
        # Through the room's bus listener: a publisher joining after carol, and chat.
        dave = await join(nursery, publisher("dave-1"), pods["a"].url, "pub", "r")
        assert await carol.expect("PUB_JOIN dave-1", timeout=10)
        alice.send("CHAT hello after the outage")
        assert await carol.expect("CHAT alice-1 hello after the outage", timeout=10)
        await stream_until(alice, functools.partial(flowing, carol, 20), timeout=20)
        assert dave.pc.connected
