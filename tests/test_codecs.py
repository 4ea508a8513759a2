"""Keyframe and layer detection: real VP8/H264 packets from aiortc's encoders, handmade VP9/AV1."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from trio_sfu.proto.codecs import av1, h264, is_keyframe, vp8, vp9


def frame(index: int) -> av.VideoFrame:
    """A 320x240 frame with content that changes per index, so delta frames are real."""
    f = av.VideoFrame(width=320, height=240, format="yuv420p")
    for plane in f.planes:
        plane.update(bytes((x * 7 + index * 13) & 0xFF for x in range(plane.buffer_size)))
    f.pts = index * 3000
    f.time_base = fractions.Fraction(1, 90000)
    return f


@pytest.fixture(scope="module")
def vp8_frames() -> list[list[bytes]]:
    encoder = Vp8Encoder()
    return [encoder.encode(frame(i), force_keyframe=(i == 0))[0] for i in range(4)]


@pytest.fixture(scope="module")
def h264_frames() -> list[list[bytes]]:
    encoder = H264Encoder()
    return [encoder.encode(frame(i), force_keyframe=(i == 0))[0] for i in range(4)]


def test_vp8_keyframe_from_real_encoder(vp8_frames: list[list[bytes]]) -> None:
    key, *deltas = vp8_frames
    assert len(key) > 1
    assert vp8.is_keyframe(key[0])
    assert not any(vp8.is_keyframe(p) for p in key[1:])  # continuation packets
    for packets in deltas:
        assert not any(vp8.is_keyframe(p) for p in packets)
        assert vp8.parse_descriptor(packets[0]) is not None
    assert is_keyframe("VP8", key[0]) and is_keyframe("vp8", key[0])


def test_vp8_descriptor_of_real_packets(vp8_frames: list[list[bytes]]) -> None:
    ids = []
    for packets in vp8_frames:
        first = vp8.parse_descriptor(packets[0])
        assert first is not None and first.start_of_partition and first.partition_id == 0
        assert first.picture_id_15bit and first.size == 4 and first.picture_id is not None
        ids.append(first.picture_id)
        for p in packets[1:]:
            d = vp8.parse_descriptor(p)
            assert d is not None and not d.start_of_partition and d.picture_id == first.picture_id
    assert ids == [(ids[0] + i) & 0x7FFF for i in range(4)]


def test_vp8_rewrite_picture_id_in_place(vp8_frames: list[list[bytes]]) -> None:
    payload = bytearray(vp8_frames[0][0])
    assert vp8.rewrite_descriptor(payload, picture_id=0x1234)
    d = vp8.parse_descriptor(bytes(payload))
    assert d is not None and d.picture_id == 0x1234
    assert vp8.is_keyframe(bytes(payload))  # the rest is untouched
    assert bytes(payload[4:]) == vp8_frames[0][0][4:]
    assert not vp8.rewrite_descriptor(payload, tl0_pic_idx=3)  # no L field: nothing changes
    assert vp8.parse_descriptor(bytes(payload)).picture_id == 0x1234  # type: ignore[union-attr]


def test_vp8_descriptor_all_fields() -> None:
    # X=1 N=1 S=1 PID=0 | I L T K | M=0 picture id 0x55 | TL0PICIDX 9 | TID 2 Y=1 KEYIDX 17
    payload = bytes.fromhex("b0" "f0" "55" "09" "b1") + bytes.fromhex("509d012a")
    d = vp8.parse_descriptor(payload)
    assert d == vp8.Vp8Descriptor(
        start_of_partition=True, partition_id=0, non_reference=True, picture_id=0x55,
        picture_id_15bit=False, tl0_pic_idx=9, tid=2, layer_sync=True, key_idx=17, size=5,
        picture_id_offset=2, tl0_pic_idx_offset=3,
    )
    assert not vp8.is_keyframe(payload)  # payload header too short for a key frame
    buf = bytearray(payload)
    assert vp8.rewrite_descriptor(buf, picture_id=0x1FF, tl0_pic_idx=300)
    assert buf[2] == 0x7F and buf[3] == 300 & 0xFF  # widths kept: 7 and 8 bits
    assert vp8.is_keyframe(bytes.fromhex("10") + bytes.fromhex("5000009d012a0000"))
    assert not vp8.is_keyframe(bytes.fromhex("10") + bytes.fromhex("5100009d012a0000"))  # P=1
    assert not vp8.is_keyframe(bytes.fromhex("11") + bytes.fromhex("5000009d012a0000"))  # PID 1
    assert not vp8.is_keyframe(bytes.fromhex("00") + bytes.fromhex("5000009d012a0000"))  # S=0


@pytest.mark.parametrize(
    "payload", [b"", b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\x80\x40", b"\x80\x20"]
)
def test_vp8_truncated_descriptor(payload: bytes) -> None:
    assert vp8.parse_descriptor(payload) is None
    assert not vp8.is_keyframe(payload)
    assert not vp8.rewrite_descriptor(bytearray(payload), picture_id=1)


def test_h264_keyframe_from_real_encoder(h264_frames: list[list[bytes]]) -> None:
    key, *deltas = h264_frames
    # aiortc (libx264) sends SPS, PPS and an SEI in a STAP-A, then the IDR slice in FU-As.
    assert h264.nal_types(key[0]) == [h264.NAL_SPS, h264.NAL_PPS, 6]
    assert h264.is_keyframe(key[0])
    assert h264.nal_types(key[1]) == [h264.NAL_IDR] and h264.is_keyframe(key[1])
    # libx264 cuts the IDR picture into several slices: each slice's FU-A start counts (it
    # begins an IDR NAL unit), the continuation fragments do not.
    for p in key[2:]:
        assert p[0] & 0x1F == 28
        assert h264.is_keyframe(p) is bool(p[1] & 0x80)
    assert not all(h264.is_keyframe(p) for p in key[2:])
    for packets in deltas:
        assert not any(h264.is_keyframe(p) for p in packets)
        assert h264.nal_types(packets[0]) == [1]
    assert is_keyframe("H264", key[0]) and is_keyframe("h264", key[1])


@pytest.mark.parametrize(
    ("payload", "types", "key"),
    [
        (bytes.fromhex("65888400"), [5], True),  # single NAL IDR
        (bytes.fromhex("419a2000"), [1], False),  # single NAL non-IDR slice
        (bytes.fromhex("6742c01f"), [7], True),  # SPS alone starts a keyframe
        (bytes.fromhex("68ce3c80"), [8], False),  # PPS alone
        (bytes.fromhex("78" "00026742" "000268ce" "00026588"), [7, 8, 5], True),  # STAP-A
        (bytes.fromhex("78" "0002419a"), [1], False),
        (bytes.fromhex("78" "00056742"), [], False),  # STAP-A unit past the end
        (bytes.fromhex("78" "0002419a" "00"), [], False),  # trailing byte
        (bytes.fromhex("7c85aabb"), [5], True),  # FU-A start of IDR
        (bytes.fromhex("7c05aabb"), [], False),  # FU-A middle of IDR
        (bytes.fromhex("7c45aabb"), [], False),  # FU-A end of IDR
        (bytes.fromhex("7c81aabb"), [1], False),  # FU-A start of non-IDR
        (bytes.fromhex("7c"), [], False),
        (bytes.fromhex("e5"), [], False),  # forbidden bit set
        (bytes.fromhex("00"), [], False),
        (b"", [], False),
    ],
)
def test_h264_handmade(payload: bytes, types: list[int], key: bool) -> None:
    assert h264.nal_types(payload) == types
    assert h264.is_keyframe(payload) is key


# VP9 non-flexible keyframe: I=1 P=0 L=1 F=0 B=1 E=0 V=1 | M=1 picture id 1 | TID 0 U 0 SID 0
# D 0 | TL0PICIDX 5 | SS: N_S=0 Y=1 G=0, 640x480 | frame data.
VP9_KEY = bytes.fromhex("aa" "8001" "00" "05" "10" "0280" "01e0") + b"\x82\x49\x83"


def test_vp9_keyframe_and_fields() -> None:
    d = vp9.parse_descriptor(VP9_KEY)
    assert d is not None
    assert (d.picture_id, d.tid, d.sid, d.tl0_pic_idx) == (1, 0, 0, 5)
    assert d.start_of_frame and not d.end_of_frame and not d.inter_predicted
    assert d.spatial_layers == 1 and d.resolutions == [(640, 480)]
    assert d.size == 10
    assert vp9.is_keyframe(VP9_KEY) and is_keyframe("VP9", VP9_KEY)


def test_vp9_non_keyframes() -> None:
    delta = bytes([VP9_KEY[0] | 0x40]) + VP9_KEY[1:]  # P=1
    assert not vp9.is_keyframe(delta)
    middle = bytes([VP9_KEY[0] & ~0x08]) + VP9_KEY[1:]  # B=0: not the start of the frame
    assert not vp9.is_keyframe(middle)
    upper = VP9_KEY[:3] + bytes([(2 << 5) | (1 << 1)]) + VP9_KEY[4:]  # TID 2, SID 1
    d = vp9.parse_descriptor(upper)
    assert d is not None and (d.temporal_layer, d.spatial_layer) == (2, 1)
    assert not vp9.is_keyframe(upper)


def test_vp9_flexible_mode_reference_indices() -> None:
    # I P L F B: 0xd8 | 7-bit picture id 5 | P_DIFF 1 (N=1), P_DIFF 2 (N=0) | data
    payload = bytes.fromhex("d8" "05" "03" "04") + b"data"
    d = vp9.parse_descriptor(payload)
    assert d is not None and d.flexible and d.p_diffs == [1, 2] and d.size == 4
    assert not vp9.is_keyframe(payload)
    assert vp9.parse_descriptor(bytes.fromhex("d8" "05" "03" "03" "03" "03")) is None  # > 3


def test_vp9_scalability_structure_with_groups() -> None:
    # B=1 V=1 | SS: N_S=2 (3 layers) Y=1 G=1 | 3 resolutions | N_G=2: (TID0 U0 R1, diff 4),
    # (TID1 U1 R0).
    payload = bytes.fromhex(
        "0a" "58" "0140 00b4" "0280 0168" "0500 02d0" "02" "04" "04" "30"
    ) + b"x"
    d = vp9.parse_descriptor(payload)
    assert d is not None
    assert d.spatial_layers == 3
    assert d.resolutions == [(320, 180), (640, 360), (1280, 720)]
    assert d.size == len(payload) - 1
    assert vp9.is_keyframe(payload)
    assert vp9.parse_descriptor(payload[:-3]) is None  # group description cut


@pytest.mark.parametrize(
    "payload",
    [bytes.fromhex(h) for h in ("", "80", "8080", "20", "2000", "02", "0210", "0208", "50")],
)
def test_vp9_truncated(payload: bytes) -> None:
    assert vp9.parse_descriptor(payload) is None
    assert not vp9.is_keyframe(payload)


def test_av1_new_sequence_with_sequence_header() -> None:
    # Z=0 Y=0 W=1 N=1 | OBU_SEQUENCE_HEADER with obu_has_size_field (0x0a) + payload bytes
    payload = bytes.fromhex("18" "0a" "0b000000")
    info = av1.parse_payload(payload)
    assert info is not None and info.new_sequence and info.obu_types == [av1.OBU_SEQUENCE_HEADER]
    assert av1.is_keyframe(payload) and is_keyframe("AV1", payload)


def test_av1_sequence_header_without_n_bit_and_delta_frames() -> None:
    # W=2: a length-prefixed sequence header (3 bytes) then a frame OBU to the end.
    with_header = bytes.fromhex("20" "03" "080000" "30aabb")
    info = av1.parse_payload(with_header)
    assert info is not None and info.obu_types == [1, 6]
    assert av1.is_keyframe(with_header)
    # W=2: two frame OBUs, no sequence header, N=0 → not a keyframe.
    delta = bytes.fromhex("20" "03" "300000" "30aabb")
    assert av1.parse_payload(delta) is not None and not av1.is_keyframe(delta)


def test_av1_continuation_is_not_an_obu_start() -> None:
    # Z=1 W=1: the bytes look like a sequence header but continue an earlier OBU.
    payload = bytes.fromhex("90" "0a0b0c")
    info = av1.parse_payload(payload)
    assert info is not None and info.continuation and info.obu_types == []
    assert not av1.is_keyframe(payload)
    assert not av1.is_keyframe(bytes.fromhex("98" "300000"))  # N with Z is inconsistent


def test_av1_length_prefixed_elements_and_layer_ids() -> None:
    # W=0: every element has a LEB128 length; frame OBU with extension: TID 2, SID 1.
    payload = bytes.fromhex("00" "03" "344800" "02" "3000")
    info = av1.parse_payload(payload)
    assert info is not None
    assert info.obu_types == [6, 6] and (info.temporal_id, info.spatial_id) == (2, 1)
    # A two-byte LEB128 length (130).
    long_obu = bytes.fromhex("10") + bytes([0x30]) + bytes(129)
    assert av1.parse_payload(bytes.fromhex("00" "8201") + long_obu[1:]) is not None


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes.fromhex("00" "05" "3000"),  # length past the end
        bytes.fromhex("00" "ff"),  # LEB128 never ends
        bytes.fromhex("00" "ffffffffffffffff01"),  # LEB128 longer than 8 bytes
        bytes.fromhex("30" "02" "3000"),  # W=3 but one element
        bytes.fromhex("10" "8a"),  # forbidden bit set
    ],
)
def test_av1_malformed(payload: bytes) -> None:
    assert av1.parse_payload(payload) is None
    assert not av1.is_keyframe(payload)


def test_dispatch_unknown_codecs() -> None:
    assert not is_keyframe("opus", b"\xff" * 10)
    assert not is_keyframe("", b"")
    assert is_keyframe("AV1X", bytes.fromhex("18" "0a" "0b"))
