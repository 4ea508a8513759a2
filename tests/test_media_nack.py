"""NackGenerator under loss, reordering, duplicates, repairs, wrap and huge gaps."""

from __future__ import annotations

import random

import pytest

from trio_sfu.sfu.feedback import NackGenerator

RTT = 0.05


def feed(gen: NackGenerator, seqs: list[int], now: float = 0.0) -> None:
    for s in seqs:
        gen.on_packet(s & 0xFFFF, now)


def test_no_loss_no_nack() -> None:
    gen = NackGenerator()
    feed(gen, list(range(65500, 65500 + 100)))  # across the wrap
    assert gen.get_timer() is None
    assert gen.due(1.0, RTT) == [] and gen.missing == 0


def test_gap_nacked_at_once_then_retried_after_rtt() -> None:
    gen = NackGenerator()
    feed(gen, [10, 11, 14, 15], now=1.0)
    assert gen.missing == 2
    assert gen.get_timer() == 1.0
    assert gen.due(1.0, RTT) == [12, 13]
    assert gen.get_timer() == pytest.approx(1.05)
    assert gen.due(1.04, RTT) == []  # not again before one RTT
    assert gen.due(1.05, RTT) == [12, 13]
    gen.on_packet(13, 1.06)  # the repair (or a late original) arrives
    assert gen.recovered == 1
    assert gen.due(1.10, RTT) == [12]
    assert gen.requested == 5


def test_retry_interval_has_a_20ms_floor() -> None:
    gen = NackGenerator()
    feed(gen, [1, 3], now=0.0)
    assert gen.due(0.0, 0.001) == [2]
    assert gen.due(0.019, 0.001) == []
    assert gen.due(0.020, 0.001) == [2]


def test_gap_across_the_wrap() -> None:
    gen = NackGenerator()
    feed(gen, [65533, 65534, 2, 3])
    assert gen.due(0.0, RTT) == [65535, 0, 1]


def test_reordered_and_duplicate_packets() -> None:
    gen = NackGenerator()
    feed(gen, [100, 102, 101, 102, 101, 100, 103])
    assert gen.missing == 0 and gen.recovered == 1
    assert gen.due(0.0, RTT) == []
    assert gen.get_timer() is None


def test_max_retries() -> None:
    gen = NackGenerator(max_retries=3, max_age=10.0)
    feed(gen, [0, 2])
    sent = [gen.due(t * 0.1, RTT) for t in range(6)]
    assert sent == [[1], [1], [1], [], [], []]
    assert gen.missing == 0 and gen.abandoned == 1 and gen.get_timer() is None


def test_max_age() -> None:
    gen = NackGenerator(max_age=0.5)
    feed(gen, [0, 2], now=0.0)
    feed(gen, [3, 5], now=0.3)
    assert gen.due(0.3, RTT) == [1, 4]
    assert gen.due(0.5, RTT) == [4]  # 1 is 0.5 s old: forgotten
    assert gen.due(0.8, RTT) == []
    assert gen.missing == 0 and gen.abandoned == 2


def test_huge_gap_is_a_reset_not_a_thousand_nacks() -> None:
    gen = NackGenerator(max_gap=1000)
    feed(gen, [1, 3])
    assert gen.on_packet(3 + 1002, 0.0) is True  # 1001 lost at once: ask for a keyframe
    assert gen.missing == 0 and gen.resets == 1
    assert gen.due(0.0, RTT) == []
    # Exactly max_gap lost is still repaired.
    assert gen.on_packet(1005 + 1001, 0.0) is False
    assert gen.missing == 1000
    assert len(gen.due(0.0, RTT)) == 1000


def test_memory_bounded_by_max_gap_under_sustained_loss() -> None:
    gen = NackGenerator(max_gap=100, max_age=100.0, max_retries=1000)
    seq = 0
    for _ in range(500):
        seq += 3  # two of every three lost, never repaired
        gen.on_packet(seq & 0xFFFF, 0.0)
        assert gen.missing <= 100
    nacked = gen.due(0.0, RTT)
    assert len(nacked) <= 100
    # Only numbers within max_gap of the newest are asked for.
    assert all(0 < (seq - s) & 0xFFFF <= 100 for s in nacked)


def test_far_behind_packets_then_restart() -> None:
    gen = NackGenerator()
    feed(gen, [40000, 40002])
    assert gen.on_packet(20000, 0.0) is False  # a stray from 20002 behind: ignored
    assert gen.missing == 1
    gen.on_packet(20001, 0.0)  # the next in sequence: the sender restarted its numbering
    assert gen.resets == 1 and gen.missing == 0
    feed(gen, [20002, 20004])
    assert gen.due(0.0, RTT) == [20003]


def test_random_loss_and_reorder_converges() -> None:
    rng = random.Random(7)
    gen = NackGenerator()
    order = list(range(65000, 65000 + 2000))
    # Swap neighbours now and then (reordering), drop 5% (loss), duplicate 1%.
    for i in range(0, len(order) - 1, 7):
        order[i], order[i + 1] = order[i + 1], order[i]
    delivered = [s for s in order if rng.random() > 0.05]
    delivered += rng.sample(delivered, 20)
    # A loss at the very end cannot be seen before a later packet arrives.
    lost = {s for s in set(order) - set(delivered) if s < max(delivered)}
    now = 0.0
    asked: set[int] = set()
    for s in delivered:
        gen.on_packet(s & 0xFFFF, now)
        now += 0.0005
        timer = gen.get_timer()
        if timer is not None and timer <= now:
            asked.update(gen.due(now, RTT))
    asked.update(gen.due(now, RTT))
    # Every real loss was asked for (reordered packets may be asked for too: spurious NACKs
    # are allowed, missed ones are not).
    assert {s & 0xFFFF for s in lost} <= asked
    # Repair everything: nothing is left to ask for.
    for s in lost:
        gen.on_packet(s & 0xFFFF, now)
    assert gen.missing == 0
    assert gen.due(now + 1, RTT) == []


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        NackGenerator(max_gap=0)
    with pytest.raises(ValueError):
        NackGenerator(max_gap=0x8000)
    with pytest.raises(ValueError):
        NackGenerator(max_retries=0)
