"""``LAYER``/``SIZE`` data-channel hints (issue 11 §2): parsing, and ``off``/``auto`` pausing
and resuming a received track without renegotiation, numbering continuous across the pause."""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from tests.test_forwarding_groups import FLAVOURS, World
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.proto.rtcp import Pli, RtcpPacket
from trio_sfu.proto.rtp import parse_rtp
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu import dc_protocol as protocol


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


# -- LAYER off/auto through the real forwarding path, random scenarios ------------------------
# (test_forwarding_groups' world: PublishedTrack.on_rtp -> ForwardingGroup -> DownTrack -> SRTP)

PAUSE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 6)),
        st.tuples(st.just("join"), st.integers(0, 1)),
        st.tuples(st.just("pause"), st.integers(0, 20)),
        st.tuples(st.just("resume"), st.integers(0, 20)),
        st.tuples(st.just("idle"), st.integers(1, 300)),  # time passes with nothing sent
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(PAUSE_OPS)
def test_pause_resume_keeps_each_subscribers_stream_continuous(
    ops: list[tuple[str, int]],
) -> None:
    """Whatever the order of joins, pauses, resumes and sends: each subscriber decrypts one
    stream of its own SSRC whose sequence numbers never skip (nothing to NACK across a pause),
    whose timestamps never go back, and whose payloads are exactly the publisher's packets
    sent while it was not paused, in order; the others are not disturbed."""
    world = World()
    # two subscribers sharing a group and one in a group of its own, already receiving
    for flavour in (0, 0, 1):
        world.join(flavour)
    # subscriber index -> (publisher seq, epoch) due to it; an epoch ends at each resume
    wanted: dict[int, list[tuple[int, int]]] = {i: [] for i in range(3)}
    epochs = [0, 0, 0]
    world.send(1)
    for due in wanted.values():
        due.append(((world.seq - 1) & 0xFFFF, 0))
    for name, arg in ops:
        subs = world.subscribers
        if name == "send":
            before = world.seq
            world.send(arg)
            for i, sub in enumerate(subs):
                if sub.active:  # active = not paused here (nobody leaves)
                    wanted[i].extend((s & 0xFFFF, epochs[i]) for s in range(before, world.seq))
        elif name == "join":
            world.join(arg)
            wanted[len(subs) - 1] = []
            epochs.append(0)
        elif name == "idle":
            world.now += arg / 100
        else:
            index = arg % len(subs)
            sub = subs[index]
            if name == "pause" and sub.active:
                assert sub.downtrack.pause() and sub.downtrack.paused
                sub.active = False
            elif name == "resume" and not sub.active:
                assert sub.downtrack.resume(world.now) and not sub.downtrack.paused
                sub.active = True
                epochs[index] += 1
            else:
                assert not (sub.downtrack.pause() if name == "pause" else
                            sub.downtrack.resume(world.now))
    for i, sub in enumerate(world.subscribers):
        pt = FLAVOURS[sub.flavour][0]
        media = [parse_rtp(p) for p in sub.leg.received if p[1] & 0x7F == pt]
        assert {m.ssrc for m in media} <= {sub.downtrack.transceiver.sender_ssrc}
        assert [m.payload for m in media] == [world.payloads[s] for s, _ in wanted[i]]
        seqs = [m.sequence_number for m in media]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
        # Timestamps: one offset to the publisher's within an epoch; across a pause they
        # move forward (by the time paused, at least one tick), never back.
        for (ma, (sa, ea)), (mb, (sb, eb)) in itertools.pairwise(
            zip(media, wanted[i], strict=True)
        ):
            pub_a, pub_b = world.ts + 3000 * (sa // 3), world.ts + 3000 * (sb // 3)
            if ea == eb:
                assert (mb.timestamp - ma.timestamp - (pub_b - pub_a)) & 0xFFFFFFFF == 0
            else:
                assert 0 < (mb.timestamp - ma.timestamp) & 0xFFFFFFFF < 0x80000000
