"""A deterministic in-memory link between two sans-IO endpoints, plus tests of the link itself.

Other SCTP / data-channel tests import :class:`Link`. The link has a fake clock, a one-way delay,
and seeded loss, duplication and reordering, so a failure reproduces exactly from its seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any, Protocol


class Endpoint(Protocol):
    def receive_packet(self, data: bytes, now: float) -> None: ...
    def packets_to_send(self, now: float) -> list[bytes]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...


class Link:
    def __init__(
        self,
        a: Endpoint,
        b: Endpoint,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.01,
        seed: int = 0,
        start: float = 100.0,
    ) -> None:
        self.ends = (a, b)
        self.events: tuple[list[Any], list[Any]] = ([], [])
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.delay = delay
        self.rng = random.Random(seed)
        self.now = start
        self._queue: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.delivered = [0, 0]
        self.dropped = 0
        self.up = True  # False: the link silently eats everything
        self.tap: Callable[[int, bytes], bytes | None] | None = None  # may rewrite or drop
        self.sent: tuple[list[bytes], list[bytes]] = ([], [])
        self.record = False

    def _collect(self) -> None:
        for i, end in enumerate(self.ends):
            for pkt in end.packets_to_send(self.now):
                if self.record:
                    self.sent[i].append(pkt)
                if self.tap is not None:
                    tapped = self.tap(i, pkt)
                    if tapped is None:
                        continue
                    pkt = tapped
                if not self.up or self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                copies = 2 if self.rng.random() < self.duplicate else 1
                for _ in range(copies):
                    delay = self.delay
                    if self.rng.random() < self.reorder:
                        delay += self.rng.uniform(0, 3 * self.delay)
                    self._seq += 1
                    heapq.heappush(self._queue, (self.now + delay, self._seq, 1 - i, pkt))
            while (ev := end.next_event()) is not None:
                self.events[i].append(ev)

    def step(self) -> bool:
        """Advance to the next packet arrival or timer; False when nothing is left to happen."""
        self._collect()
        times = [t for t in (e.get_timer() for e in self.ends) if t is not None]
        if self._queue:
            times.append(self._queue[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        while self._queue and self._queue[0][0] <= self.now:
            _, _, dst, pkt = heapq.heappop(self._queue)
            self.delivered[dst] += 1
            self.ends[dst].receive_packet(pkt, self.now)
        for end in self.ends:
            t = end.get_timer()
            if t is not None and t <= self.now:
                end.handle_timer(self.now)
        self._collect()
        return True

    def run(
        self,
        until: Callable[[], object] | None = None,
        *,
        timeout: float = 600.0,
        require: bool = True,
    ) -> None:
        deadline = self.now + timeout
        while self.now < deadline:
            if until is not None and until():
                return
            if not self.step():
                break
        if require and until is not None and not until():
            raise AssertionError(f"condition not met by t={self.now:.3f}")

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            self._collect()
            times = [t for t in (e.get_timer() for e in self.ends) if t is not None]
            if self._queue:
                times.append(self._queue[0][0])
            if not times or min(times) > end:
                self.now = end
                self._collect()
                return
            self.step()

    @property
    def pending(self) -> bool:
        """Packets still in flight."""
        return bool(self._queue)

    def of_type(self, side: int, cls: type) -> list[Any]:
        return [e for e in self.events[side] if isinstance(e, cls)]


def check_invariants(assoc: Any) -> None:
    """Internal consistency of an SctpAssociation (used after lossy runs and fuzzing)."""
    t = assoc.get_timer()
    assert t is None or (t == t and t < float("inf"))
    snd, rcv = assoc.sender, assoc.receiver
    if snd is not None:
        assert snd.flight >= 0 and snd.outstanding_bytes >= 0 and snd.cwnd >= snd.mtu
        assert snd.cum_ack <= snd.adv_ack < snd.next_tsn
        tsns = [c.tsn for c in snd.outstanding]
        assert tsns == list(range(snd.cum_ack + 1, snd.next_tsn))
        out = snd.outstanding
        assert snd.flight == sum(c.size for c in out if c.in_flight)
        assert snd.outstanding_bytes == sum(c.size for c in out if not c.acked and not c.abandoned)
        assert snd._rtx_pending == sum(1 for c in out if c.retransmit)
        assert all(st.buffered >= 0 for st in snd.streams.values())
        assert snd.rto_min <= snd.rto <= snd.rto_max
    if rcv is not None:
        assert rcv.buffered >= 0 and rcv.cum <= rcv.highest
        assert all(t > rcv.cum for t in rcv.above)


class _Echo:
    """A trivial endpoint: answers every packet with the same bytes once."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.got: list[bytes] = []

    def receive_packet(self, data: bytes, now: float) -> None:
        self.got.append(data)

    def packets_to_send(self, now: float) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> Any:
        return None


def test_link_is_deterministic_and_lossy() -> None:
    def run(seed: int) -> list[bytes]:
        a, b = _Echo(), _Echo()
        link = Link(a, b, loss=0.3, duplicate=0.2, reorder=0.5, seed=seed)
        a.out = [bytes([i]) for i in range(200)]
        link.run()
        return b.got

    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert first != other
    assert 100 < len(first) < 200 + 80  # lost some, duplicated some
    assert first != sorted(first)  # reordered
