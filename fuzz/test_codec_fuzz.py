"""The cluster codec and the relay's media framing against hostile bytes.

Whatever another pod (or anything else that can publish on our subjects) sends, decoding either
returns a value that re-encodes to an equal value, or raises the one documented error.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from tests.test_codec import commands, publisher_infos, subscriber_infos
from trio_sfu.cluster.codec import (
    VERSION,
    CodecError,
    decode,
    decode_publisher,
    decode_subscriber,
    encode,
    encode_publisher,
    encode_subscriber,
)
from trio_sfu.cluster.framing import MEDIA_VERSION, pack_packets, unpack_packets

# msgpack values of the shapes a decoder meets: ints of every width, strs, bytes, None, bools,
# floats, and nested arrays and maps.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)
# Arrays that start like a real message: a plausible tag, then anything.
tagged = st.builds(
    lambda tag, rest: [tag, *rest],
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 64, 65, 255]),
    st.lists(values, max_size=6),
)


def framed(items: Any) -> bytes:
    body: bytes = msgpack.packb(items, use_bin_type=True)
    return bytes((VERSION,)) + body


def check_command(data: bytes) -> None:
    try:
        command = decode(data)
    except CodecError:
        return
    assert decode(encode(command)) == command


def check_records(data: bytes) -> None:
    try:
        publisher = decode_publisher(data)
    except CodecError:
        pass
    else:
        assert decode_publisher(encode_publisher(publisher)) == publisher
    try:
        subscriber = decode_subscriber(data)
    except CodecError:
        pass
    else:
        assert decode_subscriber(encode_subscriber(subscriber)) == subscriber


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_command(data)
    check_records(data)


@given(values)
def test_random_msgpack_values(items: Any) -> None:
    check_command(framed(items))
    check_records(framed(items))


@given(tagged)
def test_tagged_arrays(items: list[Any]) -> None:
    check_command(framed(items))
    check_records(framed(items))


@given(commands, st.data())
def test_mutated_commands(command: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(command))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    check_command(bytes(encoded))
    check_command(bytes(encoded[:cut]))


@given(publisher_infos | subscriber_infos, st.data())
def test_mutated_records(info: Any, data: st.DataObject) -> None:
    encoded = bytearray(
        encode_publisher(info) if hasattr(info, "tracks") else encode_subscriber(info)
    )
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    check_records(bytes(encoded))


# -- the relay's media framing -----------------------------------------------------------------


@given(st.lists(st.binary(max_size=1500), max_size=40), st.integers(100, 70_000))
def test_media_framing_round_trips(packets: list[bytes], limit: int) -> None:
    queue = deque(packets)
    received: list[bytes] = []
    rounds = 0
    while queue:
        rounds += 1
        assert rounds <= len(packets)  # every message takes at least one packet
        message, count, dropped = pack_packets(queue, limit)
        assert dropped == 0
        assert count >= 1
        assert count == 1 or len(message) <= limit
        received.extend(unpack_packets(message))
    assert received == packets


@given(st.binary(max_size=400))
def test_media_messages_from_random_bytes(data: bytes) -> None:
    try:
        packets = unpack_packets(data)
    except ValueError:
        return
    assert data[0] == MEDIA_VERSION
    assert sum(2 + len(p) for p in packets) == len(data) - 1
