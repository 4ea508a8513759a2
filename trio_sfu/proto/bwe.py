"""Send-side bandwidth estimation towards one subscriber (sans-IO, GCC-like).

The SFU must know how much a subscriber's downlink carries to pick its simulcast layers
(issue 11): a subscriber behind 400 kbit/s gets the low layer, an uncapped one the high layer.
Its browser tells us, through transport-cc feedback, when each of our packets arrived
(draft-holmer-rmcat-transport-wide-cc-extensions-01); this module turns send times, sizes and
those arrival times into an estimate in bits/s, following draft-ietf-rmcat-gcc-02:

* **Delay-based** (§5): packets are grouped into bursts sent within 5 ms (§5.2); for
  consecutive groups the one-way delay variation is ``inter-arrival - inter-departure``. Its
  accumulated sum is smoothed and a least-squares slope over the last 20 groups (the trendline
  filter that replaced §5.3's Kalman filter in libwebrtc) says whether the bottleneck queue
  grows. An adaptive threshold (§5.4) classifies overuse / normal / underuse, and an AIMD
  controller (§5.5) multiplies the rate by 0.85 of what was actually delivered on overuse,
  holds on underuse (the queue is draining), and otherwise grows: 8 %/s while far from the last
  known capacity, about one packet per response time near it.
* **Loss-based** (§6): over each window of at least 20 reported packets, loss above 10 %
  scales the rate by ``1 - p/2``, loss below 2 % lets it grow 8 %/s from the current
  combined estimate, in between it holds.
* **Probing**: before the allocator switches a subscriber up it asks for a probe cluster
  (:meth:`BandwidthEstimator.probe`); the driver paces padding or RTX at the cluster's rate
  over ~100 ms (at least 4 kB) and tags those packets with the cluster id. Only once the
  whole cluster was sent, feedback reached its last packet and at least 80 % of it arrived
  is it judged: the receive rate after the first arrival (bounded by the rate we sent)
  lifts the delay-based estimate at once, instead of waiting for 8 %/s growth. A capped
  access link is usually a token bucket (htb, tbf) whose burst allowance (1.5-4 kB) passes
  at line rate, so a short cluster, or one judged on its first packets, proved rates the
  link could not carry (a 568 kbit/s probe through 400 kbit/s, and a freeze on the layer
  it admitted). Hence the length, and: if the one-way delay grew during the cluster (a
  queue built up once the allowance ran out), the cluster proves at most 0.95 × the rate
  delivered after the queue began (libwebrtc's probe estimator keeps a similar margin); and
  overuse within 3 s of a probe's raise undoes it (back to the estimate before the probe, or
  lower if the delivered rate says so).
* **REMB** (draft-alvestrand-rmcat-remb-03): where a subscriber only negotiated REMB, its
  receiver-side estimate caps ours (:meth:`BandwidthEstimator.on_remb`).

The estimate is ``min(delay-based, loss-based, REMB)`` clamped to ``[min_bps, max_bps]``.
Everything is driven by calls carrying ``now`` (seconds, monotonic); arrival times come in
microseconds on the receiver's clock, of which only differences are used. Nothing here runs
per forwarded packet beyond :meth:`BandwidthEstimator.on_packet_sent` (three stores into a
ring of preallocated lists: no object the garbage collector tracks, docs/benchmarks.md
"Control at saturation") and, once per report, a pass of :meth:`on_feedback` over it.

Module constants are ``Final``: compiled (``trio_sfu/compiled.py``), mypyc inlines them,
where a plain module global is a dictionary lookup on every use.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

from trio_sfu.proto.rtp import SequenceUnwrapper

__all__ = [
    "BandwidthEstimator",
    "BandwidthUsage",
    "DelayBasedEstimator",
    "LossBasedEstimator",
    "PacketResult",
    "ProbeCluster",
    "TrendlineDetector",
]

_BURST: Final = 0.005  # §5.2: packets sent within 5 ms form one group
_TRENDLINE_WINDOW: Final = 20
_TRENDLINE_REBASE: Final = 64  # groups between exact recomputations of the trendline's sums
_SMOOTHING: Final = 0.9
_TREND_GAIN: Final = 4.0
_THRESHOLD_INIT: Final = 12.5  # ms, §5.4
_THRESHOLD_MIN: Final = 6.0
_THRESHOLD_MAX: Final = 600.0
_K_UP: Final = 0.0087  # §5.4
_K_DOWN: Final = 0.039
_OVERUSE_TIME: Final = 0.010  # s of sustained overuse before signalling it
_BETA: Final = 0.85  # §5.5 multiplicative decrease of the delivered rate
_GROWTH_PER_S: Final = 1.08  # §5.5 / §6: 8 % per second
_HISTORY_S: Final = 10.0  # sent packets older than this without feedback are forgotten
_MAX_UNREPORTED: Final = 16384  # sent packets remembered at most (~15 s at 10 Mbit/s)
_RING_START: Final = 64  # its first size: ~0.3 s at 230 packets/s, enough for feedback every 0.1 s
_FREE: Final = -(1 << 60)  # a free ring slot (no extended number is this far below zero)
# A receiver that negotiated transport-cc yet has sent no feedback this long after our first
# packet does not report (libwebrtc's first feedback follows within ~100 ms): its sent
# packets are no longer recorded until it does.
_SILENT_AFTER: Final = 5.0
_ACK_WINDOW: Final = 0.5  # s of arrivals over which the delivered ("acked") rate is measured
_LOSS_MIN_PACKETS: Final = 20
# A loss fraction over at least this long (and LOSS_MIN_PACKETS): over 20 packets alone, 5 %
# random loss crosses §6's 10 % in about one window in nine, so a fast stream's estimate
# kept falling on a link that only drops at random (~100 packets at 200/s: one in forty)
_LOSS_WINDOW: Final = 0.5
_PACKET_BITS: Final = 1200 * 8  # typical full packet, for the additive increase
# A cluster lasts ~100 ms and carries at least 4 kB: a token-bucket shaper (htb, tbf: the usual
# capped access link) lets its burst allowance (1.5-4 kB) through at line rate, and only a
# cluster that outlasts it meets the cap (a 15 ms one "proved" 568 kbit/s through 400 kbit/s)
_PROBE_DURATION: Final = 0.1  # s of probe traffic per cluster
_PROBE_MIN_BYTES: Final = 4000
_PROBE_MIN_PACKETS: Final = 10
# A cluster is judged once feedback reached its last packet and this share of it arrived
_PROBE_MIN_RECEIVED: Final = 0.8
# Growth of the one-way delay during a cluster beyond this (s) means a queue built up (one
# transport-cc tick is 250 µs; sender bursts are compared by their first packet)
_PROBE_QUEUE_DELAY: Final = 0.002
# A cluster that built a queue proves at most this share of what was delivered after the
# queue began (libwebrtc's probe estimator keeps a similar margin below the measured rate)
_PROBE_QUEUE_FACTOR: Final = 0.95
# Overuse this soon after a probe raised the estimate means the probe over-estimated: undone
_PROBE_UNDO_WINDOW: Final = 3.0
_PROBE_INTERVAL: Final = 1.0  # s between probe clusters when the first failed to lift the estimate
_PROBE_TIMEOUT: Final = 1.0  # s after which an unanswered cluster is abandoned


class BandwidthUsage(enum.Enum):
    """The overuse detector's verdict on the bottleneck queue (§5.4)."""

    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


@dataclass(frozen=True, slots=True)
class PacketResult:
    """One sent packet as feedback reported it; ``arrival`` in seconds (receiver clock) or None."""

    seq: int  # extended transport-wide sequence number
    send_time: float
    size: int  # bytes on the wire (RTP payload and headers)
    arrival: float | None
    probe: int  # probe cluster id, or -1


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    """A burst the driver should send (padding or RTX) to test a higher rate.

    Send ``min_bytes`` in at least ``min_packets`` packets paced over about ``duration``
    seconds, passing ``probe=id`` to :meth:`BandwidthEstimator.on_packet_sent` for each. The
    cluster is judged once that much was sent and feedback reached its last packet: a
    driver that sends less leaves it to time out (a failed probe).
    """

    id: int
    bitrate: float
    min_bytes: int
    min_packets: int
    duration: float


class TrendlineDetector:
    """Delay-gradient trend over recent packet groups plus the adaptive threshold (§5.3-5.4).

    Fed one ``(inter-arrival - inter-departure)`` delta in ms per completed group, with the
    group's arrival time; says whether the bottleneck queue is growing (overusing), draining
    (underusing) or steady.

    The least-squares slope over the window comes from running sums updated as a sample
    enters and leaves, not from four passes over the window per group: with browser
    feedback (a group every 5-30 ms per subscriber) those passes were 16 % of a pod's CPU
    at 100 subscribers. Running sums of squares lose precision as the arrival times grow,
    so the samples are kept relative to an origin that moves to the window's oldest sample,
    and the sums recomputed exactly, every :data:`_TRENDLINE_REBASE` groups.
    """

    __slots__ = (
        "_accumulated",
        "_count",
        "_last_update",
        "_origin",
        "_overuse_count",
        "_overuse_time",
        "_pos",
        "_prev_trend",
        "_since_rebase",
        "_smoothed",
        "_sx",
        "_sxx",
        "_sxy",
        "_sy",
        "_xs",
        "_ys",
        "state",
        "threshold",
    )

    def __init__(self) -> None:
        # the window's samples: x = ms of arrival since _origin, y = smoothed delay (ms), in
        # a ring of _TRENDLINE_WINDOW slots: _count of them filled, the next written at _pos
        # (the oldest once full). Not deques: their append and popleft are method calls even
        # compiled, four per group.
        self._xs = [0.0] * _TRENDLINE_WINDOW
        self._ys = [0.0] * _TRENDLINE_WINDOW
        self._count = 0
        self._pos = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._origin = math.nan  # arrival (s) that x counts from; NaN before the first
        self._since_rebase = 0
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._last_update: float | None = None
        self._prev_trend = 0.0
        self._overuse_time = 0.0
        self._overuse_count = 0
        self.threshold = _THRESHOLD_INIT
        self.state = BandwidthUsage.NORMAL

    def update(self, delta_ms: float, send_delta: float, arrival: float) -> BandwidthUsage:
        """One group's delay variation ``delta_ms``; ``send_delta`` (s) since the previous one.

        Once per packet group of every subscriber with transport-cc, so written with locals
        and one call: 1.3 µs a group in-process, 2.9 written plainly with the same sums."""
        origin = self._origin
        if origin != origin:  # NaN: the first group
            origin = self._origin = arrival
        accumulated = self._accumulated = self._accumulated + delta_ms
        y = self._smoothed = _SMOOTHING * self._smoothed + (1 - _SMOOTHING) * accumulated
        x = (arrival - origin) * 1000.0
        xs, ys = self._xs, self._ys
        sx = self._sx + x
        sy = self._sy + y
        sxx = self._sxx + x * x
        sxy = self._sxy + x * y
        pos = self._pos
        if self._count == _TRENDLINE_WINDOW:
            old_x, old_y = xs[pos], ys[pos]
            sx -= old_x
            sy -= old_y
            sxx -= old_x * old_x
            sxy -= old_x * old_y
        else:
            self._count += 1
        xs[pos] = x
        ys[pos] = y
        self._pos = pos + 1 if pos + 1 < _TRENDLINE_WINDOW else 0
        self._sx, self._sy, self._sxx, self._sxy = sx, sy, sxx, sxy
        self._since_rebase += 1
        if self._since_rebase >= _TRENDLINE_REBASE:
            self._rebase()
            sx, sy, sxx, sxy = self._sx, self._sy, self._sxx, self._sxy
        if self._count < _TRENDLINE_WINDOW:
            return self.state
        n = _TRENDLINE_WINDOW
        den = n * sxx - sx * sx  # n² × the variance of x
        # All arrivals (nearly) equal: no slope. The tolerance is far above the sums'
        # rounding (≈ 1e-15 of n·Σx² per update since the last rebase) and far below the
        # smallest real spread (one of twenty arrivals a 250 µs transport-cc tick from the
        # others: > 1).
        slope = 0.0 if den <= 1e-12 * n * sxx else (n * sxy - sx * sy) / den
        self._detect(slope * (_TRENDLINE_WINDOW * _TREND_GAIN), send_delta, arrival)
        return self.state

    def _rebase(self) -> None:
        count = self._count
        shift = self._xs[self._pos if count == _TRENDLINE_WINDOW else 0]  # the oldest
        self._origin += shift / 1000.0
        for i in range(count):
            self._xs[i] -= shift
        xs, ys = self._xs[:count], self._ys[:count]  # the filled slots (all, once full)
        self._sx = sum(xs)
        self._sy = sum(ys)
        self._sxx = sum(x * x for x in xs)
        self._sxy = sum(x * y for x, y in zip(xs, ys, strict=True))
        self._since_rebase = 0

    def _detect(self, trend: float, send_delta: float, now: float) -> None:
        threshold = self.threshold
        if trend > threshold:
            self._overuse_time += send_delta
            self._overuse_count += 1
            if (
                self._overuse_time > _OVERUSE_TIME
                and self._overuse_count > 1
                and trend >= self._prev_trend
            ):
                self._overuse_time = 0.0
                self._overuse_count = 0
                self.state = BandwidthUsage.OVERUSING
        else:
            self._overuse_time = 0.0
            self._overuse_count = 0
            if trend < -threshold:
                self.state = BandwidthUsage.UNDERUSING
            else:
                self.state = BandwidthUsage.NORMAL
        self._prev_trend = trend
        # §5.4: the threshold follows |trend| (fast down, slow up) so competing TCP flows do
        # not starve us; spikes far above it (e.g. a route change) do not drag it up.
        last = self._last_update
        self._last_update = now
        magnitude = trend if trend >= 0.0 else -trend
        if last is None or magnitude > threshold + 15.0:
            return
        k = _K_DOWN if magnitude < threshold else _K_UP
        dt_ms = (now - last) * 1000.0
        if dt_ms > 100.0:
            dt_ms = 100.0
        threshold += k * (magnitude - threshold) * dt_ms
        if threshold < _THRESHOLD_MIN:
            threshold = _THRESHOLD_MIN
        elif threshold > _THRESHOLD_MAX:
            threshold = _THRESHOLD_MAX
        self.threshold = threshold


class DelayBasedEstimator:
    """§5: groups, trendline detector and the AIMD rate controller."""

    __slots__ = (
        "_capacity",
        "_first",
        "_last",
        "_last_arrival",
        "_last_change",
        "_prev_arrival",
        "_prev_last",
        "decreases",
        "detector",
        "rate",
    )

    def __init__(self, initial_bps: float) -> None:
        self.rate = initial_bps
        self.decreases = 0  # times overuse lowered the rate
        self.detector = TrendlineDetector()
        # The group being filled (first send, last send, last arrival; first send is NaN
        # before any) and the previous one's last send and arrival (NaN before any): floats,
        # not a tuple per packet, since every received packet passes here
        self._first = self._last = self._last_arrival = math.nan
        self._prev_last = self._prev_arrival = math.nan
        self._last_change: float | None = None
        self._capacity: float | None = None  # delivered rate at the last overuse

    def add(self, send: float, arrival: float) -> None:
        """One received packet, in send order (§5.2 groups)."""
        first = self._first
        if first != first:  # NaN: the first packet
            self._first = self._last = send
            self._last_arrival = arrival
            return
        last = self._last
        if send < last:
            return  # reordered by the sender's pacer/RTX: not a usable sample
        if send - first <= _BURST:
            self._last = send
            if arrival > self._last_arrival:
                self._last_arrival = arrival
            return
        last_arrival = self._last_arrival
        prev_last = self._prev_last
        if prev_last == prev_last:  # not NaN: a previous group to compare with
            send_delta = last - prev_last
            arrival_delta = last_arrival - self._prev_arrival
            self.detector.update((arrival_delta - send_delta) * 1000.0, send_delta, last_arrival)
        self._prev_last = last
        self._prev_arrival = last_arrival
        self._first = self._last = send
        self._last_arrival = arrival

    def control(self, acked_bps: float | None, rtt: float, now: float) -> None:
        """§5.5 after one feedback's packets were added."""
        last = self._last_change
        self._last_change = now
        dt = 0.0 if last is None else min(max(now - last, 0.0), 1.0)
        state = self.detector.state
        if state is BandwidthUsage.OVERUSING:
            if last is not None and acked_bps is not None:
                # §5.5: decrease to a fraction of what the link actually delivered
                new = _BETA * acked_bps
                if new < self.rate:
                    self.rate = new
                    self._capacity = acked_bps
                    self.decreases += 1
            return
        if state is BandwidthUsage.UNDERUSING:
            return  # hold while the queue drains
        capacity = self._capacity
        if capacity is not None and self.rate > capacity * 1.5:
            self._capacity = capacity = None  # far above the old capacity: it changed
        if capacity is None:
            grown = self.rate * _GROWTH_PER_S**dt
        else:
            # near the known capacity: about one packet more per response time (§5.5)
            response = rtt + 0.1
            grown = self.rate + max(1000.0, _PACKET_BITS / response) * dt
        if acked_bps is not None:
            # never run away from what is actually delivered (the source may be app-limited)
            grown = min(grown, max(1.5 * acked_bps + 10_000.0, self.rate))
        self.rate = grown


class LossBasedEstimator:
    """§6: the rate as a function of the reported loss fraction."""

    __slots__ = (
        "_last_decrease", "_last_update", "_lost", "_total", "decreases", "judged", "loss", "rate",
    )

    def __init__(self, initial_bps: float) -> None:
        self.rate = initial_bps
        self.decreases = 0  # times loss lowered the rate
        self.judged = 0  # loss windows judged: what the receiver's feedback has covered
        self.loss = 0.0
        self._lost = 0
        self._total = 0
        self._last_update: float | None = None
        self._last_decrease = -math.inf

    def on_counts(
        self,
        lost: int,
        total: int,
        now: float,
        current: float,
        rtt: float,
        acked_bps: float | None = None,
    ) -> None:
        """``lost`` of ``total`` packets: from one transport-cc feedback (with ``acked_bps``,
        what it says was delivered), or from a receiver report (RFC 3550 §6.4.1: its fraction
        lost over the packets expected since the last one) — how §6 was first specified, for
        a receiver that sends no transport-cc feedback; nothing then tells what was
        delivered, so a decrease has no floor but the estimator's minimum.

        ``current``: the combined estimate now. Growth starts from it (as libwebrtc's
        loss-based part does), so a long loss-free spell cannot bank headroom that would
        make the first real losses take seconds to matter.

        Decreases come at most once per 300 ms + RTT (the time the sender needs to react,
        libwebrtc's interval) and never below 0.85 × what was delivered: when the sender
        cannot follow the estimate at once (an SFU forwards a publisher's layer until the
        next keyframe lets it switch), loss stays high, and without that floor the estimate
        would sink to the minimum although the link still delivers its capacity."""
        self._lost += max(0, min(lost, total))
        self._total += max(0, total)
        self._judge(now, current, acked_bps, rtt)

    def _judge(self, now: float, current: float, acked_bps: float | None, rtt: float) -> None:
        last = self._last_update
        if self._total < _LOSS_MIN_PACKETS or (last is not None and now - last < _LOSS_WINDOW):
            return
        p_loss = self._lost / self._total
        self.loss = p_loss
        self.judged += 1
        self._lost = self._total = 0
        self._last_update = now
        dt = 0.0 if last is None else min(max(now - last, 0.0), 1.0)
        if p_loss > 0.1:
            if now - self._last_decrease >= 0.3 + rtt:
                self._last_decrease = now
                lowered = self.rate * (1.0 - 0.5 * p_loss)
                if acked_bps is not None:
                    lowered = max(lowered, min(self.rate, _BETA * acked_bps))
                self.rate = lowered
                self.decreases += 1
        elif p_loss < 0.02:
            self.rate = min(self.rate, current) * _GROWTH_PER_S**dt + 1000.0 * dt


class BandwidthEstimator:
    """One subscriber transport's estimate from transport-cc feedback (and/or REMB).

    Driver: :meth:`on_packet_sent` for each packet sent with a transport-cc number,
    :meth:`on_transport_cc` with each feedback's parsed ``packets`` and ``reference_us``
    (:meth:`on_feedback` takes arrival times instead), :meth:`on_remb` for REMB;
    read :attr:`estimate` when re-running the allocator. Before switching a subscriber up,
    :meth:`probe` with the rate the allocator would need.
    """

    __slots__ = (
        "_acked_at",
        "_acked_bytes",
        "_acked_head",
        "_acked_size",
        "_delay",
        "_first_sent",
        "_forget_before",
        "_heard",
        "_loss",
        "_mask",
        "_next_probe_id",
        "_pre_probe",
        "_probe",
        "_probe_last_seq",
        "_probe_packets",
        "_probe_raised_at",
        "_probe_sent_bytes",
        "_probe_sent_packets",
        "_probe_started",
        "_remb",
        "_reported_upto",
        "_ring_at",
        "_ring_seq",
        "_ring_size",
        "_sent_probe",
        "_unwrapper",
        "max_bps",
        "min_bps",
        "rtt",
    )

    def __init__(
        self,
        initial_bps: float = 300_000.0,
        *,
        min_bps: float = 30_000.0,
        max_bps: float = 20_000_000.0,
    ) -> None:
        if not 0 < min_bps <= initial_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= initial_bps <= max_bps")
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.rtt = 0.1
        self._delay = DelayBasedEstimator(initial_bps)
        self._loss = LossBasedEstimator(initial_bps)
        self._remb: float | None = None
        self._unwrapper = SequenceUnwrapper()
        # Packets sent and not yet reported: a ring of parallel lists indexed by the extended
        # transport-cc number & _mask — its number (_FREE: a free slot), send time and size —
        # allocated with the first packet sent (an idle subscriber holds none) and doubled
        # while feedback lags behind what the ring holds, up to _MAX_UNREPORTED slots. Not a
        # dict per field: an insert and a pop per packet and field cost more than the rest of
        # the estimator (issue 10). Not a tuple per packet either: one tracked object per
        # packet sent started a young collection every ~8 ms at 70-90k packets/s, which
        # promoted every timer's coroutines and so caused a full collection of the whole peer
        # heap (0.2-0.4 s) every few seconds (docs/benchmarks.md).
        self._ring_seq: list[int] = []
        self._ring_at: list[float] = []
        self._ring_size: list[int] = []
        self._mask = -1  # ring slots - 1 (-1: no ring)
        #: sent before this (s): forgotten without feedback (_HISTORY_S behind the latest one)
        self._forget_before = -math.inf
        #: whether any feedback came, and when our first packet left (-1: none yet)
        self._heard = False
        self._first_sent = -1.0
        self._sent_probe: dict[int, int] = {}  # extended seq -> probe id (probe packets only)
        # Arrivals reported received within _ACK_WINDOW (s, in arrival order) and their
        # sizes, from _acked_head on: lists with a moving head, not a deque of tuples (a
        # deque's append and popleft are method calls even compiled, twice per packet)
        self._acked_at: list[float] = []
        self._acked_size: list[int] = []
        self._acked_head = 0
        self._acked_bytes = 0  # the sum of the live sizes, kept as entries come and go
        self._probe: ProbeCluster | None = None
        self._probe_started = -math.inf
        self._next_probe_id = 0
        # The cluster in flight: what was sent of it, its last packet, its packets reported
        # received so far (over as many feedbacks as it takes: a few dozen at most)
        self._probe_sent_packets = 0
        self._probe_sent_bytes = 0
        self._probe_last_seq = -1
        self._probe_packets: list[PacketResult] = []
        self._reported_upto = -1  # the highest extended seq any feedback reported
        # When a probe last raised the estimate, and the estimate before it (for the undo)
        self._probe_raised_at = -math.inf
        self._pre_probe = 0.0

    @property
    def estimate(self) -> float:
        """Current estimate in bits/s."""
        rate = min(self._delay.rate, self._loss.rate)
        if self._remb is not None:
            rate = min(rate, self._remb)
        return min(max(rate, self.min_bps), self.max_bps)

    @property
    def loss(self) -> float:
        """Loss fraction over the last complete loss window."""
        return self._loss.loss

    @property
    def usage(self) -> BandwidthUsage:
        return self._delay.detector.state

    @property
    def decreases(self) -> int:
        """How often overuse (§5.5) or loss (§6) lowered the estimate so far: a layer
        allocator treats a change of this as congestion on the subscriber's link."""
        return self._delay.decreases + self._loss.decreases

    @property
    def loss_windows(self) -> int:
        """Loss windows judged so far: a layer trial holds only once the receiver's feedback
        has covered it (receiver reports come every 0.5-1.5 s, transport-cc every 0.1)."""
        return self._loss.judged

    def acked_bitrate(self) -> float | None:
        """Bits/s the receiver got over the last ~0.5 s of arrivals, None until measurable."""
        at = self._acked_at
        head = self._acked_head
        if len(at) - head < 2:
            return None
        span = at[-1] - at[head]
        if span < _ACK_WINDOW / 2:
            return None
        # the bytes after the first arrival: it starts the measured span
        return (self._acked_bytes - self._acked_size[head]) * 8 / span

    def unreported(self) -> list[int]:
        """The extended numbers of the packets sent and still awaiting feedback (those
        reported lost included: a later feedback may still report them received)."""
        forget_before = self._forget_before
        at = self._ring_at
        return sorted(
            seq for k, seq in enumerate(self._ring_seq) if seq != _FREE and at[k] >= forget_before
        )

    def on_packet_sent(self, transport_seq: int, size: int, now: float, probe: int = -1) -> None:
        """Note a packet we sent with this transport-wide sequence number (16-bit).

        Until the receiver's first feedback, and for no more than :data:`_SILENT_AFTER`
        seconds: a receiver that never reports would otherwise keep a ring of 16,384
        packets (≈ 0.5 MB) that nobody reads."""
        ext = self._unwrapper.unwrap(transport_seq & 0xFFFF)
        if not self._heard:
            first = self._first_sent
            if first < 0.0:
                self._first_sent = now
            elif now - first > _SILENT_AFTER:
                if self._mask >= 0:
                    self._drop_ring()
                return
        mask = self._mask
        if mask < 0:
            mask = self._new_ring(_RING_START)
        i = ext & mask
        old = self._ring_seq[i]
        if (
            old > self._reported_upto
            and self._ring_at[i] >= self._forget_before
            and mask < _MAX_UNREPORTED - 1
        ):
            # The slot's packet awaits its first report: feedback lags the ring, so it grows
            # (a receiver that stopped reporting ends at _MAX_UNREPORTED, the newest kept)
            mask = self._grow()
            i = ext & mask
        self._ring_seq[i] = ext
        self._ring_at[i] = now
        self._ring_size[i] = size
        if probe != -1:
            self._sent_probe[ext] = probe
            cluster = self._probe
            if cluster is not None and probe == cluster.id:
                self._probe_sent_packets += 1
                self._probe_sent_bytes += size
                self._probe_last_seq = ext

    def _new_ring(self, slots: int) -> int:
        """An empty ring of ``slots`` (a power of two); returns its mask."""
        self._ring_seq = [_FREE] * slots
        self._ring_at = [0.0] * slots
        self._ring_size = [0] * slots
        self._mask = slots - 1
        return self._mask

    def _grow(self) -> int:
        """Double the ring, every packet it holds kept; returns the new mask. The packets
        held are within the last ``slots`` numbers sent (each slot is written once per lap),
        so no two of them meet in a slot of the doubled ring."""
        seqs, at, sizes = self._ring_seq, self._ring_at, self._ring_size
        mask = self._new_ring(2 * len(seqs))
        new_seqs, new_at, new_sizes = self._ring_seq, self._ring_at, self._ring_size
        for k in range(len(seqs)):
            seq = seqs[k]
            if seq != _FREE:
                j = seq & mask
                new_seqs[j] = seq
                new_at[j] = at[k]
                new_sizes[j] = sizes[k]
        return mask

    def _drop_ring(self) -> None:
        self._ring_seq = []
        self._ring_at = []
        self._ring_size = []
        self._mask = -1
        self._sent_probe.clear()

    def on_remb(self, bitrate: float) -> None:
        """The subscriber's receiver-side estimate (REMB), a cap on ours."""
        self._remb = max(bitrate, 0.0)

    def on_loss_report(self, lost: int, expected: int, now: float) -> None:
        """Loss from RTCP receiver reports, for a receiver without transport-cc feedback
        (aiortc, for one): ``lost`` of the ``expected`` packets since its previous report.
        Loss above 10 % lowers the estimate and counts as a decrease, which is the congestion
        signal the layer planner steps down on; such a receiver's estimate never grows past
        its start (only delivery measurements could show it may)."""
        self._loss.on_counts(lost, expected, now, self.estimate, self.rtt)

    def on_rtt(self, rtt: float) -> None:
        """Round-trip time from RTCP (RR's DLSR), used for the additive increase."""
        if rtt > 0:
            self.rtt = rtt

    def on_feedback(self, statuses: list[tuple[int, int | None]], now: float) -> None:
        """One transport-cc feedback as ``(seq16, arrival µs or None)`` in sequence order:
        :meth:`on_transport_cc` with each arrival as the delta from the one before."""
        packets: list[tuple[int, bool, int | None]] = []
        previous = 0
        for seq, arrival_us in statuses:
            if arrival_us is None:
                packets.append((seq, False, None))
            else:
                packets.append((seq, True, arrival_us - previous))
                previous = arrival_us
        self.on_transport_cc(packets, 0, now)

    def on_transport_cc(
        self, packets: list[tuple[int, bool, int | None]], reference_us: int, now: float
    ) -> None:
        """One transport-cc feedback as parsed (``TransportCcFeedback.packets``: ``(seq16,
        received, delta µs)`` in sequence order, each delta from the previous received
        packet's arrival, the first from ``reference_us``; a packet reported before one sent
        earlier is no delay sample, as for the sender's own reordering). The arrivals are
        summed here, in the one pass: no list of them per feedback, no tuple per packet.

        One pass and no object per reported packet (only for probe packets): with browser
        receivers every packet sent is reported once, and a dataclass per packet plus a
        list per stage cost as much as the forwarding of the packet itself. A packet is
        known while its ring slot holds its number and it was sent after
        :attr:`_forget_before`; one reported received frees its slot (a later report would
        be a duplicate), one reported lost keeps it (a later feedback may still report it
        received, until the ring comes round to its slot again)."""
        self._heard = True
        unwrapper = self._unwrapper
        highest = unwrapper.highest
        if highest is None:
            return
        mask = self._mask
        seqs = self._ring_seq
        ring_at = self._ring_at
        ring_size = self._ring_size
        forget_before = self._forget_before
        probes = self._sent_probe
        delay = self._delay
        cluster = self._probe
        reported = self._reported_upto
        # the packets reported received, in feedback order, for the delivered rate
        arrivals: list[float] = []
        sizes: list[int] = []
        in_order = True
        total = lost = 0
        ext = 0
        known = False  # ext holds the previous status's extended number
        clock_us = reference_us  # the feedback sender's clock, at the last received packet
        for seq, received, delta_us in packets:
            if received and delta_us is not None:
                clock_us += delta_us  # (before any skip: later arrivals build on it)
                arrived = True
            else:
                arrived = False
            if known and seq == (ext + 1) & 0xFFFF:
                ext += 1  # the feedback's next number (all but its first, as a rule)
            else:
                ext = unwrapper.peek(seq)
                known = True
            if ext > highest:
                continue  # feedback for something we never sent
            if ext > reported:
                reported = ext
            if mask < 0:
                continue  # nothing held
            i = ext & mask
            if seqs[i] != ext or ring_at[i] < forget_before:
                continue  # unknown, forgotten, or already reported received
            if not arrived:
                total += 1
                lost += 1  # kept: a later feedback may still report it received
                continue
            seqs[i] = _FREE
            send_time = ring_at[i]
            size = ring_size[i]
            total += 1
            arrival = clock_us / 1e6
            if probes:
                probe = probes.pop(ext, -1)
                if cluster is not None and probe == cluster.id:
                    self._probe_packets.append(PacketResult(ext, send_time, size, arrival, probe))
            delay.add(send_time, arrival)
            if in_order and arrivals and arrival < arrivals[-1]:
                in_order = False
            arrivals.append(arrival)
            sizes.append(size)
        self._reported_upto = reported
        floor = now - _HISTORY_S
        if floor > forget_before:
            self._forget_before = floor  # sent before it and unreported: forgotten
        if probes:
            # probe packets whose slot was overwritten or forgotten, or reported lost
            oldest = highest - mask
            for ext in [e for e in probes if e < oldest or seqs[e & mask] != e]:
                del probes[ext]
        if not total:
            self._probe_result(now)  # (times out an unanswered cluster)
            return
        acked_at = self._acked_at
        acked_size = self._acked_size
        head = self._acked_head
        acked_bytes = self._acked_bytes
        if not in_order:  # the network reordered: by arrival (stable: feedback order kept)
            pairs = sorted(zip(arrivals, sizes, strict=True), key=itemgetter(0))
            arrivals = [a for a, _ in pairs]
            sizes = [z for _, z in pairs]
        last = acked_at[-1] if len(acked_at) > head else -math.inf
        for k in range(len(arrivals)):
            arrival = arrivals[k]
            if arrival < last:
                continue  # out of arrival order across feedbacks: skip for the rate
            size = sizes[k]
            acked_at.append(arrival)
            acked_size.append(size)
            acked_bytes += size
            last = arrival
        if len(acked_at) > head:
            oldest_arrival = last - _ACK_WINDOW
            while acked_at[head] < oldest_arrival:
                acked_bytes -= acked_size[head]
                head += 1
            if head > 64 and 2 * head > len(acked_at):
                del acked_at[:head]
                del acked_size[:head]
                head = 0
        self._acked_head = head
        self._acked_bytes = acked_bytes
        acked_bps = self.acked_bitrate()
        decreases = delay.decreases
        delay.control(acked_bps, self.rtt, now)
        if (
            delay.detector.state is BandwidthUsage.OVERUSING
            and now - self._probe_raised_at <= _PROBE_UNDO_WINDOW
        ):
            # The link pushes back soon after a probe raised the estimate: the probe
            # over-estimated (it met a shaper's burst allowance, or a queue that had room
            # for 100 ms but not for the rate). Back to the estimate before it, or lower if
            # the delivered rate says so (already applied by the controller).
            self._probe_raised_at = -math.inf
            if delay.rate > self._pre_probe:
                delay.rate = self._pre_probe
                if delay.decreases == decreases:
                    delay.decreases += 1  # the allocator reacts to a lowered estimate
        self._loss.on_counts(lost, total, now, self.estimate, self.rtt, acked_bps)
        self._probe_result(now)
        self._clamp()

    def _clamp(self) -> None:
        for part in (self._delay, self._loss):
            part.rate = min(max(part.rate, self.min_bps), self.max_bps)

    def probe(self, target_bps: float, now: float) -> ProbeCluster | None:
        """A probe cluster to send now to test ``target_bps``, or None.

        None when the estimate already reaches the target, a cluster is in flight, or the
        last one was less than a second ago (a failed probe is not retried at once).
        """
        if target_bps <= self.estimate or self._probe is not None:
            return None
        if now - self._probe_started < _PROBE_INTERVAL:
            return None
        bitrate = min(target_bps, self.max_bps)
        self._next_probe_id += 1
        cluster = ProbeCluster(
            id=self._next_probe_id,
            bitrate=bitrate,
            min_bytes=max(int(bitrate * _PROBE_DURATION / 8), _PROBE_MIN_BYTES),
            min_packets=_PROBE_MIN_PACKETS,
            duration=_PROBE_DURATION,
        )
        self._probe = cluster
        self._probe_started = now
        self._probe_sent_packets = self._probe_sent_bytes = 0
        self._probe_last_seq = -1
        self._probe_packets = []
        return cluster

    def _probe_result(self, now: float) -> None:
        """Judge the cluster in flight once feedback covers all of it.

        Never on a prefix: its first packets pass a token bucket's burst allowance at line
        rate, so a cluster judged on them (the driver paces it over 100 ms, while feedback
        comes every 50-100 ms) would prove a rate the link cannot carry. So only once the
        whole cluster was sent, feedback reached its last packet, and most of it arrived."""
        cluster = self._probe
        if cluster is None:
            return
        if now - self._probe_started > _PROBE_TIMEOUT:
            self._probe = None  # unanswered, or too much of it lost: failed
            self._probe_packets = []
            return
        sent = self._probe_sent_packets
        if (
            sent < cluster.min_packets
            or self._probe_sent_bytes < cluster.min_bytes
            or self._reported_upto < self._probe_last_seq
            or len(self._probe_packets) < _PROBE_MIN_RECEIVED * sent
        ):
            return  # still being sent, or its end not reported yet (a late report may come)
        packets, self._probe_packets = self._probe_packets, []
        self._probe = None
        result = min(_probe_rate(packets), cluster.bitrate)
        before = self.estimate
        raised = False
        if result > self._delay.rate:
            self._delay.rate = result
            self._delay._capacity = None
            raised = True
        if result > self._loss.rate:
            self._loss.rate = result
            raised = True
        if raised:
            self._probe_raised_at = now
            self._pre_probe = before


def _probe_rate(packets: list[PacketResult]) -> float:
    """The rate a probe cluster's received packets prove, in bits/s.

    The receive rate over the arrivals after the first packet (its own arrival starts the
    measurement), bounded by the send rate over the sends before the last one: a link that
    delivered faster than we sent proves only what we sent. If the one-way delay grew during
    the cluster (arrival spacing longer than send spacing: a queue built up at the
    bottleneck, typically once a shaper's burst allowance ran out), the link carried less
    than we sent, and the cluster proves at most :data:`_PROBE_QUEUE_FACTOR` of the rate
    delivered after the queue began (draft-ietf-rmcat-gcc-02 §5: queue growth is overuse).
    """
    by_send = sorted(packets, key=lambda r: (r.send_time, r.seq))
    by_arrival = sorted(packets, key=_arrival)
    first_send, last_send = by_send[0].send_time, by_send[-1].send_time
    send_span = last_send - first_send
    if send_span > 0:
        send_bytes = sum(r.size for r in by_send if r.send_time < last_send)
        send_rate = send_bytes * 8 / send_span
    else:
        send_rate = math.inf  # sent as one burst: only the receive side measures
    recv_rate = _receive_rate(by_arrival)
    # A cluster that arrived within one feedback tick (250 µs, transport-cc's resolution)
    # met no bottleneck worth the name: the send rate (or the target) is proven.
    result = min(send_rate, recv_rate)
    if recv_rate < 0.9 * send_rate:
        result = min(result, _PROBE_QUEUE_FACTOR * recv_rate)  # the bottleneck's rate
    # Queue growth: the smallest one-way delay of each send burst (its first packet to
    # arrive did not wait behind the burst's others), against the smallest of all.
    groups: list[tuple[float, float]] = []  # (send time, smallest arrival - send time)
    for r in by_send:
        assert r.arrival is not None
        delay = r.arrival - r.send_time
        if groups and groups[-1][0] == r.send_time:
            if delay < groups[-1][1]:
                groups[-1] = (r.send_time, delay)
        else:
            groups.append((r.send_time, delay))
    base = min(delay for _, delay in groups)
    if groups[-1][1] > base + _PROBE_QUEUE_DELAY:
        # the queue began after the last burst that still saw the base delay
        calm = max(i for i, (_, delay) in enumerate(groups) if delay <= base + _PROBE_QUEUE_DELAY)
        start = groups[calm + 1][0]
        queued = sorted((r for r in packets if r.send_time >= start), key=_arrival)
        after = _receive_rate(queued) if len(queued) >= 2 else recv_rate
        result = min(result, _PROBE_QUEUE_FACTOR * after)
    return result


def _receive_rate(by_arrival: list[PacketResult]) -> float:
    """Bytes after the first arrival over the time from the first arrival to the last."""
    first, last = by_arrival[0].arrival, by_arrival[-1].arrival
    assert first is not None and last is not None
    span = last - first
    if span <= 0:
        return math.inf
    return sum(r.size for r in by_arrival[1:]) * 8 / span


def _arrival(r: PacketResult) -> float:
    return r.arrival if r.arrival is not None else math.inf
