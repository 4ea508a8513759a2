"""The inbound half on its own: TSN tracking, SACK blocks, reassembly, FORWARD TSN, resets."""

from __future__ import annotations

import pytest

from trio_sfu.proto.sctp.chunks import FLAG_BEGIN as B
from trio_sfu.proto.sctp.chunks import FLAG_END as E
from trio_sfu.proto.sctp.chunks import FLAG_UNORDERED as U
from trio_sfu.proto.sctp.chunks import DataChunk
from trio_sfu.proto.sctp.receiver import ProtocolViolation, Receiver

TSN0 = 0xFFFFFFF0  # start near the wrap to exercise serial arithmetic


def rx(**kw: int) -> Receiver:
    args = {"initial_tsn": TSN0, "max_message_size": 1000, "window": 1 << 20,
            "inbound_streams": 100}
    args.update(kw)
    return Receiver(**args)


def data(off: int, payload: bytes, flags: int = B | E, sid: int = 1, ssn: int = 0) -> DataChunk:
    return DataChunk((TSN0 + off) & 0xFFFFFFFF, sid, ssn, 53, payload, flags)


def take(r: Receiver) -> list[bytes]:
    out = [m[2] for m in r.messages]
    r.messages.clear()
    return out


def test_sack_gap_blocks_and_duplicates() -> None:
    r = rx()
    for off in (0, 1, 3, 4, 7, 9, 10, 11):
        assert r.on_data(data(off, b"x", ssn=off))
    assert not r.on_data(data(1, b"x", ssn=1))  # duplicate at or below the cumulative TSN
    assert not r.on_data(data(9, b"x", ssn=9))  # duplicate above it
    sack = r.build_sack(1200)
    assert sack.cumulative_tsn == (TSN0 + 1) & 0xFFFFFFFF
    assert sack.gaps == [(2, 3), (6, 6), (8, 10)]
    assert sack.duplicates == [(TSN0 + 1) & 0xFFFFFFFF, (TSN0 + 9) & 0xFFFFFFFF]
    assert r.build_sack(1200).duplicates == []  # reported once
    # a tight size limit trims gap blocks instead of exceeding the packet
    assert r.build_sack(16 + 4 * 2).gaps == [(2, 3), (6, 6)]


def test_out_of_order_fragments_reassemble_and_ordered_delivery_waits() -> None:
    r = rx()
    # message SSN 0 = fragments at 0,1,2 ; SSN 1 = single at 3 ; SSN 2 = fragments 4,5
    r.on_data(data(3, b"single", ssn=1))
    r.on_data(data(5, b"-tail", E, ssn=2))
    r.on_data(data(4, b"head", B, ssn=2))
    assert take(r) == []  # complete, but SSN 0 is missing
    r.on_data(data(2, b"C", E, ssn=0))
    r.on_data(data(0, b"A", B, ssn=0))
    assert take(r) == []
    r.on_data(data(1, b"B", 0, ssn=0))
    assert take(r) == [b"ABC", b"single", b"head-tail"]
    assert r.buffered == 0 and r.cum == TSN0 + 5 and not r.above


def test_unordered_is_delivered_as_soon_as_complete() -> None:
    r = rx()
    r.on_data(data(1, b"ordered", ssn=1))
    r.on_data(data(3, b"un", B | U, sid=2))
    assert take(r) == []
    r.on_data(data(4, b"ordered", E | U, sid=2))
    assert take(r) == [b"unordered"]
    r.on_data(data(0, b"first", ssn=0))
    assert take(r) == [b"first", b"ordered"]


def test_inconsistent_fragments_are_a_protocol_violation() -> None:
    r = rx()
    r.on_data(data(0, b"a", B, sid=1, ssn=0))
    with pytest.raises(ProtocolViolation):
        r.on_data(data(1, b"b", E, sid=2, ssn=0))


def test_growing_message_beyond_max_size_is_caught_early() -> None:
    r = rx()
    r.on_data(data(0, bytes(600), B))
    with pytest.raises(ProtocolViolation, match="max-message-size"):
        r.on_data(data(1, bytes(600), 0))  # no E yet: caught before it could grow further


def test_forward_tsn_drops_partials_and_releases_ordered_messages() -> None:
    r = rx()
    r.on_data(data(0, b"part", B, ssn=0))  # SSN 0 abandoned by the sender after this fragment
    r.on_data(data(3, b"next", ssn=1))  # SSN 1 complete, waiting behind SSN 0
    r.on_data(data(5, b"un", B | U, sid=2))  # a partial unordered message, also abandoned
    assert take(r) == [] and r.buffered == len(b"part") + len(b"next") + 2
    r.on_forward_tsn((TSN0 + 2) & 0xFFFFFFFF, [(1, 0)])
    assert take(r) == [b"next"]
    assert r.cum == TSN0 + 3
    r.on_forward_tsn((TSN0 + 6) & 0xFFFFFFFF, [])
    assert r.buffered == 0 and r.cum == TSN0 + 6
    r.on_data(data(7, b"later", ssn=2))
    assert take(r) == [b"later"]


def test_forward_tsn_delivers_completed_messages_before_the_skipped_ssn() -> None:
    r = rx()
    r.on_data(data(1, b"ssn1", ssn=1))
    r.on_data(data(3, b"ssn3", ssn=3))
    # SSN 0 and SSN 2 were abandoned; SSN 1 arrived complete and must not be lost
    r.on_forward_tsn((TSN0 + 3) & 0xFFFFFFFF, [(1, 2)])
    assert take(r) == [b"ssn1", b"ssn3"]


def test_orphaned_middle_fragments_are_dropped_when_the_cum_tsn_passes() -> None:
    r = rx()
    r.on_data(data(1, b"middle", 0))  # its B fragment (TSN 0) will never come
    r.on_forward_tsn(TSN0 & 0xFFFFFFFF, [])
    assert r.buffered == 0 and r.cum == TSN0 + 1


def test_window_full_drops_new_data_but_accepts_the_next_expected() -> None:
    r = rx(window=1000, max_message_size=5000)
    r.on_data(data(1, bytes(900), B, ssn=0))
    assert r.a_rwnd == 100
    assert not r.on_data(data(2, bytes(200), 0, ssn=0))  # would overflow: dropped
    assert r.dropped_chunks == 1
    assert r.on_data(data(0, bytes(200), ssn=1)) and take(r) == []  # cum+1 is always taken


def test_deferred_reset_holds_later_data_until_the_last_tsn() -> None:
    r = rx()
    r.on_data(data(0, b"before-0", ssn=0))
    assert take(r) == [b"before-0"]
    # the peer reset stream 1 after TSN 1 (not here yet); new SSN 0 at TSN 2 arrives first
    assert not r.reset_incoming((TSN0 + 1) & 0xFFFFFFFF, [1])
    r.on_data(data(2, b"after-0", ssn=0))
    assert take(r) == [] and r.resets_done == []
    r.on_data(data(1, b"before-1", ssn=1))
    assert take(r) == [b"before-1", b"after-0"]
    assert r.resets_done == [[1]]
    # a retransmitted request for the same reset is recognised, not applied twice
    assert r.reset_incoming((TSN0 + 1) & 0xFFFFFFFF, [1])
    r.on_data(data(3, b"after-1", ssn=1))
    assert take(r) == [b"after-1"]


def test_invalid_stream_is_acked_but_not_delivered() -> None:
    r = rx(inbound_streams=4)
    assert r.on_data(data(0, b"x", sid=4))
    assert r.invalid_streams == [4] and r.cum == TSN0 and take(r) == []


def test_empty_data_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation) as exc:
        rx().on_data(data(0, b""))
    assert exc.value.cause == 9
