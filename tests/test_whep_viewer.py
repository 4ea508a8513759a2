"""WHEP viewers in the SFU: one audio + one video track following the room's live publisher."""

from __future__ import annotations

import pytest
import trio

from tests.rtc_helpers import client_certificate
from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client import ClientPeerConnection
from trio_sfu.client.sfu import PublisherClient
from trio_sfu.proto.rtp import parse_rtp
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound


@pytest.fixture
async def env(nursery: trio.Nursery) -> SfuEnv:
    return await start_sfu(nursery)


class Viewer:
    """A WHEP player on our client: recvonly audio + video, no data channel, one POST."""

    def __init__(self) -> None:
        self.pc = ClientPeerConnection(certificate=client_certificate())
        self.pc.add_transceiver("audio", "recvonly")
        self.pc.add_transceiver("video", "recvonly")
        self.packets: list[tuple[str, int, int, int]] = []  # (kind, ssrc, seq, timestamp)
        self.pc.on_rtp = self._on_rtp

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        p = parse_rtp(packet)
        self.packets.append((stream.transceiver.kind, p.ssrc, p.sequence_number, p.timestamp))

    async def join(self, env: SfuEnv, room: str, peer_id: str, **kw: str) -> None:
        answer = await env.sfu.whep(room, peer_id, self.pc.create_offer(), **kw)
        self.pc.handle_answer(answer)
        await env.nursery.start(self.pc.run)
        with trio.fail_after(10):
            await self.pc.wait_connected()

    def video(self) -> list[tuple[str, int, int, int]]:
        return [p for p in self.packets if p[0] == "video"]


async def stream(pub, frames: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(frames):
        pub.send_frame(keyframe=i == 0)
        await trio.sleep(0.005)


async def test_viewer_follows_a_replaced_publisher_without_renegotiation(env: SfuEnv) -> None:
    alice = await env.publisher("r", "alice-1")
    await wait_for(lambda: env.sfu.rooms["r"].publishers["alice-1"].announced)
    viewer = Viewer()
    await viewer.join(env, "r", "viewer-1")
    answer = viewer.pc.jsep.current_remote_description
    assert answer is not None
    assert [m.direction for m in answer.media] == ["sendonly", "sendonly"]
    await stream(alice, 20)
    await wait_for(lambda: len(viewer.video()) >= 15)
    before = viewer.video()
    alice.stop()
    await wait_for(lambda: "alice-1" not in env.sfu.rooms["r"].publishers)
    bob = await env.publisher("r", "bob-1")
    await wait_for(lambda: env.sfu.rooms["r"].subscribers["viewer-1"].following == "bob-1")
    await stream(bob, 20)
    await wait_for(lambda: len(viewer.video()) >= len(before) + 15)
    after = viewer.video()[len(before) :]
    # Same SSRC, the sequence numbers continue (no jump back), the timestamps move forward.
    assert {ssrc for _, ssrc, _, _ in after} == {before[-1][1]}
    seqs = [seq for _, _, seq, _ in viewer.video()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert after[0][3] > before[-1][3]
    # One offer, one answer: the viewer never renegotiated.
    assert viewer.pc.jsep.current_remote_description is answer
    assert viewer.pc.jsep.signaling_state == "stable"
    # It is a subscriber of the room for the room list.
    room = await env.sfu.room_info("r")
    assert {"id": "viewer-1", "user": "viewer"} in room["subscribers"]  # type: ignore[operator]


async def test_viewer_of_a_named_publisher(env: SfuEnv) -> None:
    alice = await env.publisher("r", "alice-1")
    await env.publisher("r", "bob-1")
    await wait_for(lambda: all(p.announced for p in env.sfu.rooms["r"].publishers.values()))
    viewer = Viewer()
    await viewer.join(env, "r", "viewer-1", publisher_id="alice-1")
    member = env.sfu.rooms["r"].subscribers["viewer-1"]
    assert member.following == "alice-1"  # type: ignore[attr-defined]
    await stream(alice, 10)
    await wait_for(lambda: len(viewer.video()) >= 8)
    alice.stop()  # a pinned viewer ends with its publisher
    with trio.fail_after(5):
        await viewer.pc.wait_closed()


async def test_whep_errors(env: SfuEnv) -> None:
    offer = Viewer().pc.create_offer()
    with pytest.raises(Conflict) as caught:
        await env.sfu.whep("empty", "v-1", offer)
    assert caught.value.retry_after is not None
    await env.publisher("r", "alice-1")
    await wait_for(lambda: env.sfu.rooms["r"].publishers["alice-1"].announced)
    with pytest.raises(NotFound):
        await env.sfu.whep("r", "v-2", offer, publisher_id="nobody-1")
    sender = ClientPeerConnection(certificate=client_certificate())
    sender.create_data_channel("x")
    with pytest.raises(BadRequest, match="WHEP offer"):
        await env.sfu.whep("r", "v-3", sender.create_offer())
    with pytest.raises(NotFound):
        env.sfu.ice_credentials("whep", "r", "nobody")
    # Nothing half-joined remains: the ids are free.
    await Viewer().join(env, "r", "v-1")


async def test_viewer_ice_credentials(env: SfuEnv) -> None:
    await env.publisher("r", "alice-1")
    await wait_for(lambda: env.sfu.rooms["r"].publishers["alice-1"].announced)
    viewer = Viewer()
    await viewer.join(env, "r", "viewer-1")
    ufrag, pwd = env.sfu.ice_credentials("whep", "r", "viewer-1")
    answer = viewer.pc.jsep.current_remote_description
    assert answer is not None and answer.media[0].ice_ufrag == ufrag
    assert answer.media[0].ice_pwd == pwd


async def test_viewer_posted_while_the_publisher_connects(env: SfuEnv) -> None:
    """Issue 8, item 6: WHIP and WHEP clients start together; the viewer's POST lands while
    the publisher's ICE/DTLS is still connecting. It gets its answer (not 409) and the media as
    soon as the publisher is up. A named publisher that is still connecting counts too."""
    posted, release = trio.Event(), trio.Event()

    async def held_signal(offer: str) -> str:
        answer = await env.sfu.publish("r", "alice-1", offer)
        posted.set()
        await release.wait()  # the publisher cannot connect before it has the answer
        return answer

    alice = PublisherClient("alice-1", **env.client_options)
    env.nursery.start_soon(alice.connect, held_signal)
    with trio.fail_after(5):
        await posted.wait()
    assert not env.sfu.rooms["r"].publishers["alice-1"].announced
    viewer, pinned = Viewer(), Viewer()
    await viewer.join(env, "r", "viewer-1")
    await pinned.join(env, "r", "viewer-2", publisher_id="alice-1")
    members = env.sfu.rooms["r"].subscribers
    assert members["viewer-1"].following is None  # type: ignore[attr-defined]
    release.set()
    await alice.wait_open()
    await wait_for(lambda: all(members[v].following == "alice-1"  # type: ignore[attr-defined]
                               for v in ("viewer-1", "viewer-2")))
    await stream(alice, 20)
    await wait_for(lambda: len(viewer.video()) >= 15 and len(pinned.video()) >= 15)


async def test_whep_without_any_publisher_is_still_409(env: SfuEnv) -> None:
    sub = await env.subscriber("r", "bob-1")  # the room exists, but nobody publishes
    offer = Viewer().pc.create_offer()
    with pytest.raises(Conflict, match="no live publisher"):
        await env.sfu.whep("r", "v-1", offer)
    with pytest.raises(NotFound):
        await env.sfu.whep("r", "v-2", offer, publisher_id="alice-1")
    sub.stop()


async def test_viewer_follows_its_publishers_track_changes(env: SfuEnv) -> None:
    """Issue 15: the followed publisher joins audio-only and adds its camera later, then swaps
    it for a screen share: the viewer's one video section carries whichever video the publisher
    sends now (switched, never renegotiated)."""
    alice = await env.publisher("r", "alice-1", video=False)
    await wait_for(lambda: env.sfu.rooms["r"].publishers["alice-1"].announced)
    viewer = Viewer()
    await viewer.join(env, "r", "viewer-1")
    answer = viewer.pc.jsep.current_remote_description
    await stream(alice, 10)
    await wait_for(lambda: any(p[0] == "audio" for p in viewer.packets))
    assert viewer.video() == []
    camera = await alice.add_track("video", "camera")
    await stream(alice, 20)
    await wait_for(lambda: len(viewer.video()) >= 15)
    screen = await alice.add_track("video", "screen")
    await alice.remove_track(camera)
    seen = len(viewer.video())
    await stream(alice, 20)
    await wait_for(lambda: len(viewer.video()) >= seen + 15)
    downtrack = env.sfu.rooms["r"].subscribers["viewer-1"].downtracks["video"]  # type: ignore[attr-defined]
    assert downtrack.source.track_id == screen.track_id
    assert viewer.pc.jsep.current_remote_description is answer  # never renegotiated
