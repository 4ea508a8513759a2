"""STUN for ICE connectivity checks, on top of :mod:`aioice.stun`'s message codec.

aioice's ``parse_message`` is lenient: it does not check the magic cookie, lets an attribute run
past the end of the datagram, accepts a FINGERPRINT that is not last and raises a mix of
``ValueError``, ``struct.error`` and ``UnicodeDecodeError``. :func:`parse` walks the attribute
headers first (cheap: no allocation per attribute), rejects anything RFC 8489 calls malformed,
and turns every failure into :class:`~trio_sfu.proto.errors.StunError`. The
:class:`~aioice.stun.Message` it returns remembers the bytes MESSAGE-INTEGRITY covers, so the
UDP demux can parse once, find the peer by the local ufrag (:func:`username_parts`) and only
then spend an HMAC on that peer's password (:func:`check_integrity`).
"""

from __future__ import annotations

import binascii
import os
import struct
from typing import Final

from aioice.stun import Class, Message, Method, parse_message

from trio_sfu.proto.errors import StunError

__all__ = [
    "Class",
    "Message",
    "Method",
    "binding_request",
    "binding_success",
    "check_fingerprint",
    "check_integrity",
    "error_response",
    "has_fingerprint",
    "ice_priority",
    "is_stun",
    "new_transaction_id",
    "parse",
    "username_parts",
]

HEADER_LENGTH: Final = 20
MAGIC_COOKIE: Final = 0x2112A442
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
_ATTR_MESSAGE_INTEGRITY: Final = 0x0008
_ATTR_FINGERPRINT: Final = 0x8028
_FINGERPRINT_XOR: Final = 0x5354554E  # RFC 8489 §14.7: CRC-32 XOR "STUN"
_FINGERPRINT_TLV: Final = b"\x80\x28\x00\x04"
# RFC 8489 §14.3: USERNAME MUST be fewer than 509 bytes (763 after SASLprep is the hard cap).
_MAX_USERNAME: Final = 513

REASONS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthenticated",
    487: "Role Conflict",
}

_unpack_header = struct.Struct("!HHI").unpack_from
_unpack_tlv = struct.Struct("!HH").unpack_from


def is_stun(data: bytes) -> bool:
    """Cheap classifier for the UDP demux; nothing is parsed beyond the fixed header.

    RFC 7983 §7 puts STUN at first byte 0..3; RFC 8489 §5 fixes the magic cookie and makes the
    length field count the whole body, a multiple of four.
    """
    n = len(data)
    if n < HEADER_LENGTH or n & 3 or data[0] > 3:
        return False
    _, length, cookie = _unpack_header(data, 0)
    return bool(cookie == MAGIC_COOKIE and length == n - HEADER_LENGTH)


def _validate(data: bytes) -> None:
    """Reject what aioice would accept but RFC 8489 calls malformed."""
    if not is_stun(data):
        raise StunError("not a STUN message (RFC 7983 first byte, cookie or length)")
    n = len(data)
    pos = HEADER_LENGTH
    while pos < n:
        if pos + 4 > n:
            raise StunError("truncated attribute header")
        attr_type, attr_len = _unpack_tlv(data, pos)
        end = pos + 4 + attr_len
        padded = end + (-attr_len & 3)  # RFC 8489 §14: values padded to 4 bytes
        if padded > n:
            raise StunError(f"attribute 0x{attr_type:04x} runs past the message")
        if attr_type == _ATTR_FINGERPRINT:
            # RFC 8489 §14.7: FINGERPRINT MUST be the last attribute.
            if attr_len != 4 or padded != n:
                raise StunError("FINGERPRINT is not the last attribute")
        elif attr_type == _ATTR_MESSAGE_INTEGRITY and attr_len != 20:
            raise StunError("MESSAGE-INTEGRITY must be 20 bytes (RFC 8489 §14.5)")
        elif attr_type == 0x0006 and attr_len > _MAX_USERNAME:
            raise StunError("USERNAME too long")
        pos = padded


def parse(data: bytes) -> Message:
    """Parse one datagram; a present FINGERPRINT has been verified when this returns.

    MESSAGE-INTEGRITY is *not* verified here: the key depends on which peer the USERNAME
    names, so that is :func:`check_integrity`'s job.
    """
    if type(data) is not bytes:
        data = bytes(data)  # a recv_into buffer: the transaction id must be hashable bytes
    _validate(data)
    try:
        return parse_message(data)
    except (ValueError, struct.error, IndexError, TypeError, KeyError) as exc:
        # ValueError covers aioice's own complaints (bad FINGERPRINT CRC, unknown method,
        # bad address family), UnicodeDecodeError and ipaddress errors.
        raise StunError(f"malformed STUN message: {exc}") from None


def has_fingerprint(msg: Message) -> bool:
    """True when the parsed message carried a FINGERPRINT (which :func:`parse` verified)."""
    return "FINGERPRINT" in msg.attributes


def check_fingerprint(data: bytes) -> bool:
    """Verify FINGERPRINT on raw bytes (RFC 8489 §14.7): present, last, CRC-32 correct."""
    n = len(data)
    if n < HEADER_LENGTH + 8 or data[n - 8 : n - 4] != _FINGERPRINT_TLV:
        return False
    (value,) = struct.unpack_from("!I", data, n - 4)
    # The length field already counts the FINGERPRINT when it is the last attribute.
    return bool(value == (binascii.crc32(data[: n - 8]) ^ _FINGERPRINT_XOR))


def check_integrity(data_or_msg: bytes | Message, key: bytes | str) -> bool:
    """Verify MESSAGE-INTEGRITY (RFC 8489 §14.5) with the short-term key (the ICE password).

    Pass the :class:`Message` from :func:`parse` when you have it (no second parse). Raw bytes
    are parsed first; anything unparsable simply fails the check. A message without
    MESSAGE-INTEGRITY fails too.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    if isinstance(data_or_msg, Message):
        msg = data_or_msg
    else:
        try:
            msg = parse(data_or_msg)
        except StunError:
            return False
    if not isinstance(msg.attributes.get("MESSAGE-INTEGRITY"), bytes):
        return False
    return msg.check_message_integrity(key)


def username_parts(msg: Message) -> tuple[str, str]:
    """Split USERNAME into (local ufrag, remote ufrag) as seen by the receiver of a request.

    RFC 8445 §7.2.2: a check carries "RFRAG:LFRAG" from the sender's point of view, i.e. the
    receiver's own ufrag first. ufrags are ice-chars only (RFC 8839 §5.4), so the first colon
    splits unambiguously.
    """
    username = msg.attributes.get("USERNAME")
    if not isinstance(username, str):
        raise StunError("no USERNAME")
    local, sep, remote = username.partition(":")
    if not sep or not local or not remote:
        raise StunError("USERNAME is not 'local:remote'")
    return local, remote


def ice_priority(
    type_preference: int = 110, local_preference: int = 65535, component: int = 1
) -> int:
    """RFC 8445 §5.1.2.1 candidate priority; the default is a peer-reflexive candidate of
    component 1, which is what PRIORITY in a check must announce (RFC 8445 §7.1.1)."""
    return (type_preference << 24) | (local_preference << 8) | (256 - component)


def new_transaction_id() -> bytes:
    """96 random bits (RFC 8489 §5: uniformly and cryptographically random)."""
    return os.urandom(12)


def binding_request(
    *,
    username: str,
    password: str,
    priority: int,
    tie_breaker: int,
    transaction_id: bytes,
    controlling: bool = True,
    use_candidate: bool = False,
) -> bytes:
    """An ICE connectivity check, attributes in RFC 8445 §7.1.1 order, authenticated with the
    *remote* password and closed by FINGERPRINT (RFC 8445 §7.2.2)."""
    msg = Message(Method.BINDING, Class.REQUEST, transaction_id=transaction_id)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = priority
    if controlling:
        msg.attributes["ICE-CONTROLLING"] = tie_breaker
    else:
        msg.attributes["ICE-CONTROLLED"] = tie_breaker
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(password.encode("utf-8"))  # also appends FINGERPRINT
    return bytes(msg)


def binding_success(request: Message, addr: tuple[str, int], password: str) -> bytes:
    """Success response: XOR-MAPPED-ADDRESS is the source of the request (RFC 8445 §7.3.1.2),
    integrity with the responder's own password (the one the request was signed with)."""
    msg = Message(Method.BINDING, Class.RESPONSE, transaction_id=request.transaction_id)
    msg.attributes["XOR-MAPPED-ADDRESS"] = addr
    msg.add_message_integrity(password.encode("utf-8"))
    return bytes(msg)


def error_response(
    request: Message, code: int, reason: str | None = None, password: str | None = None
) -> bytes:
    """Error response with FINGERPRINT; MESSAGE-INTEGRITY only when ``password`` is given.

    RFC 8489 §9.1.3: a 400 for missing credentials and a 401 for bad ones carry no
    MESSAGE-INTEGRITY (we cannot prove which key the sender holds); a 487 answers an
    authenticated request and is signed with the password it was checked against.
    """
    msg = Message(request.message_method, Class.ERROR, transaction_id=request.transaction_id)
    msg.attributes["ERROR-CODE"] = (code, reason if reason is not None else REASONS.get(code, ""))
    if password is not None:
        msg.add_message_integrity(password.encode("utf-8"))
    else:
        msg.add_fingerprint()
    return bytes(msg)
