"""STUN: RFC 5769 test vectors, strict parsing, and builders checked byte by byte."""

from __future__ import annotations

import binascii
import hmac
import struct

import pytest
from aioice import stun as aioice_stun

from trio_sfu.proto import stun
from trio_sfu.proto.errors import StunError

# RFC 5769 §2.1: sample request (USERNAME "evtj:h6vY", ICE-CONTROLLED, MI, FINGERPRINT).
RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
# RFC 5769 §2.2: sample IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RFC5769_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


def attribute_types(data: bytes) -> list[int]:
    """Walk the TLVs independently of aioice."""
    types, pos = [], 20
    while pos < len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        types.append(attr_type)
        pos += 4 + attr_len + (-attr_len & 3)
    assert pos == len(data)
    return types


def attribute_offset(data: bytes, wanted: int) -> int:
    pos = 20
    while pos < len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        if attr_type == wanted:
            return pos
        pos += 4 + attr_len + (-attr_len & 3)
    raise AssertionError(f"no attribute 0x{wanted:04x}")


def independent_integrity(data: bytes, key: bytes) -> bytes:
    """RFC 8489 §14.5 recomputed with stdlib only: HMAC-SHA1 over the message up to
    MESSAGE-INTEGRITY, with the length field covering MESSAGE-INTEGRITY itself."""
    pos = attribute_offset(data, 0x0008)
    covered = bytearray(data[:pos])
    struct.pack_into("!H", covered, 2, pos - 20 + 24)
    return hmac.new(key, bytes(covered), "sha1").digest()


def test_rfc5769_request_vector() -> None:
    msg = stun.parse(RFC5769_REQUEST)
    assert msg.message_method == stun.Method.BINDING
    assert msg.message_class == stun.Class.REQUEST
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert msg.attributes["PRIORITY"] == 0x6E0001FF
    assert msg.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert stun.username_parts(msg) == ("evtj", "h6vY")
    assert stun.has_fingerprint(msg)
    assert stun.check_fingerprint(RFC5769_REQUEST)
    assert stun.check_integrity(msg, RFC5769_PASSWORD)
    assert stun.check_integrity(RFC5769_REQUEST, RFC5769_PASSWORD.encode())
    assert not stun.check_integrity(msg, "VOkJxbRl1RmTxUk/WvJxBT")


def test_rfc5769_response_vector() -> None:
    msg = stun.parse(RFC5769_RESPONSE)
    assert msg.message_class == stun.Class.RESPONSE
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert stun.check_integrity(msg, RFC5769_PASSWORD)
    assert stun.check_fingerprint(RFC5769_RESPONSE)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (RFC5769_REQUEST, True),
        (RFC5769_RESPONSE, True),
        (b"\x80" + RFC5769_REQUEST[1:], False),  # RTP range
        (b"\x16" + RFC5769_REQUEST[1:], False),  # DTLS range
        (RFC5769_REQUEST[:4] + b"\x21\x12\xa4\x43" + RFC5769_REQUEST[8:], False),  # cookie
        (RFC5769_REQUEST[:-4], False),  # length field no longer matches
        (RFC5769_REQUEST + b"\x00", False),  # not a multiple of 4
        (RFC5769_REQUEST[:19], False),
        (b"", False),
    ],
)
def test_is_stun(data: bytes, expected: bool) -> None:
    assert stun.is_stun(data) is expected


def with_length(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data) - 20) + data[4:]


def test_parse_rejects_malformed() -> None:
    header = RFC5769_REQUEST[:20]
    cases = {
        "truncated": RFC5769_REQUEST[:-8],
        "bad fingerprint": RFC5769_REQUEST[:-1] + bytes([RFC5769_REQUEST[-1] ^ 1]),
        "tampered body": RFC5769_REQUEST[:30] + b"X" + RFC5769_REQUEST[31:],
        "attribute past end": with_length(header + b"\x00\x06\x00\x40abcd"),
        "truncated attribute header": with_length(header + b"\x00\x06"),
        "fingerprint not last": with_length(
            RFC5769_REQUEST + b"\x00\x24\x00\x04\x00\x00\x00\x01"
        ),
        "short integrity": with_length(header + b"\x00\x08\x00\x04abcd"),
        "unknown method": with_length(b"\x00\x3f" + header[2:]),
        "bad PRIORITY size": with_length(header + b"\x00\x24\x00\x02\x00\x01\x00\x00"),
        "bad utf-8 USERNAME": with_length(header + b"\x00\x06\x00\x04\xff\xfe\xfd\xfc"),
        "bad address family": with_length(header + b"\x00\x20\x00\x08\x00\x07\x00\x01abcd"),
    }
    for name, data in cases.items():
        with pytest.raises(StunError):
            stun.parse(data)
            pytest.fail(name)


def test_check_integrity_refuses_tampering_even_with_fresh_fingerprint() -> None:
    msg = aioice_stun.parse_message(RFC5769_REQUEST)
    msg.attributes["PRIORITY"] = 0x6E0001FE  # change a covered attribute...
    tampered = bytearray(RFC5769_REQUEST)
    struct.pack_into("!I", tampered, attribute_offset(RFC5769_REQUEST, 0x0024) + 4, 0x6E0001FE)
    # ...and recompute FINGERPRINT so only MESSAGE-INTEGRITY can notice.
    crc = binascii.crc32(bytes(tampered[:-8])) ^ 0x5354554E
    struct.pack_into("!I", tampered, len(tampered) - 4, crc)
    parsed = stun.parse(bytes(tampered))
    assert stun.check_fingerprint(bytes(tampered))
    assert not stun.check_integrity(parsed, RFC5769_PASSWORD)
    assert not stun.check_integrity(b"garbage", RFC5769_PASSWORD)


def test_username_parts_errors() -> None:
    msg = stun.parse(RFC5769_RESPONSE)  # no USERNAME
    with pytest.raises(StunError):
        stun.username_parts(msg)
    msg.attributes["USERNAME"] = "nocolon"
    with pytest.raises(StunError):
        stun.username_parts(msg)
    msg.attributes["USERNAME"] = "a:b:c"
    assert stun.username_parts(msg) == ("a", "b:c")


def test_binding_request_wire_format() -> None:
    tid = bytes(range(12))
    data = stun.binding_request(
        username="srv:cli",
        password="remote-password",
        priority=stun.ice_priority(),
        tie_breaker=0x0102030405060708,
        transaction_id=tid,
        use_candidate=True,
    )
    # RFC 8445 §7.1.1 attributes, then MESSAGE-INTEGRITY and FINGERPRINT last.
    assert attribute_types(data) == [0x0006, 0x0024, 0x802A, 0x0025, 0x0008, 0x8028]
    assert data[:2] == b"\x00\x01" and data[4:8] == b"\x21\x12\xa4\x42" and data[8:20] == tid
    pos = attribute_offset(data, 0x0024)
    # Peer-reflexive priority: 110 << 24 | 65535 << 8 | 255.
    assert data[pos + 4 : pos + 8] == bytes.fromhex("6effffff")
    pos = attribute_offset(data, 0x802A)
    assert data[pos : pos + 12] == bytes.fromhex("802a00080102030405060708")
    pos = attribute_offset(data, 0x0006)
    assert data[pos : pos + 12] == b"\x00\x06\x00\x07srv:cli\x00"
    pos = attribute_offset(data, 0x0008)
    assert data[pos + 4 : pos + 24] == independent_integrity(data, b"remote-password")
    assert stun.check_fingerprint(data)
    msg = stun.parse(data)
    assert stun.check_integrity(msg, "remote-password")
    assert "ICE-CONTROLLED" not in msg.attributes

    controlled = stun.binding_request(
        username="a:b", password="p", priority=1, tie_breaker=5, transaction_id=tid,
        controlling=False,
    )
    assert attribute_types(controlled) == [0x0006, 0x0024, 0x8029, 0x0008, 0x8028]


@pytest.mark.parametrize(
    ("addr", "xored"),
    [
        # RFC 8489 §14.2: port XOR 0x2112, IPv4 address XOR the magic cookie.
        (("192.0.2.1", 32853), bytes.fromhex("0001a147e112a643")),
        (("10.0.0.7", 5000), bytes.fromhex("0001329a2b12a445")),
    ],
)
def test_binding_success_xor_mapped_address(addr: tuple[str, int], xored: bytes) -> None:
    request = stun.parse(RFC5769_REQUEST)
    data = stun.binding_success(request, addr, "local-pwd")
    assert data[:2] == b"\x01\x01" and data[8:20] == request.transaction_id
    assert attribute_types(data) == [0x0020, 0x0008, 0x8028]
    pos = attribute_offset(data, 0x0020)
    assert data[pos + 4 : pos + 12] == xored
    pos = attribute_offset(data, 0x0008)
    assert data[pos + 4 : pos + 24] == independent_integrity(data, b"local-pwd")
    assert stun.parse(data).attributes["XOR-MAPPED-ADDRESS"] == addr


def test_binding_success_ipv6_round_trip() -> None:
    request = stun.parse(RFC5769_REQUEST)
    data = stun.binding_success(request, ("2001:db8::1", 40000), "pwd")
    assert stun.parse(data).attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::1", 40000)


def test_error_responses() -> None:
    request = stun.parse(RFC5769_REQUEST)
    unauth = stun.error_response(request, 401)
    assert unauth[:2] == b"\x01\x11"
    assert attribute_types(unauth) == [0x0009, 0x8028]  # no MESSAGE-INTEGRITY
    pos = attribute_offset(unauth, 0x0009)
    # ERROR-CODE: class 4, number 1, reason phrase (RFC 8489 §14.8).
    assert unauth[pos + 4 : pos + 8 + 15] == b"\x00\x00\x04\x01Unauthenticated"
    assert stun.parse(unauth).error_code == 401

    conflict = stun.error_response(request, 487, password="pwd")
    assert attribute_types(conflict) == [0x0009, 0x0008, 0x8028]
    pos = attribute_offset(conflict, 0x0009)
    assert conflict[pos + 4 : pos + 8 + 13] == b"\x00\x00\x04\x57Role Conflict"
    parsed = stun.parse(conflict)
    assert parsed.error_code == 487 and stun.check_integrity(parsed, "pwd")

    bad = stun.parse(stun.error_response(request, 400))
    assert bad.attributes["ERROR-CODE"] == (400, "Bad Request")


def test_parse_accepts_a_receive_buffer() -> None:
    msg = stun.parse(bytearray(RFC5769_REQUEST))
    assert type(msg.transaction_id) is bytes  # usable as a dict key by the agents
    assert stun.check_integrity(msg, RFC5769_PASSWORD)
