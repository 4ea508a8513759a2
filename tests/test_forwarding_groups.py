"""Forwarding groups (issue 10): random joins, leaves, splits, losses and NACK/RTX through the
real forwarding path — ``PublishedTrack.on_rtp`` → ``ForwardingGroup`` → ``DownTrack`` →
SRTP (``SrtpContext.protect_rtp_as``) — checked on what each subscriber decrypts.

Each subscriber leg is a real SRTP receiver (its own keys); what it decrypts must be a valid
RTP stream of its own SSRC whose sequence numbers and timestamps keep one offset from the
publisher's for its whole life (moving between groups included), whose payloads are the
publisher's, whose transport-cc numbers are its own consecutive sequence, and which misses
nothing the publisher sent while it was subscribed except what its own leg lost and did not
get back by NACK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fanout_helpers import transceiver as fanout_transceiver
from trio_sfu.proto.capabilities import URI_ABS_SEND_TIME, URI_TRANSPORT_CC
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtcp import parse_rtcp
from trio_sfu.proto.rtp import RtpPacket, TransportCcSequencer, find_extension, parse_rtp
from trio_sfu.proto.sdp.model import HeaderExtension, RtpCodec
from trio_sfu.proto.srtp import SrtpContext
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu.feedback import rtx_unwrap
from trio_sfu.sfu.track import DownTrack, PublishedTrack

PUB_SSRC = 0x5EED0001
PROFILE = "SRTP_AEAD_AES_128_GCM"
FB = ["nack", "nack pli", "transport-cc"]


class PublisherLeg:
    """What PublishedTrack needs of its PeerConnection: somewhere to send RTCP."""

    name = "publisher"

    def __init__(self) -> None:
        self.rtcp: list[bytes] = []

    def send_rtcp(self, packet: bytes) -> None:
        parse_rtcp(packet)  # must be valid
        self.rtcp.append(packet)


@dataclass
class SubscriberLeg:
    """A subscriber's transport: real SRTP both ways, loss on demand, records what arrives."""

    name: str
    tx: SrtpContext
    rx: SrtpContext
    twcc_id: int
    drop_next: int = 0
    twcc_sent: list[int] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    sequencer: TransportCcSequencer | None = None
    #: what DownTrack.rtt falls back to without receiver reports (the SCTP SRTT): none here
    transport_rtt: float | None = None

    def send_rtp_as(self, packet: bytes, ssrc: int, twcc_offset: int, twcc_seq: int) -> None:
        protected = bytes(self.tx.protect_rtp_as(packet, ssrc, twcc_offset, twcc_seq))
        plain = self.rx.unprotect_rtp(protected)  # what the subscriber decrypts
        value = find_extension(plain, self.twcc_id)
        assert value is not None and len(value) == 2
        self.twcc_sent.append(int.from_bytes(value))
        if self.drop_next:
            self.drop_next -= 1
            return
        self.received.append(plain)

    def twcc(self, ext_id: int) -> TransportCcSequencer:
        if self.sequencer is None:
            self.sequencer = TransportCcSequencer(ext_id, start=40000)
        return self.sequencer


def publisher_transceiver() -> Transceiver:
    """The publisher's leg as the SFU negotiated it (no RTX SSRC of its own to send)."""
    return fanout_transceiver("recvonly", 1, rtx=False, cname="pub", publisher_ssrc=PUB_SSRC)


#: Two kinds of subscribers that negotiated different numbers: two groups at least.
FLAVOURS = [
    # (media PT, RTX PT, abs-send-time id, transport-cc id)
    (96, 97, 2, 3),
    (100, 101, 7, 5),
]


def subscriber_transceiver(flavour: int, index: int) -> Transceiver:
    pt, rtx, abs_id, twcc_id = FLAVOURS[flavour]
    return Transceiver(
        kind="video",
        direction="sendonly",
        sender_ssrc=0x1000 + index,
        sender_rtx_ssrc=0x2000 + index,
        cname=f"sub{index}",
        stream_id="s",
        track_id="t",
        current_direction="sendonly",
        codecs=[
            RtpCodec(pt, "VP8", 90000, rtcp_fb=list(FB)),
            RtpCodec(rtx, "rtx", 90000, fmtp=f"apt={pt}"),
        ],
        header_extensions=[
            HeaderExtension(abs_id, URI_ABS_SEND_TIME),
            HeaderExtension(twcc_id, URI_TRANSPORT_CC),
        ],
    )


@dataclass
class Subscriber:
    flavour: int
    leg: SubscriberLeg
    downtrack: DownTrack
    #: publisher sequence numbers forwarded while subscribed (the source had them)
    expected: set[int] = field(default_factory=set)
    #: those its leg lost
    lost: set[int] = field(default_factory=set)
    active: bool = True
    #: its group has forwarded something since it joined, so its stream has begun
    started: bool = False


VP8_KEY = b"\x10\x00\x00\x00\x9d\x01\x2a"

Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 6), st.just(0)),
        st.tuples(st.just("source_loss"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("late"), st.just(0), st.just(0)),
        st.tuples(st.just("publisher_rtx"), st.just(0), st.just(0)),
        st.tuples(st.just("join"), st.integers(0, len(FLAVOURS) - 1), st.just(0)),
        st.tuples(st.just("leave"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("split"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("leg_loss"), st.integers(0, 20), st.integers(1, 3)),
        st.tuples(st.just("nack"), st.integers(0, 20), st.just(0)),
    ),
    min_size=1,
    max_size=60,
)


class World:
    def __init__(self) -> None:
        self.pub_leg = PublisherLeg()
        transceiver = publisher_transceiver()
        self.track = PublishedTrack(
            self.pub_leg,  # type: ignore[arg-type]
            transceiver,
            "t",
            publisher_id="pub",
        )
        self.stream = IncomingStream(PUB_SSRC, transceiver)
        self.rtx_stream = IncomingStream(0x5EED0002, transceiver, repairs=PUB_SSRC)
        self.seq = 65500  # wraps early
        self.ts = 4_000_000_000
        self.now = 1000.0
        self.payloads: dict[int, bytes] = {}  # publisher seq -> payload
        #: lost at the source, not yet repaired, with who was subscribed when it was sent
        self.withheld: list[tuple[int, list[Subscriber]]] = []
        self.delivered_any = False
        self.order: dict[int, int] = {}  # publisher seq -> when it was sent
        self.subscribers: list[Subscriber] = []
        self.rtx_seq = 0

    def _packet(self, seq: int) -> bytes:
        return RtpPacket(
            96,
            seq,
            self.ts + 3000 * (seq // 3),
            PUB_SSRC,
            marker=seq % 3 == 2,
            extensions={4: b"0", 3: seq.to_bytes(2, "big"), 2: b"\x01\x02\x03"},
            payload=self.payloads[seq],
        ).serialize()

    def _deliver(
        self, seq: int, packet: bytes, stream: IncomingStream, audience: list[Subscriber]
    ) -> None:
        for sub in audience:
            if sub.active:
                sub.expected.add(seq)
                if sub.leg.drop_next:
                    sub.lost.add(seq)
        self.delivered_any = True
        self.track.on_rtp(stream, packet, self.now)
        for sub in self.subscribers:
            sub.started = sub.started or sub.active

    def send(self, count: int, *, lose: bool = False) -> None:
        for _ in range(count):
            seq = self.seq & 0xFFFF
            self.seq += 1
            self.now += 0.01
            # Each packet starts a VP8 keyframe (RFC 7741 descriptor, RFC 6386 §9.1 start
            # code): a new subscriber waits for one (KeyframeGate), and here the next packet
            # after a join always is one, so the model's "forwarded from the next packet on"
            # holds.
            self.payloads[seq] = VP8_KEY + os.urandom(8) + seq.to_bytes(2, "big")
            self.order[seq] = self.seq
            audience = [s for s in self.subscribers if s.active]
            if lose:
                # A packet older than the first of a subscriber's stream is not forwarded to
                # it (RtpRewriter): only subscribers whose stream began expect the repair.
                self.withheld.append((seq, [s for s in audience if s.started]))
            else:
                self._deliver(seq, self._packet(seq), self.stream, audience)

    def late(self, *, as_rtx: bool) -> None:
        if not self.withheld:
            return
        seq, audience = self.withheld.pop(0)
        packet = self._packet(seq)
        if as_rtx and self.delivered_any:
            # RFC 4588: the publisher's own retransmission on its RTX SSRC.
            original = parse_rtp(packet)
            packet = RtpPacket(
                97,
                self.rtx_seq,
                original.timestamp,
                0x5EED0002,
                marker=original.marker,
                extensions={4: b"0", 3: b"\x00\x00", 2: b"\x01\x02\x03"},
                payload=seq.to_bytes(2, "big") + original.payload,
            ).serialize()
            self.rtx_seq += 1
            self._deliver(seq, packet, self.rtx_stream, audience)
        else:
            self._deliver(seq, packet, self.stream, audience)

    def join(self, flavour: int) -> None:
        index = len(self.subscribers)
        key_a, key_b = os.urandom(28), os.urandom(28)
        leg = SubscriberLeg(
            f"sub{index}",
            SrtpContext(PROFILE, key_a, key_b),
            SrtpContext(PROFILE, key_b, key_a),
            FLAVOURS[flavour][3],
        )
        downtrack = DownTrack(
            leg,  # type: ignore[arg-type]
            subscriber_transceiver(flavour, index),
            self.track,
            twcc=leg.twcc,
        )
        assert downtrack.activate()
        self.track.attach(downtrack)
        self.subscribers.append(Subscriber(flavour, leg, downtrack))

    def pick(self, i: int) -> Subscriber | None:
        live = [s for s in self.subscribers if s.active]
        return live[i % len(live)] if live else None

    def apply(self, op: Op) -> None:
        name, a, b = op
        if name == "send":
            self.send(a)
        elif name == "source_loss":
            self.send(a, lose=True)
        elif name in ("late", "publisher_rtx"):
            self.late(as_rtx=name == "publisher_rtx")
        elif name == "join":
            self.join(a)
        elif (sub := self.pick(a)) is not None:
            if name == "leave":
                sub.downtrack.close()
                sub.active = False
            elif name == "split":
                # A subscriber still waiting for its first keyframe is in no group yet.
                held = sub.downtrack in self.track.gate.waiting
                assert (self.track.fanout.split(sub.downtrack) is None) == held
            elif name == "leg_loss":
                sub.leg.drop_next = b
            elif name == "nack":
                self.nack(sub)

    def nack(self, sub: Subscriber) -> None:
        """The subscriber NACKs the holes in what it received (RFC 4585 §6.2.1)."""
        media = [parse_rtp(p) for p in sub.leg.received if p[1] & 0x7F == self.media_pt(sub)]
        if not media:
            return
        ssrc = sub.downtrack.transceiver.sender_ssrc
        have = {m.sequence_number for m in media if m.ssrc == ssrc}
        ref = media[0].sequence_number
        diffs = [((s - ref + 0x8000) & 0xFFFF) - 0x8000 for s in have]
        # A NACK follows the loss by at least a round trip, and one repeated within a round
        # trip of our retransmission is not answered again (DownTrack.retransmit).
        self.now += 0.2
        for k in range(min(diffs), max(diffs)):
            out_seq = (ref + k) & 0xFFFF
            if out_seq not in have:
                sub.downtrack.retransmit(out_seq, self.now)

    @staticmethod
    def media_pt(sub: Subscriber) -> int:
        return FLAVOURS[sub.flavour][0]

    def check(self) -> None:
        for sub in self.subscribers:
            pt, rtx_pt, abs_id, _ = FLAVOURS[sub.flavour]
            t = sub.downtrack.transceiver
            # Its own consecutive transport-wide sequence, over everything sent to it.
            sent = sub.leg.twcc_sent
            assert sent == [(40000 + i) & 0xFFFF for i in range(len(sent))]
            seq_offset: int | None = None
            ts_offset: int | None = None
            got: dict[int, bytes] = {}
            for plain in sub.leg.received:
                packet = parse_rtp(plain)
                assert find_extension(plain, 4) is None  # the publisher's MID is not forwarded
                assert find_extension(plain, abs_id) == b"\x01\x02\x03"
                if packet.payload_type == rtx_pt:
                    assert packet.ssrc == t.sender_rtx_ssrc
                    unwrapped = rtx_unwrap(plain, t.sender_ssrc, pt)
                    assert unwrapped is not None
                    out_seq, plain = unwrapped
                    packet = parse_rtp(plain)
                    assert packet.sequence_number == out_seq
                assert packet.payload_type == pt
                assert packet.ssrc == t.sender_ssrc
                in_seq = int.from_bytes(packet.payload[-2:])
                assert packet.payload == self.payloads[in_seq]
                d_seq = (packet.sequence_number - in_seq) & 0xFFFF
                d_ts = (packet.timestamp - (self.ts + 3000 * (in_seq // 3))) & 0xFFFFFFFF
                # One offset for the subscriber's whole life: continuous, never a jump.
                assert seq_offset in (None, d_seq)
                assert ts_offset in (None, d_ts)
                seq_offset, ts_offset = d_seq, d_ts
                assert packet.marker == (in_seq % 3 == 2)
                got[in_seq] = packet.payload
            # Nothing missing but its own leg's losses, and NACKs brought those back.
            assert sub.expected - sub.lost <= set(got)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_every_subscriber_gets_a_continuous_copy_of_the_publisher(program: list[Op]) -> None:
    world = World()
    world.join(0)
    for op in program:
        world.apply(op)
    for sub in world.subscribers:
        sub.leg.drop_next = 0
    world.send(2)  # so every subscriber sees its last hole
    # Every live subscriber repairs its own losses at the end, except those before its first
    # packet: a receiver cannot know of them (RFC 4585 §6.2.1 NACKs holes it sees).
    for sub in world.subscribers:
        if sub.active:
            world.nack(sub)
            seen = [
                world.order[int.from_bytes(parse_rtp(p).payload[-2:])]
                for p in sub.leg.received
                if p[1] & 0x7F == world.media_pt(sub)
            ]
            first = min(seen, default=1 << 60)
            sub.lost = {s for s in sub.lost if world.order[s] < first}
    world.check()
    # Subscribers with the same mapping share groups: never more groups than subscribers,
    # and a group is never empty.
    fanout = world.track.fanout
    assert all(g.members for g in fanout.groups)
    assert len(fanout) == sum(1 for s in world.subscribers if s.active)


def test_subscribers_with_one_mapping_share_one_rewrite() -> None:
    world = World()
    for flavour in (0, 0, 0, 1, 1):
        world.join(flavour)
    world.send(5)
    groups = world.track.fanout.groups
    assert sorted(len(g.members) for g in groups) == [2, 3]
    assert all(g.stats.packets == 5 for g in groups)
    world.check()


def test_split_continues_without_a_glitch_and_later_joiners_share() -> None:
    world = World()
    world.join(0)
    world.join(0)
    world.send(4)
    moved = world.subscribers[1].downtrack
    before = moved.group
    assert world.track.fanout.split(moved) is not before
    world.send(4)
    world.join(0)  # joins the first group with its mapping
    world.send(4)
    assert len(world.track.fanout.groups) == 2
    world.check()
    # The SR counts of the moved subscriber continue across the move.
    sr = moved.sender_report(world.now, 1.7e9)
    assert sr is not None and sr.packet_count == 12
