"""The SFU's data model: roles, tracks, codecs, publishers, and the room commands.

``TrackInfo``/``PublisherInfo``/… describe what a room holds; the ``Command`` union (the seed's
``Command`` enum) is what travels between a room's members. Single-node, commands go through
the in-process bus as these objects; in cluster mode ``cluster/`` encodes the same dataclasses
for NATS and stores the infos in Redis — it imports this module, never the reverse. Everything
here is plain data (str/int/bool/tuples of plain data), so the encoding is mechanical and
versionable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: How a connection takes part in a room, in the vocabulary of the URLs and ICE usernames:
#: ``pub`` publishes (``/pub/…``, WHIP), ``sub`` is the seed's subscriber (``/sub/…``), ``whep``
#: a WHEP viewer.
Role = Literal["pub", "sub", "whep"]
#: The word logs and ``/metrics`` labels use for each role.
ROLE_NAMES: dict[Role, str] = {"pub": "publisher", "sub": "subscriber", "whep": "viewer"}


@dataclass(slots=True, frozen=True)
class CodecInfo:
    """A negotiated codec of a published track (RTX included, paired through ``apt=`` fmtp)."""

    name: str
    clock_rate: int
    channels: int | None
    fmtp: str | None
    payload_type: int
    rtcp_fb: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class TrackInfo:
    """One published track as a subscriber needs to know it to offer a matching m-section."""

    track_id: str
    kind: str  # "audio" | "video"
    #: what the publisher negotiated, in its preference order
    codecs: tuple[CodecInfo, ...] = ()
    #: the header extensions of the publisher leg: (id, uri)
    extensions: tuple[tuple[int, str], ...] = ()
    #: the publisher's label for the track (``camera``, ``screen``, ``mic``…; issue 15)
    app_id: str = ""
    #: the publisher muted it (``MUTE``): nothing is forwarded until it unmutes
    muted: bool = False
    #: simulcast (RFC 8853): its streams' rids, lowest first (empty: one stream); other pods
    #: receive each through the relay as :func:`relay_stream` names it
    rids: tuple[str, ...] = ()


def relay_stream(track_id: str, rid: str | None = None) -> str:
    """The relay's name for one stream of a track: the track id for its only or top stream
    (what every pod relayed before simulcast crossed pods), ``<track>/<rid>`` for another
    simulcast stream (``/`` is no token character, RFC 8830 §2, so it cannot be in an id)."""
    return track_id if rid is None else f"{track_id}/{rid}"


def parse_relay_stream(name: str) -> tuple[str, str | None]:
    """(track id, rid or None) of a :func:`relay_stream` name."""
    track_id, _, rid = name.partition("/")
    return track_id, rid or None


@dataclass(slots=True, frozen=True)
class PublisherInfo:
    publisher_id: str
    user: str
    node: str
    tracks: tuple[TrackInfo, ...] = ()

    @property
    def audio(self) -> int:
        return sum(1 for t in self.tracks if t.kind == "audio")

    @property
    def video(self) -> int:
        return sum(1 for t in self.tracks if t.kind == "video")


@dataclass(slots=True, frozen=True)
class SubscriberInfo:
    subscriber_id: str
    user: str
    node: str


@dataclass(slots=True, frozen=True)
class PubJoin:
    room: str
    publisher: PublisherInfo


@dataclass(slots=True, frozen=True)
class PubLeft:
    room: str
    publisher_id: str


@dataclass(slots=True, frozen=True)
class TrackChange:
    """A live publisher's tracks changed (added, removed, muted or unmuted; issue 15).

    It carries the publisher's whole new info rather than a delta: a pod applies it by
    comparing with what it knew, so a lost or reordered change is repaired by the next one.
    """

    room: str
    publisher: PublisherInfo


@dataclass(slots=True, frozen=True)
class SubJoin:
    room: str
    subscriber: SubscriberInfo


@dataclass(slots=True, frozen=True)
class SubLeft:
    room: str
    subscriber_id: str


@dataclass(slots=True, frozen=True)
class Chat:
    room: str
    from_id: str
    text: str


@dataclass(slots=True, frozen=True)
class KeyframeRequest:
    """A subscriber somewhere wants a keyframe of this track (PLI/FIR, throttled at the source)."""

    room: str
    publisher_id: str
    track_id: str


@dataclass(slots=True, frozen=True)
class Nack:
    room: str
    publisher_id: str
    track_id: str
    sequence_numbers: tuple[int, ...] = field(default=())


@dataclass(slots=True, frozen=True)
class SpeakerLevels:
    """One pod's audio publishers' mean loudness (``127 - RFC 6464 level``; 0 is silence)
    over the last speaker window, four times a second (issue 11; ``sfu/speaker.py``)."""

    room: str
    node: str
    levels: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True, frozen=True)
class ActiveSpeaker:
    """The room's deciding pod's active speaker (``""``: none yet) and the smoothed levels
    (dBov, loudest first) of who is audible; on change, at most twice a second otherwise."""

    room: str
    node: str
    speaker: str
    levels: tuple[tuple[str, int], ...] = ()


Command = (
    PubJoin
    | PubLeft
    | TrackChange
    | SubJoin
    | SubLeft
    | Chat
    | KeyframeRequest
    | Nack
    | SpeakerLevels
    | ActiveSpeaker
)
