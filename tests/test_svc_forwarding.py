"""VP9 SVC layer dropping through the real forwarding path (issue 11, item 2).

A publisher track sends one VP9 stream whose pictures carry three spatial layers
(``L3T1_KEY``-shaped: every layer frame of a keyframe picture depends on the one below, other
layer frames only on their own layer's past), announced by the scalability structure (RFC 9628
§4.2.1) in each keyframe. Subscribers choose spatial layers at random
(``DownTrack.set_layer``), pause and resume, and lose packets that they NACK. What each one
*decrypts* must be a stream a VP9 decoder can use: sequence numbers without gaps except the
publisher's own losses, every picture whole up to the subscriber's layer with the marker on
its last packet, a higher layer only from a keyframe picture on, and retransmissions
byte-equal to what was first sent.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_forwarding_groups import (
    FB,
    PROFILE,
    PublisherLeg,
    SubscriberLeg,
    publisher_transceiver,
    subscriber_transceiver,
)
from trio_sfu.proto.codecs.vp8 import parse_descriptor as vp8_descriptor
from trio_sfu.proto.codecs.vp9 import layer_info
from trio_sfu.proto.rtp import RtpPacket, parse_rtp
from trio_sfu.proto.sdp.model import RtpCodec
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu.feedback import rtx_unwrap
from trio_sfu.sfu.track import DownTrack, PublishedTrack

SSRC = 0x5EED0001
WIDTHS = [320, 640, 1280]
PACKETS = [1, 2, 2]  # packets per layer frame, per spatial layer


class Publisher(PublisherLeg):
    transport_rtt: float | None = None


def vp9_codecs(pt: int, rtx: int) -> list[RtpCodec]:
    return [
        RtpCodec(pt, "VP9", 90000, rtcp_fb=list(FB)),
        RtpCodec(rtx, "rtx", 90000, fmtp=f"apt={pt}"),
    ]


def descriptor(picture: int, sid: int, part: int, parts: int, key: bool) -> bytes:
    """RFC 9628 §4.2 non-flexible mode: I (15-bit picture id), P, L, B, E and on the first
    packet of a keyframe picture V with the scalability structure (three resolutions)."""
    first, last = part == 0, part == parts - 1
    ss = key and sid == 0 and first
    b0 = 0x80 | 0x20 | (0 if key else 0x40) | (0x08 if first else 0) | (0x04 if last else 0)
    b0 |= 0x02 if ss else 0
    # TID 0, U 0, SID, D (inter-layer dependency: only within a keyframe picture), TL0PICIDX
    layer = (sid << 1) | (1 if key and sid else 0)
    out = bytes([b0, 0x80 | (picture >> 8) & 0x7F, picture & 0xFF, layer, picture & 0xFF])
    if ss:
        out += bytes([(2 << 5) | 0x10])
        for w in WIDTHS:
            out += w.to_bytes(2, "big") + (w * 9 // 16).to_bytes(2, "big")
    return out


def in_order(sub: Sub, seqs: list[int]) -> list[int]:
    """The subscriber's sequence numbers in RFC 3550 order. The rewriter starts at a random
    15-bit number, so a stream may wrap at 65535: order them by their distance from the first
    packet that arrived (nothing is sent, and so nothing repaired, before it)."""
    if not seqs:
        return []
    base = plain(sub, sub.leg.received[0]).sequence_number
    return sorted(seqs, key=lambda seq: (seq - base) & 0xFFFF)


def plain(sub: Sub, packet: bytes) -> RtpPacket:
    """What the subscriber's RTP stack makes of a packet: an RTX one (RFC 4588) unwrapped."""
    p = parse_rtp(packet)
    if p.payload_type == 97:
        unwrapped = rtx_unwrap(packet, sub.downtrack.transceiver.sender_ssrc, 96)
        assert unwrapped is not None
        p = parse_rtp(unwrapped[1])
    return p


@dataclass
class Sub:
    leg: SubscriberLeg
    downtrack: DownTrack
    active: bool = True
    #: (pictures sent before, spatial layer chosen) for every accepted set_layer
    limits: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class World:
    pub: Publisher = field(default_factory=Publisher)
    seq: int = 65000
    ts: int = 1000
    picture: int = 32760
    now: float = 50.0
    subs: list[Sub] = field(default_factory=list)
    #: publisher seq -> (picture count, sid, part, parts, keyframe picture)
    sent: dict[int, tuple[int, int, int, int, bool]] = field(default_factory=dict)
    count: int = 0  # pictures sent
    lost: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        transceiver = replace(publisher_transceiver(), codecs=vp9_codecs(96, 97))
        self.track = PublishedTrack(
            self.pub,  # type: ignore[arg-type]
            transceiver,
            "t",
            publisher_id="pub",
        )
        self.stream = IncomingStream(SSRC, transceiver)

    def picture_out(self, key: bool, lose: int) -> None:
        """One picture: S0, S1, S2 layer frames; ``lose`` (1-based packet index, 0: none)
        is lost at the source."""
        self.now += 1 / 30
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        index = 0
        for sid in range(3):
            parts = PACKETS[sid]
            for part in range(parts):
                index += 1
                seq = self.seq & 0xFFFF
                self.seq += 1
                self.sent[seq] = (self.count, sid, part, parts, key)
                if index == lose and not key:
                    self.lost.add(seq)
                    continue
                packet = RtpPacket(
                    96,
                    seq,
                    self.ts,
                    SSRC,
                    marker=sid == 2 and part == parts - 1,
                    payload=descriptor(self.picture, sid, part, parts, key)
                    + bytes([0xAB, sid])
                    + seq.to_bytes(2, "big"),
                ).serialize()
                self.track.on_rtp(self.stream, packet, self.now)
        self.picture = (self.picture + 1) & 0x7FFF
        self.count += 1

    def join(self) -> None:
        index = len(self.subs)
        a, b = os.urandom(28), os.urandom(28)
        leg = SubscriberLeg(
            f"sub{index}", SrtpContext(PROFILE, a, b), SrtpContext(PROFILE, b, a), 3
        )
        codecs = vp9_codecs(96, 97)
        if self.track.info.codecs[0].name == "VP8":
            codecs = [replace(codecs[0], name="VP8"), codecs[1]]
        transceiver = replace(subscriber_transceiver(0, index), codecs=codecs)
        downtrack = DownTrack(
            leg,  # type: ignore[arg-type]
            transceiver,
            self.track,
            twcc=leg.twcc,
        )
        assert downtrack.activate()
        self.track.attach(downtrack)
        downtrack.request_keyframe(self.now)
        self.subs.append(Sub(leg, downtrack))

    def nack_all(self, sub: Sub) -> None:
        """The subscriber NACKs every gap it sees; answered packets join what it received."""
        got = {plain(sub, p).sequence_number for p in sub.leg.received}
        if not got:
            return
        seqs = in_order(sub, list(got))
        first = seqs[0]
        span = (seqs[-1] - first) & 0xFFFF
        missing = [(first + k) & 0xFFFF for k in range(span) if (first + k) & 0xFFFF not in got]
        for seq in missing[-50:]:
            sub.downtrack.retransmit(seq, self.now + 10)  # past any RTT of a repeat

    def check(self) -> None:
        for sub in self.subs:
            packets = [plain(sub, p) for p in sub.leg.received]
            unique: dict[int, RtpPacket] = {}
            for p in packets:
                first = unique.setdefault(p.sequence_number, p)
                assert first.payload == p.payload and first.marker == p.marker, "resend = first"
            ordered = [unique[seq] for seq in in_order(sub, list(unique))]
            prev: tuple[int, int] | None = None  # (output seq, source seq)
            pictures: dict[int, list[tuple[RtpPacket, int]]] = {}
            for p in ordered:
                src = int.from_bytes(p.payload[-2:], "big")
                picture, sid, _, _, _ = self.sent[src]
                assert p.payload[-4:-2] == bytes([0xAB, sid]), "the publisher's payload"
                if prev is not None:
                    gap = (p.sequence_number - prev[0]) & 0xFFFF
                    src_gap = (src - prev[1]) & 0xFFFF
                    assert 1 <= gap < 0x8000 and src_gap < 0x8000, "never backwards"
                    lost_between = sum(
                        1 for k in range(1, src_gap) if (prev[1] + k) & 0xFFFF in self.lost
                    )
                    assert gap - 1 <= lost_between, "only the publisher's losses leave gaps"
                prev = (p.sequence_number, src)
                pictures.setdefault(picture, []).append((p, src))
            for picture, items in pictures.items():
                present = {self.sent[src][1] for _, src in items}
                lost = {v[1] for k, v in self.sent.items() if v[0] == picture and k in self.lost}
                top = max(present)
                assert set(range(top + 1)) <= present | lost, (picture, present, lost)
                for p, src in items:
                    _, sid, part, parts, _ = self.sent[src]
                    assert p.marker == (sid == top and part == parts - 1), (picture, top, src)
                # A limit chosen before a picture holds from its first layer frame on.
                chosen = [layer for before, layer in sub.limits if before <= picture]
                if chosen and chosen[-1] < 2:
                    assert top <= chosen[-1], (picture, top, sub.limits)


Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("picture"), st.integers(0, 9), st.integers(0, 5)),
        st.tuples(st.just("join"), st.just(0), st.just(0)),
        st.tuples(st.just("layer"), st.integers(0, 9), st.integers(0, 2)),
        st.tuples(st.just("pause"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("resume"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("tick"), st.integers(1, 60), st.just(0)),
        st.tuples(st.just("nack"), st.integers(0, 9), st.just(0)),
    ),
    min_size=1,
    max_size=80,
)


#: where the subscribers' sequence numbers start: the rewriter's random 15-bit start, and
#: starts that wrap at 65535 within a script
starts = st.one_of(st.integers(0, 0x7FFF), st.integers(0xFFFF - 400, 0xFFFF))


@settings(max_examples=150, deadline=None)
@given(ops, starts)
def test_random_spatial_layer_choices_give_each_subscriber_decodable_pictures(
    script: list[Op], start: int
) -> None:
    # secrets.randbits itself, not the rewriter module's name for it: a module compiled with
    # mypyc (trio_sfu/compiled.py) keeps its own reference to the secrets module.
    with mock.patch("secrets.randbits", lambda _: start):
        world = run_script(script)
    # a group's rewriter numbers from the patched start: its first member's first packet
    firsts = [plain(sub, sub.leg.received[0]).sequence_number for sub in world.subs
              if sub.leg.received]
    assert not firsts or start in firsts


def run_script(script: list[Op]) -> World:
    world = World()
    world.picture_out(True, 0)  # the scalability structure: three spatial layers
    world.join()
    for name, a, b in [("picture", 1, 0), *script, ("picture", 0, 0)]:
        live = [s for s in world.subs if s.active]
        sub = live[a % len(live)] if live else None
        if name == "picture":
            world.picture_out(a == 0, b)
        elif name == "join":
            world.join()
        elif name == "tick":
            world.now += a / 100
            if world.track.next_timer() <= world.now:
                world.track.tick(world.now)
        elif sub is None:
            continue
        elif name == "layer":
            if sub.downtrack.set_layer(b, world.now):
                sub.limits.append((world.count, b))
        elif name == "pause":
            sub.downtrack.pause()
        elif name == "resume":
            sub.downtrack.resume(world.now)
        elif name == "nack":
            world.nack_all(sub)
    world.check()
    return world


def test_a_limited_subscriber_gets_the_lower_layers_and_climbs_at_a_keyframe() -> None:
    world = World()
    world.picture_out(True, 0)
    world.join()
    world.join()
    low, full = world.subs
    world.picture_out(True, 0)
    assert world.track.fanout.svc_layers == 3
    assert world.track.layer_widths() == (320, 640, 1280)
    assert low.downtrack.set_layer(0, world.now)
    for _ in range(3):
        world.picture_out(False, 0)
    sids = [layer_info(parse_rtp(p).payload)[0] for p in low.leg.received[-3:]]  # type: ignore[index]
    assert sids == [0, 0, 0]  # S1 and S2 dropped
    assert all(parse_rtp(p).marker for p in low.leg.received[-3:])  # S0 ends each picture
    full_sids = [layer_info(parse_rtp(p).payload)[0] for p in full.leg.received[-5:]]  # type: ignore[index]
    assert full_sids == [0, 1, 1, 2, 2]
    # Up to S2: not before a keyframe picture (asked for), then from it on.
    plis = len(world.pub.rtcp)
    assert low.downtrack.set_layer(2, world.now)
    world.picture_out(False, 0)
    assert [layer_info(parse_rtp(p).payload)[0] for p in low.leg.received[-1:]] == [0]  # type: ignore[index]
    world.now += 0.6
    world.track.tick(world.now)
    assert len(world.pub.rtcp) > plis, "a keyframe was asked for"
    world.picture_out(True, 0)
    assert {layer_info(parse_rtp(p).payload)[0] for p in low.leg.received[-5:]} == {0, 1, 2}  # type: ignore[index]
    world.check()


def test_a_nack_after_dropped_layers_is_answered_from_the_groups_own_numbering() -> None:
    world = World()
    world.picture_out(True, 0)
    world.join()
    world.picture_out(True, 0)
    sub = world.subs[0]
    sub.downtrack.set_layer(1, world.now)
    for _ in range(3):
        world.picture_out(False, 0)
    sub.leg.drop_next = 1  # the next forwarded packet (S0 of the next picture) is lost
    world.picture_out(False, 0)
    lost_seq = (plain(sub, sub.leg.received[-1]).sequence_number - 2) & 0xFFFF
    assert sub.downtrack.retransmit(lost_seq, world.now)
    resent = plain(sub, sub.leg.received[-1])
    assert layer_info(resent.payload)[0] == 0 and resent.sequence_number == lost_seq  # type: ignore[index]
    world.check()


def l1t3_packet(seq: int, picture: int, tid: int, key: bool) -> bytes:
    """One-packet VP9 frames of an L1T3 stream (TIDs 0, 2, 1, 2, …): I, P, L, B, E and on
    a keyframe V with a scalability structure of one spatial layer; every T1/T2 frame is a
    switching-up point (U), as libvpx marks them in this pattern."""
    b0 = 0x80 | 0x20 | (0 if key else 0x40) | 0x08 | 0x04 | (0x02 if key else 0)
    layer = (tid << 5) | (0x10 if tid else 0)
    out = bytes([b0, 0x80 | (picture >> 8) & 0x7F, picture & 0xFF, layer, picture & 0xFF])
    if key:
        out += bytes([0x10]) + (640).to_bytes(2, "big") + (480).to_bytes(2, "big")
    return RtpPacket(96, seq, picture * 3000, SSRC, marker=True, payload=out + b"\xab").serialize()


def test_one_spatial_layer_makes_the_layer_a_frame_rate() -> None:
    """L1T3: with one spatial layer a subscriber's layer is a temporal one. ``low`` keeps the
    T0 frames only (a quarter), numbering closed over the dropped ones; going up happens one
    layer at a time at switching-up frames."""
    world = World()
    seq = 100

    def frames(count: int) -> None:
        nonlocal seq
        for _ in range(count):
            picture = world.picture
            tid = (0, 2, 1, 2)[picture % 4]
            world.now += 1 / 30
            packet = l1t3_packet(seq, picture, tid, picture % 60 == 0)
            world.track.on_rtp(world.stream, packet, world.now)
            seq += 1
            world.picture += 1

    world.picture = 0
    frames(1)
    world.join()
    frames(60)  # the subscriber starts at the next keyframe (picture 60)
    frames(8)
    fanout = world.track.fanout
    assert fanout.svc_layers == 1 and fanout.svc_temporal == 3 and fanout.temporal_choice
    sub = world.subs[0]
    assert sub.downtrack.set_layer(0, world.now)
    before = len(sub.leg.received)
    frames(16)
    got = [parse_rtp(p) for p in sub.leg.received[before:]]
    assert len(got) == 4  # T0 frames only
    assert all(layer_info(p.payload)[1] == 0 for p in got)  # type: ignore[index]
    seqs = [plain(sub, p).sequence_number for p in sub.leg.received]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert sub.downtrack.forwarded_layer == 0
    assert sub.downtrack.set_layer(2, world.now)
    frames(8)
    assert sub.downtrack.forwarded_layer == 2
    before = len(sub.leg.received)
    frames(8)
    assert len(sub.leg.received) - before == 8  # every frame again
    seqs = [plain(sub, p).sequence_number for p in sub.leg.received]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


def vp8_l1t3_packet(seq: int, picture: int, tid: int, key: bool, sync: bool) -> bytes:
    """One-packet VP8 frames with temporal fields (RFC 7741 §4.2: X, I with a 15-bit picture
    id, L with TL0PICIDX, T with TID and Y), as a publisher without the dependency
    descriptor sends them; a keyframe carries the VP8 keyframe header (RFC 6386 §9.1)."""
    tl0 = (picture // 4) & 0xFF
    desc = bytes([0x90, 0xE0, 0x80 | (picture >> 8) & 0x7F, picture & 0xFF, tl0,
                  (tid << 6) | (0x20 if sync else 0)])
    header = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" if key else b"\x11\x00\x00"
    return RtpPacket(
        96, seq, picture * 3000, SSRC, marker=True, payload=desc + header + b"\xab"
    ).serialize()


def test_vp8_temporal_layers_from_its_descriptor_with_picture_ids_closed() -> None:
    """A VP8 L1T3 stream described by its payload descriptor (no dependency descriptor):
    ``low`` keeps T0 frames, and the picture ids a subscriber sees go on by one per frame
    (libwebrtc waits for a missing picture id that could be a lower layer's)."""
    transceiver = replace(
        publisher_transceiver(), codecs=[RtpCodec(96, "VP8", 90000, rtcp_fb=list(FB))]
    )
    world = World()
    world.track = PublishedTrack(
        world.pub,  # type: ignore[arg-type]
        transceiver,
        "t",
        publisher_id="pub",
    )
    world.stream = IncomingStream(SSRC, transceiver)
    seq = 500

    def frames(count: int) -> None:
        nonlocal seq
        for _ in range(count):
            picture = world.picture
            tid = (0, 2, 1, 2)[picture % 4]
            world.now += 1 / 30
            packet = vp8_l1t3_packet(seq, picture, tid, picture % 60 == 0, tid > 0)
            world.track.on_rtp(world.stream, packet, world.now)
            seq += 1
            world.picture += 1

    world.picture = 0
    frames(1)
    world.join()
    frames(68)
    assert world.track.fanout.svc_temporal == 3
    sub = world.subs[0]
    assert sub.downtrack.set_layer(0, world.now)
    before = len(sub.leg.received)
    frames(16)
    got = [plain(sub, p) for p in sub.leg.received[before:]]
    assert len(got) == 4
    pids = [vp8_descriptor(plain(sub, p).payload).picture_id for p in sub.leg.received]  # type: ignore[union-attr]
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pids)), pids
    seqs = [plain(sub, p).sequence_number for p in sub.leg.received]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
