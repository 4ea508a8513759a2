"""The media stages against arbitrary input: no exceptions, bounded state, exact invariants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.rtp import RtpPacket, RtpRewriter, TransportCcSequencer, parse_rtp
from trio_sfu.sfu.feedback import (
    NackGenerator,
    PacketCache,
    ReceiveStatistics,
    SendStatistics,
    rtx_unwrap,
    rtx_wrap,
)

SSRC = 0x5EED

one_byte_exts = st.dictionaries(
    st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=5
)
two_byte_exts = st.dictionaries(st.integers(1, 255), st.binary(max_size=20), max_size=5)


@st.composite
def packets(draw: st.DrawFn, seq: int | None = None) -> RtpPacket:
    return RtpPacket(
        payload_type=draw(st.sampled_from([96, 97, 111])),
        sequence_number=draw(st.integers(0, 0xFFFF)) if seq is None else seq & 0xFFFF,
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=SSRC,
        marker=draw(st.booleans()),
        csrcs=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=2)),
        extensions=draw(st.one_of(one_byte_exts, two_byte_exts)),
        payload=draw(st.binary(max_size=40)),
        padding=draw(st.sampled_from([0, 0, 1, 4])),
    )


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Packets of one SSRC around a random start, reordered, with gaps and duplicates."""
    start = draw(st.integers(0, 0xFFFF))
    offsets = draw(st.lists(st.integers(0, 60), min_size=1, max_size=25))
    return [draw(packets(seq=start + off)).serialize() for off in offsets]


ext_maps = st.dictionaries(st.integers(1, 255), st.integers(1, 255), max_size=4)


@given(streams(), ext_maps, st.booleans())
def test_rewrite_as_reproduces_rewrite(stream: list[bytes], ext_map: dict[int, int],
                                       with_twcc: bool) -> None:
    twcc = TransportCcSequencer(ext_id=200) if with_twcc else None
    rw = RtpRewriter(0xABCD, {96: 100, 97: 101}, ext_map, twcc=twcc, initial_sequence=65500)
    produced: list[tuple[bytes, bytes]] = []
    for raw in stream:
        out = rw.rewrite(raw)
        if out is not None:
            produced.append((raw, out))
    for raw, out in produced:
        out_seq = parse_rtp(out).sequence_number
        assert rw.to_input_sequence(out_seq) == parse_rtp(raw).sequence_number
        again = rw.rewrite_as(raw, out_seq)
        assert again is not None
        if twcc is None:
            assert again == out
        else:
            first, second = parse_rtp(out), parse_rtp(again)
            first.extensions.pop(200)
            second.extensions.pop(200)
            assert first == second


@given(packets(), st.integers(0, 0xFFFFFFFF), st.integers(0, 127), st.integers(0, 0xFFFF))
def test_rtx_round_trip(packet: RtpPacket, rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> None:
    raw = packet.serialize()
    rtx = rtx_wrap(raw, rtx_ssrc, rtx_pt, rtx_seq)
    assert rtx is not None
    wrapped = parse_rtp(rtx)
    assert (wrapped.ssrc, wrapped.payload_type, wrapped.sequence_number) == (
        rtx_ssrc, rtx_pt, rtx_seq,
    )
    back = rtx_unwrap(rtx, SSRC, packet.payload_type)
    assert back is not None
    packet.padding = 0
    assert back == (packet.sequence_number, packet.serialize())


@given(st.binary(max_size=80))
def test_rtx_garbage_never_raises(data: bytes) -> None:
    wrapped = rtx_wrap(data, 1, 2, 3)
    if wrapped is not None:
        assert len(wrapped) == len(data) + 2 - (data[-1] if data[0] & 0x20 else 0)
    rtx_unwrap(data, 1, 2)


@given(st.lists(st.integers(0, 0xFFFF), max_size=300), st.integers(1, 64))
def test_cache_only_returns_the_packet_asked_for(seqs: list[int], capacity: int) -> None:
    cache = PacketCache(capacity)
    for s in seqs:
        cache.put(RtpPacket(96, s, 0, SSRC).serialize())
    for s in {*seqs, 0, 0xFFFF}:
        got = cache.get(s)
        assert got is None or parse_rtp(got).sequence_number == s


@st.composite
def arrivals(draw: st.DrawFn) -> list[int]:
    """Sequence numbers that mostly advance, with gaps, reordering, repeats and big jumps."""
    seq = draw(st.integers(0, 0xFFFF))
    out = []
    for step in draw(st.lists(st.integers(-40, 3000) | st.integers(-0x8000, 0xFFFF),
                              max_size=200)):
        seq = (seq + step) & 0xFFFF
        out.append(seq)
    return out


@given(arrivals(), st.integers(1, 200), st.integers(1, 5))
def test_nack_generator_stays_bounded(seqs: list[int], max_gap: int, retries: int) -> None:
    gen = NackGenerator(max_gap=max_gap, max_retries=retries, max_age=0.3)
    now = 0.0
    sent = 0
    for s in seqs:
        gen.on_packet(s, now)
        assert gen.missing <= max_gap
        timer = gen.get_timer()
        if timer is not None and timer <= now:
            nacked = gen.due(now, 0.01)
            assert len(nacked) <= max_gap and all(0 <= n <= 0xFFFF for n in nacked)
            sent += len(nacked)
        now += 0.005
    for _ in range(100):  # drains: every entry is retried at most `retries` times, then gone
        sent += len(gen.due(now, 0.01))
        now += 0.05
    assert gen.missing == 0 and gen.get_timer() is None
    assert sent == gen.requested


@given(arrivals(), st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=200))
def test_statistics_never_raise_and_serialize(seqs: list[int], stamps: list[int]) -> None:
    rx = ReceiveStatistics(90000)
    tx = SendStatistics(90000)
    for i, s in enumerate(seqs):
        ts = stamps[i % len(stamps)]
        rx.update(s, ts, i * 0.01)
        tx.update(ts, 100, i * 0.01)
    rx.on_sender_report(0x12345678, 0x9ABCDEF0, 0.5)
    block = rx.report_block(SSRC, 3.0)
    assert 0 <= block.fraction_lost <= 255
    block.serialize()
    sr = tx.sender_report(SSRC, 3.0, 1.7e9)
    if seqs:
        assert sr is not None
        sr.serialize()
        tx.on_receiver_report(block, 3.1, 1.7e9 + 0.1)
