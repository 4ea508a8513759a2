"""RFC 8832 DATA_CHANNEL_OPEN / DATA_CHANNEL_ACK codec."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from trio_sfu.proto.dcep import (
    ChannelType,
    DataChannelAck,
    DataChannelOpen,
    parse_dcep,
)
from trio_sfu.proto.errors import DcepError


def test_open_exact_bytes() -> None:
    msg = DataChannelOpen(ChannelType.PARTIAL_RELIABLE_REXMIT_UNORDERED, 256, 3, "chat", "xmpp")
    assert msg.encode() == bytes.fromhex("03 81 0100 00000003 0004 0004") + b"chatxmpp"
    assert parse_dcep(msg.encode()) == msg


def test_ack_exact_bytes() -> None:
    assert DataChannelAck().encode() == b"\x02"
    assert parse_dcep(b"\x02") == DataChannelAck()


@pytest.mark.parametrize("ctype", list(ChannelType))
def test_every_channel_type_round_trips(ctype: ChannelType) -> None:
    msg = DataChannelOpen(ctype, 0xFFFF, 0xFFFFFFFF, "ünïcødé ✓", "")
    assert parse_dcep(msg.encode()) == msg
    assert msg.ordered == (ctype & 0x80 == 0)


@pytest.mark.parametrize(
    ("kw", "ctype", "param", "rexmit", "lifetime"),
    [
        ({}, ChannelType.RELIABLE, 0, None, None),
        ({"ordered": False}, ChannelType.RELIABLE_UNORDERED, 0, None, None),
        ({"max_retransmits": 0}, ChannelType.PARTIAL_RELIABLE_REXMIT, 0, 0, None),
        ({"max_packet_lifetime": 150, "ordered": False},
         ChannelType.PARTIAL_RELIABLE_TIMED_UNORDERED, 150, None, 150),
    ],
)
def test_for_channel_maps_webrtc_options(
    kw: dict[str, Any], ctype: ChannelType, param: int, rexmit: int | None, lifetime: int | None
) -> None:
    msg = DataChannelOpen.for_channel(label="l", **kw)
    assert (msg.channel_type, msg.reliability) == (ctype, param)
    assert (msg.max_retransmits, msg.max_packet_lifetime) == (rexmit, lifetime)


def test_for_channel_rejects_both_limits() -> None:
    with pytest.raises(ValueError):
        DataChannelOpen.for_channel(label="x", max_retransmits=1, max_packet_lifetime=1)


def test_reliable_channel_ignores_the_reliability_parameter() -> None:
    msg = parse_dcep(struct.pack("!BBHIHH", 3, 0, 0, 77, 0, 0))
    assert isinstance(msg, DataChannelOpen)
    assert msg.max_retransmits is None and msg.max_packet_lifetime is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        b"\x04" + bytes(11),
        b"\x02\x00",  # ACK with trailing bytes
        b"\x03" + bytes(10),  # OPEN shorter than its header
        struct.pack("!BBHIHH", 3, 0, 0, 0, 5, 0) + b"abcd",  # label shorter than announced
        struct.pack("!BBHIHH", 3, 0, 0, 0, 1, 0) + b"ab",  # trailing bytes
        struct.pack("!BBHIHH", 3, 0x03, 0, 0, 0, 0),  # unknown channel type
        struct.pack("!BBHIHH", 3, 0x80 | 0x7F, 0, 0, 0, 0),
        struct.pack("!BBHIHH", 3, 0, 0, 0, 2, 0) + b"\xff\xfe",  # label not UTF-8
        struct.pack("!BBHIHH", 3, 0, 0, 0, 0, 1) + b"\x80",  # protocol not UTF-8
    ],
)
def test_malformed_messages_raise_dcep_error(raw: bytes) -> None:
    with pytest.raises(DcepError):
        parse_dcep(raw)


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        DataChannelOpen(ChannelType.RELIABLE, label="x" * 70000).encode()
    with pytest.raises(ValueError):
        DataChannelOpen(ChannelType.RELIABLE, priority=70000).encode()
