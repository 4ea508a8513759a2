"""RTP packets, RFC 8285 extensions, hot-path readers and the forwarding rewriter."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from trio_sfu.proto.errors import RtpError
from trio_sfu.proto.rtp import (
    RtpPacket,
    RtpRewriter,
    SequenceUnwrapper,
    TransportCcSequencer,
    find_extension,
    is_rtcp,
    parse_rtp,
    payload_offset,
    payload_size,
    read_header,
    rtp_marker,
    rtp_payload_type,
    rtp_sequence,
    rtp_ssrc,
    rtp_timestamp,
    seq_delta,
)

# RFC 3550 §5.1 fixed header: V=2 P=0 X=0 CC=0 | M=1 PT=96 | seq 0x1234 | ts | SSRC, payload.
BASIC = bytes.fromhex("80e01234deadbeef01020304aabb")
# CC=2 with two CSRCs.
WITH_CSRCS = bytes.fromhex("8260000100000002000000031111111122222222ff")
# RFC 8285 §4.2 one-byte form: id 1 len 1 (0x10 42), id 2 len 2 (0x21 0102), 3 bytes padding.
ONE_BYTE = bytes.fromhex("9060000700000064000000c8" "bede0002" "104221010200" "0000" "cafe")
# RFC 8285 §4.3 two-byte form, appbits 5: id 20 len 3 "abc", id 1 len 0, 2 bytes padding.
TWO_BYTE = bytes.fromhex("9060000700000064000000c8" "10050002" "1403616263010000" "beef")
# RFC 3550 §5.1 padding: P=1, 4 padding octets, the last one counting them.
PADDED = bytes.fromhex("a00a00010000000200000003" "0102" "00000004")


def test_basic_header_parse_and_serialize() -> None:
    p = parse_rtp(BASIC)
    assert (p.marker, p.payload_type, p.sequence_number) == (True, 96, 0x1234)
    assert (p.timestamp, p.ssrc, p.payload) == (0xDEADBEEF, 0x01020304, b"\xaa\xbb")
    assert p.csrcs == [] and p.extensions == {} and p.padding == 0
    assert p.serialize() == BASIC
    built = RtpPacket(96, 0x1234, 0xDEADBEEF, 0x01020304, True, payload=b"\xaa\xbb")
    assert built.serialize() == BASIC


def test_csrcs_round_trip() -> None:
    p = parse_rtp(WITH_CSRCS)
    assert p.csrcs == [0x11111111, 0x22222222]
    assert p.payload == b"\xff" and not p.marker
    assert p.serialize() == WITH_CSRCS


def test_one_byte_extensions_round_trip() -> None:
    p = parse_rtp(ONE_BYTE)
    assert p.extensions == {1: b"\x42", 2: b"\x01\x02"}
    assert p.extension_profile == 0xBEDE
    assert p.payload == b"\xca\xfe"
    assert p.serialize() == ONE_BYTE
    # Built from scratch, the one-byte form is chosen automatically.
    fresh = RtpPacket(96, 7, 100, 200, extensions={1: b"\x42", 2: b"\x01\x02"}, payload=b"\xca\xfe")
    assert fresh.serialize() == ONE_BYTE


def test_two_byte_extensions_round_trip_preserve_appbits() -> None:
    p = parse_rtp(TWO_BYTE)
    assert p.extensions == {20: b"abc", 1: b""}
    assert p.extension_profile == 0x1005
    assert p.serialize() == TWO_BYTE
    # A two-byte block stays two-byte even when its elements would fit the one-byte form.
    small = parse_rtp(
        bytes.fromhex("9060000700000064000000c8" "10000001" "01014200") + b"x"
    )
    assert small.extensions == {1: b"\x42"}
    assert small.serialize()[12:16] == bytes.fromhex("10000001")


@pytest.mark.parametrize(
    ("extensions", "profile"),
    [
        ({1: b"x"}, 0xBEDE),
        ({14: bytes(16)}, 0xBEDE),
        ({15: b"x"}, 0x1000),  # id 15 is reserved in the one-byte form
        ({1: b""}, 0x1000),  # zero length needs the two-byte form
        ({1: bytes(17)}, 0x1000),  # so do more than 16 bytes
        ({255: b"\x01\x02"}, 0x1000),
    ],
)
def test_extension_form_chosen_automatically(extensions: dict[int, bytes], profile: int) -> None:
    raw = RtpPacket(100, 1, 2, 3, extensions=extensions).serialize()
    assert struct.unpack_from("!H", raw, 12)[0] == profile
    back = parse_rtp(raw)
    assert back.extensions == extensions
    assert (len(raw) - 16) % 4 == 0  # the block is padded to whole words
    # Cross-check with aiortc's independent RFC 8285 decoder.
    words = struct.unpack_from("!H", raw, 14)[0]
    decoded = aiortc_rtp.unpack_header_extensions(profile, raw[16 : 16 + 4 * words])
    assert dict(decoded) == extensions


def test_extensions_from_aiortc_encoder_parse() -> None:
    for exts in ([(1, b"\x42"), (3, b"\x00\x07")], [(20, b"abc"), (2, b"\x01")]):
        profile, value = aiortc_rtp.pack_header_extensions(exts)
        raw = bytes.fromhex("9060000700000064000000c8") + struct.pack(
            "!HH", profile, len(value) // 4
        ) + value + b"pay"
        p = parse_rtp(raw)
        assert p.extensions == dict(exts)
        assert p.payload == b"pay"


def test_switching_form_when_content_no_longer_fits() -> None:
    p = parse_rtp(ONE_BYTE)
    p.extensions[20] = b"big"
    raw = p.serialize()
    assert struct.unpack_from("!H", raw, 12)[0] == 0x1000
    assert parse_rtp(raw).extensions == {1: b"\x42", 2: b"\x01\x02", 20: b"big"}


def test_id_15_stops_one_byte_processing() -> None:
    # RFC 8285 §4.2: elements from id 15 on are ignored.
    raw = bytes.fromhex("906000010000000000000000" "bede0002" "1041f0ff20550000") + b"p"
    assert parse_rtp(raw).extensions == {1: b"\x41"}
    assert find_extension(raw, 2) is None


def test_unknown_extension_profile_is_opaque() -> None:
    raw = bytes.fromhex("906000010000000000000000" "abcd0001" "01020304") + b"z"
    p = parse_rtp(raw)
    assert p.extension_profile == 0xABCD and p.extension_data == bytes.fromhex("01020304")
    assert p.extensions == {}
    assert p.serialize() == raw


def test_padding_round_trip() -> None:
    p = parse_rtp(PADDED)
    assert p.padding == 4 and p.payload == b"\x01\x02"
    assert p.serialize() == PADDED
    only_padding = RtpPacket(10, 1, 2, 3, padding=255).serialize()
    assert len(only_padding) == 12 + 255 and only_padding[-1] == 255
    assert parse_rtp(only_padding).payload == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        BASIC[:11],
        bytes([0x40]) + BASIC[1:],  # version 1
        bytes([0xC0]) + BASIC[1:],  # version 3
        bytes([0x8F]) + BASIC[1:],  # 15 CSRCs, none present
        ONE_BYTE[:14],  # extension header cut
        ONE_BYTE[:12] + bytes.fromhex("bede0009") + ONE_BYTE[16:],  # block past the end
        bytes.fromhex("906000010000000000000000" "bede0001" "3f010203"),  # element past block
        bytes.fromhex("906000010000000000000000" "10000001" "000000ff"),  # 2-byte header cut
        bytes.fromhex("906000010000000000000000" "10000001" "0105aabb"),  # 2-byte value past
        PADDED[:-1] + b"\x00",  # padding count 0
        PADDED[:-1] + b"\x07",  # more padding than payload
        bytes.fromhex("a06000010000000000000000"),  # P set, nothing to pad
    ],
)
def test_malformed_raises_rtp_error(raw: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(raw)


def test_serialize_rejects_impossible_fields() -> None:
    with pytest.raises(ValueError):
        RtpPacket(payload_type=128).serialize()
    with pytest.raises(ValueError):
        RtpPacket(csrcs=list(range(16))).serialize()
    with pytest.raises(ValueError):
        RtpPacket(extensions={0: b"x"}).serialize()
    with pytest.raises(ValueError):
        RtpPacket(padding=256).serialize()


def test_is_rtcp_demux() -> None:
    # RFC 5761 §4: second byte 192..223 is RTCP (e.g. SR=200, PSFB=206), else RTP.
    assert is_rtcp(bytes([0x80, 200, 0, 6]))
    assert is_rtcp(bytes([0x81, 206]))
    assert is_rtcp(bytes([0x80, 192])) and is_rtcp(bytes([0x80, 223]))
    assert not is_rtcp(bytes([0x80, 224]))
    assert not is_rtcp(BASIC)  # M=1 PT=96 → 0xE0 = 224
    assert not is_rtcp(bytes([0x80, 96]))
    assert not is_rtcp(b"\x80")


def test_hot_path_readers() -> None:
    assert read_header(BASIC) == (1, 96, 0x1234, 0xDEADBEEF, 0x01020304)
    assert read_header(BASIC[:11]) is None
    assert read_header(b"\x40" + BASIC[1:]) is None
    assert rtp_ssrc(BASIC) == 0x01020304 and rtp_ssrc(b"") == -1
    assert rtp_sequence(BASIC) == 0x1234 and rtp_sequence(b"\x80") == -1
    assert rtp_timestamp(BASIC) == 0xDEADBEEF and rtp_timestamp(b"") == -1
    assert rtp_payload_type(BASIC) == 96 and rtp_payload_type(b"") == -1
    assert rtp_marker(BASIC) and not rtp_marker(WITH_CSRCS) and not rtp_marker(b"")
    assert payload_offset(BASIC) == 12
    assert payload_offset(WITH_CSRCS) == 20
    assert payload_offset(ONE_BYTE) == 24
    assert payload_offset(PADDED) == 12
    assert payload_offset(ONE_BYTE[:14]) == -1
    assert payload_offset(PADDED[:-1] + b"\x09") == -1


def test_find_extension_without_parsing() -> None:
    assert find_extension(ONE_BYTE, 1) == b"\x42"
    assert find_extension(ONE_BYTE, 2) == b"\x01\x02"
    assert find_extension(ONE_BYTE, 3) is None
    assert find_extension(TWO_BYTE, 20) == b"abc"
    assert find_extension(TWO_BYTE, 1) == b""
    assert find_extension(BASIC, 1) is None
    assert find_extension(ONE_BYTE[:20], 2) is None  # truncated block


def test_sequence_unwrapper() -> None:
    u = SequenceUnwrapper()
    assert u.highest is None
    assert [u.unwrap(s) for s in (65533, 65535, 65534, 0, 2, 1, 65535)] == [
        65533, 65535, 65534, 65536, 65538, 65537, 65535,
    ]
    assert u.highest == 65538
    assert u.peek(3) == 65539 and u.highest == 65538
    early = SequenceUnwrapper()
    assert [early.unwrap(s) for s in (1, 65535, 2)] == [1, -1, 2]
    # Far ahead or behind: the nearest position wins (RFC 3550 A.1).
    assert early.unwrap(2 + 32767) == 32769


def test_seq_delta() -> None:
    """The one 16-bit forward difference (RFC 3550 A.1): nearest position, either way."""
    assert seq_delta(5, 3) == 2
    assert seq_delta(3, 5) == -2
    assert seq_delta(0, 65535) == 1  # across the wrap
    assert seq_delta(65535, 0) == -1
    assert seq_delta(32767, 0) == 32767 and seq_delta(32768, 0) == -32768
    assert seq_delta(2, 3 * 65536 + 65534) == 4  # an extended reference: its low 16 bits
    highest = 65536 + 65534
    assert highest + seq_delta(1, highest) == 2 * 65536 + 1


# --- RtpRewriter ------------------------------------------------------------------------------

PUB_SSRC = 0x11223344
SUB_SSRC = 0xCAFEBABE


def make(
    seq: int,
    ts: int,
    *,
    ssrc: int = PUB_SSRC,
    pt: int = 96,
    marker: bool = False,
    extensions: dict[int, bytes] | None = None,
    payload: bytes = b"hi",
) -> bytes:
    packet = RtpPacket(pt, seq, ts, ssrc, marker, extensions=extensions or {}, payload=payload)
    return packet.serialize()


def rewriter(**kw: object) -> RtpRewriter:
    args: dict[str, object] = {"initial_sequence": 1000, "initial_timestamp": 0x10000000}
    args.update(kw)
    return RtpRewriter(SUB_SSRC, {96: 100, 97: 101}, **args)  # type: ignore[arg-type]


def test_rewrite_exact_bytes_with_extension_remap_and_twcc() -> None:
    # Publisher: abs-send-time id 2 (3 bytes), transport-cc id 3, mid id 4 "0".
    raw = bytes.fromhex(
        "90600010" "00002000" "11223344" "bede0003" "22aabbcc" "310007" "4030" "000000"
    ) + b"hi"
    assert parse_rtp(raw).extensions == {2: b"\xaa\xbb\xcc", 3: b"\x00\x07", 4: b"0"}
    twcc = TransportCcSequencer(ext_id=5, start=0x0100)
    rw = rewriter(extension_ids={2: 6}, twcc=twcc)
    out = rw.rewrite(raw)
    # SSRC, PT and numbering rewritten; abs-send-time now id 6; the publisher's transport-cc
    # slot carries the subscriber's sequence under id 5; mid became padding. Same size.
    assert out == bytes.fromhex(
        "90640" "3e8" "10000000" "cafebabe" "bede0003" "62aabbcc" "510100" "0000" "000000"
    ) + b"hi"
    assert parse_rtp(out).extensions == {6: b"\xaa\xbb\xcc", 5: b"\x01\x00"}
    assert twcc.next_seq == 0x0101
    # The same layout again takes the cached plan and gives the same shape.
    out2 = rw.rewrite(raw[:2] + b"\x00\x11" + raw[4:])
    assert out2 is not None
    assert parse_rtp(out2).extensions == {6: b"\xaa\xbb\xcc", 5: b"\x01\x01"}
    assert parse_rtp(out2).sequence_number == 1001


def test_rewrite_matches_aiortc_view() -> None:
    twcc = TransportCcSequencer(ext_id=3)
    rw = rewriter(extension_ids={1: 1, 2: 2}, twcc=twcc)
    raw = make(
        40000, 123456, marker=True, payload=bytes(range(200)),
        extensions={1: b"\x85", 2: b"\x01\x02\x03", 3: b"\xff\xfe", 4: b"audio"},
    )
    out = rw.rewrite(raw)
    assert out is not None
    params = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(
                id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"
            ),
            RTCRtpHeaderExtensionParameters(
                id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            ),
            RTCRtpHeaderExtensionParameters(
                id=3,
                uri="http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            ),
            RTCRtpHeaderExtensionParameters(
                id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid"
            ),
        ]
    )
    ext_map = aiortc_rtp.HeaderExtensionsMap()
    ext_map.configure(params)
    theirs = aiortc_rtp.RtpPacket.parse(out, ext_map)
    assert (theirs.payload_type, theirs.marker, theirs.ssrc) == (100, 1, SUB_SSRC)
    assert (theirs.sequence_number, theirs.timestamp) == (1000, 0x10000000)
    assert theirs.extensions.audio_level == (True, 5)
    assert theirs.extensions.abs_send_time == 0x010203
    assert theirs.extensions.transport_sequence_number == 0
    assert theirs.extensions.mid is None
    assert theirs.payload == bytes(range(200))


def test_rewrite_offsets_and_wraparound() -> None:
    rw = rewriter(initial_sequence=65534, initial_timestamp=0xFFFFF000)
    outs = []
    for i in range(4):
        out = rw.rewrite(make((300 + i) & 0xFFFF, 5000 + 3000 * i))
        assert out is not None
        outs.append(parse_rtp(out))
    assert [p.sequence_number for p in outs] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in outs] == [
        0xFFFFF000, (0xFFFFF000 + 3000) & 0xFFFFFFFF, (0xFFFFF000 + 6000) & 0xFFFFFFFF,
        (0xFFFFF000 + 9000) & 0xFFFFFFFF,
    ]
    assert outs[2].timestamp == 1904  # wrapped past 2**32
    assert rw.last_sequence == 1 and rw.packets == 4 and rw.octets == 8


def test_input_wraparound_is_continuous() -> None:
    rw = rewriter()
    seqs = []
    for s in (65534, 65535, 0, 1):
        out = rw.rewrite(make(s, s))
        assert out is not None
        seqs.append(parse_rtp(out).sequence_number)
    assert seqs == [1000, 1001, 1002, 1003]


def test_payload_type_map_and_unknown_dropped() -> None:
    rw = rewriter()
    out = rw.rewrite(make(1, 1, pt=97))
    assert out is not None and parse_rtp(out).payload_type == 101
    assert rw.rewrite(make(2, 2, pt=111)) is None
    assert rw.dropped == 1
    assert rw.rewrite(b"\x80\x60") is None  # too short
    assert rw.rewrite(b"\x40" + make(3, 3)[1:]) is None  # not version 2


def test_marker_padding_and_csrcs_preserved() -> None:
    rw = rewriter()
    raw = RtpPacket(96, 5, 6, PUB_SSRC, True, csrcs=[7, 8], payload=b"data", padding=3).serialize()
    out = rw.rewrite(raw)
    assert out is not None
    p = parse_rtp(out)
    assert p.marker and p.csrcs == [7, 8] and p.payload == b"data" and p.padding == 3
    assert p.extensions == {}


def test_out_of_order_and_duplicates() -> None:
    rw = rewriter()
    order = [10, 12, 11, 12, 9, 15, 13]
    got = []
    for s in order:
        out = rw.rewrite(make(s, 90 * s))
        got.append(None if out is None else parse_rtp(out).sequence_number)
    # 11 keeps its place between 10 and 12; the duplicate 12 and 9 (before the first) drop.
    assert got == [1000, 1002, 1001, None, None, 1005, 1003]
    assert rw.dropped == 2
    # Timestamps keep their relative positions too.
    assert parse_rtp(rw.rewrite(make(14, 90 * 14)) or b"").timestamp == 0x10000000 + 90 * 4


def test_reordering_across_input_wrap() -> None:
    rw = rewriter()
    got = []
    for s in (65534, 0, 65535, 1):
        out = rw.rewrite(make(s, 0))
        got.append(parse_rtp(out or b"").sequence_number)
    assert got == [1000, 1002, 1001, 1003]


def test_very_old_packet_outside_window_is_dropped() -> None:
    rw = rewriter()
    for s in range(0, 1100):
        assert rw.rewrite(make(s, s)) is not None
    assert rw.rewrite(make(50, 50)) is None


def test_switch_source_continues_sequence_and_timestamp() -> None:
    rw = rewriter(clock_rate=90000)
    for i in range(5):
        rw.rewrite(make(100 + i, 1000 + 3000 * i))
    assert rw.last_sequence == 1004
    assert rw.last_timestamp == 0x10000000 + 12000
    other = 0x55667788
    rw.switch_source(0.5, ssrc=other)
    # Packets from neither the old source nor a third SSRC get through now.
    assert rw.rewrite(make(105, 16000)) is None
    assert rw.rewrite(make(1, 1, ssrc=0x99)) is None
    out = rw.rewrite(make(40000, 777, ssrc=other))
    assert out is not None
    p = parse_rtp(out)
    assert p.sequence_number == 1005
    assert p.timestamp == 0x10000000 + 12000 + 45000  # 0.5 s at 90 kHz
    assert p.ssrc == SUB_SSRC
    # The new source's own numbering continues from there, and its pre-switch packets drop.
    p2 = parse_rtp(rw.rewrite(make(40001, 777 + 3000, ssrc=other)) or b"")
    assert (p2.sequence_number, p2.timestamp) == (1006, 0x10000000 + 12000 + 48000)
    assert rw.rewrite(make(39999, 0, ssrc=other)) is None


def test_switch_source_to_any_ssrc_and_minimum_step() -> None:
    rw = rewriter()
    rw.rewrite(make(7, 500))
    rw.switch_source(0.0)
    out = rw.rewrite(make(9, 100, ssrc=0xABCDEF))
    p = parse_rtp(out or b"")
    assert p.sequence_number == 1001 and p.timestamp == 0x10000000 + 1


def test_switch_before_any_packet_only_pins_the_ssrc() -> None:
    rw = rewriter()
    rw.switch_source(1.0, ssrc=0x42)
    assert rw.rewrite(make(1, 1)) is None
    p = parse_rtp(rw.rewrite(make(5, 5, ssrc=0x42)) or b"")
    assert (p.sequence_number, p.timestamp) == (1000, 0x10000000)


def test_to_input_sequence_for_nack_translation() -> None:
    rw = rewriter(initial_sequence=65535)
    assert rw.to_input_sequence(65535) is None  # nothing sent yet
    for s in (500, 501, 502):
        rw.rewrite(make(s, s))
    assert [rw.to_input_sequence(o) for o in (65535, 0, 1)] == [500, 501, 502]
    assert rw.to_input_sequence(2) is None  # not sent yet
    rw.switch_source(0.02, ssrc=0x77)
    rw.rewrite(make(9000, 0, ssrc=0x77))
    assert rw.to_input_sequence(2) == 9000
    assert rw.to_input_sequence(1) is None  # belongs to the previous source


def test_extension_form_conversions() -> None:
    twcc = TransportCcSequencer(ext_id=3)
    # Output id above 14 forces the two-byte form.
    rw = rewriter(extension_ids={2: 20}, twcc=twcc)
    out = rw.rewrite(make(1, 1, extensions={2: b"\x01\x02\x03", 3: b"\x00\x01"}))
    assert out is not None
    p = parse_rtp(out)
    assert p.extension_profile == 0x1000
    assert p.extensions == {20: b"\x01\x02\x03", 3: b"\x00\x00"}
    # A two-byte input whose ids map to small ones is converted to the one-byte form...
    rw2 = rewriter(extension_ids={30: 2})
    raw = make(1, 1, extensions={30: b"\x09\x08", 31: b"drop"})
    assert struct.unpack_from("!H", raw, 12)[0] == 0x1000
    p2 = parse_rtp(rw2.rewrite(raw) or b"")
    assert p2.extension_profile == 0xBEDE and p2.extensions == {2: b"\x09\x08"}
    # ...unless a kept element cannot be expressed in it (zero length).
    p3 = parse_rtp(rw2.rewrite(make(2, 2, extensions={30: b""})) or b"")
    assert p3.extension_profile == 0x1000 and p3.extensions == {2: b""}


def test_transport_cc_added_when_input_lacks_it() -> None:
    twcc = TransportCcSequencer(ext_id=7, start=65535)
    rw = rewriter(twcc=twcc)
    first = parse_rtp(rw.rewrite(make(1, 1)) or b"")
    second = parse_rtp(rw.rewrite(make(2, 2, extensions={1: b"\x01"})) or b"")
    assert first.extensions == {7: b"\xff\xff"}
    assert second.extensions == {7: b"\x00\x00"}
    assert first.payload == second.payload == b"hi"


def test_transport_cc_sequence_shared_across_tracks() -> None:
    twcc = TransportCcSequencer(ext_id=3)
    audio = RtpRewriter(1, {111: 111}, twcc=twcc)
    video = RtpRewriter(2, {96: 96}, twcc=twcc)
    seen = []
    for i in range(3):
        for rw, pt in ((audio, 111), (video, 96)):
            out = rw.rewrite(make(i, i, pt=pt, extensions={3: b"\x00\x00"}))
            seen.append(find_extension(out or b"", 3))
    assert seen == [i.to_bytes(2, "big") for i in range(6)]


def test_all_extensions_dropped_removes_block() -> None:
    rw = rewriter(extension_ids={})
    out = rw.rewrite(make(1, 1, extensions={4: b"0", 10: b"h"}))
    assert out is not None
    assert out[0] & 0x10 == 0 and len(out) == 12 + 2
    assert parse_rtp(out).payload == b"hi"


def test_malformed_extension_block_dropped_and_layout_cache_safe() -> None:
    rw = rewriter(extension_ids={1: 1})
    good = make(1, 1, extensions={1: b"\x01\x02"})
    assert rw.rewrite(good) is not None
    # Same block size, different (broken) structure: the cached plan must not apply.
    bad = bytearray(good)
    bad[16] = 0x1F  # id 1 claiming 16 bytes inside a 4-byte block
    assert rw.rewrite(bytes(bad[:2]) + b"\x00\x02" + bytes(bad[4:])) is None
    assert rw.rewrite(good[:2] + b"\x00\x03" + good[4:]) is not None


def test_large_packet_grows_buffer() -> None:
    rw = RtpRewriter(1, {96: 96}, {1: 1}, buffer_size=64)
    exts = {i: bytes([i]) * 16 for i in range(1, 15)}
    raw = make(1, 1, extensions=exts, payload=bytes(3000))
    out = rw.rewrite(raw)
    assert out is not None
    p = parse_rtp(out)
    assert p.extensions == {1: exts[1]} and len(p.payload) == 3000


@pytest.mark.parametrize(
    ("data", "size"),
    [(BASIC, 2), (WITH_CSRCS, 1), (ONE_BYTE, 2), (TWO_BYTE, 2), (PADDED, 2), (b"\x80" * 11, 0)],
)
def test_payload_size_excludes_header_extension_and_padding(data: bytes, size: int) -> None:
    """What an SR's octet count adds up (RFC 3550 §6.4.1)."""
    assert payload_size(data) == size
    if size:
        assert payload_size(data) == len(parse_rtp(data).payload)


def _twcc_stream(count: int) -> list[bytes]:
    return [
        RtpPacket(
            96, 100 + i, 3000 * i, 0x1111,
            extensions={3: (i & 0xFFFF).to_bytes(2, "big"), 2: b"\x01\x02\x03"},
            payload=bytes([i & 0xFF]) * 50,
        ).serialize()
        for i in range(count)
    ]  # fmt: skip


def test_twcc_offset_points_at_the_written_transport_sequence() -> None:
    """Issue 10: forwarding groups number per subscriber at ``twcc_offset``."""
    twcc = TransportCcSequencer(5, start=700)
    rewriter = RtpRewriter(0x2222, {96: 100}, {2: 4}, twcc=twcc)
    for i, packet in enumerate(_twcc_stream(5)):
        out = rewriter.rewrite(packet)
        assert out is not None and rewriter.twcc_offset > 12
        at = rewriter.twcc_offset
        assert out[at : at + 2] == (700 + i).to_bytes(2, "big")
        assert find_extension(out, 5) == (700 + i).to_bytes(2, "big")
    plain = RtpRewriter(0x2222, {96: 100}, {2: 4})
    assert plain.rewrite(_twcc_stream(1)[0]) is not None and plain.twcc_offset == -1


def test_clone_continues_exactly_and_independently() -> None:
    """Issue 10: a subscriber leaving its group for numbering of its own sees no glitch."""
    packets = _twcc_stream(12)
    original = RtpRewriter(0x2222, {96: 100}, {2: 4}, twcc=TransportCcSequencer(5))
    for packet in packets[:5]:
        original.rewrite(packet)
    twin = original.clone()
    for packet in packets[5:]:
        a, b = original.rewrite(packet), twin.rewrite(packet)
        assert a == b  # same numbering, same transport-cc sequence (a copy of it)
    # Independent from here on: a source switch of the clone leaves the original alone.
    twin.switch_source(0.5)
    assert original.rewrite(packets[5]) is None  # a duplicate for the original
    other = RtpPacket(96, 9000, 123, 0x3333, payload=b"x").serialize()
    out = twin.rewrite(other)
    assert out is not None and rtp_sequence(out) == (rtp_sequence(a) + 1) & 0xFFFF
    assert original.rewrite(other) is None  # still bound to the first source


def test_rid_extension_values() -> None:
    """RFC 8852 RID / repaired-RID values: valid rid-ids only, NUL padding ignored."""
    from trio_sfu.proto.rtp import RtpPacket, find_extension, rid_value

    pkt = RtpPacket(payload_type=96, sequence_number=1, ssrc=5, payload=b"x")
    pkt.extensions[10] = b"h"
    pkt.extensions[11] = b"q-1_x"
    data = pkt.serialize()
    assert rid_value(find_extension(data, 10)) == "h"
    assert rid_value(find_extension(data, 11)) == "q-1_x"
    assert rid_value(find_extension(data, 12)) is None
    assert rid_value(b"lo\x00\x00") == "lo"
    assert rid_value(b"") is None
    assert rid_value(b"a b") is None
    assert rid_value("é".encode()) is None
    assert rid_value(b"x" * 256) is None
