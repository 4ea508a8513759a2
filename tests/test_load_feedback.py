"""``trio-sfu load --feedback``'s :class:`Feedback` without a server: its receiver reports are
the server's own RFC 3550 arithmetic (:class:`ReceiveStatistics`), jitter included, and the
transport-cc extension id is looked up once per negotiation, not per packet."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trio_sfu.client.load import Feedback, Receiver
from trio_sfu.proto.capabilities import URI_TRANSPORT_CC
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.receive_stats import ReceiveStatistics
from trio_sfu.proto.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    TransportCcFeedback,
    compact_ntp,
    parse_rtcp,
)
from trio_sfu.proto.rtp import RtpPacket
from trio_sfu.proto.sdp.model import HeaderExtension, RtpCodec

VIDEO_SSRC = 0x1111
AUDIO_SSRC = 0x2222
TWCC_ID = 3


def transceiver(kind: str, codec: RtpCodec, twcc: bool) -> Transceiver:
    t = Transceiver(kind, "recvonly", 1, None, "cname", "stream", kind)  # type: ignore[arg-type]
    t.current_direction = "recvonly"
    t.codecs = [codec]
    t.header_extensions = [HeaderExtension(TWCC_ID, URI_TRANSPORT_CC)] if twcc else []
    return t


class Peer:
    """What :class:`Feedback` uses of a peer connection; counts its transceiver lookups."""

    def __init__(self, *, twcc: bool) -> None:
        self.video = transceiver("video", RtpCodec(96, "VP8", 90000), twcc)
        self.audio = transceiver("audio", RtpCodec(111, "opus", 48000, 2), twcc)
        self.jsep = SimpleNamespace(current_remote_description=object())
        self.lookups = 0
        self.sent: list[bytes] = []

    @property
    def transceivers(self) -> list[Transceiver]:
        self.lookups += 1
        return [self.video, self.audio]

    def renegotiate(self, *, twcc: bool) -> None:
        for t in (self.video, self.audio):
            t.header_extensions = [HeaderExtension(TWCC_ID, URI_TRANSPORT_CC)] if twcc else []
        self.jsep.current_remote_description = object()  # a completed offer/answer

    def send_rtcp(self, data: bytes) -> None:
        self.sent.append(data)


def rtp(pt: int, ssrc: int, seq: int, ts: int, twcc_seq: int) -> bytes:
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        extensions={TWCC_ID: twcc_seq.to_bytes(2, "big")},
        payload=bytes(200),
    ).serialize()


def blocks(peer: Peer) -> dict[int, ReportBlock]:
    (rr,) = parse_rtcp(peer.sent.pop())
    assert isinstance(rr, ReceiverReport)
    return {b.ssrc: b for b in rr.reports}


def test_receiver_reports_are_the_servers_arithmetic_with_jitter() -> None:
    """Loss over the interval and in all, and interarrival jitter in each stream's own clock
    rate (RFC 3550 A.3, A.8), as :class:`ReceiveStatistics` computes them for the server."""
    peer = Peer(twcc=True)
    feedback = Feedback(peer, Receiver())
    video, audio = ReceiveStatistics(90000), ReceiveStatistics(48000)
    twcc_seq = 0
    for i in range(300):
        now = i / 100 + (0.004 if i % 7 == 3 else 0.0)  # some packets late
        if i % 50 != 10:  # a loss every 50 video packets
            packet = rtp(96, VIDEO_SSRC, 65500 + i, 3000 * (i // 3) + 5, twcc_seq)
            feedback.on_rtp(packet, now)
            video.update((65500 + i) & 0xFFFF, 3000 * (i // 3) + 5, now)
        twcc_seq += 1
        if i % 2 == 0:
            packet = rtp(111, AUDIO_SSRC, 7 + i // 2, 960 * (i // 2), twcc_seq)
            feedback.on_rtp(packet, now + 0.001 * (i % 3))
            audio.update(7 + i // 2, 960 * (i // 2), now + 0.001 * (i % 3))
            twcc_seq += 1
    feedback.send_report(3.0)
    got = blocks(peer)
    assert got == {
        VIDEO_SSRC: video.report_block(VIDEO_SSRC, 3.0),
        AUDIO_SSRC: audio.report_block(AUDIO_SSRC, 3.0),
    }
    assert got[VIDEO_SSRC].jitter > 0 and got[AUDIO_SSRC].jitter > 0
    assert got[VIDEO_SSRC].packets_lost == 6 and got[VIDEO_SSRC].fraction_lost == 5  # 6/300
    assert got[AUDIO_SSRC].packets_lost == 0
    # the sequence wrapped: the extended highest counts the cycle (RFC 3550 A.1)
    assert got[VIDEO_SSRC].highest_sequence == 65500 + 299
    # a second interval with nothing lost
    for i in range(300, 320):
        feedback.on_rtp(rtp(96, VIDEO_SSRC, 65500 + i, 3000 * (i // 3), twcc_seq), i / 100)
        twcc_seq += 1
    feedback.send_report(4.0)
    later = blocks(peer)[VIDEO_SSRC]
    assert (later.fraction_lost, later.packets_lost) == (0, 6)


def test_lsr_and_dlsr_even_for_a_sender_report_before_the_first_packet() -> None:
    peer = Peer(twcc=True)
    feedback = Feedback(peer, Receiver())
    early = SenderReport(ssrc=AUDIO_SSRC, ntp_msw=0x83AA7E80, ntp_lsw=0x80000000)
    feedback.on_rtcp([early], 5.0)
    feedback.on_rtp(rtp(111, AUDIO_SSRC, 1, 0, 0), 5.1)
    feedback.on_rtp(rtp(96, VIDEO_SSRC, 1, 0, 1), 5.1)
    later = SenderReport(ssrc=VIDEO_SSRC, ntp_msw=0x83AA7E81, ntp_lsw=0)
    feedback.on_rtcp([later], 6.0)
    feedback.send_report(7.5)
    got = blocks(peer)
    assert (got[AUDIO_SSRC].lsr, got[AUDIO_SSRC].dlsr) == (0x7E808000, 0x00028000)  # 2.5 s
    assert (got[VIDEO_SSRC].lsr, got[VIDEO_SSRC].dlsr) == (compact_ntp(0x83AA7E81, 0), 0x18000)


@pytest.mark.parametrize("first", [False, True])
def test_the_transport_cc_id_is_looked_up_once_per_negotiation(first: bool) -> None:
    """Not per packet, also when none was negotiated; a renegotiation is looked at again."""
    peer = Peer(twcc=first)
    feedback = Feedback(peer, Receiver())
    feedback.on_rtp(rtp(96, VIDEO_SSRC, 0, 0, 0), 0.0)
    lookups = peer.lookups  # one for the new source's clock rate, one for the extension
    for i in range(1, 100):
        feedback.on_rtp(rtp(96, VIDEO_SSRC, i, 3000 * i, i), i / 100)
    assert peer.lookups == lookups == 2
    feedback.send_feedback(1.0)
    assert bool(peer.sent) is first  # transport-cc feedback only where negotiated
    peer.sent.clear()

    peer.renegotiate(twcc=not first)
    for i in range(100, 200):
        feedback.on_rtp(rtp(96, VIDEO_SSRC, i, 3000 * i, i), i / 100)
    assert peer.lookups == lookups + 1
    feedback.send_feedback(2.0)
    assert bool(peer.sent) is not first
    if peer.sent:
        (fb,) = parse_rtcp(peer.sent[0])
        assert isinstance(fb, TransportCcFeedback) and fb.base_seq == 100
