"""What the node remembers for ``/metrics`` beyond its live members: the totals of members that
left, join outcomes, and distributions of join, connect and session times.

Plain ints and bucket counts, no metrics library: the SFU records, and the HTTP side's
collector (:mod:`trio_sfu.metrics`) reads it at scrape time. Nothing here runs per packet — a
member's counters are folded in once, when it leaves.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Mapping

__all__ = ["Buckets", "NodeStats"]

#: Seconds: signaling answers and ICE+DTLS set-up are milliseconds to a few seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a connection lasted: a failed join to a day-long meeting.
SESSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
#: What subscribers' receiver reports say: round-trip time (s) and fraction lost.
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
LOSS_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Buckets:
    """A cumulative histogram (Prometheus semantics: ``le`` upper bounds, +Inf last)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def merge(self, other: Buckets) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.sum += other.sum

    def copy(self) -> Buckets:
        out = Buckets(self.bounds)
        out.merge(self)
        return out

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, as the exposition format wants them."""
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class NodeStats:
    def __init__(self) -> None:
        #: (role, outcome) → joins; outcome "ok" or why it was refused
        self.joins: Counter[tuple[str, str]] = Counter()
        #: counters of members that left, summed (what the live members add is read live)
        self.retired: Counter[str] = Counter()
        self.join_seconds: defaultdict[str, Buckets] = defaultdict(
            lambda: Buckets(LATENCY_BUCKETS)
        )
        self.connect_seconds: defaultdict[str, Buckets] = defaultdict(
            lambda: Buckets(LATENCY_BUCKETS)
        )
        self.session_seconds: defaultdict[str, Buckets] = defaultdict(
            lambda: Buckets(SESSION_BUCKETS)
        )
        #: receiver-report figures of members that left
        self.retired_rtt = Buckets(RTT_BUCKETS)
        self.retired_loss = Buckets(LOSS_BUCKETS)

    def joined(self, role: str, seconds: float) -> None:
        self.joins[role, "ok"] += 1
        self.join_seconds[role].observe(seconds)

    def refused(self, role: str, reason: str) -> None:
        self.joins[role, reason] += 1

    def connected(self, role: str, seconds: float) -> None:
        self.connect_seconds[role].observe(seconds)

    def left(
        self,
        role: str,
        seconds: float,
        counters: Mapping[str, int],
        reports: tuple[Buckets, Buckets] | None = None,
    ) -> None:
        """A member ended: its session time, and its counters (and, for members we send
        media to, their receivers' RTT and loss reports) join the node's retired totals."""
        self.session_seconds[role].observe(seconds)
        self.retired.update(counters)
        if reports is not None:
            self.retired_rtt.merge(reports[0])
            self.retired_loss.merge(reports[1])
