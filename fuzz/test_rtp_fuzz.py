"""RTP parser, hot-path readers, rewriter and codec detectors against hostile input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto import codecs
from trio_sfu.proto.codecs import av1, h264, vp8, vp9
from trio_sfu.proto.errors import RtpError
from trio_sfu.proto.rtp import (
    RtpPacket,
    RtpRewriter,
    TransportCcSequencer,
    find_extension,
    is_rtcp,
    parse_rtp,
    payload_offset,
    read_header,
    rtp_marker,
    rtp_payload_type,
    rtp_sequence,
    rtp_ssrc,
    rtp_timestamp,
)

one_byte_exts = st.dictionaries(
    st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=6
)
two_byte_exts = st.dictionaries(st.integers(1, 255), st.binary(max_size=40), max_size=6)


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    return RtpPacket(
        payload_type=draw(st.sampled_from([96, 97, 111, 0, 127])),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        marker=draw(st.booleans()),
        csrcs=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3)),
        extensions=draw(st.one_of(one_byte_exts, two_byte_exts)),
        payload=draw(st.binary(max_size=64)),
        padding=draw(st.sampled_from([0, 0, 1, 4, 17])),
    )


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid packet with a few bytes overwritten, and maybe cut or extended."""
    data = bytearray(draw(rtp_packets()).serialize())
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=4))


any_packet = st.one_of(st.binary(max_size=120), mutated(), rtp_packets().map(RtpPacket.serialize))


def check_readers(data: bytes) -> None:
    """The hot-path readers never raise and agree with the full parser when it accepts."""
    header = read_header(data)
    offset = payload_offset(data)
    values = [find_extension(data, i) for i in (0, 1, 2, 3, 14, 15, 200)]
    singles = (rtp_ssrc(data), rtp_sequence(data), rtp_timestamp(data), rtp_payload_type(data))
    marker = rtp_marker(data)
    is_rtcp(data)
    try:
        p = parse_rtp(data)
    except RtpError:
        return
    assert header == (int(p.marker), p.payload_type, p.sequence_number, p.timestamp, p.ssrc)
    assert singles == (p.ssrc, p.sequence_number, p.timestamp, p.payload_type)
    assert marker == p.marker
    assert data[offset : len(data) - p.padding] == p.payload
    for value in values:
        assert value is None or isinstance(value, bytes)


@given(any_packet)
def test_parse_raises_only_rtp_error_and_round_trips(data: bytes) -> None:
    try:
        p = parse_rtp(data)
    except RtpError:
        return
    assert parse_rtp(p.serialize()) == p


@given(any_packet)
def test_readers_never_raise(data: bytes) -> None:
    check_readers(data)


@given(rtp_packets())
def test_generated_packets_round_trip_and_find_extensions(p: RtpPacket) -> None:
    raw = p.serialize()
    back = parse_rtp(raw)
    assert back.extensions == p.extensions
    assert (back.payload, back.padding, back.csrcs) == (p.payload, p.padding, p.csrcs)
    for ext_id, value in p.extensions.items():
        assert find_extension(raw, ext_id) == value
    check_readers(raw)


EXT_MAPS = [({1: 1, 2: 9, 7: 4}, 3), ({1: 1, 2: 20, 7: 4}, 3), ({5: 5}, None), ({}, None)]


@given(st.lists(any_packet, max_size=12))
def test_rewriter_never_raises_and_output_is_consistent(packets: list[bytes]) -> None:
    for ext_map, twcc_id in EXT_MAPS:
        twcc = TransportCcSequencer(twcc_id) if twcc_id else None
        rw = RtpRewriter(
            0xCAFE, {96: 100, 97: 97, 0: 8}, ext_map, twcc=twcc,
            initial_sequence=0, initial_timestamp=0,
        )
        for data in packets:
            before = twcc.next_seq if twcc else 0
            out = rw.rewrite(data)
            if out is None:
                continue
            try:
                src = parse_rtp(data)
            except RtpError:
                continue  # e.g. bad padding: forwarded untouched, not our concern here
            dst = parse_rtp(out)
            assert (dst.payload, dst.padding, dst.csrcs) == (src.payload, src.padding, src.csrcs)
            assert dst.marker == src.marker and dst.ssrc == 0xCAFE
            assert dst.payload_type == {96: 100, 97: 97, 0: 8}[src.payload_type]
            expected = {ext_map[i]: v for i, v in src.extensions.items() if i in ext_map}
            if twcc is not None and twcc_id is not None:
                expected[twcc_id] = before.to_bytes(2, "big")
            assert dst.extensions == expected


@given(st.lists(rtp_packets(), min_size=1, max_size=10), st.integers(0, 0xFFFF))
def test_rewriter_forwards_every_fresh_packet(packets: list[RtpPacket], start: int) -> None:
    rw = RtpRewriter(7, {pt: pt for pt in (96, 97, 111, 0, 127)}, {1: 1, 14: 14})
    for i, p in enumerate(packets):
        p.ssrc = 1234
        p.sequence_number = (start + i) & 0xFFFF
        out = rw.rewrite(p.serialize())
        assert out is not None
        q = parse_rtp(out)
        assert q.payload == p.payload
        assert q.extensions == {k: v for k, v in p.extensions.items() if k in (1, 14)}


@given(st.binary(max_size=80))
def test_codec_detectors_never_raise(payload: bytes) -> None:
    for name in ("VP8", "VP9", "H264", "AV1", "opus"):
        assert isinstance(codecs.is_keyframe(name, payload), bool)
    vp8.parse_descriptor(payload)
    vp9.parse_descriptor(payload)
    h264.nal_types(payload)
    av1.parse_payload(payload)
    buf = bytearray(payload)
    if vp8.rewrite_descriptor(buf, picture_id=0x7FFF, tl0_pic_idx=255):
        d = vp8.parse_descriptor(bytes(buf))
        assert d is not None and d.tl0_pic_idx == 255
        assert d.picture_id == (0x7FFF if d.picture_id_15bit else 0x7F)
