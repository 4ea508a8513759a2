"""Simulcast layer switching through the real forwarding path (issue 11, item 1).

A publisher track with three simulcast streams (``q``/``h``/``f``, RFC 8853) goes through
``PublishedTrack.on_rtp`` → ``ForwardingGroup.forward_layer`` (one ``LayerSelector`` per
group) → ``DownTrack`` → SRTP; subscribers switch layers at random (``DownTrack.set_layer``)
while frames, keyframes, losses and NACKs happen. What each subscriber *decrypts* must be one
continuous stream on its own SSRC: sequence numbers without gaps except the publisher's own
losses, timestamps never going back, VP8 picture ids continuing by one per frame across every
switch, every change of source stream at the first packet of a keyframe of it, frames whole,
and payloads the publisher's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

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
from trio_sfu.proto.capabilities import URI_RID, URI_TRANSPORT_CC
from trio_sfu.proto.codecs.vp8 import PictureIdRewriter, keyframe_width, parse_descriptor
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtcp import Pli, parse_rtcp
from trio_sfu.proto.rtp import RtpPacket, parse_rtp
from trio_sfu.proto.sdp.model import HeaderExtension, RtpCodec
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu.feedback import rtx_unwrap
from trio_sfu.sfu.track import DownTrack, PublishedTrack

RIDS = ["q", "h", "f"]
SSRCS = [0x51000001, 0x51000002, 0x51000003]
WIDTHS = [320, 640, 1280]
PACKETS_PER_FRAME = 2


def simulcast_transceiver() -> Transceiver:
    """publisher_transceiver's, with three rids, VP8 alone and the RID extension."""
    return replace(
        publisher_transceiver(),
        codecs=[RtpCodec(96, "VP8", 90000, rtcp_fb=list(FB))],
        header_extensions=[
            HeaderExtension(3, URI_TRANSPORT_CC),
            HeaderExtension(10, URI_RID),
        ],
        remote_ssrcs=[],
        remote_rids=list(RIDS),
    )


def vp8_payload(stream: int, frame: int, part: int, pid: int, key: bool) -> bytes:
    """RFC 7741 descriptor (X, I with a 15-bit picture id) + a VP8 header on the first packet
    (RFC 6386 §9.1: P bit 0 and the start code with the width for a keyframe) + a tag."""
    first = part == 0
    desc = bytes([0x90 if first else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
    header = b""
    if first:
        width = WIDTHS[stream].to_bytes(2, "little")
        header = (b"\x10\x02\x00\x9d\x01\x2a" + width + b"\xb4\x00") if key else b"\x11\x00\x00"
    return desc + header + bytes([0xEE, stream, part]) + frame.to_bytes(4, "big")


class Publisher(PublisherLeg):
    transport_rtt: float | None = None  # PublishedTrack.tick's NACK timing: the default


@dataclass
class Sub:
    leg: SubscriberLeg
    downtrack: DownTrack
    active: bool = True


def _src_seq(stream: int, frame: int, part: int) -> int:
    """The publisher's sequence number of a packet (World numbers every stream from here)."""
    return (60000 + 1000 * stream + frame * PACKETS_PER_FRAME + part) & 0xFFFF


@dataclass
class Stream:
    seq: int
    pid: int
    frames: int = 0
    #: publisher seqs lost at the source (never sent): the only gaps a subscriber may see
    lost: set[int] = field(default_factory=set)


class World:
    def __init__(self) -> None:
        self.pub_leg = Publisher()
        transceiver = simulcast_transceiver()
        self.track = PublishedTrack(
            self.pub_leg,  # type: ignore[arg-type]
            transceiver,
            "t",
            publisher_id="pub",
        )
        self.streams = [
            IncomingStream(ssrc, transceiver, rid=rid)
            for ssrc, rid in zip(SSRCS, RIDS, strict=True)
        ]
        self.state = [Stream(seq=60000 + 1000 * i, pid=32700 + 10 * i) for i in range(3)]
        self.ts = 4_294_000_000
        self.now = 100.0
        self.subs: list[Sub] = []
        self.key_sent: dict[tuple[int, int], bool] = {}  # (stream, frame) -> keyframe

    def frame(
        self, keys: tuple[bool, bool, bool], lose: int, sent: tuple[bool, ...] = (True,) * 3
    ) -> None:
        """One frame on every stream (same capture time), ``lose``: a stream index + 1 whose
        second packet is lost at the source (0: none); ``sent``: the streams the encoder
        sends (a paused one's numbering stands still)."""
        self.now += 1 / 30
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        for i, stream in enumerate(self.streams):
            if not sent[i]:
                continue
            state = self.state[i]
            frame = state.frames
            state.frames += 1
            self.key_sent[(i, frame)] = keys[i]
            for part in range(PACKETS_PER_FRAME):
                seq = state.seq & 0xFFFF
                state.seq += 1
                if lose == i + 1 and part == 1 and not keys[i]:
                    state.lost.add(seq)
                    continue
                payload = vp8_payload(i, frame, part, state.pid, keys[i] and part == 0)
                packet = RtpPacket(
                    96,
                    seq,
                    self.ts,
                    SSRCS[i],
                    marker=part == PACKETS_PER_FRAME - 1,
                    extensions={10: RIDS[i].encode()},
                    payload=payload,
                ).serialize()
                self.track.on_rtp(stream, packet, self.now)
            state.pid = (state.pid + 1) & 0x7FFF

    def join(self) -> None:
        index = len(self.subs)
        key_a, key_b = os.urandom(28), os.urandom(28)
        leg = SubscriberLeg(
            f"sub{index}",
            SrtpContext(PROFILE, key_a, key_b),
            SrtpContext(PROFILE, key_b, key_a),
            3,
        )
        downtrack = DownTrack(
            leg,  # type: ignore[arg-type]
            subscriber_transceiver(0, index),
            self.track,
            twcc=leg.twcc,
        )
        assert downtrack.activate()
        self.track.attach(downtrack)
        self.subs.append(Sub(leg, downtrack))

    def check(self) -> None:
        lost = {(i, seq) for i, s in enumerate(self.state) for seq in s.lost}
        for sub in self.subs:
            packets = [parse_rtp(p) for p in sub.leg.received]
            assert all(p.ssrc == sub.downtrack.transceiver.sender_ssrc for p in packets)
            prev = None
            for p in packets:
                desc = parse_descriptor(p.payload)
                assert desc is not None and desc.picture_id is not None
                tag = p.payload.index(b"\xee", desc.size)
                stream, part = p.payload[tag + 1], p.payload[tag + 2]
                frame = int.from_bytes(p.payload[tag + 3 : tag + 7], "big")
                if prev is None:
                    # Its first packet starts a keyframe.
                    assert part == 0 and self.key_sent[(stream, frame)]
                else:
                    pseq, pts, ppid, pstream, pframe, ppart = prev
                    gap = (p.sequence_number - pseq) & 0xFFFF
                    assert 1 <= gap < 0x8000, "sequence numbers go on"
                    assert (p.timestamp - pts) & 0xFFFFFFFF < 0x80000000, "no step back"
                    src_gap = (frame - pframe) * PACKETS_PER_FRAME + part - ppart
                    if stream != pstream or (gap == 1 and src_gap != 1):
                        # A switch (or a resume): at a keyframe's first packet, one past the last
                        # output sequence number and picture id, after a whole frame.
                        assert part == 0 and self.key_sent[(stream, frame)]
                        rest = range(ppart + 1, PACKETS_PER_FRAME)  # lost at the source
                        assert gap == 1 and all(
                            (pstream, _src_seq(pstream, pframe, k)) in lost for k in rest
                        )
                        assert desc.picture_id == (ppid + 1) & 0x7FFF
                        assert p.timestamp != pts
                    else:
                        # Same stream: only the publisher's own losses leave gaps.
                        assert gap == src_gap
                        src = _src_seq(stream, frame, part)
                        assert all((stream, (src - k) & 0xFFFF) in lost for k in range(1, gap))
                        expected_pid = (ppid + frame - pframe) & 0x7FFF
                        assert desc.picture_id == expected_pid
                        assert (p.timestamp == pts) == (frame == pframe)
                prev = (p.sequence_number, p.timestamp, desc.picture_id, stream, frame, part)

    def plis(self) -> list[int]:
        out = []
        for raw in self.pub_leg.rtcp:
            out += [p.media_ssrc for p in parse_rtcp(raw) if isinstance(p, Pli)]
        return out


Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("join"), st.just(0), st.just(0)),
        st.tuples(st.just("layer"), st.integers(0, 20), st.integers(0, 2)),
        st.tuples(st.just("leave"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("pause"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("resume"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("tick"), st.integers(1, 40), st.just(0)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_layer_switches_give_each_subscriber_one_continuous_decodable_stream(
    script: list[Op],
) -> None:
    world = World()
    world.join()
    for name, a, b in [("frame", 7, 0), *script, ("frame", 7, 0)]:
        live = [s for s in world.subs if s.active]
        sub = live[a % len(live)] if live else None
        if name == "frame":
            world.frame((bool(a & 1), bool(a & 2), bool(a & 4)), b)
        elif name == "join":
            world.join()
        elif name == "tick":
            world.now += a / 100
            if world.track.next_timer() <= world.now:
                world.track.tick(world.now)
        elif sub is None:
            continue
        elif name == "layer":
            sub.downtrack.set_layer(b, world.now)
        elif name == "leave":
            sub.downtrack.close()
            sub.active = False
        elif name == "pause":
            sub.downtrack.pause()
        elif name == "resume":
            sub.downtrack.resume(world.now)
    world.check()


def test_switch_down_and_up_at_keyframes_with_keyframe_requests_per_stream() -> None:
    world = World()
    world.join()
    world.join()
    world.frame((True, True, True), 0)
    world.frame((False, False, False), 0)
    a, b = world.subs
    assert a.downtrack.forwarded_layer == b.downtrack.forwarded_layer == 2
    assert len(world.track.fanout.groups) == 1  # both on the top stream: one rewrite
    pli_before = len(world.plis())
    assert b.downtrack.set_layer(0, world.now)
    assert len(world.track.fanout.groups) == 2
    assert world.plis()[pli_before:] == [SSRCS[0]], "a PLI for the target stream only"
    world.frame((False, False, False), 0)
    assert b.downtrack.forwarded_layer == 2  # still the old stream until the keyframe
    world.frame((True, False, False), 0)
    assert b.downtrack.forwarded_layer == 0
    assert a.downtrack.forwarded_layer == 2
    # Up again: waits for a keyframe of the top stream, asking for one (throttled).
    assert b.downtrack.set_layer(2, world.now)
    world.frame((False, False, False), 0)
    assert b.downtrack.forwarded_layer == 0
    world.now += 1.0
    world.track.tick(world.now)
    assert world.plis()[-1] == SSRCS[2]
    world.frame((False, False, True), 0)
    assert b.downtrack.forwarded_layer == 2
    # Each stream's bitrate and keyframe width are known to the allocator.
    assert world.track.layer_bitrates(world.now) == (0.0, 0.0, 0.0)  # the first sample
    for _ in range(40):
        world.frame((False, False, False), 0)
    assert all(rate > 0 for rate in world.track.layer_bitrates(world.now))
    assert world.track.layer_widths() == tuple(WIDTHS)
    world.check()


def test_down_switch_pauses_when_the_keyframe_is_overdue() -> None:
    world = World()
    world.join()
    world.frame((True, True, True), 0)
    (a,) = world.subs
    a.downtrack.set_layer(0, world.now)
    for _ in range(40):  # > down_timeout (1 s) of frames without a keyframe on stream 0
        world.frame((False, False, False), 0)
    assert a.downtrack.forwarded_layer is None  # paused: the link cannot carry the top
    sent = len(a.leg.received)
    world.frame((False, False, False), 0)
    assert len(a.leg.received) == sent
    world.frame((True, False, False), 0)
    assert a.downtrack.forwarded_layer == 0
    world.check()


def test_nack_is_answered_from_the_forwarded_streams_cache() -> None:
    world = World()
    world.join()
    world.frame((True, True, True), 0)
    (a,) = world.subs
    a.downtrack.set_layer(0, world.now)
    world.frame((True, False, False), 0)
    world.frame((False, False, False), 0)
    a.leg.drop_next = 1
    world.frame((False, False, False), 0)
    got = [parse_rtp(p) for p in a.leg.received]
    missing = (got[-1].sequence_number - 1) & 0xFFFF
    world.now += 0.5
    assert a.downtrack.retransmit(missing, world.now)
    # RFC 4588: as RTX, carrying the original sequence number
    unwrapped = rtx_unwrap(a.leg.received[-1], a.downtrack.transceiver.sender_ssrc, 96)
    assert unwrapped is not None and unwrapped[0] == missing
    resent = parse_rtp(unwrapped[1])
    # with the picture id the subscriber saw for that frame (renumbered since the switch),
    # not stream q's own
    same_frame = parse_descriptor(got[-1].payload)
    resent_desc = parse_descriptor(resent.payload)
    assert same_frame is not None and resent_desc is not None
    assert resent_desc.picture_id == same_frame.picture_id
    assert resent.payload[resent.payload.index(b"\xee", 4) + 1] == 0  # stream q's packet


def test_picture_id_rewriter_and_keyframe_width() -> None:
    rewriter = PictureIdRewriter()
    first = b"\x00" * 12 + vp8_payload(0, 0, 0, 100, True)
    assert rewriter.rewrite(first, 12) == first  # before a switch ids pass unchanged
    assert keyframe_width(vp8_payload(1, 0, 0, 5, True)) == 640
    assert keyframe_width(vp8_payload(1, 0, 0, 5, False)) == 0
    rewriter.switch()
    out = rewriter.rewrite(b"\x00" * 12 + vp8_payload(2, 0, 0, 9000, True), 12)
    desc = parse_descriptor(out[12:])
    assert desc is not None and desc.picture_id == 101
    twin = rewriter.clone()
    out = twin.rewrite(b"\x00" * 12 + vp8_payload(2, 1, 0, 9001, False), 12)
    assert parse_descriptor(out[12:]).picture_id == 102  # type: ignore[union-attr]


def test_probe_padding_is_rtx_padding_numbered_for_transport_cc() -> None:
    """A probe cluster's packets (Downtrack.send_padding), as the subscriber decrypts them:
    padding-only packets on its RTX SSRC (RFC 4588 §8.3, RFC 3550 §5.1 padding), each with
    the next transport-wide sequence number, recorded for the estimator with the probe id."""
    world = World()
    world.join()
    (a,) = world.subs
    sent: list[tuple[int, int, int]] = []
    a.downtrack._on_sent = lambda seq, size, now, probe: sent.append((seq, size, probe))
    assert not a.downtrack.can_pad  # no stream yet: nothing to pad
    world.frame((True, True, True), 0)
    assert a.downtrack.can_pad
    media = len(a.leg.received)
    assert a.downtrack.send_padding(4, 275, 7, world.now) == 4 * 275
    padding = [parse_rtp(p) for p in a.leg.received[media:]]
    assert len(padding) == 4
    t = a.downtrack.transceiver
    for p in padding:
        assert p.ssrc == t.sender_rtx_ssrc and p.payload_type == 97 and p.payload == b""
        assert p.padding == 255
    assert [p.sequence_number for p in padding] == [0, 1, 2, 3]  # the RTX stream's numbers
    # transport-cc numbers continue the media's, one per packet; the estimator hears of each
    assert a.leg.twcc_sent[-5:] == [(a.leg.twcc_sent[-5] + i) & 0xFFFF for i in range(5)]
    assert [(size, probe) for _, size, probe in sent[-4:]] == [(275, 7)] * 4
