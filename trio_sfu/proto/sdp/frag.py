"""SDP fragments for trickle ICE and ICE restarts (RFC 8840 §9: trickle-ice-sdpfrag).

WHIP and WHEP (RFC 9725) carry them in HTTP PATCH bodies: the client sends its new
candidates, or new ICE credentials for a restart, and the server answers a restart with its own
fragment. A fragment is a few session-level attributes (``ice-lite``, ``ice-options``,
``ice-ufrag``, ``ice-pwd``, ``group``, ``end-of-candidates``) followed by m-lines, each with
its ``a=mid`` and the ``a=candidate`` lines that belong to it (RFC 8840 §9.2).

Like :mod:`.parser`, the parser is total: anything at all becomes an :class:`SdpFrag` or an
:class:`~trio_sfu.proto.errors.SdpError`. Credentials are checked against RFC 8839 §5.4 here
(ice-char only, ufrag 4-256 and pwd 22-256 characters), because they end up in STUN USERNAME
attributes where a ``:`` or a space would change their meaning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from aioice import Candidate

from ..errors import SdpError
from .model import Attribute, Group, IceCandidate
from .parser import _candidate, _LineError, _token, _uint, feed_lines

__all__ = ["MAX_FRAG_LENGTH", "FragMedia", "SdpFrag", "build_frag", "parse_frag"]

#: A fragment with every candidate of a multi-homed host is a few KiB; 64 KiB bounds the work.
MAX_FRAG_LENGTH = 64 * 1024
#: More m-lines than this is not a real session's fragment.
MAX_FRAG_MEDIA = 256

# RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"; ufrag 4..256 and pwd 22..256 of them.
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}\Z")
_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}\Z")


@dataclass(slots=True)
class FragMedia:
    """One m-line of a fragment: it only says which m-section (mid) the candidates are for."""

    kind: str
    mid: str
    port: int = 9
    protocol: str = "UDP/TLS/RTP/SAVPF"
    formats: list[str] = field(default_factory=lambda: ["0"])
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[IceCandidate] = field(default_factory=list)
    end_of_candidates: bool = False
    attributes: list[Attribute] = field(default_factory=list)


@dataclass(slots=True)
class SdpFrag:
    """A parsed fragment. ``ice_ufrag``/``ice_pwd`` are the effective credentials: the
    session-level ones, or the (identical) media-level ones."""

    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    end_of_candidates: bool = False
    attributes: list[Attribute] = field(default_factory=list)
    media: list[FragMedia] = field(default_factory=list)

    @property
    def candidates(self) -> list[tuple[str, IceCandidate]]:
        """Every candidate with the mid of the m-line it was listed under."""
        return [(m.mid, c) for m in self.media for c in m.candidates]

    @property
    def complete(self) -> bool:
        """``a=end-of-candidates`` at session level or on any m-line (RFC 8840 §4.4)."""
        return self.end_of_candidates or any(m.end_of_candidates for m in self.media)

    def serialize(self) -> str:
        """CRLF-terminated lines: the WHIP/WHEP clients we know match ``\\r\\n`` literally."""
        out: list[str] = []
        if self.ice_lite:
            out.append("a=ice-lite")
        if self.ice_options:
            out.append("a=ice-options:" + " ".join(self.ice_options))
        out.extend(" ".join([f"a=group:{g.semantics}", *g.mids]) for g in self.groups)
        if self.ice_ufrag is not None:
            out.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd is not None:
            out.append(f"a=ice-pwd:{self.ice_pwd}")
        out.extend(_attribute_line(a) for a in self.attributes)
        if self.end_of_candidates:
            out.append("a=end-of-candidates")
        for m in self.media:
            out.append(" ".join([f"m={m.kind}", str(m.port), m.protocol, *m.formats]))
            out.append(f"a=mid:{m.mid}")
            if m.ice_ufrag is not None:
                out.append(f"a=ice-ufrag:{m.ice_ufrag}")
            if m.ice_pwd is not None:
                out.append(f"a=ice-pwd:{m.ice_pwd}")
            out.extend(f"a=candidate:{c.to_sdp()}" for c in m.candidates)
            out.extend(_attribute_line(a) for a in m.attributes)
            if m.end_of_candidates:
                out.append("a=end-of-candidates")
        out.append("")
        return "\r\n".join(out)

    def __str__(self) -> str:
        return self.serialize()


def _attribute_line(attr: Attribute) -> str:
    return f"a={attr.name}" if attr.value is None else f"a={attr.name}:{attr.value}"


def build_frag(
    ice_ufrag: str,
    ice_pwd: str,
    *,
    candidates: Sequence[Candidate] = (),
    mid: str = "0",
    kind: str = "audio",
    bundle: Sequence[str] = (),
    ice_lite: bool = False,
    ice_options: Sequence[str] = (),
    end_of_candidates: bool = True,
) -> SdpFrag:
    """A fragment announcing credentials and candidates for one (bundled) transport.

    With BUNDLE every m-section shares the transport of its first mid, so the candidates go
    under that single m-line (RFC 8843 §10.1, RFC 8840 §4.4). ValueError if the credentials
    are not valid ICE credentials (RFC 8839 §5.4).
    """
    if not _UFRAG.match(ice_ufrag) or not _PWD.match(ice_pwd):
        raise ValueError("ICE ufrag/pwd must be 4-256 / 22-256 ice-chars (RFC 8839 §5.4)")
    media = FragMedia(
        kind=kind,
        mid=mid,
        candidates=[IceCandidate.from_candidate(c) for c in candidates],
        end_of_candidates=end_of_candidates,
    )
    return SdpFrag(
        ice_lite=ice_lite,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        ice_options=list(ice_options),
        groups=[Group("BUNDLE", list(bundle))] if bundle else [],
        media=[media],
    )


def _credential(value: str, what: str, pattern: re.Pattern[str]) -> str:
    token = _token(value, what)
    if not pattern.match(token):
        size = "4-256" if what == "ice-ufrag" else "22-256"
        raise _LineError(f"{what} must be {size} ice-chars (RFC 8839 §5.4)")
    return token


class _FragParser:
    __slots__ = ("frag", "media", "seen")

    def __init__(self) -> None:
        self.frag = SdpFrag()
        self.media: FragMedia | None = None
        self.seen: set[str] = set()  # session-level, or the current m-line's, single attributes

    def once(self, name: str) -> None:
        if name in self.seen:
            raise _LineError(f"duplicate a={name}")
        self.seen.add(name)

    def line(self, line: str) -> None:
        if len(line) < 2 or line[1] != "=":
            raise _LineError("not an SDP line (<type>=<value>)")
        kind, value = line[0], line[2:]
        if kind == "m":
            self.m_line(value)
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            self.attribute(name, attr_value if sep else None)
        else:
            # RFC 8840 §9.2: a fragment holds attribute lines and media descriptions only.
            raise _LineError(f"{kind}= lines do not belong in an ICE fragment")

    def m_line(self, value: str) -> None:
        self.finish_media()
        if len(self.frag.media) >= MAX_FRAG_MEDIA:
            raise _LineError(f"more than {MAX_FRAG_MEDIA} m-lines")
        parts = value.split()
        if len(parts) < 4:
            raise _LineError("m= needs <media> <port> <proto> <fmt>...")
        port_text = parts[1].partition("/")[0]
        self.media = FragMedia(
            kind=parts[0],
            mid="",
            port=_uint(port_text, "port", 65535),
            protocol=parts[2],
            formats=parts[3:],
        )
        self.seen = set()

    def finish_media(self) -> None:
        media = self.media
        if media is None:
            return
        if not media.mid:
            # RFC 8840 §4.4: every m-line of a fragment is identified by its a=mid.
            raise _LineError(f"m={media.kind} has no a=mid")
        self.frag.media.append(media)
        self.media = None

    def attribute(self, name: str, value: str | None) -> None:
        media = self.media
        if name == "candidate" and value is not None:
            if media is None:
                raise _LineError("a=candidate before any m= line (which mid is it for?)")
            media.candidates.append(_candidate(value))
        elif name == "end-of-candidates" and value is None:
            if media is None:
                self.frag.end_of_candidates = True
            else:
                media.end_of_candidates = True
        elif name == "ice-ufrag" and value is not None:
            self.once(name)
            ufrag = _credential(value, name, _UFRAG)
            if media is None:
                self.frag.ice_ufrag = ufrag
            else:
                media.ice_ufrag = ufrag
        elif name == "ice-pwd" and value is not None:
            self.once(name)
            pwd = _credential(value, name, _PWD)
            if media is None:
                self.frag.ice_pwd = pwd
            else:
                media.ice_pwd = pwd
        elif name == "mid" and value is not None and media is not None:
            self.once(name)
            media.mid = _token(value, "mid")
        elif media is None and name == "ice-lite" and value is None:
            self.frag.ice_lite = True
        elif media is None and name == "ice-options" and value is not None:
            self.frag.ice_options.extend(value.split())
        elif media is None and name == "group" and value is not None:
            parts = value.split()
            if not parts:
                raise _LineError("group needs a semantics token")
            self.frag.groups.append(Group(parts[0], parts[1:]))
        elif not name or name != name.strip():
            raise _LineError("attribute name is missing")
        else:
            (self.frag.attributes if media is None else media.attributes).append(
                Attribute(name, value)
            )

    def finish(self) -> SdpFrag:
        self.finish_media()
        frag = self.frag
        # The effective credentials: one value wherever they appear (RFC 8839 §5.4 scopes them
        # per transport, and a BUNDLE transport has one ufrag/pwd).
        for attr in ("ice_ufrag", "ice_pwd"):
            values = {getattr(frag, attr)} | {getattr(m, attr) for m in frag.media}
            values.discard(None)
            if len(values) > 1:
                raise SdpError(f"the fragment's m-lines disagree on {attr.replace('_', '-')}")
            if values:
                setattr(frag, attr, values.pop())
        if frag.ice_pwd is not None and frag.ice_ufrag is None:
            raise SdpError("a=ice-pwd without a=ice-ufrag")
        mids = [m.mid for m in frag.media]
        if len(set(mids)) != len(mids):
            raise SdpError("the same mid appears on two m-lines")
        return frag


def parse_frag(text: str | bytes, *, max_length: int = MAX_FRAG_LENGTH) -> SdpFrag:
    """Parse a trickle-ice-sdpfrag body (LF or CRLF); raises :class:`SdpError` only."""
    parser = _FragParser()
    feed_lines(text, parser.line, max_length=max_length, what="fragment")
    try:
        return parser.finish()
    except _LineError as exc:
        raise SdpError(str(exc)) from None
