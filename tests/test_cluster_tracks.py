"""A publisher's tracks over time across pods (issue 15): the publisher on pod a adds, removes
and mutes tracks on its one connection; a subscriber on pod b follows through the `TrackChange`
on the bus and the relay, and `GET /rooms/{room}` agrees on both pods."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.cluster_helpers import Pod, run_pods
from tests.services import NatsServer, RedisServer
from tests.test_cluster import join, publisher, room_json, subscriber
from trio_sfu.client.sfu import PublisherClient, SubscriberClient

pytestmark = pytest.mark.slow


@pytest.fixture
async def pods(redis_srv: RedisServer, nats_srv: NatsServer) -> AsyncIterator[dict[str, Pod]]:
    async with run_pods(["a", "b"], redis_url=redis_srv.url, nats_url=nats_srv.url) as p:
        yield p


async def stream_until(pub: PublisherClient, done, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        i = 0
        while not done():
            pub.send_frame(keyframe=i % 25 == 0)
            i += 1
            await trio.sleep(0.01)


async def counts(pods: dict[str, Pod]) -> list[object]:
    return [await room_json(pod, "r") for pod in pods.values()]


def expected(audio: int, video: int) -> dict[str, object]:
    return {
        "room": "r",
        "publishers": [{"id": "alice-1", "user": "alice", "audio": audio, "video": video}],
        "subscribers": [{"id": "bob-1", "user": "bob"}],
    }


async def test_tracks_added_removed_and_muted_on_one_pod_follow_on_another(
    pods: dict[str, Pod], nursery: trio.Nursery
) -> None:
    bob = await join(nursery, subscriber("bob-1"), pods["b"].url, "sub", "r")
    alice = await join(nursery, publisher("alice-1", video=False), pods["a"].url, "pub", "r")
    assert isinstance(bob, SubscriberClient) and isinstance(alice, PublisherClient)
    assert alice.audio is not None
    mic = alice.audio.track_id
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {mic} audio mic"
    await stream_until(alice, lambda: bob.track_packets[mic] > 20)

    camera = await alice.add_track("video", "camera")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {camera.track_id} video camera"
    await stream_until(alice, lambda: bob.track_packets[camera.track_id] > 20)
    assert await counts(pods) == [expected(1, 1)] * 2

    screen = await alice.add_track("video", "screen")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {screen.track_id} video screen"
    await stream_until(alice, lambda: bob.track_packets[screen.track_id] > 20)
    assert await counts(pods) == [expected(1, 2)] * 2

    await alice.remove_track(camera)
    assert await bob.expect("TRACK_REMOVE") == f"TRACK_REMOVE alice-1 {camera.track_id}"
    await stream_until(
        alice, lambda: ("alice-1", camera.track_id) not in bob.live_tracks()
    )
    camera_at, screen_at = bob.track_packets[camera.track_id], bob.track_packets[screen.track_id]
    await stream_until(alice, lambda: bob.track_packets[screen.track_id] > screen_at + 20)
    assert bob.track_packets[camera.track_id] == camera_at
    assert await counts(pods) == [expected(1, 1)] * 2
    assert bob.media_sections() == 4  # data, mic, the stopped camera, screen

    offers = len(bob.offers)
    alice.mute(screen, True)
    assert await bob.expect("MUTED") == f"MUTED alice-1 {screen.track_id} on"
    screen_at, mic_at = bob.track_packets[screen.track_id], bob.track_packets[mic]
    await stream_until(alice, lambda: bob.track_packets[mic] > mic_at + 30)
    assert bob.track_packets[screen.track_id] == screen_at
    alice.mute(screen, False)
    assert await bob.expect("MUTED") == f"MUTED alice-1 {screen.track_id} off"
    await stream_until(alice, lambda: bob.track_packets[screen.track_id] > screen_at + 20)
    assert len(bob.offers) == offers

    # The camera again: bob's stopped section is recycled, the SDP stays bounded.
    camera2 = await alice.add_track("video", "camera")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {camera2.track_id} video camera"
    await stream_until(alice, lambda: bob.track_packets[camera2.track_id] > 20)
    assert bob.media_sections() == 4
