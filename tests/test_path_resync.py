"""A publisher whose path moved (UDP to ICE-TCP, or a new address) and whose media now comes
over the new path (issue 12): the SFU asks for a keyframe at once, does not repair the gap the
failed path left, and forwards nothing until that keyframe starts, at most KEYFRAME_WAIT.

Measured in ``tests/test_ice_tcp.py``'s Chromium switch: what a publisher sends first after the
switch is its backlog from the failed path, frames whose references were lost, and Chromium
held a complete keyframe about 2 s behind such a frame (first frames 6.1 s after UDP failed in
most runs, 4.1 s once they were dropped)."""

from __future__ import annotations

from tests.test_forwarding_groups import PUB_SSRC, PublisherLeg, publisher_transceiver
from trio_sfu.proto.rtcp import Pli, parse_rtcp
from trio_sfu.proto.rtp import RtpPacket
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.sfu.feedback import NackGenerator
from trio_sfu.sfu.feedback.keyframe import KEYFRAME_WAIT
from trio_sfu.sfu.track import PATH_GAP_WINDOW, PublishedTrack

KEY = b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + bytes(10)  # RFC 7741 descriptor, RFC 6386 keyframe
DELTA = b"\x10" + b"\x01\x00\x00" + bytes(10)  # the frame tag's P bit: an inter frame


class Publisher:
    def __init__(self) -> None:
        self.leg = PublisherLeg()
        transceiver = publisher_transceiver()
        self.track = PublishedTrack(
            self.leg, transceiver, "t", publisher_id="pub"  # type: ignore[arg-type]
        )
        self.stream = IncomingStream(PUB_SSRC, transceiver)
        self.forwarded: list[int] = []
        self.track.relay_sink = lambda packet: self.forwarded.append(
            int.from_bytes(packet[2:4], "big")
        )
        self.seq = 100

    def send(self, payload: bytes, now: float, *, skip: int = 0) -> int:
        self.seq += skip
        packet = RtpPacket(96, self.seq, 3000 * self.seq, PUB_SSRC, payload=payload)
        self.track.on_rtp(self.stream, packet.serialize(), now)
        self.seq += 1
        return self.seq - 1

    def plis(self) -> int:
        return sum(isinstance(p, Pli) for raw in self.leg.rtcp for p in parse_rtcp(raw))


def test_after_a_path_move_nothing_is_forwarded_until_the_keyframe() -> None:
    pub = Publisher()
    first = [pub.send(KEY, 1.0), pub.send(DELTA, 1.01)]
    assert pub.forwarded == first
    pub.track.hold_keyframe_requests()  # the path moved on a check; media still on the old one
    assert not pub.track.request_keyframe(1.5) and pub.plis() == 0  # would be lost: held
    pub.track.media_resumed(4.0)  # its media comes over the new path: ask now
    assert pub.plis() == 1
    # Its backlog from the failed path, after a gap: neither forwarded, nor cached, nor NACKed.
    stale = [pub.send(DELTA, 4.0, skip=80), pub.send(DELTA, 4.01)]
    assert pub.forwarded == first and pub.track.resync_dropped == 2
    assert pub.track.cache is not None and pub.track.cache.get(stale[0]) is None
    ingress = next(iter(pub.track._ingress.values()))
    assert ingress.nack is not None and ingress.nack.missing == 0
    # The keyframe starts: it and everything after it go out.
    fresh = [pub.send(KEY, 4.1), pub.send(DELTA, 4.11)]
    assert pub.forwarded == first + fresh


def test_the_wait_for_the_keyframe_is_bounded() -> None:
    """A publisher that ignores PLI (or frames a detector cannot read) is forwarded again
    after KEYFRAME_WAIT rather than never."""
    pub = Publisher()
    pub.send(KEY, 1.0)
    pub.track.media_resumed(2.0)
    pub.send(DELTA, 2.1)
    assert pub.track.resync_dropped == 1
    late = pub.send(DELTA, 2.0 + KEYFRAME_WAIT)
    assert pub.forwarded[-1] == late


def test_gaps_right_after_a_move_are_not_repaired() -> None:
    gen = NackGenerator()
    gen.on_packet(10, 1.0)
    gen.skip_gaps_until(1.0 + PATH_GAP_WINDOW)
    gen.on_packet(50, 1.2)  # the failed path's gap
    assert gen.missing == 0 and gen.due(1.2, 0.05) == [] and gen.abandoned == 39
    gen.on_packet(60, 1.0 + PATH_GAP_WINDOW)  # a loss after the window is repaired again
    assert gen.due(2.1, 0.05) == list(range(51, 60))
