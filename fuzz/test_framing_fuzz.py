"""RFC 4571 deframer fuzzing (ICE-TCP): any byte stream, cut anywhere, never raises, never
holds more than one unfinished frame, and loses or invents no byte: re-framing what came out
plus what is held gives back exactly the stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto.framing import HEADER, MAX_FRAME, Deframer, frame


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=1, max_value=700), max_size=40))
def test_any_stream_any_cuts(stream: bytes, cuts: list[int]) -> None:
    deframer = Deframer()
    out: list[bytes] = []
    pos = 0
    for size in [*cuts, len(stream)]:
        out += deframer.feed(stream[pos : pos + size])
        pos += size
        assert deframer.pending <= HEADER + MAX_FRAME
        if deframer.awaiting is not None:
            assert deframer.pending < HEADER + deframer.awaiting
    held = stream[len(stream) - deframer.pending :] if deframer.pending else b""
    assert b"".join(frame(d) for d in out) + held == stream


@given(st.lists(st.binary(max_size=1500), max_size=30), st.binary(max_size=64))
def test_valid_frames_then_garbage(datagrams: list[bytes], garbage: bytes) -> None:
    """Real frames come out intact whatever garbage follows them."""
    deframer = Deframer()
    out = deframer.feed(b"".join(frame(d) for d in datagrams) + garbage)
    assert out[: len(datagrams)] == datagrams
