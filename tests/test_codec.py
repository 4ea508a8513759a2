"""The cluster codec: every command round-trips, the encoding is small, bad bytes are refused."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.cluster import codec
from trio_sfu.cluster.codec import (
    MAX_TOKEN,
    TAG_PUB_JOIN,
    VERSION,
    CodecError,
    decode,
    decode_publisher,
    decode_subscriber,
    encode,
    encode_publisher,
    encode_subscriber,
    subject_token,
)
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

# -- strategies (shared with fuzz/test_codec_fuzz.py) ------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
anything = st.text(max_size=80)  # user names, fmtp lines, chat: any Unicode a str can carry
u32 = st.integers(0, 0xFFFF_FFFF)

codec_infos = st.builds(
    CodecInfo,
    name=st.sampled_from(["opus", "VP8", "VP9", "H264", "AV1", "rtx", "red", "ulpfec"]) | anything,
    clock_rate=u32,
    channels=st.none() | st.integers(0, 255),
    fmtp=st.none() | anything,
    payload_type=st.integers(0, 127),
    rtcp_fb=st.lists(anything, max_size=5).map(tuple),
)
track_infos = st.builds(
    TrackInfo,
    track_id=anything,
    kind=st.sampled_from(["audio", "video"]),
    codecs=st.lists(codec_infos, max_size=4).map(tuple),
    extensions=st.lists(
        st.tuples(st.integers(1, 255), st.text(max_size=80)), max_size=6
    ).map(tuple),
    app_id=st.just("") | names,
    muted=st.booleans(),
)
publisher_infos = st.builds(
    PublisherInfo,
    publisher_id=names,
    user=anything,
    node=names,
    tracks=st.lists(track_infos, max_size=4).map(tuple),
)
subscriber_infos = st.builds(SubscriberInfo, subscriber_id=names, user=anything, node=names)

commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(PubJoin, room=names, publisher=publisher_infos),
    st.builds(PubLeft, room=names, publisher_id=names),
    st.builds(TrackChange, room=names, publisher=publisher_infos),
    st.builds(SubJoin, room=names, subscriber=subscriber_infos),
    st.builds(SubLeft, room=names, subscriber_id=names),
    st.builds(Chat, room=names, from_id=names, text=st.text(max_size=500)),
    st.builds(KeyframeRequest, room=names, publisher_id=names, track_id=anything),
    st.builds(
        Nack,
        room=names,
        publisher_id=names,
        track_id=anything,
        sequence_numbers=st.lists(st.integers(0, 0xFFFF), max_size=40).map(tuple),
    ),
    st.builds(
        SpeakerLevels,
        room=names,
        node=names,
        levels=st.lists(st.tuples(names, st.integers(0, 127)), max_size=8).map(tuple),
    ),
    st.builds(
        ActiveSpeaker,
        room=names,
        node=names,
        speaker=st.just("") | names,
        levels=st.lists(st.tuples(names, st.integers(-127, 0)), max_size=8).map(tuple),
    ),
)

# -- realistic values --------------------------------------------------------------------------

OPUS = CodecInfo("opus", 48000, 2, "minptime=10;useinbandfec=1", 111, ("transport-cc",))
VP8 = CodecInfo("VP8", 90000, None, None, 96, ("goog-remb", "transport-cc", "ccm fir", "nack"))
RTX = CodecInfo("rtx", 90000, None, "apt=96", 97)
ALICE = PublisherInfo(
    "alice-7f3k2",
    "alice",
    "pod-a-1b2c3d",
    (
        TrackInfo("8c3e0f2a-5b7d-4e1f-9a6c-2d4b8e0f1a3c", "audio", (OPUS,)),
        TrackInfo(
            "1f9a6c2d-4b8e-0f1a-3c8c-3e0f2a5b7d4e",
            "video",
            (VP8, RTX),
            ((2, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),),
        ),
    ),
)
BOB = SubscriberInfo("bob-9x8y7", "bob", "pod-b-4e5f6a")

EVERY_TYPE: list[Command] = [
    PubJoin("room-1", ALICE),
    PubLeft("room-1", "alice-7f3k2"),
    TrackChange("room-1", ALICE),
    SubJoin("room-1", BOB),
    SubLeft("room-1", "bob-9x8y7"),
    Chat("room-1", "bob-9x8y7", "hello, ünïcode ✓"),
    KeyframeRequest("room-1", "alice-7f3k2", "1f9a6c2d-4b8e-0f1a-3c8c-3e0f2a5b7d4e"),
    Nack("room-1", "alice-7f3k2", "1f9a6c2d-4b8e-0f1a-3c8c-3e0f2a5b7d4e", (65535, 0, 1, 2)),
    SpeakerLevels("room-1", "pod-a-1b2c3d", (("alice-7f3k2", 97), ("carol-1", 0))),
    ActiveSpeaker("room-1", "pod-a-1b2c3d", "alice-7f3k2", (("alice-7f3k2", -30),)),
]


def frame(items: Any, version: int = VERSION) -> bytes:
    body: bytes = msgpack.packb(items, use_bin_type=True)
    return bytes((version,)) + body


# -- round trips -------------------------------------------------------------------------------


@given(commands)
def test_every_command_round_trips(command: Command) -> None:
    data = encode(command)
    assert data[0] == VERSION
    assert decode(data) == command


@given(publisher_infos)
def test_publisher_records_round_trip(info: PublisherInfo) -> None:
    assert decode_publisher(encode_publisher(info)) == info


@given(subscriber_infos)
def test_subscriber_records_round_trip(info: SubscriberInfo) -> None:
    assert decode_subscriber(encode_subscriber(info)) == info


@pytest.mark.parametrize("command", EVERY_TYPE, ids=lambda c: type(c).__name__)
def test_each_type_has_its_own_tag(command: Command) -> None:
    decoded = decode(encode(command))
    assert type(decoded) is type(command)
    assert decoded == command


def test_every_member_of_the_union_is_covered() -> None:
    # A new Command type must get a tag here before it can travel between pods.
    union = set(Command.__args__)
    assert union == {type(c) for c in EVERY_TYPE}


# -- compactness -------------------------------------------------------------------------------


def test_encodings_are_small() -> None:
    sizes = {type(c).__name__: len(encode(c)) for c in EVERY_TYPE}
    # A publisher with an Opus and a VP8+RTX track, ids and all, in one small UDP-sized message;
    # its one header extension costs its URI plus a few bytes.
    uri = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    assert sizes["PubJoin"] < 300 + len(uri) + 4
    # Positional fields: a command costs its strings plus a handful of bytes.
    assert sizes["PubLeft"] == 1 + 1 + 1 + (1 + 6) + (1 + 11)
    assert sizes["Chat"] <= 1 + 1 + 1 + 7 + 10 + len("hello, ünïcode ✓".encode()) + 1
    assert sizes["Nack"] < 70
    pub_join_json = json.dumps(dataclasses.asdict(EVERY_TYPE[0])).encode()
    assert sizes["PubJoin"] < len(pub_join_json) / 2


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",  # version 0
        bytes((VERSION + 1,)) + encode(PubLeft("r", "p"))[1:],  # a future version
        bytes((VERSION,)),  # no body
        bytes((VERSION,)) + b"\xc1",  # a byte msgpack never uses
        encode(PubLeft("r", "p")) + b"\x00",  # trailing bytes
        encode(PubLeft("r", "p"))[:-1],  # truncated
        frame({"tag": 2}),  # a map, not an array
        frame([]),  # no tag
        frame([99, "r", "p"]),  # unknown tag
        frame(["2", "r", "p"]),  # tag of the wrong type
        frame([True, "r", "p"]),  # a bool is not a tag
        frame([2, "r"]),  # a field missing
        frame([2, b"r", "p"]),  # bytes where a str belongs
        frame([2, "r", 7]),
        frame([7, "r", "p", "t", [1, 70000]]),  # sequence number beyond 16 bits
        frame([7, "r", "p", "t", [1, -1]]),
        frame([7, "r", "p", "t", [True]]),
        frame([7, "r", "p", "t", "1,2"]),
        frame([1, "r", ["p", "u", "n", [["t", "video", [["VP8", 90000, None, None, 128, []]]]]]]),
        frame([1, "r", ["p", "u", "n", [["t", "video", [["VP8", 90000.0, None, None, 96, []]]]]]]),
        frame([1, "r", ["p", "u", "n", [["t", "video", [["VP8", 90000, None, 5, 96, []]]]]]]),
        frame([1, "r", ["p", "u", "n", "tracks"]]),
        frame([1, "r", ["p", "u"]]),
        frame([3, "r", ["s", "u", None]]),
        frame([5, "r", "from", "text"], version=VERSION)[:-2],
        b"\x01\xdd\xff\xff\xff\xff",  # an array claiming 4 G items
    ],
)
def test_malformed_commands_are_codec_errors(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_newer_trailing_fields_are_ignored() -> None:
    # The compatibility rule: a newer release may append optional fields to a type.
    assert decode(frame([5, "r", "alice-1", "hi", "a future field", 42])) == Chat(
        "r", "alice-1", "hi"
    )
    record = frame([codec.TAG_SUBSCRIBER_INFO, ["s", "u", "n", {"new": 1}], "more"])
    assert decode_subscriber(record) == SubscriberInfo("s", "u", "n")


def test_records_are_not_commands_and_not_each_other() -> None:
    with pytest.raises(CodecError):
        decode(encode_publisher(ALICE))
    with pytest.raises(CodecError):
        decode_publisher(encode_subscriber(BOB))
    with pytest.raises(CodecError):
        decode_subscriber(encode_publisher(ALICE))
    with pytest.raises(CodecError):
        decode_publisher(encode(PubJoin("r", ALICE)))


def test_unencodable_values_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        encode(Chat("r", "a", "\ud800"))  # a lone surrogate has no UTF-8 form
    with pytest.raises(CodecError):
        encode(Nack("r", "p", "t", (1 << 70,)))
    with pytest.raises(CodecError):
        encode("not a command")  # type: ignore[arg-type]


# -- subject tokens ----------------------------------------------------------------------------


@given(st.text(max_size=80), st.text(max_size=80))
def test_subject_tokens_are_single_bounded_tokens_and_distinct(a: str, b: str) -> None:
    token = subject_token(a)
    assert token and len(token) <= MAX_TOKEN
    assert all(c.isascii() and (c.isalnum() or c in "_-~") for c in token)
    assert (subject_token(a) == subject_token(b)) == (a == b)


def test_subject_tokens_are_readable() -> None:
    assert subject_token("room-1_a") == "room-1_a"  # the common case: unchanged
    assert subject_token("a.b") == "a~2eb"
    assert subject_token("a..b") != subject_token("a.b")
    assert subject_token("~2e") == "~7e2e"  # the escape character is escaped itself
    assert subject_token("") == "~"
    assert subject_token("*") == "~2a" and subject_token(">") == "~3e"
    long = "{" + "f" * 60 + "}"
    token = subject_token(long)
    assert len(token) == MAX_TOKEN and token.startswith("~7bffff") and "~~" in token


def test_a_track_record_without_extensions_decodes() -> None:
    """Records written before extensions were added (three fields) still decode."""
    old = frame([TAG_PUB_JOIN, "r", ["p-1", "p", "n", [["t", "video", []]]]])
    command = decode(old)
    assert isinstance(command, PubJoin)
    assert command.publisher.tracks == (TrackInfo("t", "video", (), ()),)


def test_a_track_record_without_app_id_decodes_unlabelled_and_unmuted() -> None:
    """Records written before issue 15 (four fields) decode with no label, not muted."""
    old = frame([TAG_PUB_JOIN, "r", ["p-1", "p", "n", [["t", "video", [], []]]]])
    command = decode(old)
    assert isinstance(command, PubJoin)
    assert command.publisher.tracks == (TrackInfo("t", "video", (), (), "", False),)


def test_a_track_change_carries_labels_and_mute() -> None:
    info = dataclasses.replace(
        ALICE,
        tracks=(dataclasses.replace(ALICE.tracks[1], app_id="screen", muted=True),),
    )
    decoded = decode(encode(TrackChange("room-1", info)))
    assert isinstance(decoded, TrackChange)
    assert decoded.publisher.tracks[0].app_id == "screen" and decoded.publisher.tracks[0].muted


def test_a_non_bool_muted_is_a_codec_error() -> None:
    bad = frame([TAG_PUB_JOIN, "r", ["p-1", "p", "n", [["t", "video", [], [], "cam", 1]]]])
    with pytest.raises(CodecError):
        decode(bad)
