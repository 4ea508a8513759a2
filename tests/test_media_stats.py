"""RTCP statistics per leg: RFC 3550 §6.4.1 and appendix A arithmetic with concrete numbers."""

from __future__ import annotations

import pytest

from trio_sfu.proto.receive_stats import ReceiveStatistics
from trio_sfu.proto.rtcp import (
    NTP_UNIX_OFFSET,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    parse_rtcp,
)
from trio_sfu.sfu.feedback import SendStatistics

PUB_SSRC = 0x11223344


# --- ReceiveStatistics ------------------------------------------------------------------------


def test_counts_across_the_wrap_and_fraction_lost() -> None:
    stats = ReceiveStatistics(90000)
    assert not stats.started
    seqs = [s & 0xFFFF for s in range(65530, 65546) if s not in (65535, 65540)]
    for i, s in enumerate(seqs):
        stats.update(s, 3000 * i, i * 0.033)
    # RFC 3550 A.3: extended max = cycles + max_seq = 65536 + 9; expected = 65545-65530+1.
    assert stats.extended_highest == 65545
    assert (stats.expected, stats.received, stats.lost) == (16, 14, 2)
    block = stats.report_block(PUB_SSRC, 1.0)
    assert block.ssrc == PUB_SSRC
    assert block.highest_sequence == 65545
    assert block.packets_lost == 2
    assert block.fraction_lost == 32  # (2 << 8) // 16: 12.5 % of 256
    # Next interval: 100 expected, 90 received → 10 lost; 25.6 truncates to 25 (A.3).
    for s in range(65546, 65646):
        if s % 10 != 3:
            stats.update(s & 0xFFFF, 0, 2.0)
    block = stats.report_block(PUB_SSRC, 3.0)
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (25, 12, 65645)
    # An interval with nothing new reports no loss.
    assert stats.report_block(PUB_SSRC, 4.0).fraction_lost == 0


def test_duplicates_make_cumulative_loss_negative_but_fraction_zero() -> None:
    stats = ReceiveStatistics(48000)
    for s in (1, 2, 2, 3, 3, 3):
        stats.update(s, s * 960, 0.0)
    assert (stats.expected, stats.received, stats.lost) == (3, 6, -3)
    block = stats.report_block(1, 0.0)
    assert (block.packets_lost, block.fraction_lost) == (-3, 0)
    # And the wire form is the signed 24-bit field.
    assert ReportBlock.parse(block.serialize(), 0).packets_lost == -3


def test_cumulative_loss_saturates_at_24_bits() -> None:
    stats = ReceiveStatistics(90000)
    seq = 0
    stats.update(seq, 0, 0.0)
    for _ in range(2900):  # each jump of 2999 loses 2998 packets: 8.69 M in all
        seq += 2999
        stats.update(seq & 0xFFFF, 0, 0.0)
    assert stats.lost == 2900 * 2998 > 0x7FFFFF
    assert stats.extended_highest == 2900 * 2999
    assert stats.report_block(1, 0.0).packets_lost == 0x7FFFFF


def test_jitter_rfc3550_a8() -> None:
    # 8 kHz audio, 20 ms packets (160 ticks); the third packet arrives 10 ms late.
    stats = ReceiveStatistics(8000)
    arrivals = [0.0, 0.02, 0.05, 0.06, 0.08]
    for i, t in enumerate(arrivals):
        stats.update(100 + i, (0xFFFFFF60 + 160 * i) & 0xFFFFFFFF, t)  # wraps at packet 1
    # D(1,2) = 0.03 s * 8000 - 160 = 80 → J = 80/16 = 5;
    # D(2,3) = 80 - 160 → |D| = 80 → J = 5 + 75/16 = 9.6875;
    # D(3,4) = 0 → J = 9.6875 * 15/16 = 9.08203125.
    assert stats.jitter == pytest.approx(9.08203125)
    assert stats.report_block(1, 1.0).jitter == 9


def test_jitter_ignores_same_frame_and_reordered_packets() -> None:
    stats = ReceiveStatistics(90000)
    stats.update(1, 0, 0.0)
    stats.update(2, 3000, 1 / 30)  # on time: D = 0
    stats.update(3, 3000, 0.5)  # rest of the frame, late: same timestamp, not timed
    stats.update(5, 6000, 2 / 30)
    stats.update(4, 6000, 0.9)  # reordered: counted, not timed
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    assert stats.received == 5


def test_lsr_and_dlsr() -> None:
    stats = ReceiveStatistics(90000)
    stats.update(1, 0, 0.0)
    block = stats.report_block(PUB_SSRC, 1.0)
    assert (block.lsr, block.dlsr) == (0, 0)  # no SR yet (RFC 3550 §6.4.1)
    stats.on_sender_report(0x83AA7E80, 0x80000000, now=5.0)
    block = stats.report_block(PUB_SSRC, 7.5)
    # LSR: the middle 32 bits of the SR's NTP time; DLSR: 2.5 s in 1/65536 s units.
    assert block.lsr == 0x7E808000
    assert block.dlsr == 0x00028000


def test_large_jump_needs_a_second_packet_then_restarts() -> None:
    # RFC 3550 A.1: a jump of MAX_DROPOUT or more is believed only if the next one follows.
    stats = ReceiveStatistics(90000)
    for s in range(1000, 1010):
        stats.update(s, 0, 0.0)
    stats.update(30000, 0, 0.1)
    assert (stats.received, stats.extended_highest) == (10, 1009)
    stats.update(1010, 0, 0.1)  # the stream goes on: the jump was a stray
    assert stats.received == 11
    stats.update(40000, 0, 0.2)
    stats.update(40001, 0, 0.2)  # restarted: counting begins again here
    assert (stats.received, stats.expected, stats.extended_highest) == (1, 1, 40001)


def test_report_block_serializes_in_a_receiver_report() -> None:
    stats = ReceiveStatistics(90000)
    for s in (10, 11, 13):
        stats.update(s, 0, 0.0)
    rr = ReceiverReport(0xABCDEF, [stats.report_block(PUB_SSRC, 0.0)])
    (parsed,) = parse_rtcp(rr.serialize())
    assert isinstance(parsed, ReceiverReport)
    assert parsed.reports[0].packets_lost == 1
    assert parsed.reports[0].fraction_lost == 64  # (1 << 8) // 4


# --- SendStatistics ---------------------------------------------------------------------------


def test_no_sender_report_before_any_packet() -> None:
    assert SendStatistics(90000).sender_report(1, 0.0, 1.7e9) is None


def test_sender_report_extrapolates_the_timestamp() -> None:
    stats = SendStatistics(90000)
    stats.update(1000, 1100, 10.0)
    stats.update(1000, 1100, 10.004)  # same frame: the mapping keeps the first packet
    stats.update(4000, 900, 10.033)
    stats.update(1000, 50, 10.2)  # an older timestamp sent late does not move it
    sr = stats.sender_report(0xCAFE, now=10.533, unix=1_700_000_000.25)
    assert sr is not None
    # RFC 3550 §6.4.1: 4000 + 0.5 s × 90000 Hz; NTP = Unix + 2208988800 s, .25 = 0x40000000.
    assert sr.rtp_timestamp == 49000
    assert (sr.ntp_msw, sr.ntp_lsw) == (1_700_000_000 + NTP_UNIX_OFFSET, 0x40000000)
    assert (sr.packet_count, sr.octet_count) == (4, 3150)
    assert sr.ssrc == 0xCAFE and sr.reports == []
    (parsed,) = parse_rtcp(sr.serialize())
    assert isinstance(parsed, SenderReport) and parsed.rtp_timestamp == 49000


def test_sender_report_timestamp_wraps() -> None:
    stats = SendStatistics(48000)
    stats.update(0xFFFFFF00, 10, 1.0)
    stats.update(0x00000100, 10, 1.01)  # 512 ticks later across the wrap: a newer frame
    sr = stats.sender_report(1, now=2.01, unix=0.0)
    assert sr is not None
    assert sr.rtp_timestamp == 0x100 + 48000


def _rfc_sr_time() -> float:
    """A Unix time whose NTP form is 0x????b705:20000000, as in RFC 3550 §6.4.1's example."""
    msw = ((1_700_000_000 + NTP_UNIX_OFFSET) & ~0xFFFF) | 0xB705
    return msw - NTP_UNIX_OFFSET + 0.125


def test_round_trip_time_rfc3550_example() -> None:
    # RFC 3550 §6.4.1 Figure 2: SR sent at 0xb705:2000 (46853.125 s), RR arrives at
    # A = 0xb710:8000 (46864.500 s) with DLSR = 0x0005:4000 (5.250 s) → RTT 6.125 s.
    unix_sr = _rfc_sr_time()
    stats = SendStatistics(90000)
    stats.update(0, 100, 100.0)
    sr = stats.sender_report(0xCAFE, now=100.0, unix=unix_sr)
    assert sr is not None and sr.compact_ntp == 0xB7052000
    block = ReportBlock(0xCAFE, lsr=0xB7052000, dlsr=0x00054000)
    rtt = stats.on_receiver_report(block, now=111.375, unix=unix_sr + 11.375)
    assert rtt == pytest.approx(6.125)
    assert stats.rtt == rtt and stats.last_report is block


def test_round_trip_time_from_wall_clock_for_an_unknown_lsr() -> None:
    # An LSR we no longer remember: A - LSR - DLSR from the wall clock, as the RFC writes it.
    unix_sr = _rfc_sr_time()
    stats = SendStatistics(90000)
    block = ReportBlock(0xCAFE, lsr=0xB7052000, dlsr=0x00054000)
    assert stats.on_receiver_report(block, now=0.0, unix=unix_sr + 11.375) == pytest.approx(
        6.125, abs=1 / 65536
    )


def test_round_trip_time_unavailable() -> None:
    stats = SendStatistics(90000)
    stats.update(0, 1, 0.0)
    assert stats.on_receiver_report(ReportBlock(1), now=1.0, unix=1.0) is None  # no LSR yet
    sr = stats.sender_report(1, now=1.0, unix=1_700_000_000.0)
    assert sr is not None
    # A DLSR longer than the time since our SR would be a negative RTT: rejected.
    late = ReportBlock(1, lsr=sr.compact_ntp, dlsr=0x00020000)
    assert stats.on_receiver_report(late, now=2.0, unix=1_700_000_001.0) is None
    assert stats.rtt is None


def test_sr_history_is_bounded() -> None:
    stats = SendStatistics(90000)
    stats.update(0, 1, 0.0)
    first = stats.sender_report(1, now=0.0, unix=1_700_000_000.0)
    for i in range(1, 40):
        stats.sender_report(1, now=float(i), unix=1_700_000_000.0 + i)
    assert first is not None
    # The first SR is forgotten: its RTT comes from the wall clock fallback instead.
    block = ReportBlock(1, lsr=first.compact_ntp, dlsr=0)
    rtt = stats.on_receiver_report(block, now=1000.0, unix=1_700_000_000.0 + 0.25)
    assert rtt == pytest.approx(0.25, abs=1 / 65536)
