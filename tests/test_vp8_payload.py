""":func:`vp8.build_payload`, the synthetic publishers' VP8: what the forwarder's parser reads
back from it (RFC 7741 §4.2 descriptor, §4.3 payload header, RFC 6386 §9.1 frame tag)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.codecs import vp8

#: A load test's stamp: magic, send time, counter, simulcast stream.
STAMP = struct.pack("!4sdIB", b"TSFL", 12.5, 7, 1)


def test_a_keyframes_first_packet_as_the_load_tester_sends_it() -> None:
    payload = vp8.build_payload(
        1100, keyframe=True, start=True, picture_id=0x1234, width=1280, height=720, body=STAMP
    )
    # X=1 S=1 PID 0 | I=1 | M=1, 15-bit picture id | frame tag: P=0, show_frame, start code,
    # 1280 x 720 little endian | the stamp | zeros to the size
    head = bytes.fromhex("90 80 92 34  10 02 00 9d 01 2a  00 05 d0 02")
    assert payload == head + STAMP + bytes(1100 - len(head) - len(STAMP))
    desc = vp8.parse_descriptor(payload)
    assert desc is not None
    assert (desc.start_of_partition, desc.partition_id, desc.non_reference) == (True, 0, False)
    assert (desc.picture_id, desc.picture_id_15bit, desc.size) == (0x1234, True, 4)
    assert vp8.is_keyframe(payload)
    assert vp8.keyframe_width(payload) == 1280


def test_a_continuation_packet_has_no_payload_header() -> None:
    payload = vp8.build_payload(800, keyframe=True, start=False, picture_id=5, body=STAMP)
    assert payload[:4] == bytes.fromhex("80 80 80 05")  # S=0
    assert payload[4 : 4 + len(STAMP)] == STAMP  # the stamp right after the descriptor
    desc = vp8.parse_descriptor(payload)
    assert desc is not None and not desc.start_of_partition and desc.picture_id == 5
    assert not vp8.is_keyframe(payload)  # only a frame's first packet says so
    assert len(payload) == 800


def test_an_interframes_first_packet() -> None:
    payload = vp8.build_payload(300, keyframe=False, start=True, picture_id=0x7FFF, body=STAMP)
    assert payload[:7] == bytes.fromhex("90 80 ff ff 11 00 00")  # frame tag: P=1
    assert payload[7 : 7 + len(STAMP)] == STAMP
    desc = vp8.parse_descriptor(payload)
    assert desc is not None and desc.start_of_partition and desc.picture_id == 0x7FFF
    assert not vp8.is_keyframe(payload)
    assert vp8.keyframe_width(payload) == 0
    assert len(payload) == 300


def test_without_a_picture_id_the_descriptor_is_one_byte() -> None:
    """The test publisher's form (``PublisherClient.send_frame``): each packet a whole frame."""
    key = vp8.build_payload(200, keyframe=True)
    delta = vp8.build_payload(200, keyframe=False)
    assert key[:11] == bytes.fromhex("10 10 02 00 9d 01 2a 00 00 00 00")
    assert delta[:4] == bytes.fromhex("10 11 00 00")
    for payload, keyframe in ((key, True), (delta, False)):
        desc = vp8.parse_descriptor(payload)
        assert desc is not None
        assert (desc.start_of_partition, desc.picture_id, desc.size) == (True, None, 1)
        assert vp8.is_keyframe(payload) is keyframe
        assert vp8.temporal_info(payload, 0) is None  # no temporal layers to drop
        assert len(payload) == 200 and not any(payload[11 if keyframe else 4 :])
    # a picture id rewriter passes it through untouched
    assert vp8.PictureIdRewriter().rewrite(key, 0) is key


def test_a_size_below_the_headers_gives_the_headers() -> None:
    assert vp8.build_payload(0, keyframe=True, picture_id=1) == bytes.fromhex(
        "90 80 80 01 10 02 00 9d 01 2a 00 00 00 00"
    )
    assert vp8.build_payload(2, keyframe=False, start=False, body=b"abc") == b"\x00abc"


@given(
    size=st.integers(0, 1500),
    keyframe=st.booleans(),
    start=st.booleans(),
    picture_id=st.none() | st.integers(0, 0x7FFF),
    width=st.integers(0, 0x3FFF),
    body=st.binary(max_size=32),
)
def test_every_payload_parses_back(
    size: int, keyframe: bool, start: bool, picture_id: int | None, width: int, body: bytes
) -> None:
    payload = vp8.build_payload(
        size, keyframe=keyframe, start=start, picture_id=picture_id, width=width, body=body
    )
    desc = vp8.parse_descriptor(payload)
    assert desc is not None
    assert desc.start_of_partition is start and desc.partition_id == 0
    assert desc.picture_id == picture_id
    assert vp8.is_keyframe(payload) is (keyframe and start)
    assert vp8.keyframe_width(payload) == (width if keyframe and start else 0)
    header = desc.size + ((10 if keyframe else 3) if start else 0)
    assert payload[header : header + len(body)] == body
    assert len(payload) == max(size, header + len(body))
