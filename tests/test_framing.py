"""RFC 4571 framing (ICE-TCP's datagrams over a stream): the sans-IO core in proto/framing.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.framing import MAX_FRAME, Deframer, frame

datagrams = st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=12)


def test_frame_is_a_16_bit_length_then_the_bytes() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"") == b"\x00\x00"
    assert frame(bytes(MAX_FRAME))[:2] == b"\xff\xff"
    with pytest.raises(ValueError, match="65535"):
        frame(bytes(MAX_FRAME + 1))


@given(datagrams)
def test_every_split_point_parses_to_the_same_datagrams(items: list[bytes]) -> None:
    """Two reads, split at every byte boundary of the coalesced stream."""
    stream = b"".join(frame(d) for d in items)
    for cut in range(len(stream) + 1):
        deframer = Deframer()
        out = deframer.feed(stream[:cut]) + deframer.feed(stream[cut:])
        assert out == items
        assert deframer.pending == 0


@given(datagrams, st.data())
def test_any_chunking_parses_to_the_same_datagrams(items: list[bytes], data: st.DataObject) -> None:
    """Arbitrary reads (one byte at a time up to everything at once), trailing partial frame."""
    stream = b"".join(frame(d) for d in items) + b"\x00\x05ab"  # an unfinished frame
    deframer = Deframer()
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        size = data.draw(st.integers(min_value=1, max_value=len(stream) - pos))
        out += deframer.feed(memoryview(stream)[pos : pos + size])
        pos += size
    assert out == items
    assert deframer.pending == 4  # the partial frame is kept, nothing more
    assert deframer.feed(b"cde") == [b"abcde"]


def test_the_held_tail_is_bounded_by_one_frame() -> None:
    deframer = Deframer()
    assert deframer.awaiting is None
    assert deframer.feed(b"\x01") == [] and deframer.awaiting is None
    assert deframer.feed(b"\x00") == [] and deframer.awaiting == 256
    deframer = Deframer()
    assert deframer.feed(b"\xff\xff" + bytes(MAX_FRAME - 1)) == []
    assert deframer.pending == 2 + MAX_FRAME - 1
    assert deframer.feed(b"\x01\x00\x01") == [bytes(MAX_FRAME - 1) + b"\x01"]
    assert deframer.pending == 2
