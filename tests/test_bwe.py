"""The GCC-like estimator (trio_sfu/proto/bwe.py) against a simulated bottleneck.

The link model is a FIFO bottleneck (drop-tail queue, fixed propagation delay, optional random
loss) in simulated time: the sender paces full packets at ``min(estimate, source)`` every 5 ms,
the receiver reports arrivals every 50 ms as transport-cc feedback does. Everything is
deterministic (seeded), so the assertions are about the estimator's behaviour, never about
how fast this machine runs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.proto.bwe import BandwidthEstimator, BandwidthUsage, TrendlineDetector
from trio_sfu.proto.rtcp.transport_cc import TransportCcFeedback
from trio_sfu.proto.twcc import TwccRecorder

PACKET = 1200  # bytes


@dataclass
class Link:
    capacity: float  # bits/s
    delay: float = 0.02
    queue_limit: float = 0.3  # s of queued data before drop-tail
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    busy_until: float = 0.0

    def send(self, now: float, size: int) -> float | None:
        """Arrival time of a packet put on the link at ``now``, or None if dropped."""
        if self.loss and self.rng.random() < self.loss:
            return None
        start = max(now, self.busy_until)
        if start - now > self.queue_limit:
            return None
        self.busy_until = start + size * 8 / self.capacity
        return self.busy_until + self.delay


@dataclass
class Sim:
    link: Link
    bwe: BandwidthEstimator = field(default_factory=BandwidthEstimator)
    source: float = 3_000_000.0  # what the publisher's layers could fill
    now: float = 0.0
    seq: int = 0
    credit: float = 0.0
    recorder: TwccRecorder = field(default_factory=TwccRecorder)
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    history: list[tuple[float, float]] = field(default_factory=list)
    probing_target: float | None = None
    max_queue: float = 0.0  # longest queueing delay seen at the bottleneck (s)
    probe_sends: list[tuple[float, int, int]] = field(default_factory=list)  # (when, id, n)

    def _put(self, size: int, probe: int = -1) -> None:
        seq = self.seq & 0xFFFF
        self.seq += 1
        self.bwe.on_packet_sent(seq, size, self.now, probe)
        arrival = self.link.send(self.now, size)
        if arrival is not None:
            self.in_flight.append((arrival, seq))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        step = 0.005
        while self.now < end - 1e-9:
            self.now += step
            if self.probing_target is not None:
                cluster = self.bwe.probe(self.probing_target, self.now)
                if cluster is not None:
                    # paced over the cluster's duration in 5 ms steps, as Downstream does
                    count = max(cluster.min_packets, -(-cluster.min_bytes // PACKET))
                    steps = max(1, round(cluster.duration / step))
                    self.probe_sends = [
                        (self.now + i * step, cluster.id, n)
                        for i in range(steps)
                        if (n := count * (i + 1) // steps - count * i // steps)
                    ]
            while self.probe_sends and self.probe_sends[0][0] <= self.now + 1e-9:
                _, cluster_id, packets = self.probe_sends.pop(0)
                for _ in range(packets):
                    self._put(PACKET, cluster_id)
            self.credit += min(self.bwe.estimate, self.source) * step / 8
            while self.credit >= PACKET:
                self.credit -= PACKET
                self._put(PACKET)
            arrived = [x for x in self.in_flight if x[0] <= self.now]
            self.in_flight = [x for x in self.in_flight if x[0] > self.now]
            for arrival, seq in sorted(arrived):
                self.recorder.record(seq, arrival)
            due = self.recorder.get_timer()
            if due is not None and due <= self.now:
                for fb in self.recorder.build_feedback(self.now, 1, 2):
                    # the feedback travels back over an uncongested path
                    self.bwe.on_transport_cc(
                        fb.packets, fb.reference_us, self.now + self.link.delay
                    )
            self.history.append((self.now, self.bwe.estimate))
            self.max_queue = max(self.max_queue, self.link.busy_until - self.now)

    def mean(self, since: float) -> float:
        values = [e for t, e in self.history if t >= since]
        return sum(values) / len(values)

    def first_time(self, since: float, predicate: object) -> float | None:
        assert callable(predicate)
        for t, e in self.history:
            if t >= since and predicate(e):
                return t
        return None


def test_settles_below_a_400_kbit_cap_within_15_s() -> None:
    sim = Sim(Link(400_000))
    sim.run(15.0)
    # the whole last 5 s under the cap's reach, and using a useful share of it
    assert 200_000 <= sim.mean(10.0) <= 480_000
    assert max(e for t, e in sim.history if t >= 10.0) <= 600_000


def test_delay_alone_keeps_a_deep_buffer_from_filling() -> None:
    # 10 s of buffer: nothing is ever dropped, so only the delay-based part can act
    sim = Sim(Link(400_000, queue_limit=10.0))
    sim.run(20.0)
    assert sim.bwe.loss == 0.0
    assert 250_000 <= sim.mean(10.0) <= 480_000
    # without delay-based control the queue would grow by ~1 s per 8 s of 8 %/s growth
    assert sim.max_queue < 0.3


def test_overuse_is_detected_and_the_rate_cut() -> None:
    sim = Sim(Link(400_000))
    sim.run(10.0)
    assert sim.bwe.usage in tuple(BandwidthUsage)
    # the estimate came down at least once from a peak above the capacity
    peak = max(e for _, e in sim.history)
    assert peak > 400_000
    assert sim.history[-1][1] < peak


def test_ramps_up_on_an_uncapped_link() -> None:
    sim = Sim(Link(5_000_000))
    sim.run(20.0)
    # 8 %/s from 300 kbit/s without probing: 300k * 1.08**20 ~ 1.4 Mbit/s
    assert sim.bwe.estimate >= 1_200_000


def test_probe_lifts_the_estimate_at_once_when_the_link_has_room() -> None:
    sim = Sim(Link(5_000_000))
    sim.run(1.0)
    before = sim.bwe.estimate
    sim.probing_target = 2_500_000
    sim.run(1.0)
    # 8 %/s growth alone would give about before * 1.08; the probe proves far more
    assert sim.bwe.estimate >= 2_000_000 > before * 1.5


def test_probe_does_not_lift_past_a_narrow_link() -> None:
    sim = Sim(Link(400_000))
    sim.run(10.0)
    sim.probing_target = 2_500_000
    sim.run(5.0)
    assert sim.mean(12.0) <= 600_000


def test_follows_a_capacity_drop_and_recovers_when_it_is_lifted() -> None:
    link = Link(5_000_000)
    sim = Sim(link)
    sim.probing_target = 2_500_000
    sim.run(20.0)
    assert sim.bwe.estimate >= 1_500_000
    sim.probing_target = None
    link.capacity = 400_000
    sim.run(15.0)
    dropped = sim.first_time(20.0, lambda e: e <= 500_000)
    assert dropped is not None and dropped <= 25.0
    assert sim.mean(30.0) <= 500_000
    link.capacity = 5_000_000
    sim.probing_target = 1_800_000
    sim.run(20.0)
    back = sim.first_time(35.0, lambda e: e >= 1_500_000)
    assert back is not None and back <= 55.0


def test_heavy_random_loss_brings_the_estimate_down() -> None:
    sim = Sim(Link(50_000_000, loss=0.3))
    sim.bwe = BandwidthEstimator(2_000_000)
    sim.run(10.0)
    assert sim.bwe.loss > 0.1
    assert sim.bwe.estimate < 500_000


def test_light_loss_does_not_stop_growth() -> None:
    sim = Sim(Link(50_000_000, loss=0.01))
    sim.run(15.0)
    assert sim.bwe.estimate > 300_000 * 1.5


def test_remb_caps_the_estimate() -> None:
    sim = Sim(Link(5_000_000))
    sim.bwe.on_remb(250_000)
    sim.run(10.0)
    assert sim.bwe.estimate <= 250_000


def test_receiver_report_loss_is_the_congestion_signal_without_transport_cc() -> None:
    """A receiver that sends only RTCP receiver reports (aiortc): their loss drives §6's
    controller. Over 10 % lowers the estimate once per report (and counts as a decrease, what
    the layer planner steps down on); 1 % or a report of too few packets changes nothing;
    and it never grows past its start without delivery measurements."""
    bwe = BandwidthEstimator(1_000_000)
    for second in range(1, 6):
        bwe.on_loss_report(1, 100, float(second))  # 1 %
    assert (bwe.estimate, bwe.decreases) == (1_000_000, 0)
    bwe.on_loss_report(10, 15, 6.0)  # too few packets to judge yet
    assert bwe.decreases == 0
    bwe.on_loss_report(60, 100, 7.0)  # with the 15 before: 70 of 115 lost
    assert bwe.decreases == 1 and bwe.estimate < 800_000
    lowered = bwe.estimate
    bwe.on_loss_report(30, 100, 8.0)
    assert bwe.decreases == 2 and bwe.estimate < lowered
    assert math.isclose(bwe.loss, 0.3)
    for second in range(9, 30):
        bwe.on_loss_report(0, 100, float(second))
    assert bwe.decreases == 2 and bwe.estimate <= 1_000_000


def test_no_feedback_no_change_and_unknown_feedback_ignored() -> None:
    bwe = BandwidthEstimator(500_000)
    bwe.on_feedback([(1, 1000), (2, None)], 1.0)  # nothing sent yet
    assert bwe.estimate == 500_000
    bwe.on_packet_sent(10, 1200, 1.0)
    bwe.on_feedback([(9000, 5)], 1.1)  # never sent
    assert bwe.estimate == 500_000


def test_a_receiver_that_never_reports_is_not_recorded_after_five_seconds() -> None:
    # A receiver that negotiated transport-cc but never sends feedback: after 5 s nothing it
    # was sent is kept (nobody would read it), until its first feedback.
    bwe = BandwidthEstimator()
    for i in range(4_000):
        bwe.on_packet_sent(i & 0xFFFF, 1200, i * 0.001)
    assert bwe.unreported() == list(range(4_000))
    for i in range(4_000, 100_000):
        bwe.on_packet_sent(i & 0xFFFF, 1200, i * 0.001)
    assert bwe.unreported() == [] and bwe._ring_seq == []  # the ring itself freed
    bwe.on_feedback([((100_000 - 1) & 0xFFFF, 5_000)], 100.0)  # unknown now: ignored
    for i in range(100_000, 100_010):
        bwe.on_packet_sent(i & 0xFFFF, 1200, i * 0.001)
    assert bwe.unreported() == list(range(100_000, 100_010))  # numbering went on
    bwe.on_feedback([(i & 0xFFFF, 5_000 + i) for i in range(100_000, 100_010)], 100.02)
    assert bwe.unreported() == []


def test_history_is_bounded_when_a_receiver_stops_reporting() -> None:
    # It reported once, then its feedback stopped (a firewall, a dead uplink): the newest
    # 16,384 are kept, the oldest forgotten one per packet, across the 16-bit wrap.
    bwe = BandwidthEstimator()
    bwe.on_packet_sent(0, 1200, 0.0)
    bwe.on_feedback([(0, 1_000)], 0.01)
    for i in range(1, 100_000):
        bwe.on_packet_sent(i & 0xFFFF, 1200, i * 0.001)
    assert bwe.unreported() == list(range(100_000 - 16384, 100_000))
    assert len(bwe._ring_seq) == 16384  # grown no further
    # and feedback for the newest still works
    bwe.on_feedback([((100_000 - 1) & 0xFFFF, 5_000)], 100.0)
    assert (100_000 - 1) not in bwe.unreported()


def test_probe_is_throttled_and_needs_a_higher_target() -> None:
    bwe = BandwidthEstimator(500_000)
    assert bwe.probe(400_000, 0.0) is None
    first = bwe.probe(2_000_000, 0.0)
    assert first is not None and first.bitrate == 2_000_000 and first.min_packets >= 5
    assert bwe.probe(2_000_000, 0.1) is None  # one cluster in flight


def test_trendline_rising_delay_is_overuse_falling_is_underuse() -> None:
    up = TrendlineDetector()
    for i in range(40):
        up.update(2.0, 0.01, i * 0.01)  # each group 2 ms later than sent: a queue builds
    assert up.state is BandwidthUsage.OVERUSING
    down = TrendlineDetector()
    for i in range(40):
        down.update(-2.0, 0.01, i * 0.01)
    assert down.state is BandwidthUsage.UNDERUSING
    flat = TrendlineDetector()
    for i in range(40):
        flat.update(0.0, 0.01, i * 0.01)
    assert flat.state is BandwidthUsage.NORMAL


def test_feedback_through_the_wire_format_wraps_sequence_numbers() -> None:
    bwe = BandwidthEstimator(500_000)
    rec = TwccRecorder()
    seq = 65_500
    for i in range(200):
        now = i * 0.005
        bwe.on_packet_sent(seq & 0xFFFF, 1200, now)
        rec.record(seq & 0xFFFF, now + 0.02)
        seq += 1
    for fb in rec.build_feedback(1.1, 1, 2):
        wire = fb.serialize()
        parsed = TransportCcFeedback.parse(wire[4:])  # body after the RTCP common header
        bwe.on_transport_cc(parsed.packets, parsed.reference_us, 1.1)
    assert bwe.acked_bitrate() is not None
    assert bwe.loss == 0.0


def test_a_parsed_feedback_gives_what_its_arrival_times_give() -> None:
    """``on_transport_cc`` sums a parsed feedback's deltas as it goes: the same estimator
    state as the arrival times worked out first (``on_feedback``), with packets lost, packets
    reported again (a second receiver's feedback covering two of the first's: its first half
    is skipped, yet its arrivals count for the second half), a negative delta, and the
    sequence numbers wrapping."""
    rng = random.Random(3)
    a, b = BandwidthEstimator(500_000), BandwidthEstimator(500_000)
    rec, again = TwccRecorder(), TwccRecorder()
    seq = 65_400
    arrival = 0.0
    for i in range(2_000):
        now = i * 0.004
        for bwe in (a, b):
            bwe.on_packet_sent(seq & 0xFFFF, 1100, now)
        if rng.random() > 0.05:  # lost otherwise
            arrival = max(arrival, now + 0.02 + rng.uniform(-0.003, 0.01))
            at = arrival if rng.random() > 0.02 else arrival - 0.002
            rec.record(seq & 0xFFFF, at)
            again.record(seq & 0xFFFF, at)
        seq += 1
        if i % 25 == 24:
            feedbacks = rec.build_feedback(now + 0.03, 1, 2)
            if i % 50 == 49:
                feedbacks = again.build_feedback(now + 0.03, 1, 2) + feedbacks
            for fb in feedbacks:
                parsed = TransportCcFeedback.parse(fb.serialize()[4:])
                a.on_feedback(parsed.arrival_times_us(), now + 0.03)
                b.on_transport_cc(parsed.packets, parsed.reference_us, now + 0.03)
                assert (b.estimate, b.acked_bitrate(), b.loss) == (
                    a.estimate,
                    a.acked_bitrate(),
                    a.loss,
                )
    assert a.loss > 0 and a.acked_bitrate() is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.one_of(st.none(), st.integers(-(10**9), 10**9)),
        ),
        max_size=60,
    ),
    st.lists(st.integers(0, 0xFFFF), max_size=60),
    st.floats(0, 100),
)
def test_arbitrary_feedback_keeps_the_estimate_bounded(
    statuses: list[tuple[int, int | None]], sent: list[int], t0: float
) -> None:
    bwe = BandwidthEstimator(300_000, min_bps=50_000, max_bps=10_000_000)
    for i, seq in enumerate(sent):
        bwe.on_packet_sent(seq, 1200, t0 + i * 0.001)
    bwe.on_feedback(statuses, t0 + 0.5)
    bwe.on_feedback(list(reversed(statuses)), t0 + 1.0)
    e = bwe.estimate
    assert math.isfinite(e) and 50_000 <= e <= 10_000_000


@settings(max_examples=100, deadline=None)
@given(st.integers(20, 200), st.floats(0.2, 1.0), st.integers(0, 0xFFFF))
def test_mostly_lost_feedback_never_raises_the_estimate(
    count: int, lost_share: float, start: int
) -> None:
    bwe = BandwidthEstimator(1_000_000)
    statuses: list[tuple[int, int | None]] = []
    rng = random.Random(count)
    for i in range(count):
        seq = (start + i) & 0xFFFF
        bwe.on_packet_sent(seq, 1200, i * 0.005)
        arrived = rng.random() >= lost_share
        statuses.append((seq, i * 5000 + 20_000 if arrived else None))
    before = bwe.estimate
    bwe.on_feedback(statuses, count * 0.005 + 0.05)
    lost = sum(1 for _, a in statuses if a is None) / count
    if lost > 0.1:
        assert bwe.estimate <= before


@settings(max_examples=30, deadline=None)
@given(st.integers(150_000, 4_000_000), st.integers(0, 2**32 - 1))
def test_estimate_stays_near_any_capacity(capacity: int, seed: int) -> None:
    link = Link(capacity, rng=random.Random(seed))
    sim = Sim(link)
    sim.run(30.0)
    # converged: not far above the capacity, not starving either (GCC aims at ~0.85-1.0)
    assert sim.mean(25.0) <= capacity * 1.25
    assert sim.mean(25.0) >= min(capacity, 3_000_000) * 0.4


# --- Probe clusters judged by hand (issue 10: a capped subscriber switched up by a probe) ---

PROBE_PACKET = 275  # bytes, as Downstream sends probe padding


def _cluster_sends(
    bwe: BandwidthEstimator, target: float, now: float
) -> list[tuple[float, int, int]]:
    """(send time, size, cluster id) of a probe cluster for ``target`` as
    Downstream._send_probe paces it: its bytes spread over its duration in 5 ms steps."""
    cluster = bwe.probe(target, now)
    assert cluster is not None
    total = max(cluster.min_bytes, int(cluster.bitrate * cluster.duration / 8))
    count = max(cluster.min_packets, -(-total // PROBE_PACKET))
    steps = max(1, round(cluster.duration / 0.005))
    sends = []
    for i in range(steps):
        due = -(-count * (i + 1) // steps) - -(-count * i // steps)
        sends += [(now + i * 0.005, PROBE_PACKET, cluster.id)] * due
    return sends


def _with_media(
    sends: list[tuple[float, int, int]], bitrate: float, start: float, end: float
) -> list[tuple[float, int, int]]:
    """``sends`` plus full media packets at ``bitrate`` from ``start`` to ``end``."""
    gap = PACKET * 8 / bitrate
    media = [(start + i * gap, PACKET, -1) for i in range(int((end - start) / gap))]
    return sorted(sends + media, key=lambda s: s[0])


def _token_bucket(
    sends: list[tuple[float, int, int]], rate: float, burst: int, delay: float = 0.02
) -> list[float]:
    """Arrival times through a token-bucket shaper (htb/tbf: ``burst`` bytes pass at line
    rate, then ``rate`` bits/s) with a FIFO queue behind it, then ``delay`` of propagation."""
    tokens, at, free = float(burst), sends[0][0], sends[0][0]
    arrivals = []
    for sent, size, _ in sends:
        t = max(sent, free)
        tokens = min(burst, tokens + (t - at) * rate / 8)
        if tokens < size:
            t += (size - tokens) * 8 / rate
            tokens = float(size)
        tokens -= size
        at = free = t
        arrivals.append(t + delay)
    return arrivals


class Feedback:
    """Sends probe packets into an estimator and reports their arrivals every 50 ms."""

    def __init__(self, bwe: BandwidthEstimator) -> None:
        self.bwe = bwe
        self.seq = 0
        self.pending: list[tuple[int, float]] = []  # (seq16, arrival)

    def send(self, sends: list[tuple[float, int, int]], arrivals: list[float]) -> None:
        for (sent, size, probe), arrival in zip(sends, arrivals, strict=True):
            self.bwe.on_packet_sent(self.seq & 0xFFFF, size, sent, probe)
            self.pending.append((self.seq & 0xFFFF, arrival))
            self.seq += 1

    def report(self, until: float) -> None:
        """Every 50 ms up to ``until``: one feedback with what arrived since the last."""
        t = min(a for _, a in self.pending) if self.pending else until
        while self.pending and t <= until + 1e-9:
            t += 0.05
            due = [(s, a) for s, a in self.pending if a <= t]
            self.pending = [(s, a) for s, a in self.pending if a > t]
            if due:
                self.bwe.on_feedback([(s, int(a * 1e6)) for s, a in due], t + 0.02)


def test_probe_through_a_token_bucket_proves_no_more_than_its_rate() -> None:
    # 400 kbit/s behind htb's burst allowance (~1.6 kB at that rate, more with cburst):
    # the cluster's first packets pass at line rate, the rest at 400 kbit/s; with the
    # subscriber's low layer (200 kbit/s) flowing through the same bucket, or alone
    for burst, media in ((1_600, 0.0), (1_600, 200_000.0), (4_000, 200_000.0)):
        bwe = BandwidthEstimator(250_000)
        sends = _cluster_sends(bwe, 700_000, 1.0)
        if media:
            sends = _with_media(sends, media, 0.9, 1.3)
        fb = Feedback(bwe)
        fb.send(sends, _token_bucket(sends, 400_000, burst))
        fb.report(2.0)
        assert bwe.estimate <= 400_000, (burst, media)


def test_a_prefix_of_the_cluster_does_not_judge_it() -> None:
    bwe = BandwidthEstimator(250_000)
    sends = _cluster_sends(bwe, 700_000, 1.0)
    arrivals = [sent + 0.02 for sent, _, _ in sends]  # uncapped: the target gets through
    fb = Feedback(bwe)
    half = len(sends) // 2
    fb.send(sends[:half], arrivals[:half])  # feedback comes while the cluster is paced
    fb.report(sends[half][0])
    assert bwe.estimate < 300_000
    fb.send(sends[half:], arrivals[half:])
    fb.report(2.0)
    # the whole cluster is in: an uncapped link proves the target at once
    assert bwe.estimate >= 0.9 * 700_000


def test_a_cluster_judged_only_when_most_of_it_arrived() -> None:
    bwe = BandwidthEstimator(250_000)
    sends = _cluster_sends(bwe, 700_000, 1.0)
    fb = Feedback(bwe)
    fb.send(sends, [sent + 0.02 for sent, _, _ in sends])
    # the first few arrive, the rest is reported lost: nothing proven
    lost = fb.pending[5:]
    fb.pending = fb.pending[:5]
    fb.report(2.0)
    bwe.on_feedback([(s, None) for s, _ in lost], 2.0)
    assert bwe.estimate < 300_000


def test_overuse_soon_after_a_probe_raise_undoes_it() -> None:
    bwe = BandwidthEstimator(250_000)
    sends = _cluster_sends(bwe, 700_000, 1.0)
    fb = Feedback(bwe)
    fb.send(sends, [sent + 0.02 for sent, _, _ in sends])
    fb.report(1.5)
    raised = bwe.estimate
    assert raised >= 0.9 * 700_000
    # media at the new rate: 1200 B every 12 ms sent, arriving every 13.5 ms (a queue grows)
    t0, sends, arrivals = 1.5, [], []
    for i in range(60):
        sends.append((t0 + i * 0.012, PACKET, -1))
        arrivals.append(t0 + 0.02 + i * 0.0135)
    fb.send(sends, arrivals)
    fb.report(3.0)
    assert bwe.usage is BandwidthUsage.OVERUSING
    # back to the estimate before the probe (the controller alone: 0.85 x ~710k delivered)
    assert bwe.estimate <= 260_000
    assert bwe.decreases >= 1


def _least_squares_trend(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den * n * 4.0  # the detector's trend: slope × window × gain


def test_trendline_running_sums_match_least_squares_over_hours() -> None:
    """The slope from running sums (rebased every 64 groups) stays the exact window slope
    after hours of groups, with arrival times far from zero and jittered deltas."""
    rnd = random.Random(7)
    detector = TrendlineDetector()
    arrival = 1_000_000.0  # s on the receiver's clock: only differences count
    accumulated = smoothed = 0.0
    window: list[tuple[float, float]] = []
    first = arrival
    worst = 0.0
    for i in range(200_000):  # ~2.8 h of groups 50 ms apart on average
        arrival += rnd.choice([0.005, 0.02, 0.1]) * rnd.random() + 0.00025
        delta = rnd.gauss(0.0, 3.0) + (1.0 if (i // 500) % 2 else -1.0)
        detector.update(delta, 0.01, arrival)
        accumulated += delta
        smoothed = 0.9 * smoothed + 0.1 * accumulated
        window = [*window[-19:], ((arrival - first) * 1000.0, smoothed)]
        if len(window) == 20 and i % 97 == 0:
            expected = _least_squares_trend(window)
            worst = max(worst, abs(detector._prev_trend - expected) / max(1.0, abs(expected)))
    assert worst < 1e-6


def test_trendline_equal_arrivals_have_no_slope() -> None:
    """Twenty groups that arrived at once have no time axis: no trend, not the running
    sums' rounding divided by a rounding-sized spread."""
    detector = TrendlineDetector()
    detector.update(1.0, 0.01, 0.1)
    trends = []
    for i in range(60):
        detector.update(5.0 + i % 7, 0.01, 1000.3)
        if i >= 20:  # the window holds only the equal arrivals
            trends.append(detector._prev_trend)
    assert trends == [0.0] * 40 and detector.state is BandwidthUsage.NORMAL


def test_feedback_that_lags_the_ring_loses_no_packet() -> None:
    # The ring starts at 64 slots: a second of packets without feedback (a slow or stalled
    # report) must grow it, not overwrite packets no feedback has covered yet.
    bwe = BandwidthEstimator()
    bwe.on_packet_sent(0, 1000, 0.0)
    bwe.on_feedback([(0, 0)], 0.001)
    for i in range(1, 1001):
        bwe.on_packet_sent(i, 1000, i * 0.001)
    assert bwe.unreported() == list(range(1, 1001))
    bwe.on_feedback([(i, i * 1000) for i in range(1, 1001)], 1.05)
    assert bwe.unreported() == []
    # every one counted for the delivered rate: the last 0.5 s of arrivals, 500 packets of
    # 1000 bytes after the window's first
    assert bwe.acked_bitrate() == pytest.approx(500 * 1000 * 8 / 0.5)


def test_a_feedback_the_network_reordered_counts_every_arrival() -> None:
    # Two packets swapped on the way: the delivered rate takes both (by arrival order), as
    # it does when the same arrival times come in sequence order.
    def fed(swap: bool) -> BandwidthEstimator:
        bwe = BandwidthEstimator()
        for i in range(200):
            bwe.on_packet_sent(i, 1200, i * 0.005)
        arrivals = [20_000 + i * 5_000 for i in range(200)]
        if swap:
            arrivals[150], arrivals[151] = arrivals[151], arrivals[150]
        bwe.on_feedback(list(enumerate(arrivals)), 1.1)
        return bwe

    in_order, swapped = fed(False), fed(True)
    assert in_order.acked_bitrate() is not None
    assert swapped.acked_bitrate() == in_order.acked_bitrate()


def test_a_packet_reported_lost_is_still_taken_when_reported_received_later() -> None:
    bwe = BandwidthEstimator()
    for i in range(10):
        bwe.on_packet_sent(i, 1200, i * 0.005)
    bwe.on_feedback([(i, None if i == 4 else 10_000 + i * 5_000) for i in range(10)], 0.1)
    assert bwe.unreported() == [4]  # kept: a late arrival may still be reported
    bwe.on_feedback([(4, 40_000)], 0.2)
    assert bwe.unreported() == []
