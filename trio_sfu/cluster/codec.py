"""The wire form of room commands (NATS) and member infos (Redis): one version byte, then msgpack.

Pods of different releases meet during a rolling upgrade, and a NATS subject or a Redis hash
may hold bytes written by any of them, so the encoding is explicit rather than pickled
dataclasses: ``VERSION`` (one byte), then a msgpack array ``[tag, field, field, ...]`` with the
fields in declaration order — positional, so a ``Chat`` costs a few bytes more than its text.

Compatibility rule: within one version, a newer release may only *append* optional fields to a
type; a decoder takes the fields it knows and ignores trailing ones. Anything else (a renamed or
retyped field, a removed type) bumps ``VERSION``, which older pods refuse with ``CodecError``.

Every value is checked on decode: the bytes come off the network, and a ``CodecError`` (a
``ValueError``) is the only exception a caller has to expect.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, NoReturn

import msgpack

from trio_sfu.sfu.model import (
    ActiveSpeaker,
    Chat,
    CodecInfo,
    Command,
    KeyframeRequest,
    Nack,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SpeakerLevels,
    SubJoin,
    SubLeft,
    SubscriberInfo,
    TrackChange,
    TrackInfo,
)

VERSION = 1

# Type tags. Never reuse a retired number: a stale pod would decode it as the wrong type.
TAG_PUB_JOIN = 1
TAG_PUB_LEFT = 2
TAG_SUB_JOIN = 3
TAG_SUB_LEFT = 4
TAG_CHAT = 5
TAG_KEYFRAME_REQUEST = 6
TAG_NACK = 7
TAG_TRACK_CHANGE = 8
TAG_SPEAKER_LEVELS = 9
TAG_ACTIVE_SPEAKER = 10
TAG_PUBLISHER_INFO = 64
TAG_SUBSCRIBER_INFO = 65

_U32 = 0xFFFF_FFFF


class CodecError(ValueError):
    """Bytes that are not a command (or info) this release understands."""


#: Characters a subject token keeps as they are: readable with ``nats sub``, and none of them
#: special to NATS (``.`` separates tokens, ``*``/``>`` are wildcards, whitespace ends a subject).
_PLAIN = re.compile(r"[^A-Za-z0-9_-]+")
#: Longest token a name becomes; longer ones are cut and end in a hash of the whole name.
MAX_TOKEN = 40
_HASHED_KEEP = MAX_TOKEN - 18  # the readable head; then "~~" and 16 hex digits of SHA-256


def _escape(match: re.Match[str]) -> str:
    return "".join(f"~{b:02x}" for b in match.group().encode("utf-8", "surrogatepass"))


def subject_token(name: str) -> str:
    """A name as one readable NATS subject token (issue 9, item 5).

    ``[A-Za-z0-9_-]`` stay as they are; any other character (``.``, the separator, above all)
    becomes ``~`` and the two hex digits of each UTF-8 byte, so distinct names stay distinct
    (``~`` itself is escaped). An empty name is ``~``. A token longer than ``MAX_TOKEN`` keeps
    its first characters and ends in ``~~`` and 64 bits of the name's SHA-256, which no escape
    produces — so a media subject stays under ≈ 160 characters whatever a browser calls its
    track, and names stay readable.
    """
    token = _PLAIN.sub(_escape, name)
    if not token:
        return "~"
    if len(token) > MAX_TOKEN:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return token[:_HASHED_KEEP] + "~~" + digest
    return token


def _fail(message: str) -> NoReturn:
    raise CodecError(message)


# -- checked readers ---------------------------------------------------------------------------


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        _fail(f"{what}: expected str, got {type(value).__name__}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _int(value: Any, what: str, low: int = 0, high: int = _U32) -> int:
    # type() rather than isinstance(): a bool is an int to Python but not to us.
    if type(value) is not int or not low <= value <= high:
        _fail(f"{what}: expected an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _opt_int(value: Any, what: str, low: int = 0, high: int = _U32) -> int | None:
    return None if value is None else _int(value, what, low, high)


def _list(value: Any, what: str, size: int = 0) -> list[Any]:
    """A msgpack array with at least ``size`` items (more are a newer release's extras)."""
    if type(value) is not list:
        _fail(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) < size:
        _fail(f"{what}: expected at least {size} fields, got {len(value)}")
    return value


# -- the nested infos --------------------------------------------------------------------------


def _pack_codec(c: CodecInfo) -> list[Any]:
    return [c.name, c.clock_rate, c.channels, c.fmtp, c.payload_type, list(c.rtcp_fb)]


def _unpack_codec(value: Any) -> CodecInfo:
    f = _list(value, "codec", 6)
    return CodecInfo(
        name=_str(f[0], "codec.name"),
        clock_rate=_int(f[1], "codec.clock_rate"),
        channels=_opt_int(f[2], "codec.channels"),
        fmtp=_opt_str(f[3], "codec.fmtp"),
        # RFC 3550 §5.1: the payload type is 7 bits.
        payload_type=_int(f[4], "codec.payload_type", 0, 127),
        rtcp_fb=tuple(_str(x, "codec.rtcp_fb") for x in _list(f[5], "codec.rtcp_fb")),
    )


def _pack_track(t: TrackInfo) -> list[Any]:
    # The extensions came after the first release of version 1: appended, so older decoders
    # ignore them and newer ones read an absent list as none.
    return [
        t.track_id,
        t.kind,
        [_pack_codec(c) for c in t.codecs],
        [[ext_id, uri] for ext_id, uri in t.extensions],
        t.app_id,
        t.muted,
        list(t.rids),
    ]


def _unpack_track(value: Any) -> TrackInfo:
    f = _list(value, "track", 3)
    extensions = _list(f[3], "track.extensions") if len(f) > 3 else []
    muted = f[5] if len(f) > 5 else False
    if not isinstance(muted, bool):
        _fail("track.muted: not a bool")
    rids = tuple(_str(r, "track.rids") for r in _list(f[6], "track.rids")) if len(f) > 6 else ()
    return TrackInfo(
        track_id=_str(f[0], "track.track_id"),
        kind=_str(f[1], "track.kind"),
        codecs=tuple(_unpack_codec(c) for c in _list(f[2], "track.codecs")),
        extensions=tuple(_unpack_extension(e) for e in extensions),
        app_id=_str(f[4], "track.app_id") if len(f) > 4 else "",
        muted=muted,
        rids=rids,
    )


def _unpack_extension(value: Any) -> tuple[int, str]:
    f = _list(value, "extension", 2)
    return _int(f[0], "extension.id", 1, 255), _str(f[1], "extension.uri")


def _pack_publisher(p: PublisherInfo) -> list[Any]:
    return [p.publisher_id, p.user, p.node, [_pack_track(t) for t in p.tracks]]


def _unpack_publisher(value: Any) -> PublisherInfo:
    f = _list(value, "publisher", 4)
    return PublisherInfo(
        publisher_id=_str(f[0], "publisher.publisher_id"),
        user=_str(f[1], "publisher.user"),
        node=_str(f[2], "publisher.node"),
        tracks=tuple(_unpack_track(t) for t in _list(f[3], "publisher.tracks")),
    )


def _pack_subscriber(s: SubscriberInfo) -> list[Any]:
    return [s.subscriber_id, s.user, s.node]


def _unpack_subscriber(value: Any) -> SubscriberInfo:
    f = _list(value, "subscriber", 3)
    return SubscriberInfo(
        subscriber_id=_str(f[0], "subscriber.subscriber_id"),
        user=_str(f[1], "subscriber.user"),
        node=_str(f[2], "subscriber.node"),
    )


# -- commands: one packer and one unpacker per tag ---------------------------------------------


def _pack_command(command: Command) -> list[Any]:
    match command:
        case PubJoin(room, publisher):
            return [TAG_PUB_JOIN, room, _pack_publisher(publisher)]
        case PubLeft(room, publisher_id):
            return [TAG_PUB_LEFT, room, publisher_id]
        case TrackChange(room, publisher):
            return [TAG_TRACK_CHANGE, room, _pack_publisher(publisher)]
        case SubJoin(room, subscriber):
            return [TAG_SUB_JOIN, room, _pack_subscriber(subscriber)]
        case SubLeft(room, subscriber_id):
            return [TAG_SUB_LEFT, room, subscriber_id]
        case Chat(room, from_id, text):
            return [TAG_CHAT, room, from_id, text]
        case KeyframeRequest(room, publisher_id, track_id):
            return [TAG_KEYFRAME_REQUEST, room, publisher_id, track_id]
        case Nack(room, publisher_id, track_id, sequence_numbers):
            return [TAG_NACK, room, publisher_id, track_id, list(sequence_numbers)]
        case SpeakerLevels(room, node, levels):
            return [TAG_SPEAKER_LEVELS, room, node, _pack_levels(levels)]
        case ActiveSpeaker(room, node, speaker, levels):
            return [TAG_ACTIVE_SPEAKER, room, node, speaker, _pack_levels(levels)]
    _fail(f"not a command: {type(command).__name__}")


def _pub_join(f: list[Any]) -> Command:
    return PubJoin(_str(f[1], "room"), _unpack_publisher(f[2]))


def _pub_left(f: list[Any]) -> Command:
    return PubLeft(_str(f[1], "room"), _str(f[2], "publisher_id"))


def _track_change(f: list[Any]) -> Command:
    return TrackChange(_str(f[1], "room"), _unpack_publisher(f[2]))


def _sub_join(f: list[Any]) -> Command:
    return SubJoin(_str(f[1], "room"), _unpack_subscriber(f[2]))


def _sub_left(f: list[Any]) -> Command:
    return SubLeft(_str(f[1], "room"), _str(f[2], "subscriber_id"))


def _chat(f: list[Any]) -> Command:
    return Chat(_str(f[1], "room"), _str(f[2], "from_id"), _str(f[3], "text"))


def _keyframe_request(f: list[Any]) -> Command:
    return KeyframeRequest(_str(f[1], "room"), _str(f[2], "publisher_id"), _str(f[3], "track_id"))


def _nack(f: list[Any]) -> Command:
    # RFC 3550 §5.1: sequence numbers are 16 bits.
    seqs = tuple(_int(s, "sequence_number", 0, 0xFFFF) for s in _list(f[4], "sequence_numbers"))
    return Nack(_str(f[1], "room"), _str(f[2], "publisher_id"), _str(f[3], "track_id"), seqs)


def _pack_levels(levels: tuple[tuple[str, int], ...]) -> list[Any]:
    return [[p, v] for p, v in levels]


def _unpack_levels(value: Any) -> tuple[tuple[str, int], ...]:
    out = []
    for item in _list(value, "levels"):
        f = _list(item, "level", 2)
        # loudness 0..127 in reports, dBov -127..0 in decisions
        out.append((_str(f[0], "level.publisher_id"), _int(f[1], "level.value", -127, 127)))
    return tuple(out)


def _speaker_levels(f: list[Any]) -> Command:
    return SpeakerLevels(_str(f[1], "room"), _str(f[2], "node"), _unpack_levels(f[3]))


def _active_speaker(f: list[Any]) -> Command:
    return ActiveSpeaker(
        _str(f[1], "room"), _str(f[2], "node"), _str(f[3], "speaker"), _unpack_levels(f[4])
    )


#: tag → (number of items including the tag, unpacker)
_UNPACKERS: dict[int, tuple[int, Callable[[list[Any]], Command]]] = {
    TAG_PUB_JOIN: (3, _pub_join),
    TAG_PUB_LEFT: (3, _pub_left),
    TAG_SUB_JOIN: (3, _sub_join),
    TAG_SUB_LEFT: (3, _sub_left),
    TAG_CHAT: (4, _chat),
    TAG_KEYFRAME_REQUEST: (4, _keyframe_request),
    TAG_NACK: (5, _nack),
    TAG_TRACK_CHANGE: (3, _track_change),
    TAG_SPEAKER_LEVELS: (4, _speaker_levels),
    TAG_ACTIVE_SPEAKER: (5, _active_speaker),
}


# -- framing -----------------------------------------------------------------------------------

_VERSION_BYTE = bytes((VERSION,))


def _frame(items: list[Any]) -> bytes:
    try:
        packed: bytes = msgpack.packb(items, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # e.g. a lone surrogate in a str, an int beyond 64 bits, a field of the wrong type
        raise CodecError(f"cannot encode: {exc}") from exc
    return _VERSION_BYTE + packed


def _unframe(data: bytes) -> list[Any]:
    if not data:
        _fail("empty message")
    if data[0] != VERSION:
        _fail(f"unknown codec version {data[0]}")
    try:
        items = msgpack.unpackb(memoryview(data)[1:], raw=False, use_list=True)
    except Exception as exc:  # msgpack raises a zoo (ExtraData, FormatError, StackError, ...)
        raise CodecError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    return _list(items, "message", 1)


def encode(command: Command) -> bytes:
    """A command as NATS carries it on a room or node subject."""
    return _frame(_pack_command(command))


def decode(data: bytes) -> Command:
    items = _unframe(data)
    tag = items[0]
    entry = _UNPACKERS.get(tag) if type(tag) is int else None
    if entry is None:
        _fail(f"unknown command type {tag!r:.20}")
    size, unpack = entry
    _list(items, "command", size)
    return unpack(items)


def encode_publisher(info: PublisherInfo) -> bytes:
    """A publisher as Redis stores it in a room's publisher hash."""
    return _frame([TAG_PUBLISHER_INFO, _pack_publisher(info)])


def decode_publisher(data: bytes) -> PublisherInfo:
    items = _list(_unframe(data), "publisher record", 2)
    if items[0] != TAG_PUBLISHER_INFO or type(items[0]) is not int:
        _fail(f"not a publisher record (tag {items[0]!r:.20})")
    return _unpack_publisher(items[1])


def encode_subscriber(info: SubscriberInfo) -> bytes:
    """A subscriber as Redis stores it in a room's subscriber hash."""
    return _frame([TAG_SUBSCRIBER_INFO, _pack_subscriber(info)])


def decode_subscriber(data: bytes) -> SubscriberInfo:
    items = _list(_unframe(data), "subscriber record", 2)
    if items[0] != TAG_SUBSCRIBER_INFO or type(items[0]) is not int:
        _fail(f"not a subscriber record (tag {items[0]!r:.20})")
    return _unpack_subscriber(items[1])
