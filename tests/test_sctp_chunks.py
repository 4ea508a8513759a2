"""SCTP packet/chunk codec: round trips, CRC32c vectors, malformed input, aiortc cross-checks."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiortc import rtcsctptransport as aio
from crc32c import crc32c

from trio_sfu.proto.errors import SctpError
from trio_sfu.proto.sctp import chunks as ch
from trio_sfu.proto.sctp.chunks import (
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    IncomingResetRequest,
    InitAckChunk,
    InitChunk,
    OtherReconfigRequest,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    parse_packet,
    serialize_packet,
)


def fix_crc(packet: bytes | bytearray) -> bytes:
    buf = bytearray(packet)
    buf[8:12] = b"\x00\x00\x00\x00"
    buf[8:12] = crc32c(bytes(buf)).to_bytes(4, "little")
    return bytes(buf)


EVERY_CHUNK: list[ch.Chunk] = [
    DataChunk(0xFFFFFFFF, 7, 65535, 51, b"abc", ch.FLAG_BEGIN | ch.FLAG_END),
    DataChunk(1, 0, 0, 53, bytes(range(256)) * 4, ch.FLAG_UNORDERED | ch.FLAG_BEGIN),
    DataChunk(2, 1, 9, 0, b"x", ch.FLAG_IMMEDIATE),
    InitChunk(0xDEADBEEF, 1 << 20, 65535, 65535, 12345, [(0xC000, b""), (0x8008, b"\xc0\x82")]),
    InitAckChunk(1, 2, 3, 4, 5, [(7, b"cookie!"), (0x8001, b"\x00\x00\x00\x01")]),
    SackChunk(100, 5000, [(2, 3), (5, 9)], [99, 98]),
    SackChunk(0, 0),
    HeartbeatChunk(b"\x01\x02\x03"),
    HeartbeatAckChunk(b"hello world!"),
    AbortChunk([(12, b"bye")], reflected=True),
    AbortChunk(),
    ShutdownChunk(0xFFFFFFFE),
    ShutdownAckChunk(),
    ErrorChunk([(3, b"\x00\x00\x01\x00"), (6, b"\x40\x00\x00\x04")]),
    CookieEchoChunk(b"\x00" * 5),
    CookieAckChunk(),
    ShutdownCompleteChunk(reflected=True),
    ForwardTsnChunk(77, [(1, 2), (3, 65535)]),
    ReconfigChunk([OutgoingResetRequest(10, 11, 12, [1, 3, 5])]),
    ReconfigChunk([IncomingResetRequest(13, []), ReconfigResponse(14, 6)]),
    ReconfigChunk([ReconfigResponse(1, 1, 100, 200)]),
    ReconfigChunk([OtherReconfigRequest(17, 99, b"\x00\x05\x00\x00")]),
    UnknownChunk(0x40, 3, b"i-data"),
    UnknownChunk(0xFF, 0, b""),
]


@pytest.mark.parametrize("chunk", EVERY_CHUNK, ids=lambda c: type(c).__name__)
def test_every_chunk_round_trips(chunk: ch.Chunk) -> None:
    packet = serialize_packet(5000, 5001, 0xCAFEBABE, [chunk.encode()])
    assert len(packet) % 4 == 0
    parsed = parse_packet(packet)
    assert (parsed.source_port, parsed.destination_port) == (5000, 5001)
    assert parsed.verification_tag == 0xCAFEBABE
    assert parsed.chunks == [chunk]


def test_bundle_round_trips_with_padding() -> None:
    bundle = [EVERY_CHUNK[0], EVERY_CHUNK[5], EVERY_CHUNK[7], EVERY_CHUNK[2]]
    packet = serialize_packet(1, 2, 3, [c.encode() for c in bundle])
    assert parse_packet(packet).chunks == bundle


def test_data_chunk_exact_bytes() -> None:
    c = DataChunk(0x01020304, 0x0506, 0x0708, 0x090A0B0C, b"hi", ch.FLAG_BEGIN | ch.FLAG_END)
    assert c.encode() == bytes.fromhex("00030012 01020304 0506 0708 090a0b0c 6869")
    packet = serialize_packet(5000, 5000, 0x11223344, [c.encode()])
    # header, chunk, 2 bytes of padding; the checksum covers the padding too
    assert packet[:8] == bytes.fromhex("13881388 11223344")
    assert packet[12:] == c.encode() + b"\x00\x00"
    assert len(packet) == 12 + 20


def test_crc32c_known_vectors() -> None:
    # RFC 3720 B.4 (the same CRC32c as RFC 9260 Appendix A).
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_checksum_is_stored_least_significant_byte_first() -> None:
    packet = serialize_packet(5000, 5000, 0, [InitChunk(1, 2, 3, 4, 5).encode()])
    zeroed = packet[:8] + b"\x00" * 4 + packet[12:]
    assert packet[8:12] == crc32c(zeroed).to_bytes(4, "little")


def test_cross_check_with_aiortc_serializer() -> None:
    """aiortc's codec (google-crc32c underneath) is an independent implementation."""
    init = aio.InitChunk()
    init.initiate_tag, init.advertised_rwnd = 0x01020304, 131072
    init.outbound_streams, init.inbound_streams, init.initial_tsn = 16, 32, 0xFFFFFFF0
    init.params = [(0xC000, b""), (0x8008, bytes([0xC0, 0x82]))]
    theirs = aio.serialize_packet(5000, 5000, 0, init)
    ours = serialize_packet(
        5000, 5000, 0, [InitChunk(0x01020304, 131072, 16, 32, 0xFFFFFFF0,
                                  [(0xC000, b""), (0x8008, bytes([0xC0, 0x82]))]).encode()]
    )
    assert ours == theirs

    data = aio.DataChunk(flags=3)
    data.tsn, data.stream_id, data.stream_seq, data.protocol = 77, 5, 6, 51
    data.user_data = b"payload"
    parsed = parse_packet(aio.serialize_packet(5000, 5000, 9, data))
    assert parsed.chunks == [DataChunk(77, 5, 6, 51, b"payload", 3)]


@pytest.mark.parametrize("chunk", EVERY_CHUNK[:-2], ids=lambda c: type(c).__name__)
def test_aiortc_parses_what_we_send(chunk: ch.Chunk) -> None:
    packet = serialize_packet(5000, 5000, 42, [chunk.encode()])
    _, _, tag, chunks = aio.parse_packet(packet)
    assert tag == 42 and len(chunks) == 1
    theirs: Any = chunks[0]
    assert theirs.type == chunk.encode()[0]
    assert bytes(theirs) == chunk.encode() + b"\x00" * ((4 - len(chunk.encode()) % 4) % 4)
    if isinstance(chunk, DataChunk):
        assert (theirs.tsn, theirs.stream_id, theirs.stream_seq, theirs.protocol) == (
            chunk.tsn, chunk.stream_id, chunk.ssn, chunk.ppid)
        assert theirs.user_data == chunk.payload
    elif isinstance(chunk, SackChunk):
        assert theirs.cumulative_tsn == chunk.cumulative_tsn
        assert [tuple(g) for g in theirs.gaps] == chunk.gaps
        assert theirs.duplicates == chunk.duplicates
    elif isinstance(chunk, ForwardTsnChunk):
        assert theirs.cumulative_tsn == chunk.new_cumulative_tsn
        assert [tuple(s) for s in theirs.streams] == chunk.streams
    elif isinstance(chunk, ReconfigChunk) and isinstance(chunk.params[0], OutgoingResetRequest):
        param = aio.StreamResetOutgoingParam.parse(theirs.params[0][1])
        assert param.streams == [1, 3, 5] and param.last_tsn == 12


def _packet(*chunks: bytes, vtag: int = 1) -> bytes:
    return serialize_packet(5000, 5000, vtag, list(chunks))


MALFORMED = {
    "empty": b"",
    "header only": fix_crc(b"\x13\x88\x13\x88" + bytes(8)),
    "chunk length 0": fix_crc(_packet(CookieAckChunk().encode())[:14] + b"\x00\x00"),
    "chunk beyond packet": fix_crc(
        _packet(CookieAckChunk().encode())[:12] + b"\x0b\x00\x00\x10"
    ),
    "truncated header": fix_crc(_packet(CookieAckChunk().encode()) + b"\x00\x00"),
    "data too short": fix_crc(_packet(b"\x00\x03\x00\x0c" + bytes(8))),
    "sack count mismatch": fix_crc(_packet(b"\x03\x00\x00\x10" + bytes(8) + b"\x00\x01\x00\x00")),
    "shutdown length": fix_crc(_packet(b"\x07\x00\x00\x04")),
    "shutdown-ack length": fix_crc(_packet(b"\x08\x00\x00\x08\x00\x00\x00\x00")),
    "forward-tsn length": fix_crc(_packet(b"\xc0\x00\x00\x0a" + bytes(6))),
    "init zero tag": fix_crc(_packet(InitChunk(1, 2, 3, 4, 5).encode()[:4] + bytes(16), vtag=0)),
    "init zero streams": fix_crc(_packet(InitChunk(1, 2, 0, 4, 5).encode(), vtag=0)),
    "init short": fix_crc(_packet(b"\x01\x00\x00\x08\x00\x00\x00\x01", vtag=0)),
    "init bundled": _packet(InitChunk(1, 2, 3, 4, 5).encode(), CookieAckChunk().encode()),
    "init-ack bundled": _packet(CookieAckChunk().encode(), InitAckChunk(1, 2, 3, 4, 5).encode()),
    "param length": fix_crc(_packet(b"\x06\x00\x00\x08\x00\x0c\x00\x02")),
    "param truncated": fix_crc(_packet(b"\x06\x00\x00\x06\x00\x0c")),
    "heartbeat without info": fix_crc(_packet(b"\x04\x00\x00\x04")),
    "heartbeat wrong param": fix_crc(_packet(b"\x04\x00\x00\x08\x00\x02\x00\x04")),
    "reconfig empty": fix_crc(_packet(b"\x82\x00\x00\x04")),
    "reconfig unknown param": fix_crc(_packet(b"\x82\x00\x00\x0c\x00\x63\x00\x08\x00\x00\x00\x00")),
    "reconfig short request": fix_crc(_packet(b"\x82\x00\x00\x0c\x00\x0d\x00\x08" + bytes(4))),
    "reconfig odd streams": fix_crc(_packet(
        b"\x82\x00\x00\x15\x00\x0d\x00\x11" + bytes(12) + b"\x00")),
    "reconfig response length": fix_crc(_packet(b"\x82\x00\x00\x14\x00\x10\x00\x10" + bytes(12))),
    "reconfig three params": _packet(
        ReconfigChunk([ReconfigResponse(1, 1)]).encode()[:4]
        + ReconfigResponse(1, 1).encode_param() * 3
    ),
}
# fix the length field of the last one (three params = 4 + 3*12)
MALFORMED["reconfig three params"] = fix_crc(
    MALFORMED["reconfig three params"][:14]
    + struct.pack("!H", 4 + 36)
    + MALFORMED["reconfig three params"][16:]
)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packets_raise_sctp_error(name: str) -> None:
    with pytest.raises(SctpError):
        parse_packet(MALFORMED[name])


def test_bad_checksum_is_rejected_and_every_bit_counts() -> None:
    packet = _packet(DataChunk(1, 2, 3, 4, b"data").encode())
    parse_packet(packet)
    for i in range(len(packet)):
        flipped = bytearray(packet)
        flipped[i] ^= 0x01
        with pytest.raises(SctpError):
            parse_packet(bytes(flipped))


def test_last_chunk_without_padding_is_accepted() -> None:
    data = DataChunk(1, 2, 3, 4, b"abcde").encode()
    packet = fix_crc(_packet(data)[: 12 + len(data)])
    assert parse_packet(packet).chunks[0] == DataChunk(1, 2, 3, 4, b"abcde")


def test_init_ack_cookie_accessor() -> None:
    ack = InitAckChunk(1, 2, 3, 4, 5, [(0x8000, b""), (ch.PARAM_STATE_COOKIE, b"abc")])
    assert ack.cookie == b"abc"
    assert InitAckChunk(1, 2, 3, 4, 5).cookie is None


def test_chunk_length_excludes_only_the_last_parameters_padding() -> None:
    # RFC 9260 §3.2: inner parameters are padded, the chunk's terminating padding is not counted.
    init = InitChunk(1, 2, 3, 4, 5, [(0x8008, b"\xc0\x82"), (0x8008, b"\xc0")]).encode()
    assert struct.unpack_from("!H", init, 2)[0] == 4 + 16 + 8 + 5
    assert init[4 + 16 + 6 : 4 + 16 + 8] == b"\x00\x00"  # inner padding present
    abort = AbortChunk([(12, b"abc")]).encode()
    assert abort == b"\x06\x00\x00\x0b\x00\x0c\x00\x07abc"
