"""The data-channel command protocol: one UTF-8 text command per message (README, "Protocol").

Parsing is strict and total: anything a client sends becomes either a command or a
:class:`CommandError` whose message goes back as ``ERROR <text>``; the connection stays up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from trio_sfu.cluster.commands import PublisherInfo

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A chat line may be long, but not unbounded (the data channel allows 256 KiB messages).
MAX_CHAT = 4096


class CommandError(ValueError):
    """A malformed or unknown command; the message is safe to send back as ``ERROR``."""


def valid_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def user_of(connection_id: str) -> str:
    """The seed's unique-id rule: the user id is the part before the last ``-``."""
    user, sep, _ = connection_id.rpartition("-")
    return user if sep and user else connection_id


@dataclass(slots=True, frozen=True)
class SdpAnswer:
    sdp: str


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


ClientCommand = SdpAnswer | Stop | Sub | Unsub | SubMode | ChatCommand | SdpRecycle


def parse_command(message: str | bytes) -> ClientCommand:
    if isinstance(message, bytes):
        raise CommandError("commands are text messages")
    name, _, arg = message.partition(" ")
    if name == "SDP_ANSWER":
        if not arg.strip():
            raise CommandError("SDP_ANSWER needs an SDP")
        return SdpAnswer(arg)
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
                "tracks": [{"kind": t.kind, "track": t.track_id} for t in p.tracks],
            }
            for p in sorted(publishers, key=lambda p: p.publisher_id)
        ]
    }
    return "MEDIA " + json.dumps(body, separators=(",", ":"))
