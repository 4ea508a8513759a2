"""The data-channel command protocol: one UTF-8 text command per message (README, "Protocol").

Parsing is strict and total: anything a client sends becomes either a command or a
:class:`CommandError` whose message goes back as ``ERROR <text>``; the connection stays up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from trio_sfu.sfu.model import PublisherInfo, TrackInfo

#: The one definition of a name (issue 16): rooms, connection ids, APP_IDs, node ids and API
#: key ids all follow the seed's id rule. A user name (a token's identity) leaves room for
#: "-" and an 8-symbol suffix in a 64-character connection id.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
USER_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,55}")
#: A chat line may be long, but not unbounded (the data channel allows 256 KiB messages).
MAX_CHAT = 4096


class CommandError(ValueError):
    """A malformed or unknown command; the message is safe to send back as ``ERROR``."""


def valid_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def valid_user(value: str) -> bool:
    return USER_PATTERN.fullmatch(value) is not None


def user_of(connection_id: str) -> str:
    """The seed's unique-id rule: the user id is the part before the last ``-``."""
    user, sep, _ = connection_id.rpartition("-")
    return user if sep and user else connection_id


@dataclass(slots=True, frozen=True)
class SdpAnswer:
    sdp: str


@dataclass(slots=True, frozen=True)
class SdpOffer:
    """A publisher renegotiates (issue 15): it stays the offerer of everything it sends."""

    sdp: str


@dataclass(slots=True, frozen=True)
class AddMedia:
    """The label (``APP_ID``) of the ``kind`` section the publisher's next SDP_OFFER adds."""

    kind: str
    app_id: str


@dataclass(slots=True, frozen=True)
class RemoveMedia:
    """Stop forwarding the publisher's ``kind`` track labelled ``app_id``, at once."""

    kind: str
    app_id: str


@dataclass(slots=True, frozen=True)
class Mute:
    track_id: str
    on: bool


@dataclass(slots=True, frozen=True)
class Stop:
    pass


@dataclass(slots=True, frozen=True)
class Sub:
    publisher_id: str


@dataclass(slots=True, frozen=True)
class Unsub:
    publisher_id: str


@dataclass(slots=True, frozen=True)
class SubMode:
    mode: str  # "auto" | "manual"


@dataclass(slots=True, frozen=True)
class ChatCommand:
    text: str


@dataclass(slots=True, frozen=True)
class SdpRecycle:
    on: bool


@dataclass(slots=True, frozen=True)
class LayerHint:
    """``LAYER``: which layer of a received video track (issue 11); ``off`` pauses it."""

    publisher_id: str
    track_id: str
    layer: str  # "low" | "mid" | "high" | "off" | "auto"


@dataclass(slots=True, frozen=True)
class SizeHint:
    """``SIZE``: the size a received video track is rendered at, for ``auto`` layer choice."""

    publisher_id: str
    track_id: str
    width: int
    height: int


ClientCommand = (
    SdpAnswer | SdpOffer | AddMedia | RemoveMedia | Mute | Stop | Sub | Unsub | SubMode
    | ChatCommand | SdpRecycle | LayerHint | SizeHint
)
LAYERS = ("low", "mid", "high", "off", "auto")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
#: A track id as it travels in commands: an msid track id (RFC 8830 §2 allows any token
#: characters, browsers send UUIDs or ``{uuid}``) or our ``mid<N>`` fallback.
TRACK_PATTERN = re.compile(r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]{1,64}")


def parse_command(message: str | bytes) -> ClientCommand:
    if isinstance(message, bytes):
        raise CommandError("commands are text messages")
    name, _, arg = message.partition(" ")
    if name == "SDP_ANSWER":
        if not arg.strip():
            raise CommandError("SDP_ANSWER needs an SDP")
        return SdpAnswer(arg)
    if name == "SDP_OFFER":
        if not arg.strip():
            raise CommandError("SDP_OFFER needs an SDP")
        return SdpOffer(arg)
    if name in ("ADD_MEDIA", "REMOVE_MEDIA"):
        kind, _, app_id = arg.partition(" ")
        if kind not in ("audio", "video") or not valid_id(app_id):
            raise CommandError(
                f"{name} takes audio or video and an APP_ID ([A-Za-z0-9_.-]{{1,64}})"
            )
        return AddMedia(kind, app_id) if name == "ADD_MEDIA" else RemoveMedia(kind, app_id)
    if name == "MUTE":
        track_id, _, state = arg.partition(" ")
        if TRACK_PATTERN.fullmatch(track_id) is None or state not in ("on", "off"):
            raise CommandError("MUTE takes a track id and on or off")
        return Mute(track_id, state == "on")
    if name == "STOP":
        if arg:
            raise CommandError("STOP takes no argument")
        return Stop()
    if name in ("SUB", "UNSUB"):
        if not valid_id(arg):
            raise CommandError(f"{name} needs a publisher id ([A-Za-z0-9_.-]{{1,64}})")
        return Sub(arg) if name == "SUB" else Unsub(arg)
    if name == "SUB_MODE":
        if arg not in ("auto", "manual"):
            raise CommandError("SUB_MODE takes auto or manual")
        return SubMode(arg)
    if name == "SDP_RECYCLE":
        if arg not in ("on", "off"):
            raise CommandError("SDP_RECYCLE takes on or off")
        return SdpRecycle(arg == "on")
    if name in ("LAYER", "SIZE"):
        parts = arg.split(" ")
        if (
            len(parts) != 3
            or not valid_id(parts[0])
            or TRACK_PATTERN.fullmatch(parts[1]) is None
        ):
            raise CommandError(f"{name} takes a publisher id, a track id and a value")
        if name == "LAYER":
            if parts[2] not in LAYERS:
                raise CommandError("LAYER takes low, mid, high, off or auto")
            return LayerHint(parts[0], parts[1], parts[2])
        size = _SIZE.fullmatch(parts[2])
        if size is None:
            raise CommandError("SIZE takes <width>x<height> in pixels")
        return SizeHint(parts[0], parts[1], int(size[1]), int(size[2]))
    if name == "CHAT":
        if not arg:
            raise CommandError("CHAT needs a text")
        if len(arg) > MAX_CHAT:
            raise CommandError(f"CHAT text longer than {MAX_CHAT} characters")
        return ChatCommand(arg)
    shown = name if len(name) <= 32 else name[:29] + "..."
    raise CommandError(f"unknown command {shown!r}")


#: Server → client: this pod is draining; reconnect through the same base URL (issue 4).
RECONNECT = "RECONNECT"


def pub_join(publisher_id: str) -> str:
    return f"PUB_JOIN {publisher_id}"


def pub_left(publisher_id: str) -> str:
    return f"PUB_LEFT {publisher_id}"


def sdp_offer(sdp: str) -> str:
    return f"SDP_OFFER {sdp}"


def sdp_answer(sdp: str) -> str:
    return f"SDP_ANSWER {sdp}"


def track_add(publisher_id: str, track: TrackInfo) -> str:
    return f"TRACK_ADD {publisher_id} {track.track_id} {track.kind} {track.app_id or track.kind}"


def track_remove(publisher_id: str, track_id: str) -> str:
    return f"TRACK_REMOVE {publisher_id} {track_id}"


def muted(publisher_id: str, track_id: str, on: bool) -> str:
    return f"MUTED {publisher_id} {track_id} {'on' if on else 'off'}"


def layers(track_id: str, rids: tuple[str, ...]) -> str:
    """``LAYERS <TRACK> <rid>,…`` (``-``: none): to a simulcast publisher, the streams of its
    track some subscriber needs; it may stop encoding the others (dynacast, issue 11)."""
    return f"LAYERS {track_id} {','.join(rids) or '-'}"


def chat(from_id: str, text: str) -> str:
    return f"CHAT {from_id} {text}"


def error(text: str) -> str:
    return f"ERROR {text}"


def media(publishers: list[PublisherInfo]) -> str:
    """``MEDIA <JSON>``: the room's publishers and their tracks (for manual mode)."""
    body = {
        "publishers": [
            {
                "id": p.publisher_id,
                "user": p.user,
                "audio": p.audio,
                "video": p.video,
                "tracks": [
                    {
                        "kind": t.kind,
                        "track": t.track_id,
                        "app_id": t.app_id or t.kind,
                        "muted": t.muted,
                    }
                    for t in p.tracks
                ],
            }
            for p in sorted(publishers, key=lambda p: p.publisher_id)
        ]
    }
    return "MEDIA " + json.dumps(body, separators=(",", ":"))
