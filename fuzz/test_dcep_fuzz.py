"""DCEP parsing and the data-channel layer against hostile messages."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tests.test_sctp_link import Link
from trio_sfu.proto.datachannel import (
    AssociationEstablished,
    ChannelMessage,
    DataChannelEndpoint,
)
from trio_sfu.proto.dcep import ChannelType, DataChannelOpen, parse_dcep
from trio_sfu.proto.errors import DcepError

opens = st.builds(
    DataChannelOpen,
    st.sampled_from(list(ChannelType)),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.text(max_size=40),
    st.text(max_size=40),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(opens).encode())
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=4))


@given(st.one_of(st.binary(max_size=80), mutated()))
def test_parse_raises_only_dcep_error(data: bytes) -> None:
    try:
        msg = parse_dcep(data)
    except DcepError:
        return
    assert parse_dcep(msg.encode()) == msg  # whatever parses re-encodes to the same thing


@given(opens)
def test_open_round_trips(msg: DataChannelOpen) -> None:
    assert parse_dcep(msg.encode()) == msg


def _pair() -> tuple[DataChannelEndpoint, DataChannelEndpoint, Link]:
    c = DataChannelEndpoint(is_dtls_client=True, rng=random.Random(1).randbytes)
    s = DataChannelEndpoint(is_dtls_client=False, rng=random.Random(2).randbytes)
    link = Link(c, s, seed=1)
    c.connect(link.now)
    link.run(lambda: bool(link.of_type(1, AssociationEstablished)))
    return c, s, link


ppids = st.one_of(st.sampled_from([50, 51, 52, 53, 54, 56, 57]), st.integers(0, 0xFFFFFFFF))
hostile = st.lists(
    st.tuples(st.integers(0, 12), ppids, st.one_of(st.binary(min_size=1, max_size=60),
                                                   mutated().filter(bool))),
    max_size=12,
)


@given(hostile)
def test_endpoint_survives_any_message_on_any_stream(
    messages: list[tuple[int, int, bytes]],
) -> None:
    """Raw SCTP messages (DCEP or not) never raise out of the data-channel layer."""
    c, _s, link = _pair()
    cid = c.open_channel("ok", link.now)
    link.run(lambda: c.channel(cid).acked)
    for stream, ppid, payload in messages:
        if stream != cid:
            c.association.send(stream, ppid, payload, link.now)
    link.run_for(1.0)
    # the well-behaved channel still works afterwards
    c.send(cid, "still fine", link.now)
    link.run(lambda: any(e.data == "still fine" for e in link.of_type(1, ChannelMessage)))
