"""``LAYER``/``SIZE`` data-channel hints (issue 11 §2): parsing, and ``off``/``auto`` pausing
and resuming a received track without renegotiation, numbering continuous across the pause."""

from __future__ import annotations

import itertools

import pytest
import trio

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.proto.rtcp import Pli, RtcpPacket
from trio_sfu.proto.rtp import parse_rtp
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu import protocol


def test_layer_and_size_parse() -> None:
    assert protocol.parse_command("LAYER p-1 {abc-1} off") == protocol.LayerHint(
        "p-1", "{abc-1}", "off"
    )
    for layer in ("low", "mid", "high", "auto"):
        assert protocol.parse_command(f"LAYER p t {layer}") == protocol.LayerHint("p", "t", layer)
    assert protocol.parse_command("SIZE p t 640x360") == protocol.SizeHint("p", "t", 640, 360)
    for bad in (
        "LAYER p t", "LAYER p t max", "LAYER p t off x", "LAYER p/ t off", "LAYER  p t off",
        "SIZE p t 640", "SIZE p t 640x", "SIZE p t -1x2", "SIZE p t 123456x1", "SIZE p t",
    ):
        with pytest.raises(protocol.CommandError):
            protocol.parse_command(bad)


class Video:
    """(seq, timestamp, keyframe-ish first byte) of a subscriber's video packets."""

    def __init__(self, client: SubscriberClient) -> None:
        self.packets: list[tuple[int, int]] = []
        self._inner = client.pc.on_rtp
        client.pc.on_rtp = self

    def __call__(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        if stream.transceiver.kind == "video":
            p = parse_rtp(packet)
            self.packets.append((p.sequence_number, p.timestamp))
        if self._inner is not None:
            self._inner(stream, packet, now)


async def test_layer_off_pauses_and_auto_resumes_without_renegotiation(
    nursery: trio.Nursery,
) -> None:
    env: SfuEnv = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    carol = await env.subscriber("r", "carol-1")  # the control: keeps receiving throughout
    alice = await env.publisher("r", "alice-1", audio=False)
    plis: list[RtcpPacket] = []
    alice.pc.on_rtcp = lambda packets, now: plis.extend(p for p in packets if isinstance(p, Pli))
    bob_video, carol_video = Video(bob), Video(carol)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    await wait_for(lambda: env.forwarding("r", "carol-1", "alice-1"))

    async def frames(n: int, *, keyframe: bool) -> None:
        for i in range(n):
            alice.send_frame(keyframe=keyframe and i == 0, size=300)
            await trio.sleep(0.005)

    await frames(10, keyframe=True)
    await wait_for(lambda: len(bob_video.packets) >= 10 and len(carol_video.packets) >= 10)
    sub = env.sfu.rooms["r"].subscribers["bob-1"]
    (key,) = [k for k, d in sub.downtracks.items() if d.source.kind == "video"]
    downtrack = sub.downtracks[key]
    offers = len(bob.offers)

    bob.send(f"LAYER alice-1 {key[1]} off")
    await wait_for(lambda: downtrack.paused)
    got_before, carol_before = len(bob_video.packets), len(carol_video.packets)
    await frames(10, keyframe=False)
    await wait_for(lambda: len(carol_video.packets) >= carol_before + 10)
    assert len(bob_video.packets) == got_before  # carol got them; bob none

    plis_before = len(plis)
    bob.send(f"LAYER alice-1 {key[1]} auto")
    await wait_for(lambda: not downtrack.paused)
    await wait_for(lambda: len(plis) > plis_before)  # resume asks for a keyframe at once
    await frames(10, keyframe=True)
    await wait_for(lambda: len(bob_video.packets) >= got_before + 10)
    seqs = [s for s, _ in bob_video.packets]
    # the same SSRC continues: no gap where the paused packets were (nothing to NACK)
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
    stamps = [t for _, t in bob_video.packets]
    assert ((stamps[got_before] - stamps[got_before - 1]) & 0xFFFFFFFF) < 0x80000000
    assert len(bob.offers) == offers  # no renegotiation for off or auto

    bob.send(f"SIZE alice-1 {key[1]} 320x180")
    await wait_for(lambda: sub.sizes.get(key) == (320, 180))
    bob.send("LAYER alice-1 nope off")
    assert (await bob.expect("ERROR")).startswith("ERROR no track nope")
