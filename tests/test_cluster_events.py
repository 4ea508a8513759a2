"""Room events with two pods (issue 13, item 4): a watcher on a pod that hosts nobody of the
room sees the same events as one on the pod hosting them — joins, leaves, chat — because both
follow the room's subject on NATS; ``/events`` (all rooms) too; and ``trio-sfu watch`` against
the other pod prints a join within a second."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.cluster_helpers import Pod, run_pods
from tests.rtc_helpers import client_certificate
from tests.services import NatsServer, RedisServer
from trio_sfu.client.events import room_events
from trio_sfu.client.sfu import SubscriberClient, http_signal

pytestmark = pytest.mark.slow


@pytest.fixture
async def pods(redis_srv: RedisServer, nats_srv: NatsServer) -> AsyncIterator[dict[str, Pod]]:
    async with run_pods(["a", "b"], redis_url=redis_srv.url, nats_url=nats_srv.url) as p:
        yield p


async def collect(url: str, room: str | None, into: list[dict[str, Any]],
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with room_events(url, room, chat=True) as events:
        task_status.started()
        async for event in events:
            into.append({k: v for k, v in event.items() if k != "ts"})


async def wait_for_events(seen: list[dict[str, Any]], count: int, timeout: float = 10) -> None:
    with trio.move_on_after(timeout):
        while len(seen) < count:
            await trio.sleep(0.02)
    assert len(seen) >= count, f"{count} events expected within {timeout} s: {seen}"


async def test_both_pods_stream_the_same_room_events(
    pods: dict[str, Pod], nursery: trio.Nursery
) -> None:
    on_a: list[dict[str, Any]] = []
    on_b: list[dict[str, Any]] = []
    everything: list[dict[str, Any]] = []
    await nursery.start(collect, pods["a"].url, "r", on_a)
    await nursery.start(collect, pods["b"].url, "r", on_b)
    await nursery.start(collect, pods["b"].url, None, everything)
    await wait_for_events(on_a, 1)
    await wait_for_events(on_b, 1)
    assert on_a[0]["type"] == on_b[0]["type"] == "room"
    bob = SubscriberClient("bob-1", certificate=client_certificate(), consent_interval=2.0)
    await nursery.start(bob.connect, http_signal(pods["a"].url, "sub", "r", "bob-1"))
    await bob.wait_open()
    # /events notices new rooms within a second and starts each with its snapshot.
    with trio.fail_after(10):
        while not any(e["type"] == "room" and e["room"] == "r" for e in everything):
            await trio.sleep(0.05)
    assert [s["id"] for s in everything[-1]["subscribers"]] == ["bob-1"]
    bob.send("CHAT hello from a")
    await wait_for_events(on_a, 3)
    bob.pc.close("bye")
    await wait_for_events(on_a, 4)
    await wait_for_events(on_b, 4)
    kinds = [(e["type"], e.get("peer") or e.get("from")) for e in on_b[1:4]]
    assert kinds == [("subscriber_joined", "bob-1"), ("chat", "bob-1"),
                     ("subscriber_left", "bob-1")], on_b
    assert on_a[1:4] == on_b[1:4]
    assert on_b[1]["node"] == "a"  # the join happened on the other pod
    with trio.fail_after(10):
        while not any(e["type"] == "subscriber_left" for e in everything):
            await trio.sleep(0.05)
    assert [e["type"] for e in everything if e.get("room") == "r"][-1] == "subscriber_left"


async def test_watch_on_the_other_pod_prints_a_join_within_a_second(
    pods: dict[str, Pod], nursery: trio.Nursery
) -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_sfu", "watch", "r", "--url", pods["b"].url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(30):
            while b"publishers: none" not in buffer:
                buffer += await proc.stdout.receive_some(4096)
        carol = SubscriberClient("carol-1", certificate=client_certificate(), consent_interval=2)
        joined_at = time.monotonic()  # from the POST: signaling + event
        await nursery.start(carol.connect, http_signal(pods["a"].url, "sub", "r", "carol-1"))
        with trio.fail_after(1.0):  # after the answer: the join event left with it
            while b"carol-1 subscribes on a" not in buffer:
                buffer += await proc.stdout.receive_some(4096)
        print(f"watch printed the join {time.monotonic() - joined_at:.3f} s after the POST")
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
