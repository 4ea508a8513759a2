"""TwccRecorder: receive-side transport-cc feedback as Chromium's estimator expects it."""

from __future__ import annotations

import random

from trio_sfu.proto.rtcp import TransportCcFeedback, parse_rtcp
from trio_sfu.proto.twcc import TwccRecorder


def arrivals_us(feedbacks: list[TransportCcFeedback]) -> dict[int, int]:
    """Absolute arrival µs per sequence number, reconstructed the way a sender does."""
    out: dict[int, int] = {}
    for fb in feedbacks:
        for seq, when in fb.arrival_times_us():
            if when is not None:
                out[seq] = when
    return out


def wire(feedbacks: list[TransportCcFeedback]) -> list[TransportCcFeedback]:
    """Serialize and parse back, as the browser would see it."""
    out = []
    for fb in feedbacks:
        (parsed,) = parse_rtcp(fb.serialize())
        assert isinstance(parsed, TransportCcFeedback)
        out.append(parsed)
    return out


def test_reference_time_and_deltas_follow_the_draft() -> None:
    rec = TwccRecorder()
    # 10.000 s → 156 units of 64 ms (9.984 s) + 16 ms; then +1 ms, +70 ms (large), -0.5 ms.
    for seq, t in ((100, 10.000), (101, 10.001), (103, 10.071), (104, 10.0705)):
        rec.record(seq, t)
    (fb,) = wire(rec.build_feedback(10.1, sender_ssrc=1, media_ssrc=2))
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_pkt_count) == (1, 2, 100, 0)
    assert fb.reference_time == 156
    assert fb.packets == [
        (100, True, 16000),
        (101, True, 1000),
        (102, False, None),
        (103, True, 70000),
        (104, True, -500),
    ]
    assert arrivals_us([fb]) == {100: 10_000_000, 101: 10_001_000, 103: 10_071_000, 104: 10_070_500}


def test_feedback_count_increments_and_lost_packets_between_feedbacks() -> None:
    rec = TwccRecorder()
    rec.record(1, 1.0)
    rec.record(2, 1.01)
    first = rec.build_feedback(1.05, 1, 2)
    rec.record(5, 1.06)  # 3 and 4 lost
    second = rec.build_feedback(1.1, 1, 2)
    assert [f.fb_pkt_count for f in first + second] == [0, 1]
    assert second[0].base_seq == 3
    assert [(s, r) for s, r, _ in second[0].packets] == [(3, False), (4, False), (5, True)]
    assert rec.build_feedback(1.15, 1, 2) == []  # nothing new


def test_late_packet_rewinds_and_is_reported_received() -> None:
    rec = TwccRecorder()
    for seq in (10, 11, 13):
        rec.record(seq, 0.5 + seq / 1000)
    (first,) = rec.build_feedback(0.6, 1, 2)
    assert (12, False, None) in first.packets
    rec.record(12, 0.62)  # arrives after being reported lost
    rec.record(14, 0.63)
    (second,) = wire(rec.build_feedback(0.7, 1, 2))
    assert second.base_seq == 12
    assert [(s, r) for s, r, _ in second.packets] == [(12, True), (13, True), (14, True)]
    times = arrivals_us([second])
    assert times == {12: 620_000, 13: 513_000, 14: 630_000}


def test_sequence_wraparound() -> None:
    rec = TwccRecorder()
    for i, seq in enumerate((65534, 65535, 0, 2)):
        rec.record(seq, 3.0 + i * 0.002)
    (fb,) = wire(rec.build_feedback(3.1, 1, 2))
    assert fb.base_seq == 65534
    assert [(s, r) for s, r, _ in fb.packets] == [
        (65534, True),
        (65535, True),
        (0, True),
        (1, False),
        (2, True),
    ]


def test_duplicates_keep_first_arrival() -> None:
    rec = TwccRecorder()
    rec.record(7, 1.0)
    rec.record(7, 1.5)
    (fb,) = rec.build_feedback(2.0, 1, 2)
    assert arrivals_us([fb]) == {7: 1_000_000}


def test_timer_schedule() -> None:
    rec = TwccRecorder(interval=0.1)
    assert rec.get_timer() is None
    assert rec.build_feedback(0.5, 1, 2) == []
    rec.record(1, 1.0)
    assert rec.get_timer() == 0.5 + 0.1  # periodic from the last build, already due
    rec.build_feedback(1.0, 1, 2)
    assert rec.get_timer() is None
    rec.record(2, 1.03)
    assert rec.get_timer() == 1.1
    fresh = TwccRecorder(interval=0.05)
    fresh.record(1, 7.0)
    assert fresh.get_timer() == 7.05


def test_gap_beyond_signed_16_bit_delta_splits_feedback() -> None:
    rec = TwccRecorder()
    rec.record(1, 100.0)
    rec.record(2, 100.001)
    rec.record(3, 109.0)  # 9 s later: beyond ±8.19 s of 250 µs ticks
    feedbacks = wire(rec.build_feedback(109.05, 1, 2))
    assert [f.base_seq for f in feedbacks] == [1, 3]
    assert [f.fb_pkt_count for f in feedbacks] == [0, 1]
    assert arrivals_us(feedbacks) == {1: 100_000_000, 2: 100_001_000, 3: 109_000_000}


def test_large_batches_split_to_fit_max_size() -> None:
    rng = random.Random(7)
    rec = TwccRecorder(max_size=300)
    expected = {}
    t = 50.0
    for seq in range(2000):
        t += rng.choice((0.0001, 0.002, 0.07))  # small and large deltas
        if rng.random() < 0.1:
            continue  # lost
        rec.record(seq, t)
        expected[seq] = round(t * 4000) * 250
    feedbacks = rec.build_feedback(t + 0.05, 1, 2)
    assert len(feedbacks) > 2
    for fb in feedbacks:
        assert len(fb.serialize()) <= 300
        assert fb.packets[-1][1]  # each ends with a received packet, as libwebrtc's do
    assert [f.fb_pkt_count for f in feedbacks] == list(range(len(feedbacks)))
    # Contiguous coverage, and every arrival time survives the wire exactly.
    seqs = [s for fb in feedbacks for s, _, _ in fb.packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert arrivals_us(wire(feedbacks)) == expected


def test_reference_time_wraps_as_signed_24_bit() -> None:
    rec = TwccRecorder()
    t = (1 << 23) * 0.064 + 1.0  # just past the positive range of the field
    rec.record(1, t)
    rec.record(2, t + 0.01)
    (fb,) = wire(rec.build_feedback(t + 0.05, 1, 2))
    first_delta = fb.packets[0][2]
    assert fb.reference_time < 0 and first_delta is not None
    assert (fb.reference_time + (1 << 24)) * 64000 + first_delta == round(t * 4000) * 250


def test_fb_pkt_count_wraps_at_256() -> None:
    rec = TwccRecorder()
    counts = []
    for i in range(260):
        rec.record(i, i * 0.05)
        counts += [f.fb_pkt_count for f in rec.build_feedback(i * 0.05 + 0.01, 1, 2)]
    assert counts[:2] == [0, 1] and counts[255:258] == [255, 0, 1]


def test_reordered_and_lost_packets_are_all_reported_with_their_arrivals() -> None:
    """Builds look the new numbers up instead of scanning the history: whatever order packets
    come in, each one recorded is reported received with its own arrival."""
    rng = random.Random(7)
    rec = TwccRecorder()
    seqs = [s for s in range(3000) if rng.random() > 0.05]  # 5 % lost
    for i in range(0, len(seqs), 5):  # reordered within bursts of five
        window = seqs[i : i + 5]
        rng.shuffle(window)
        seqs[i : i + 5] = window
    recorded: dict[int, int] = {}
    feedbacks: list[TransportCcFeedback] = []
    t = 100.0
    for n, seq in enumerate(seqs):
        t += 0.001
        rec.record(seq, t)
        recorded[seq] = round(t * 4000) * 250  # 250 µs ticks
        if n % 17 == 16:
            feedbacks += wire(rec.build_feedback(t, 1, 2))
    feedbacks += wire(rec.build_feedback(t + 0.05, 1, 2))
    reported = arrivals_us(feedbacks)
    assert reported.keys() == recorded.keys()
    # absolute times are relative to the 64 ms reference: compare the differences
    first = min(recorded)
    assert all(reported[s] - reported[first] == recorded[s] - recorded[first] for s in recorded)


def test_history_is_bounded_and_a_jump_in_numbering_is_reported() -> None:
    rec = TwccRecorder()
    t = 10.0
    for seq in range(2000):
        t += 0.001
        rec.record(seq, t)
        if seq % 15 == 14:
            rec.build_feedback(t, 1, 2)
            assert len(rec._arrivals) <= 512 + 15  # the history kept for late packets
    rec.build_feedback(t, 1, 2)
    rec.record(2000 + 20000, t + 0.001)  # far ahead: more numbers than the history holds
    feedbacks = wire(rec.build_feedback(t + 0.05, 1, 2))
    assert (22000, True) in {(s, r) for f in feedbacks for s, r, _ in f.packets}
    assert list(rec._arrivals) == [22000]  # everything older than the history is gone
