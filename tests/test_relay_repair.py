"""Issue 9, item 3, in small: how a pod repairs relayed media (``sfu/remote.py``).

A relayed video gap long enough not to be worth NACKing, or any gap after a stall, asks the
publisher's pod for a keyframe (throttled); short gaps and reordering do not; NACKs this pod's
cache cannot answer go to the publisher's pod as one ``Nack`` command. The end-to-end proof
with NATS restarted and frozen is in tests/test_cluster_browser.py.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

from trio_sfu.sfu.bus import LocalBus
from trio_sfu.sfu.model import (
    CodecInfo,
    Command,
    KeyframeRequest,
    Nack,
    PublisherInfo,
    TrackInfo,
)
from trio_sfu.sfu.remote import GAP_KEYFRAME, STALL, RemoteTrack

VP8 = CodecInfo("VP8", 90000, None, None, 96)


class FakeSfu:
    """What a RemoteTrack is handed of the SFU: a way to spawn tasks, the bus, the relay
    (unused here: nothing attaches) and the idle callback."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.sent: list[tuple[str, Command]] = []
        self.idle: list[RemoteTrack] = []
        outer = self

        class Bus(LocalBus):
            async def send_to_node(self, node_id: str, command: Command) -> None:
                outer.sent.append((node_id, command))
                await trio.lowlevel.checkpoint()

        self.bus = Bus()

    def spawn(self, fn: Any, *args: Any) -> None:
        self.nursery.start_soon(fn, *args)


def rtp(seq: int, ssrc: int = 1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + b"\x10payload"


def remote(sfu: FakeSfu, kind: str = "video") -> RemoteTrack:
    publisher = PublisherInfo("alice-1", "alice", "pod-a")
    track = TrackInfo("v0", kind, (VP8,))
    return RemoteTrack(
        "r",
        publisher,
        track,
        spawn=sfu.spawn,
        relay=RecordingRelay(),
        bus=sfu.bus,
        on_idle=sfu.idle.append,
    )


def keyframe_requests(sfu: FakeSfu) -> int:
    return sum(isinstance(c, KeyframeRequest) for _, c in sfu.sent)


async def test_gaps_and_stalls_ask_the_publishers_pod_for_a_keyframe(
    nursery: trio.Nursery,
) -> None:
    sfu = FakeSfu(nursery)
    track = remote(sfu)
    now = 100.0
    for seq in range(65530, 65546):  # in order, across the wrap
        track.on_packet(rtp(seq), now)
        now += 0.01
    track.on_packet(rtp(65546 + 3), now)  # a short gap: left to NACKs
    track.on_packet(rtp(65546 + 1), now)  # reordering: nothing
    await trio.testing.wait_all_tasks_blocked()
    assert keyframe_requests(sfu) == 0
    track.on_packet(rtp(65550 + GAP_KEYFRAME), now)  # a long gap: an outage dropped media
    await trio.testing.wait_all_tasks_blocked()
    assert sfu.sent == [("pod-a", KeyframeRequest("r", "alice-1", "v0"))]
    assert track.gaps == 1
    # A short gap after a stall is an outage too, once the throttle allows another request.
    now += STALL + 0.5
    track.on_packet(rtp(65552 + GAP_KEYFRAME), now)
    await trio.testing.wait_all_tasks_blocked()
    assert keyframe_requests(sfu) == 2
    # A second stream (another SSRC) has its own numbering: its first packet is no gap.
    track.on_packet(rtp(7, ssrc=99), now + 1.0)
    await trio.testing.wait_all_tasks_blocked()
    assert keyframe_requests(sfu) == 2


async def test_audio_never_asks_for_keyframes(nursery: trio.Nursery) -> None:
    sfu = FakeSfu(nursery)
    track = remote(sfu, "audio")
    track.on_packet(rtp(1), 1.0)
    track.on_packet(rtp(1000), 5.0)
    track.nack_missed([5, 6], 5.0)
    await trio.testing.wait_all_tasks_blocked()
    assert sfu.sent == []


async def test_unanswerable_nacks_go_to_the_publishers_pod_gathered(
    nursery: trio.Nursery,
) -> None:
    sfu = FakeSfu(nursery)
    track = remote(sfu)
    track.nack_missed([10, 11], 1.0)
    track.nack_missed([11, 12], 1.0)  # from another subscriber, same moment
    await trio.sleep(0.05)
    assert sfu.sent == [("pod-a", Nack("r", "alice-1", "v0", (10, 11, 12)))]
    assert track.nacks_forwarded == 3


async def test_an_idle_remote_track_is_handed_back(nursery: trio.Nursery) -> None:
    """The SFU forgets a remote track through the callback it gave, not by being reached."""
    sfu = FakeSfu(nursery)
    track = remote(sfu)
    track.on_packet(rtp(1), 1.0)
    assert sfu.idle == []
    track.stop()
    assert sfu.idle == [track]


class RecordingRelay:
    """The relay as the publisher's pod sees it: what each track's sink was given."""

    def __init__(self) -> None:
        self.sent: dict[str, list[bytes]] = {}

    def sender(self, publisher_id: str, track_id: str) -> Any:
        packets = self.sent.setdefault(track_id, [])

        class Sink:
            def __call__(self, packet: bytes) -> None:
                packets.append(packet)

            def close(self) -> None:
                pass

        return Sink()

    def subscribe(self, *args: Any) -> Any:
        raise AssertionError("single pod: nothing is received from other pods")


async def test_publishers_pod_answers_a_relayed_nack_from_its_cache(
    nursery: trio.Nursery,
) -> None:
    """The other half: a ``Nack`` command relays the packets again from the track's cache, and
    asks the publisher for a keyframe when some are no longer there."""
    from tests.sfu_helpers import SfuEnv, wait_for
    from trio_sfu.rtc.server import RtcServer
    from trio_sfu.sfu.service import Sfu

    server = RtcServer.bind("127.0.0.1", 0)
    nursery.start_soon(server.serve)
    relay = RecordingRelay()
    sfu = Sfu(server, relay=relay)  # type: ignore[arg-type]
    await nursery.start(sfu.run)
    env = SfuEnv(server, sfu, nursery)
    alice = await env.publisher("r", "alice-1")
    video = next(t for t in sfu.rooms["r"].publishers["alice-1"].tracks if t.kind == "video")
    sent = relay.sent[video.track_id]
    for i in range(20):
        alice.send_frame(keyframe=i == 0)
        await trio.sleep(0.005)
    await wait_for(lambda: len(sent) >= 20)
    before = list(sent)
    wanted = (before[3], before[7])
    seqs = tuple((p[2] << 8) | p[3] for p in wanted)
    keyframes = video.keyframes.sent
    await sfu.bus.send_to_node("local", Nack("r", "alice-1", video.track_id, seqs))
    await wait_for(lambda: len(sent) >= len(before) + 2)
    assert sent[len(before):] == list(wanted)
    assert video.keyframes.sent == keyframes  # all were in the cache
    gone = ((seqs[0] - 5000) & 0xFFFF,)
    await trio.sleep(0.6)  # past the keyframe throttle
    await sfu.bus.send_to_node("local", Nack("r", "alice-1", video.track_id, gone))
    await wait_for(lambda: video.keyframes.sent == keyframes + 1)
    alice.stop()
