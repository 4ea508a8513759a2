"""One publisher connection, many tracks over time (issue 15), with our own clients as real
peers on loopback: publisher renegotiation (SDP_OFFER → SDP_ANSWER), ADD_MEDIA/REMOVE_MEDIA,
TRACK_ADD/TRACK_REMOVE to subscribers with recycled sections, MUTE/MUTED without renegotiation.
"""

from __future__ import annotations

import functools
import math

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client.sfu import PublisherClient, SignalingError, SubscriberClient
from trio_sfu.proto.sdp import parse
from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.errors import BadRequest
from trio_sfu.sfu.publisher import Publisher


@pytest.fixture
async def env(nursery: trio.Nursery) -> SfuEnv:
    return await start_sfu(nursery)


async def stream(pub: PublisherClient, frames: int = 10) -> None:
    for i in range(frames):
        pub.send_frame(keyframe=i == 0)
        await trio.sleep(0.005)


def stable(sub: SubscriberClient) -> bool:
    return sub.pc.jsep.signaling_state == "stable"


def server_publisher(env: SfuEnv, room: str, peer_id: str) -> Publisher:
    return env.sfu.rooms[room].publishers[peer_id]


async def room_counts(env: SfuEnv, room: str, peer_id: str) -> tuple[int, int]:
    state = await env.sfu.state.room(room)
    assert state is not None
    info = state.publishers[peer_id]
    return info.audio, info.video


def test_commands_parse_strictly() -> None:
    parse = dc_protocol.parse_command
    assert dc_protocol.parse_command("SDP_OFFER v=0") == dc_protocol.SdpOffer("v=0")
    assert parse("ADD_MEDIA video screen") == dc_protocol.AddMedia("video", "screen")
    assert parse("REMOVE_MEDIA audio mic") == dc_protocol.RemoveMedia("audio", "mic")
    assert dc_protocol.parse_command("MUTE {ab-12} on") == dc_protocol.Mute("{ab-12}", True)
    assert dc_protocol.parse_command("MUTE mid1 off") == dc_protocol.Mute("mid1", False)
    for bad in (
        "SDP_OFFER",
        "SDP_OFFER  ",
        "ADD_MEDIA data x",
        "ADD_MEDIA video",
        "ADD_MEDIA video a b",
        "REMOVE_MEDIA video " + "x" * 65,
        "MUTE t maybe",
        "MUTE  on",
        "MUTE a b on",
    ):
        with pytest.raises(dc_protocol.CommandError):
            dc_protocol.parse_command(bad)


async def test_audio_only_publisher_adds_camera_and_screen_then_removes_camera(
    env: SfuEnv,
) -> None:
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", video=False)
    assert await bob.expect("PUB_JOIN") == "PUB_JOIN alice-1"
    assert alice.audio is not None
    mic = alice.audio.track_id
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {mic} audio mic"
    await wait_for(lambda: stable(bob) and ("alice-1", mic) in bob.live_tracks())
    assert await room_counts(env, "r", "alice-1") == (1, 0)

    camera = await alice.add_track("video", "camera")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {camera.track_id} video camera"
    await wait_for(lambda: stable(bob) and ("alice-1", camera.track_id) in bob.live_tracks())
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[camera.track_id] >= 10)
    assert bob.track_packets[mic] >= 10
    assert await room_counts(env, "r", "alice-1") == (1, 1)

    screen = await alice.add_track("video", "screen")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {screen.track_id} video screen"
    await wait_for(lambda: stable(bob) and ("alice-1", screen.track_id) in bob.live_tracks())
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[screen.track_id] >= 10)
    assert await room_counts(env, "r", "alice-1") == (1, 2)
    assert bob.media_sections() == 4  # data + mic + camera + screen

    await alice.remove_track(camera)
    assert await bob.expect("TRACK_REMOVE") == f"TRACK_REMOVE alice-1 {camera.track_id}"
    offer = (await bob.expect("SDP_OFFER"))[len("SDP_OFFER ") :]
    stopped = [m for m in parse(offer).media if m.port == 0]
    assert len(stopped) == 1 and not stopped[0].msid  # RFC 8829 §5.2.2
    await wait_for(lambda: stable(bob) and ("alice-1", camera.track_id) not in bob.live_tracks())
    assert await room_counts(env, "r", "alice-1") == (1, 1)
    before = bob.track_packets[camera.track_id]
    screen_before = bob.track_packets[screen.track_id]
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[screen.track_id] >= screen_before + 10)
    assert bob.track_packets[camera.track_id] == before

    # The camera comes back: a new track, in bob's recycled section (the SDP stays bounded).
    camera2 = await alice.add_track("video", "camera")
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {camera2.track_id} video camera"
    await wait_for(lambda: stable(bob) and ("alice-1", camera2.track_id) in bob.live_tracks())
    assert bob.media_sections() == 4
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[camera2.track_id] >= 10)
    # Connections, not tracks: alice joined once and never left.
    assert sum(line.startswith("PUB_JOIN") for line in bob.lines) == 1
    assert not any(line.startswith("PUB_LEFT") for line in bob.lines)
    assert server_publisher(env, "r", "alice-1").renegotiations == 4


async def test_mute_pauses_forwarding_without_renegotiation(env: SfuEnv) -> None:
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1")
    assert alice.video is not None and alice.audio is not None
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1") and stable(bob))
    offers = len(bob.offers)
    video = alice.video.track_id
    await stream(alice, 10)
    await wait_for(lambda: bob.track_packets[video] >= 5)

    alice.mute(alice.video, True)
    assert await bob.expect("MUTED") == f"MUTED alice-1 {video} on"
    muted_at = bob.track_packets[video]
    audio_at = bob.track_packets[alice.audio.track_id]
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[alice.audio.track_id] >= audio_at + 15)
    assert bob.track_packets[video] == muted_at  # audio flows, video is paused

    alice.mute(alice.video, False)
    assert await bob.expect("MUTED") == f"MUTED alice-1 {video} off"
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[video] >= muted_at + 10)
    assert len(bob.offers) == offers  # no SDP_OFFER for a mute
    assert not any(line.startswith("SDP_ANSWER") for line in alice.lines)

    # A subscriber joining while a track is muted hears so right after its TRACK_ADD.
    alice.mute(alice.audio, True)
    await bob.expect("MUTED")
    carol = await env.subscriber("r", "carol-1")
    await carol.expect(f"TRACK_ADD alice-1 {alice.audio.track_id}")
    assert await carol.expect("MUTED") == f"MUTED alice-1 {alice.audio.track_id} on"


async def test_bad_renegotiation_commands_get_errors_and_change_nothing(env: SfuEnv) -> None:
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1")
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1") and stable(bob))
    alice.send("SDP_OFFER v=0 garbage")
    assert (await alice.expect("ERROR")).startswith("ERROR bad SDP_OFFER")
    alice.send("REMOVE_MEDIA video screen")
    assert await alice.expect("ERROR") == "ERROR no video track screen to remove"
    alice.send("MUTE nope on")
    assert await alice.expect("ERROR") == "ERROR no track nope to mute"
    for _ in range(17):
        alice.send("ADD_MEDIA audio x")
    assert (await alice.expect("ERROR")).startswith("ERROR more than 16 ADD_MEDIA")
    # A subscriber cannot renegotiate as a publisher does.
    bob.send("SDP_OFFER v=0")
    assert await bob.expect("ERROR") == "ERROR SdpOffer is not allowed on a subscriber connection"
    # Fewer sections than the session: refused, the old session stays (RFC 8829 §5.2.2).
    offer = alice.pc.create_offer()
    alice.pc.rollback()
    desc = parse(offer)
    desc.media = desc.media[:1]
    alice.send("SDP_OFFER " + desc.serialize())
    assert (await alice.expect("ERROR")).startswith("ERROR bad SDP_OFFER")
    await stream(alice, 20)
    await wait_for(lambda: bob.packets["alice-1"] >= 30)
    # Our client treats that ERROR as a failed renegotiation: rolled back, still usable.
    with pytest.raises(SignalingError):
        await _offer_refused(alice)
    assert alice.pc.jsep.signaling_state == "stable"
    await alice.renegotiate()


async def _offer_refused(alice: PublisherClient) -> None:
    """Make our next offer one the SFU refuses (fewer sections than the session)."""
    create = alice.pc.create_offer

    def bad_offer(**kwargs: bool) -> str:
        desc = parse(create(**kwargs))
        desc.media = desc.media[:1]
        return desc.serialize()

    alice.pc.create_offer = bad_offer  # type: ignore[method-assign]
    try:
        await alice.renegotiate()
    finally:
        alice.pc.create_offer = create  # type: ignore[method-assign]


async def test_manual_mode_media_lists_app_ids_and_follows_tracks(env: SfuEnv) -> None:
    bob = await env.subscriber("r", "bob-1")
    bob.send("SUB_MODE manual")
    await bob.expect("MEDIA")
    alice = await env.publisher("r", "alice-1", video=False)
    media = await bob.expect("MEDIA")
    assert '"app_id":"mic"' in media and '"muted":false' in media
    screen = await alice.add_track("video", "screen")
    media = await bob.expect("MEDIA")
    assert f'"track":"{screen.track_id}"' in media and '"app_id":"screen"' in media
    assert len(bob.offers) == 0  # manual mode: nothing until SUB
    bob.send("SUB alice-1")
    await wait_for(lambda: stable(bob) and ("alice-1", screen.track_id) in bob.live_tracks())


async def test_post_app_ids_label_the_first_offers_sections(env: SfuEnv) -> None:
    """``?app_ids=`` on the POST (``Sfu.publish(app_ids=…)``, what site/sfu-client.js sends
    for every leg, a reconnect's included): a screen shared on a connection of its own is
    ``screen`` from the start, not ``camera``; a bad label is a 400 and nothing joins."""
    bob = await env.subscriber("r", "bob-1")
    alice = PublisherClient("alice-1", **env.client_options)
    await env.nursery.start(
        alice.connect,
        functools.partial(env.sfu.publish, "r", "alice-1", app_ids=["screen-audio", "screen"]),
    )
    await alice.wait_open()
    assert alice.audio is not None and alice.video is not None
    heard = {await bob.expect("TRACK_ADD"), await bob.expect("TRACK_ADD")}
    assert heard == {
        f"TRACK_ADD alice-1 {alice.audio.track_id} audio screen-audio",
        f"TRACK_ADD alice-1 {alice.video.track_id} video screen",
    }
    with pytest.raises(BadRequest, match="app_ids"):
        await env.sfu.publish("r", "carol-1", "v=0", app_ids=["no spaces"])
    with pytest.raises(BadRequest, match="app_ids"):
        await env.sfu.publish("r", "carol-1", "v=0", app_ids=["a"] * 65)
    assert "carol-1" not in env.sfu.rooms["r"].publishers


async def test_remove_media_naming_a_shared_label_removes_only_the_stopped_section(
    env: SfuEnv,
) -> None:
    """Two video tracks with one label (found by the Hypothesis test below, which labels a
    new track by the count of live ones): ``REMOVE_MEDIA video two`` cannot say which one
    goes. Before, the server dropped the first, then the offer stopped the other: both
    gone, though the publisher still sent the first. Now it answers ERROR and the offer's
    stopped section decides."""
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", video=False)
    first = await alice.add_track("video", "two")
    second = await alice.add_track("video", "two")
    wanted = {("alice-1", first.track_id), ("alice-1", second.track_id)}
    await wait_for(lambda: stable(bob) and wanted <= bob.live_tracks())
    await alice.remove_track(second)
    errors = [line for line in alice.lines if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    assert errors[0].startswith("ERROR 2 video tracks are labelled two; nothing removed now")
    assert await bob.expect("TRACK_REMOVE") == f"TRACK_REMOVE alice-1 {second.track_id}"
    await wait_for(lambda: stable(bob) and ("alice-1", second.track_id) not in bob.live_tracks())
    assert ("alice-1", first.track_id) in bob.live_tracks()
    videos = [t for t in server_publisher(env, "r", "alice-1").tracks if t.kind == "video"]
    assert [t.track_id for t in videos] == [first.track_id]
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    before = bob.track_packets[first.track_id]
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[first.track_id] >= before + 10)


async def test_second_connection_screen_share_still_works(env: SfuEnv) -> None:
    bob = await env.subscriber("r", "bob-1")
    await env.publisher("r", "alice-1")
    await env.publisher("r", "alice-2", audio=False)  # the old way: a second connection
    await bob.expect("PUB_JOIN alice-1")
    await bob.expect("PUB_JOIN alice-2")
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-2") and stable(bob))
    assert {p for p, _ in bob.live_tracks()} == {"alice-1", "alice-2"}


# -- convergence under random changes (Hypothesis) ---------------------------------------------

Op = tuple[int, str, int]
ops_strategy = st.lists(
    st.tuples(
        st.integers(0, 2),  # which of the 3 publishers
        st.sampled_from(["add audio", "add video", "remove", "mute", "unmute"]),
        st.integers(0, 7),  # which of its tracks (modulo how many it has)
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=12, deadline=None)
@given(ops=ops_strategy, delays=st.lists(st.sampled_from([0.0, 0.01, 0.05]), min_size=1))
@example(  # found in CI: two video tracks labelled t1, the newer removed (see above)
    ops=[(2, "add video", 0), (2, "remove", 2), (2, "add video", 0), (2, "remove", 5)],
    delays=[0.0],
)
def test_random_track_changes_converge_with_a_slow_subscriber(
    ops: list[Op], delays: list[float]
) -> None:
    """Random add/remove/mute from 3 publishers while the subscriber answers slowly (offers
    wait, changes merge): in the end its live sections are exactly the publishers' live
    tracks, TRACK_ADD/TRACK_REMOVE told the same story, MUTED the last mute state of each."""
    trio.run(_converge, ops, delays)


async def _converge(ops: list[Op], delays: list[float]) -> None:
    async with trio.open_nursery() as nursery:
        env = await start_sfu(nursery)
        bob = await env.subscriber("r", "bob-1", auto_answer=False)

        async def slow_answers() -> None:
            i = 0
            while True:
                await wait_for(lambda: len(bob.offers) > bob._answered, timeout=math.inf)
                await trio.sleep(delays[i % len(delays)])
                i += 1
                bob.answer()

        nursery.start_soon(slow_answers)
        pubs = [await env.publisher("r", f"p{i}-x", video=False) for i in range(3)]
        muted: dict[str, bool] = {}
        for index, op, which in ops:
            pub = pubs[index]
            live = [t for t in pub.tracks if not t.stopped and not t.stopping]
            if op.startswith("add"):
                t = await pub.add_track(op.split()[1], f"t{len(pub.tracks)}")
                muted[t.track_id] = False
            elif not live:
                continue
            elif op == "remove":
                await pub.remove_track(live[which % len(live)])
            else:
                t = live[which % len(live)]
                pub.mute(t, op == "mute")
                muted[t.track_id] = op == "mute"
        expected = {
            (pub.id, t.track_id)
            for pub in pubs
            for t in pub.tracks
            if not t.stopped and not t.stopping
        }

        def told() -> tuple[set[tuple[str, str]], dict[str, bool]]:
            """What the lines said: the live tracks (TRACK_ADD less TRACK_REMOVE) and each
            track's last MUTED state."""
            live: set[tuple[str, str]] = set()
            mute_state: dict[str, bool] = {}
            for line in bob.lines:
                name, *args = line.split(" ")
                if name == "TRACK_ADD":
                    live.add((args[0], args[1]))
                elif name == "TRACK_REMOVE":
                    live.discard((args[0], args[1]))
                elif name == "MUTED":
                    mute_state[args[1]] = args[2] == "on"
            return live, mute_state

        def converged() -> bool:
            # The lines too: a TRACK_REMOVE of a track that never reached an offer can still be
            # on its way when the sections already match (found under load in CI)
            live, mute_state = told()
            return (
                stable(bob)
                and len(bob.offers) == bob._answered
                and bob.live_tracks() == expected
                and not env.sfu.rooms["r"].subscribers["bob-1"]._dirty.is_set()
                and live == expected
                and all(mute_state.get(t, False) == muted.get(t, False) for _, t in expected)
            )

        with trio.move_on_after(30):
            await wait_for(converged, timeout=math.inf)
        assert stable(bob) and len(bob.offers) == bob._answered
        assert bob.live_tracks() == expected
        live, mute_state = told()
        assert live == expected
        for _, track_id in expected:
            assert mute_state.get(track_id, False) == muted.get(track_id, False)
        nursery.cancel_scope.cancel()


async def test_a_section_turned_inactive_removes_its_track_and_sending_again_restores_it(
    env: SfuEnv,
) -> None:
    """What a browser's removeTrack / replaceTrack+direction does (no REMOVE_MEDIA): the section
    stays, its direction stops it bringing media (RFC 8829 §5.3.1: we answer inactive), and the
    track goes; sending on it again brings the same track back, without a new section."""
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1")
    assert alice.video is not None
    video = alice.video.track_id
    await wait_for(lambda: stable(bob) and ("alice-1", video) in bob.live_tracks())
    alice.video.direction = "inactive"
    answer = await alice.renegotiate()
    assert [m.direction for m in parse(answer).media if m.kind == "video"] == ["inactive"]
    assert await bob.expect("TRACK_REMOVE") == f"TRACK_REMOVE alice-1 {video}"
    await wait_for(lambda: stable(bob) and ("alice-1", video) not in bob.live_tracks())
    assert await room_counts(env, "r", "alice-1") == (1, 0)
    alice.video.direction = "sendonly"
    await alice.renegotiate()
    assert await bob.expect("TRACK_ADD") == f"TRACK_ADD alice-1 {video} video camera"
    await wait_for(lambda: stable(bob) and ("alice-1", video) in bob.live_tracks())
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    at = bob.track_packets[video]
    await stream(alice, 20)
    await wait_for(lambda: bob.track_packets[video] >= at + 10)
    assert len(parse(alice.pc.jsep.local_description.serialize()).media) == 3  # type: ignore[union-attr]


async def test_removed_media_never_comes_back_on_that_connection(env: SfuEnv) -> None:
    """REMOVE_MEDIA retires the track id: packets of a client that keeps sending are dropped,
    and a later offer still showing the section does not revive it."""
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1")
    assert alice.video is not None
    video = alice.video.track_id
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1") and stable(bob))
    alice.send("REMOVE_MEDIA video camera")
    assert await bob.expect("TRACK_REMOVE") == f"TRACK_REMOVE alice-1 {video}"
    await alice.renegotiate()  # the section still sends: not revived
    await wait_for(lambda: stable(bob) and ("alice-1", video) not in bob.live_tracks())
    at = bob.track_packets[video]
    audio_at = bob.track_packets[alice.audio.track_id] if alice.audio else 0
    await stream(alice, 20)
    assert alice.audio is not None
    await wait_for(lambda: bob.track_packets[alice.audio.track_id] >= audio_at + 15)
    assert bob.track_packets[video] == at
    assert sum(line.startswith(f"TRACK_ADD alice-1 {video}") for line in bob.lines) == 1
    assert server_publisher(env, "r", "alice-1").info.video == 0
