"""The outbound half on its own: fragmentation, SACK handling, fast retransmit, T3, PR-SCTP."""

from __future__ import annotations

import pytest

from trio_sfu.proto.sctp.chunks import DataChunk, SackChunk, parse_packet, serialize_packet
from trio_sfu.proto.sctp.packer import PacketBuilder
from trio_sfu.proto.sctp.sender import Sender

TSN0 = 0xFFFFFFFE


def tx(**kw: object) -> Sender:
    args: dict[str, object] = {"initial_tsn": TSN0, "peer_rwnd": 1 << 20, "mtu": 1200,
                  "partial_reliability": True, "rto_initial": 1.0, "rto_min": 1.0,
                  "rto_max": 60.0}
    args.update(kw)
    return Sender(**args)  # type: ignore[arg-type]


def flush(s: Sender, now: float = 0.0) -> list[list[DataChunk]]:
    pb = PacketBuilder(1200)
    s.fill(pb, now)
    out = []
    for chunk_list in pb.finish():
        pkt = serialize_packet(1, 2, 3, chunk_list)
        assert len(pkt) <= 1200
        out.append([c for c in parse_packet(pkt).chunks if isinstance(c, DataChunk)])
    return out


def sack(
    s: Sender, cum_off: int, gaps: list[tuple[int, int]] | None = None, now: float = 0.1
) -> bool:
    return s.on_sack(SackChunk((TSN0 + cum_off) & 0xFFFFFFFF, 1 << 20, gaps or []), now)


def test_fragmentation_fills_packets_and_sets_flags() -> None:
    s = tx()
    s.cwnd = 1 << 20
    s.enqueue(3, 53, bytes(range(256)) * 10, unordered=False, max_retransmits=None,
              lifetime=None, now=0.0)
    s.enqueue(3, 51, b"small", unordered=True, max_retransmits=None, lifetime=None, now=0.0)
    packets = flush(s)
    chunks = [c for p in packets for c in p]
    assert [len(c.payload) for c in chunks] == [1172, 1172, 216, 5]
    assert [c.flags for c in chunks] == [0b0010, 0b0000, 0b0001, 0b0111]
    assert [c.tsn for c in chunks] == [TSN0, TSN0 + 1, 0, 1]  # wraps at 2**32
    assert [c.ssn for c in chunks] == [0, 0, 0, 0]
    assert b"".join(c.payload for c in chunks[:3]) == bytes(range(256)) * 10
    assert len(packets) == 3  # the small one shares the last packet
    assert s.buffered_amount(3) == 0 and s.outstanding_bytes == 2565


def test_cwnd_limits_the_first_flight() -> None:
    s = tx()
    for _ in range(10):
        s.enqueue(1, 53, bytes(1172), unordered=False, max_retransmits=None, lifetime=None,
                  now=0.0)
    assert sum(len(p) for p in flush(s)) == 4  # 4380 bytes of cwnd: 3 chunks fit, 4th starts
    assert s.flight == 4 * 1172 and s.t3 == 1.0


def test_three_miss_indications_trigger_one_fast_retransmit() -> None:
    s = tx()
    s.cwnd = 1 << 20
    for _ in range(8):
        s.enqueue(1, 53, bytes(1000), unordered=False, max_retransmits=None, lifetime=None,
                  now=0.0)
    flush(s)
    cwnd = s.cwnd
    # TSN0 lost; SACKs keep reporting later TSNs (HTNA: only newly acked ones count)
    sack(s, -1, [(2, 2)])
    sack(s, -1, [(2, 3)])
    assert s.fast_retransmits == 0
    sack(s, -1, [(2, 3)])  # nothing newly acked: no new miss indication
    assert s.fast_retransmits == 0
    sack(s, -1, [(2, 4)])
    assert s.fast_retransmits == 1
    assert s.ssthresh == max(cwnd // 2, 4800) and s.cwnd == s.ssthresh
    assert s.fast_recovery_exit == TSN0 + 7
    s.cwnd = 0  # the first fast-retransmit packet ignores cwnd (§7.2.4)
    [[again]] = flush(s, now=0.2)
    assert again.tsn == TSN0 and s.retransmissions == 1
    for _ in range(5):
        sack(s, -1, [(2, 6)])
    assert s.fast_retransmits == 1  # never fast retransmitted twice
    assert sack(s, 7, now=0.3) and s.outstanding_bytes == 0 and s.t3 is None
    assert s.fast_recovery_exit is None


def test_t3_expiry_marks_everything_and_backs_off() -> None:
    s = tx()
    for _ in range(3):
        s.enqueue(1, 53, bytes(1000), unordered=False, max_retransmits=None, lifetime=None,
                  now=0.0)
    flush(s)
    s.on_t3_expired(1.0)
    assert s.rto == 2.0 and s.cwnd == 1200 and s.flight == 0 and s.t3 == 3.0
    chunks = [c for p in flush(s, now=1.0) for c in p]
    # cwnd is one MTU: two 1000-byte chunks go (the second starts below cwnd)
    assert [c.tsn for c in chunks] == [TSN0, TSN0 + 1]
    assert s.retransmissions == 2
    assert not sack(s, -1, now=1.5)  # acknowledges nothing new
    assert sack(s, 0, now=1.5)
    assert s.rto == 2.0 and s.srtt is None  # Karn: retransmitted chunks give no RTT sample
    assert sack(s, 2, now=1.5)  # the third was never retransmitted: it is a valid sample
    assert s.srtt == 1.5


def test_rtt_sample_sets_rto() -> None:
    s = tx(rto_min=0.1)
    s.enqueue(1, 53, b"x", unordered=False, max_retransmits=None, lifetime=None, now=10.0)
    flush(s, now=10.0)
    sack(s, 0, now=10.2)
    assert s.srtt == pytest.approx(0.2) and s.rttvar == pytest.approx(0.1)
    assert s.rto == pytest.approx(0.6)


def test_max_retransmits_zero_abandons_and_builds_forward_tsn() -> None:
    s = tx()
    s.cwnd = 1 << 20
    s.enqueue(5, 53, bytes(3000), unordered=False, max_retransmits=0, lifetime=None, now=0.0)
    s.enqueue(5, 53, b"reliable", unordered=False, max_retransmits=None, lifetime=None, now=0.0)
    s.enqueue(6, 53, bytes(10), unordered=True, max_retransmits=0, lifetime=None, now=0.0)
    flush(s)
    s.on_t3_expired(1.0)  # everything presumed lost
    assert s.messages_abandoned == 2  # the PR ones; the reliable one will be retransmitted
    fwd = s.build_forward_tsn(1.0)
    # round robin sent: 3 fragments of stream 5, the unordered one of stream 6, "reliable"
    assert fwd is not None and fwd.new_cumulative_tsn == (TSN0 + 3) & 0xFFFFFFFF
    assert fwd.streams == [(5, 0)]  # unordered messages are not listed (RFC 3758 §3.2)
    [[again]] = flush(s, 1.0)
    assert again.payload == b"reliable" and again.ssn == 1


def test_lifetime_expiry_in_queue_costs_no_tsn() -> None:
    s = tx()
    s.cwnd = 0
    s.enqueue(1, 53, b"stale", unordered=False, max_retransmits=None, lifetime=0.5, now=0.0)
    s.enqueue(1, 53, b"fresh", unordered=False, max_retransmits=None, lifetime=None, now=0.0)
    s.cwnd = 1 << 20
    [[c]] = flush(s, now=1.0)
    assert c.payload == b"fresh" and c.tsn == TSN0 and c.ssn == 0
    assert s.messages_abandoned == 1 and s.build_forward_tsn(1.0) is None


def test_zero_window_allows_a_single_probe() -> None:
    s = tx(peer_rwnd=0)
    for _ in range(3):
        s.enqueue(1, 53, bytes(100), unordered=False, max_retransmits=None, lifetime=None,
                  now=0.0)
    assert sum(len(p) for p in flush(s)) == 1
    assert flush(s) == []


def test_round_robin_between_streams_at_message_boundaries() -> None:
    s = tx()
    s.cwnd = 1 << 20
    for sid in (1, 2):
        for i in range(3):
            s.enqueue(sid, 53, bytes([sid, i]), unordered=False, max_retransmits=None,
                      lifetime=None, now=0.0)
    order = [(c.stream_id, c.payload[1]) for p in flush(s) for c in p]
    assert order == [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (2, 2)]


def test_congestion_avoidance_adds_one_mtu_per_cwnd_of_acked_data() -> None:
    s = tx()
    s.cwnd, s.ssthresh = 12000, 6000  # above ssthresh: congestion avoidance (§7.2.2)
    for _ in range(60):
        s.enqueue(1, 53, bytes(1000), unordered=False, max_retransmits=None, lifetime=None,
                  now=0.0)
    flush(s)
    assert s.flight >= s.cwnd
    acked = -1
    grown_at: list[int] = []
    for step in range(1, 7):
        acked += 4  # 4000 bytes per SACK, the window kept full in between
        sack(s, acked, now=0.1 * step)
        flush(s, now=0.1 * step)
        if s.cwnd != 12000 and not grown_at:
            grown_at.append(step)
    # 12000 bytes acknowledged (3 SACKs) before the first MTU is added, not one per SACK
    assert grown_at == [3]
    # then 12000 more: not yet the new cwnd of 13200
    assert s.cwnd == 12000 + 1200 and s.partial_bytes_acked == 12000


def test_forward_tsn_always_fits_in_one_packet() -> None:
    s = tx()
    s.cwnd = 1 << 30
    for sid in range(400):  # 400 ordered streams each lose one message
        s.enqueue(sid, 53, b"x", unordered=False, max_retransmits=0, lifetime=None, now=0.0)
    flush(s)
    s.on_t3_expired(1.0)
    fwd = s.build_forward_tsn(1.0)
    assert fwd is not None and len(fwd.encode()) <= 1200 - 12
    assert len(fwd.streams) == (1200 - 12 - 8) // 4
    assert fwd.new_cumulative_tsn == (TSN0 + len(fwd.streams) - 1) & 0xFFFFFFFF
    # the peer acknowledges that far; the next FORWARD TSN covers the rest
    assert s.on_sack(SackChunk(fwd.new_cumulative_tsn, 1 << 20), 1.1) is False
    rest = s.build_forward_tsn(1.2)
    assert rest is not None and rest.new_cumulative_tsn == (TSN0 + 399) & 0xFFFFFFFF
    assert len(rest.streams) == 400 - len(fwd.streams)
