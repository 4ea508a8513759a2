"""PacketCache: O(1) ring keyed by extended sequence numbers, wrap and staleness."""

from __future__ import annotations

import pytest

from trio_sfu.proto.rtp import RtpPacket
from trio_sfu.sfu.feedback import PacketCache


def pkt(seq: int, tag: int = 0) -> bytes:
    return RtpPacket(96, seq & 0xFFFF, 0, 0x1234, payload=bytes([tag & 0xFF]) * 4).serialize()


def test_put_get_and_misses() -> None:
    cache = PacketCache(capacity=8)
    assert cache.get(0) is None
    for s in range(100, 106):
        cache.put(pkt(s))
    assert all(cache.get(s) == pkt(s) for s in range(100, 106))
    assert cache.get(99) is None and cache.get(106) is None
    cache.put(b"short")  # ignored, no seq to file it under
    assert cache.get(100) == pkt(100)


def test_wraparound_at_65535() -> None:
    cache = PacketCache(capacity=16)
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]  # 65530..65535, 0..5
    for s in seqs:
        cache.put(pkt(s))
    assert [cache.get(s) == pkt(s) for s in seqs] == [True] * 12
    assert cache.get(6) is None and cache.get(65529) is None


def test_ring_evicts_the_oldest() -> None:
    cache = PacketCache(capacity=8)
    for s in range(20):
        cache.put(pkt(s))
    assert [s for s in range(20) if cache.get(s) is not None] == list(range(12, 20))


def test_entry_65536_packets_old_is_never_returned() -> None:
    cache = PacketCache(capacity=1024)
    cache.put(pkt(500, tag=1))
    # A full cycle later (65535 more packets) the 16-bit number 500 is about to come round:
    # asking for it now means the next packet, not the one stored a cycle ago.
    for i in range(1, 65536):
        cache.put(pkt(500 + i))
    assert cache.get(500) is None
    cache.put(pkt(500, tag=2))
    assert cache.get(500) == pkt(500, tag=2)


def test_stale_slot_with_same_low_bits_is_a_miss() -> None:
    # Heavy loss: after seq 5 only every 1000th packet arrives, so slot 5 is never reused.
    # A full cycle later the 16-bit number 5 names extended 65541, which never arrived: the
    # packet still sitting in slot 5 is 65536 packets old and must not be returned.
    cache = PacketCache(capacity=1024)
    cache.put(pkt(5, tag=1))
    for ext in range(1000, 66001, 1000):  # forward jumps of 1000 < 32768, never ≡ 5 mod 1024
        cache.put(pkt(ext))
    assert cache.get(5) is None
    assert cache.get(66000 & 0xFFFF) == pkt(66000)


def test_reordered_late_packet_is_stored_but_too_old_is_not() -> None:
    cache = PacketCache(capacity=8)
    for s in (10, 11, 13, 14):
        cache.put(pkt(s))
    cache.put(pkt(12))  # late but within the ring
    assert cache.get(12) == pkt(12)
    for s in range(15, 30):
        cache.put(pkt(s))
    cache.put(pkt(15, tag=9))  # 14 behind the newest: would evict a newer packet
    assert cache.get(15) is None
    assert cache.get(23) == pkt(23)  # slot 15 % 8 = 7 still holds 23


def test_sequence_restart_is_followed() -> None:
    cache = PacketCache(capacity=8)
    for s in range(40000, 40010):
        cache.put(pkt(s))
    cache.put(pkt(10000))  # 30009 behind: could be a stray, not stored
    assert cache.get(10000) is None
    assert cache.get(40009) == pkt(40009)
    cache.put(pkt(10001))  # the next in sequence: the sender restarted
    assert cache.get(10001) == pkt(10001)
    assert cache.get(40009) is None
    for s in range(10002, 10010):
        cache.put(pkt(s))
    assert cache.get(10009) == pkt(10009)


def test_capacity_bounds() -> None:
    with pytest.raises(ValueError):
        PacketCache(capacity=0)
    with pytest.raises(ValueError):
        PacketCache(capacity=0x8001)
    cache = PacketCache(capacity=3)  # any size, not only powers of two
    for s in range(65534, 65534 + 6):
        cache.put(pkt(s))
    assert [cache.get(s & 0xFFFF) is not None for s in range(65534, 65540)] == [
        False, False, False, True, True, True,
    ]
    cache.clear()
    assert cache.get(65539 & 0xFFFF) is None
