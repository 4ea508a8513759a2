"""A fan-out longer than the reader's slice is finished in the reader's next pass
(rtc/budget.py, sfu/groups.py; issue 10: joins at saturation): every subscriber still gets
each packet once and in order, leavers are skipped, and nothing outside a reader's pass is
ever deferred."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from trio_sfu.proto.rtp import RtpPacket, RtpRewriter
from trio_sfu.rtc.budget import BUDGET, FANOUT_CHUNK
from trio_sfu.sfu.groups import Fanout, ForwardingGroup

KEY = ((), (), 90000, 0)


class Member:
    """A subscriber as its group sees it; each delivery costs 0.01 on the budget's clock."""

    def __init__(self, name: int, log: list[tuple[int, int]], clock: list[float]) -> None:
        self.name = name
        self.log = log
        self.clock = clock
        self.group_key = KEY
        self.layer: int | None = None
        self.group: ForwardingGroup | None = None

    def deliver(self, out: bytes, twcc_offset: int, now: float) -> None:
        self.clock[0] += 0.01
        self.log.append((self.name, int.from_bytes(out[2:4])))

    def new_rewriter(self) -> RtpRewriter:
        return RtpRewriter(0, {96: 96}, {}, clock_rate=90000)

    def joined(self, group: ForwardingGroup) -> None:
        self.group = group

    def left(self, group: ForwardingGroup) -> None:
        self.group = None


@pytest.fixture
def clock() -> Iterator[list[float]]:
    now = [0.0]
    BUDGET.clock = lambda: now[0]
    saved = BUDGET.leftover
    BUDGET.leftover = type(saved)()
    try:
        yield now
    finally:
        BUDGET.clock, BUDGET.deadline, BUDGET.leftover = type(BUDGET)().clock, math.inf, saved


def packet(seq: int) -> bytes:
    return RtpPacket(96, seq, 3000 * seq, 0x1234, payload=b"x" * 20).serialize()


def fanout(n: int, log: list[tuple[int, int]], clock: list[float]) -> tuple[Fanout, list[Member]]:
    fan = Fanout()
    members = [Member(i, log, clock) for i in range(n)]
    for m in members:
        fan.add(m)  # type: ignore[arg-type]
    assert len(fan.groups) == 1
    return fan, members


def test_outside_a_readers_pass_a_fan_out_is_never_cut(clock: list[float]) -> None:
    log: list[tuple[int, int]] = []
    fan, _ = fanout(3 * FANOUT_CHUNK, log, clock)
    fan.forward(packet(1), 0.0)  # deadline inf: as a timer or the relay's callback forwards
    assert len(log) == 3 * FANOUT_CHUNK and not BUDGET.leftover


def test_a_cut_fan_out_finishes_in_order_and_skips_who_left(clock: list[float]) -> None:
    log: list[tuple[int, int]] = []
    n = 3 * FANOUT_CHUNK + 5
    fan, members = fanout(n, log, clock)
    BUDGET.deadline = 0.01 * FANOUT_CHUNK - 0.001  # past it after the first chunk
    fan.forward(packet(1), 0.0)
    assert [name for name, _ in log] == list(range(FANOUT_CHUNK))
    assert len(BUDGET.leftover) == 1
    # between the passes: one member leaves, one joins (it starts at the next packet)
    gone = members[FANOUT_CHUNK + 3]
    fan.remove(gone)  # type: ignore[arg-type]
    late = Member(999, log, clock)
    fan.add(late)  # type: ignore[arg-type]
    while BUDGET.leftover:  # the reader's next passes, a chunk each
        BUDGET.deadline = clock[0] + 0.01 * FANOUT_CHUNK - 0.001
        BUDGET.leftover.popleft()(1.0)
    BUDGET.deadline = math.inf
    fan.forward(packet(2), 2.0)
    first = [name for name, seq in log if seq == log[0][1]]
    assert first == [i for i in range(n) if i != gone.name]
    second = [name for name, seq in log[len(first) :]]
    assert second == [i for i in range(n) if i != gone.name] + [999]
    # every delivery of the first packet went out before any of the second
    seqs = [seq for _, seq in log]
    assert seqs == sorted(seqs)
