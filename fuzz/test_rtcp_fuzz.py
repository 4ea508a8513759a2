"""RTCP parser, feedback encoders and the TWCC recorder against hostile and random input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.errors import RtcpError
from trio_sfu.proto.rtcp import (
    Bye,
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    UnknownRtcp,
    parse_rtcp,
    serialize_compound,
)
from trio_sfu.proto.twcc import TwccRecorder

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)

blocks = st.builds(
    ReportBlock, u32, st.integers(0, 255), st.integers(-(1 << 23), (1 << 23) - 1),
    u32, u32, u32, u32,
)
words = st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))


@st.composite
def twcc_feedback(draw: st.DrawFn) -> TransportCcFeedback:
    base = draw(u16)
    statuses = draw(
        st.lists(
            st.one_of(
                st.none(),
                st.integers(0, 255).map(lambda t: t * 250),
                st.integers(-0x8000, 0x7FFF).map(lambda t: t * 250),
            ),
            min_size=1,
            max_size=60,
        )
    )
    if draw(st.booleans()):  # long runs exercise run-length chunks
        statuses += [None] * draw(st.integers(0, 9000)) + [250]
    packets = [((base + i) & 0xFFFF, d is not None, d) for i, d in enumerate(statuses)]
    return TransportCcFeedback(
        draw(u32), draw(u32), base, draw(st.integers(-(1 << 23), (1 << 23) - 1)),
        draw(st.integers(0, 255)), packets,
    )


packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    st.builds(SenderReport, u32, u32, u32, u32, u32, u32, st.lists(blocks, max_size=3), words),
    st.builds(ReceiverReport, u32, st.lists(blocks, max_size=3), words),
    st.builds(
        Sdes,
        st.lists(
            st.builds(
                SdesChunk, u32,
                st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=20)), max_size=3),
            ),
            max_size=3,
        ),
    ),
    st.builds(Bye, st.lists(u32, max_size=4), st.one_of(st.none(), st.binary(max_size=30))),
    st.builds(Pli, u32, u32),
    st.builds(Fir, u32, st.lists(st.builds(FirEntry, u32, st.integers(0, 255)), max_size=3), u32),
    st.builds(Nack, u32, u32, st.lists(st.tuples(u16, u16), max_size=5)),
    st.builds(
        Remb, u32,
        st.builds(lambda m, e: m << e, st.integers(0, (1 << 18) - 1), st.integers(0, 63)),
        st.lists(u32, max_size=4),
    ),
    twcc_feedback(),
    st.builds(
        UnknownRtcp, st.sampled_from([204, 207, 208, 195]), st.integers(0, 31),
        st.binary(max_size=24),
    ),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(serialize_compound(draw(st.lists(packets, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=4))


def check(data: bytes) -> None:
    try:
        parsed = parse_rtcp(data)
    except RtcpError:
        return
    assert parse_rtcp(serialize_compound(parsed)) == parsed


@given(st.binary(max_size=160))
def test_random_bytes_raise_only_rtcp_error(data: bytes) -> None:
    check(data)


@given(mutated())
def test_mutated_compounds_raise_only_rtcp_error(data: bytes) -> None:
    check(data)


@given(st.lists(packets, min_size=1, max_size=5))
def test_every_type_round_trips(items: list[RtcpPacket]) -> None:
    raw = serialize_compound(items)
    assert len(raw) % 4 == 0
    assert parse_rtcp(raw) == items


@given(st.lists(u16, max_size=40), u16)
def test_nack_lost_list_both_ways(offsets: list[int], start: int) -> None:
    lost = [(start + o % 3000) & 0xFFFF for o in offsets]
    nack = Nack.from_lost(1, 2, lost)
    assert sorted(nack.lost) == sorted(set(lost))
    (back,) = parse_rtcp(nack.serialize())
    assert isinstance(back, Nack) and back.lost == nack.lost


@given(st.integers(0, 1 << 70))
def test_remb_keeps_18_significant_bits(bitrate: int) -> None:
    (back,) = parse_rtcp(Remb(1, bitrate).serialize())
    assert isinstance(back, Remb)
    clamped = min(bitrate, ((1 << 18) - 1) << 63)
    assert back.bitrate <= clamped
    assert clamped - back.bitrate < max(1, clamped >> 17)


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[int, float]]:
    """Mostly increasing sequence numbers with gaps and light reordering; ms-scale timing."""
    seq = draw(u16)
    t = draw(st.floats(0, 1e6, allow_nan=False))
    out = []
    for _ in range(draw(st.integers(1, 300))):
        seq += draw(st.sampled_from([1, 1, 1, 2, 5, -1, -2]))
        t += draw(st.sampled_from([0.0, 0.0001, 0.001, 0.02, 0.3, 9.0]))
        out.append((seq & 0xFFFF, t))
    return out


@given(arrivals(), st.sampled_from([120, 400, 1200]), st.integers(1, 5))
def test_twcc_recorder_reports_every_arrival_exactly(
    events: list[tuple[int, float]], max_size: int, builds: int
) -> None:
    rec = TwccRecorder(max_size=max_size)
    first: dict[int, int] = {}
    reported: dict[int, int] = {}
    counts = []
    chunk = max(1, len(events) // builds)
    for i in range(0, len(events), chunk):
        for seq, t in events[i : i + chunk]:
            rec.record(seq, t)
            first.setdefault(seq, round(t * 4000) * 250)
        now = events[min(i + chunk, len(events)) - 1][1] + 0.05
        for fb in rec.build_feedback(now, 1, 2):
            raw = fb.serialize()
            assert len(raw) <= max_size
            (back,) = parse_rtcp(raw)
            assert back == fb
            counts.append(fb.fb_pkt_count)
            for seq, when in fb.arrival_times_us():
                if when is not None:
                    reported[seq] = when
    assert counts == [i & 0xFF for i in range(len(counts))]
    # The 24-bit reference time wraps every 2**24 * 64 ms; senders unwrap it, so compare
    # arrival times modulo that period.
    period = (1 << 24) * 64000
    assert {s: w % period for s, w in reported.items()} == {s: w % period for s, w in first.items()}
