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

from trio_sfu.cluster.bus import LocalBus
from trio_sfu.cluster.commands import (
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
    """What a RemoteTrack uses of the SFU: a nursery to spawn in and the bus."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.sent: list[tuple[str, Command]] = []
        outer = self

        class Bus(LocalBus):
            async def send_to_node(self, node_id: str, command: Command) -> None:
                outer.sent.append((node_id, command))
                await trio.lowlevel.checkpoint()

        self.bus = Bus()

    def spawn(self, fn: Any, *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    def forget_remote(self, remote: RemoteTrack) -> None:
        pass


def rtp(seq: int, ssrc: int = 1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + b"\x10payload"


def remote(sfu: FakeSfu, kind: str = "video") -> RemoteTrack:
    publisher = PublisherInfo("alice-1", "alice", "pod-a")
    track = TrackInfo("v0", kind, (VP8,))
    return RemoteTrack(sfu, "r", publisher, track)  # type: ignore[arg-type]


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
