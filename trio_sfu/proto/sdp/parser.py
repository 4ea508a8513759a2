"""SDP text -> :class:`SessionDescription`, raising only :class:`SdpError`.

The parser is a single pass over the lines with one small handler per modelled attribute.
Everything that arrives from a signaling peer goes through here, so every number is checked
as ASCII digits with a bounded length before `int()` (Python's `int()` accepts Unicode digits,
signs, underscores, and refuses more than 4300 digits with ValueError), and every lookup that
could fail is guarded: the fuzz suite asserts that nothing but SdpError ever escapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import SdpError
from .model import (
    DIRECTIONS,
    SETUP_VALUES,
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    Group,
    HeaderExtension,
    IceCandidate,
    MediaSection,
    MsidSemantic,
    Origin,
    Rid,
    RtpCodec,
    SessionDescription,
    Simulcast,
    SimulcastRid,
    SsrcAttribute,
    SsrcGroup,
    Timing,
    extra_line_order,
)

#: Larger descriptions are refused before any work is done. A subscriber in a big room has two
#: m-sections per publisher of roughly 1-2 KiB each in a browser's answer, so 256 KiB leaves
#: room for ~80 publishers while still bounding the parse to a few milliseconds.
MAX_SDP_LENGTH = 256 * 1024
#: More m-sections than this is not a real session (RFC 8829 puts no limit; we do).
MAX_MEDIA_SECTIONS = 1024

_SESSION_FLAGS = frozenset(("ice-lite", "extmap-allow-mixed"))
_MEDIA_FLAGS = frozenset(
    ("rtcp-mux", "rtcp-mux-only", "rtcp-rsize", "end-of-candidates", "bundle-only",
     "extmap-allow-mixed")
)


class _LineError(Exception):
    """Raised by the small helpers; turned into SdpError with the line number by the loop."""


def _uint(text: str, what: str, maximum: int, minimum: int = 0) -> int:
    """A decimal number made of ASCII digits only, within [minimum, maximum]."""
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        raise _LineError(f"{what} is not a number: {text[:40]!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise _LineError(f"{what} {value} is out of range {minimum}..{maximum}")
    return value


def _token(text: str, what: str) -> str:
    """A single non-empty whitespace-free token."""
    parts = text.split()
    if len(parts) != 1:
        raise _LineError(f"{what} must be a single token")
    return parts[0]


# RFC 8866 §9: token-char, and proto = token *("/" token). An answer echoes a rejected
# section's media, proto and formats, so they must be what the grammar allows (never, e.g.,
# non-ASCII text a client smuggled in for us to repeat).
_TOKEN = r"[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7e]+"
_MEDIA_TOKEN = re.compile(_TOKEN + r"\Z")
_PROTO = re.compile(f"{_TOKEN}(?:/{_TOKEN})*" + r"\Z")


def _mid(value: str) -> str:
    mid = _token(value, "mid")
    if not _MEDIA_TOKEN.match(mid):
        raise _LineError(f"mid must be a token (RFC 5888): {mid[:40]!r}")
    return mid


_DIRECTION_VALUES: dict[str, Direction] = {
    "sendrecv": "sendrecv",
    "sendonly": "sendonly",
    "recvonly": "recvonly",
    "inactive": "inactive",
}


def _direction(text: str, what: str) -> Direction:
    direction = _DIRECTION_VALUES.get(text)
    if direction is None:
        raise _LineError(f"{what} must be sendrecv, sendonly, recvonly or inactive")
    return direction


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise _LineError("c= needs <nettype> <addrtype> <address>")
    return Connection(parts[0], parts[1], parts[2])


def _bandwidth(value: str) -> Bandwidth:
    kind, sep, amount = value.partition(":")
    if not sep or not kind or " " in kind:
        raise _LineError("b= needs <bwtype>:<bandwidth>")
    return Bandwidth(kind, _uint(amount.strip(), "bandwidth", 2**64))


def _origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise _LineError("o= needs 6 fields")
    session_id = _uint(parts[1], "session id", 10**20)
    session_version = _uint(parts[2], "session version", 10**20)
    return Origin(parts[0], session_id, session_version, parts[3], parts[4], parts[5])


def _timing(value: str) -> Timing:
    parts = value.split()
    if len(parts) != 2:
        raise _LineError("t= needs <start> <stop>")
    return Timing(_uint(parts[0], "start time", 2**64), _uint(parts[1], "stop time", 2**64))


def _fingerprint(value: str) -> tuple[str, str]:
    parts = value.split()
    if len(parts) != 2:
        raise _LineError("fingerprint needs <hash-function> <fingerprint>")
    return parts[0], parts[1]


def _setup(value: str) -> str:
    value = value.strip()
    if value not in SETUP_VALUES:
        raise _LineError("setup must be actpass, active, passive or holdconn")
    return value


def _candidate(value: str) -> IceCandidate:
    """RFC 8839 §5.1 candidate-attribute, kept whole (aioice fields + extension pairs)."""
    bits = value.split()
    if len(bits) < 8:
        raise _LineError("candidate needs at least 8 fields")
    if bits[6].lower() != "typ":
        raise _LineError("candidate is missing 'typ'")
    if (len(bits) - 8) % 2:
        raise _LineError("candidate extension without a value")
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    generation: int | None = None
    extensions: list[tuple[str, str]] = []
    for i in range(8, len(bits), 2):
        name, item = bits[i], bits[i + 1]
        if name == "raddr" and related_address is None:
            related_address = item
        elif name == "rport" and related_port is None:
            related_port = _uint(item, "rport", 65535)
        elif name == "tcptype" and tcptype is None:
            tcptype = item
        elif name == "generation" and generation is None:
            generation = _uint(item, "generation", 2**32 - 1)
        elif name in ("raddr", "rport", "tcptype", "generation"):
            raise _LineError(f"candidate repeats {name!r}")
        else:
            extensions.append((name, item))
    return IceCandidate(
        foundation=bits[0],
        component=_uint(bits[1], "component", 256, 1),
        transport=bits[2],
        priority=_uint(bits[3], "priority", 2**32 - 1),
        host=bits[4],
        port=_uint(bits[5], "port", 65535),
        type=bits[7],
        related_address=related_address,
        related_port=related_port,
        tcptype=tcptype,
        generation=generation,
        extensions=extensions,
    )


def _extmap(value: str) -> HeaderExtension:
    parts = value.split(None, 2)
    if len(parts) < 2:
        raise _LineError("extmap needs <id> <uri>")
    ident, slash, direction = parts[0].partition("/")
    number = _uint(ident, "extmap id", 4351, 1)
    if 255 < number < 4096:
        raise _LineError(f"extmap id {number} is not valid (RFC 8285 §5)")
    return HeaderExtension(
        id=number,
        uri=parts[1],
        direction=_direction(direction, "extmap direction") if slash else None,
        attributes=parts[2].strip() if len(parts) == 3 else None,
    )


def _ssrc(value: str) -> SsrcAttribute:
    parts = value.split(None, 1)
    if len(parts) != 2:
        raise _LineError("ssrc needs <ssrc> <attribute>")
    name, sep, attr_value = parts[1].partition(":")
    if not name or name != name.strip():
        raise _LineError("ssrc attribute name is missing")
    return SsrcAttribute(_uint(parts[0], "ssrc", 2**32 - 1), name, attr_value if sep else None)


def _ssrc_group(value: str) -> SsrcGroup:
    parts = value.split()
    if len(parts) < 2:
        raise _LineError("ssrc-group needs <semantics> <ssrc>...")
    return SsrcGroup(parts[0], [_uint(p, "ssrc", 2**32 - 1) for p in parts[1:]])


def _rid(value: str) -> Rid:
    parts = value.split(None, 2)
    if len(parts) < 2:
        raise _LineError("rid needs <id> send|recv")
    if parts[1] not in ("send", "recv"):
        raise _LineError("rid direction must be send or recv")
    params = parts[2].strip() if len(parts) == 3 else None
    return Rid(parts[0], "send" if parts[1] == "send" else "recv", params)


def _simulcast_streams(text: str) -> list[list[SimulcastRid]]:
    if text.startswith("rid="):  # draft-ietf-mmusic-sdp-simulcast-13 syntax, older browsers
        text = text[4:]
    streams: list[list[SimulcastRid]] = []
    for stream in text.split(";"):
        alternatives: list[SimulcastRid] = []
        for item in stream.split(","):
            paused = item.startswith("~")
            rid = item[1:] if paused else item
            if not rid or rid.startswith("~"):
                raise _LineError("empty rid in simulcast list")
            alternatives.append(SimulcastRid(rid, paused))
        streams.append(alternatives)
    return streams


def _simulcast(value: str) -> Simulcast:
    parts = value.split()
    if len(parts) not in (2, 4):
        raise _LineError("simulcast needs send|recv <streams> [send|recv <streams>]")
    result = Simulcast()
    seen: set[str] = set()
    for direction, text in zip(parts[0::2], parts[1::2], strict=True):
        if direction not in ("send", "recv") or direction in seen:
            raise _LineError("simulcast direction must be send or recv, each at most once")
        seen.add(direction)
        streams = _simulcast_streams(text)
        if direction == "send":
            result.send = streams
        else:
            result.recv = streams
    return result


def _rtpmap(value: str) -> tuple[int, str, int, int | None]:
    parts = value.split()
    if len(parts) != 2:
        raise _LineError("rtpmap needs <payload type> <encoding>/<clock rate>[/<channels>]")
    pt = _uint(parts[0], "payload type", 127)
    encoding = parts[1].split("/")
    if len(encoding) not in (2, 3) or not encoding[0]:
        raise _LineError("rtpmap encoding must be <name>/<clock rate>[/<channels>]")
    clock = _uint(encoding[1], "clock rate", 2**32 - 1, 1)
    channels = _uint(encoding[2], "channels", 255, 1) if len(encoding) == 3 else None
    return pt, encoding[0], clock, channels


def _pt_and_rest(value: str, what: str) -> tuple[str, str]:
    parts = value.split(None, 1)
    if not parts:
        raise _LineError(f"{what} needs a payload type")
    return parts[0], parts[1].strip() if len(parts) == 2 else ""


class _MediaBuilder:
    """Per m-section state: codec lines are resolved once the section is complete."""

    __slots__ = ("codec_lines", "feedback", "fmtps", "media", "rtpmaps", "seen")

    def __init__(self, media: MediaSection) -> None:
        self.media = media
        self.rtpmaps: dict[int, tuple[str, int, int | None]] = {}
        self.fmtps: dict[int, str] = {}
        self.feedback: dict[int, list[str]] = {}
        # every rtpmap/fmtp/rtcp-fb attribute with its payload type, placed provisionally
        # among the unknown attributes and removed in finish() if it belongs to a codec
        self.codec_lines: list[tuple[Attribute, int]] = []
        self.seen: set[str] = set()

    def once(self, name: str) -> None:
        if name in self.seen:
            raise _LineError(f"duplicate a={name}")
        self.seen.add(name)

    def codec_line(self, attr: Attribute, pt: int) -> None:
        self.codec_lines.append((attr, pt))
        self.media.attributes.append(attr)

    def finish(self) -> None:
        media = self.media
        if not media.is_rtp:
            return
        codecs: list[RtpCodec] = []
        for fmt in media.formats:
            pt = int(fmt)  # validated as 0..127 by _media_line
            entry = self.rtpmaps.get(pt)
            if entry is None:  # no rtpmap: e.g. a static payload type (RFC 3551) we keep as is
                continue
            name, clock, channels = entry
            codecs.append(
                RtpCodec(pt, name, clock, channels, self.fmtps.get(pt), self.feedback.get(pt, []))
            )
        media.codecs = codecs
        used = {c.payload_type for c in codecs}
        # Codec lines for payload types that are not codecs of this section stay unmodelled,
        # in their original order relative to the other unknown attributes.
        placed = {id(attr) for attr, pt in self.codec_lines if pt in used}
        if placed:
            media.attributes = [a for a in media.attributes if id(a) not in placed]


def _media_attribute(b: _MediaBuilder, name: str, value: str | None) -> None:
    """Apply one media-level a= line; unknown or malformed-as-flag ones are kept verbatim."""
    m = b.media
    handler = _MEDIA_HANDLERS.get(name)
    if value is None:
        if name in _MEDIA_FLAGS:
            setattr(m, name.replace("-", "_"), True)
            return
        if name in DIRECTIONS:
            if m.direction is not None and m.direction != name:
                raise _LineError("conflicting direction attributes")
            m.direction = _direction(name, "direction")
            return
    elif handler is not None:
        handler(b, value)
        return
    m.attributes.append(Attribute(name, value))


def _m_once(field_name: str, attr: str, parse: Callable[[str], object]) -> Callable[
    [_MediaBuilder, str], None
]:
    def handler(b: _MediaBuilder, value: str) -> None:
        b.once(attr)
        setattr(b.media, field_name, parse(value))

    return handler


def _h_rtpmap(b: _MediaBuilder, value: str) -> None:
    attr = Attribute("rtpmap", value)
    if not b.media.is_rtp:
        b.media.attributes.append(attr)
        return
    pt, name, clock, channels = _rtpmap(value)
    b.once(f"rtpmap:{pt}")
    b.rtpmaps[pt] = (name, clock, channels)
    b.codec_line(attr, pt)


def _h_fmtp(b: _MediaBuilder, value: str) -> None:
    attr = Attribute("fmtp", value)
    if not b.media.is_rtp:
        b.media.attributes.append(attr)
        return
    pt_text, params = _pt_and_rest(value, "fmtp")
    pt = _uint(pt_text, "payload type", 127)
    b.once(f"fmtp:{pt}")
    b.fmtps[pt] = params
    b.codec_line(attr, pt)


def _h_rtcp_fb(b: _MediaBuilder, value: str) -> None:
    attr = Attribute("rtcp-fb", value)
    if not b.media.is_rtp:
        b.media.attributes.append(attr)
        return
    pt_text, fb = _pt_and_rest(value, "rtcp-fb")
    if not fb:
        raise _LineError("rtcp-fb needs a feedback type")
    if pt_text == "*":  # wildcard feedback (RFC 4585 §4.2) stays unmodelled
        b.media.attributes.append(attr)
        return
    pt = _uint(pt_text, "payload type", 127)
    b.feedback.setdefault(pt, []).append(" ".join(fb.split()))
    b.codec_line(attr, pt)


def _h_candidate(b: _MediaBuilder, value: str) -> None:
    b.media.candidates.append(_candidate(value))


def _h_ice_options(b: _MediaBuilder, value: str) -> None:
    b.media.ice_options.extend(value.split())


def _h_fingerprint(b: _MediaBuilder, value: str) -> None:
    b.media.fingerprints.append(_fingerprint(value))


def _h_msid(b: _MediaBuilder, value: str) -> None:
    parts = value.split()
    if len(parts) not in (1, 2):
        raise _LineError("msid needs <stream id> [<track id>]")
    b.media.msid.append((parts[0], parts[1] if len(parts) == 2 else None))


def _h_rtcp(b: _MediaBuilder, value: str) -> None:
    b.once("rtcp")
    parts = value.split()
    if not parts:
        raise _LineError("rtcp needs a port")
    _uint(parts[0], "rtcp port", 65535)
    b.media.rtcp = " ".join(parts)


def _h_extmap(b: _MediaBuilder, value: str) -> None:
    ext = _extmap(value)
    b.once(f"extmap:{ext.id}")
    b.media.extmaps.append(ext)


def _h_ssrc(b: _MediaBuilder, value: str) -> None:
    b.media.ssrcs.append(_ssrc(value))


def _h_ssrc_group(b: _MediaBuilder, value: str) -> None:
    b.media.ssrc_groups.append(_ssrc_group(value))


def _h_rid(b: _MediaBuilder, value: str) -> None:
    b.media.rids.append(_rid(value))


def _h_sctp_port(b: _MediaBuilder, value: str) -> None:
    b.once("sctp-port")
    b.media.sctp_port = _uint(value.strip(), "sctp-port", 65535)


def _h_max_message_size(b: _MediaBuilder, value: str) -> None:
    b.once("max-message-size")
    b.media.max_message_size = _uint(value.strip(), "max-message-size", 2**64)


_MEDIA_HANDLERS: dict[str, Callable[[_MediaBuilder, str], None]] = {
    "mid": _m_once("mid", "mid", _mid),
    "ice-ufrag": _m_once("ice_ufrag", "ice-ufrag", lambda v: _token(v, "ice-ufrag")),
    "ice-pwd": _m_once("ice_pwd", "ice-pwd", lambda v: _token(v, "ice-pwd")),
    "setup": _m_once("setup", "setup", _setup),
    "simulcast": _m_once("simulcast", "simulcast", _simulcast),
    "ice-options": _h_ice_options,
    "fingerprint": _h_fingerprint,
    "candidate": _h_candidate,
    "msid": _h_msid,
    "rtcp": _h_rtcp,
    "rtpmap": _h_rtpmap,
    "fmtp": _h_fmtp,
    "rtcp-fb": _h_rtcp_fb,
    "extmap": _h_extmap,
    "ssrc": _h_ssrc,
    "ssrc-group": _h_ssrc_group,
    "rid": _h_rid,
    "sctp-port": _h_sctp_port,
    "max-message-size": _h_max_message_size,
}


def _session_attribute(
    desc: SessionDescription, seen: set[str], name: str, value: str | None
) -> None:
    def once() -> None:
        if name in seen:
            raise _LineError(f"duplicate a={name}")
        seen.add(name)

    if value is None:
        if name in _SESSION_FLAGS:
            setattr(desc, name.replace("-", "_"), True)
            return
        if name in DIRECTIONS:
            if desc.direction is not None and desc.direction != name:
                raise _LineError("conflicting direction attributes")
            desc.direction = _direction(name, "direction")
            return
    elif name == "group":
        parts = value.split()
        if not parts:
            raise _LineError("group needs a semantics token")
        desc.groups.append(Group(parts[0], parts[1:]))
        return
    elif name == "ice-ufrag":
        once()
        desc.ice_ufrag = _token(value, "ice-ufrag")
        return
    elif name == "ice-pwd":
        once()
        desc.ice_pwd = _token(value, "ice-pwd")
        return
    elif name == "ice-options":
        desc.ice_options.extend(value.split())
        return
    elif name == "fingerprint":
        desc.fingerprints.append(_fingerprint(value))
        return
    elif name == "setup":
        once()
        desc.setup = _setup(value)
        return
    elif name == "msid-semantic":
        once()
        parts = value.split()
        if not parts:
            raise _LineError("msid-semantic needs a semantics token")
        desc.msid_semantic = MsidSemantic(parts[0], parts[1:])
        return
    desc.attributes.append(Attribute(name, value))


def _media_line(value: str) -> MediaSection:
    parts = value.split()
    if len(parts) < 4:
        raise _LineError("m= needs <media> <port> <proto> <fmt>...")
    if not _MEDIA_TOKEN.match(parts[0]):
        raise _LineError(f"media must be a token: {parts[0][:40]!r}")
    if not _PROTO.match(parts[2]):
        raise _LineError(f"proto must be tokens separated by '/': {parts[2][:40]!r}")
    for fmt in parts[3:]:
        if not _MEDIA_TOKEN.match(fmt):
            raise _LineError(f"fmt must be a token: {fmt[:40]!r}")
    port_text, slash, count_text = parts[1].partition("/")
    port = _uint(port_text, "port", 65535)
    port_count = _uint(count_text, "port count", 65535, 1) if slash else None
    media = MediaSection(parts[0], port, parts[2], parts[3:], port_count)
    if media.is_rtp:
        seen: set[int] = set()
        for fmt in media.formats:
            pt = _uint(fmt, "payload type", 127)
            if pt in seen:
                raise _LineError(f"payload type {pt} listed twice")
            seen.add(pt)
    return media


class _Parser:
    """Line-by-line state of one parse: where we are (session or which m-section)."""

    __slots__ = ("builder", "desc", "have_name", "have_origin", "have_timing", "have_version",
                 "session_seen")

    def __init__(self) -> None:
        self.desc = SessionDescription()
        self.session_seen: set[str] = set()
        self.builder: _MediaBuilder | None = None
        self.have_version = self.have_origin = self.have_name = self.have_timing = False

    def line(self, line: str) -> None:
        if len(line) < 2 or line[1] != "=":
            if "=" not in line:
                raise _LineError("line has no '='")
            raise _LineError("type must be a single character followed by '='")
        kind, value = line[0], line[2:]
        desc = self.desc
        if not self.have_version:
            if kind != "v":
                raise _LineError("SDP must start with v=")
            if value.strip() != "0":
                raise _LineError("only SDP version 0 is supported")
            self.have_version = True
            return
        if not ("a" <= kind <= "z" or "A" <= kind <= "Z"):
            raise _LineError("type must be a letter")
        builder = self.builder
        if kind == "m":
            if builder is not None:
                builder.finish()
            if len(desc.media) >= MAX_MEDIA_SECTIONS:
                raise _LineError(f"more than {MAX_MEDIA_SECTIONS} m-sections")
            self.builder = _MediaBuilder(_media_line(value))
            desc.media.append(self.builder.media)
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            if builder is None:
                _session_attribute(desc, self.session_seen, name, attr_value if sep else None)
            else:
                _media_attribute(builder, name, attr_value if sep else None)
        elif kind == "o" and builder is None and not self.have_origin:
            desc.origin = _origin(value)
            self.have_origin = True
        elif kind in "vo":
            raise _LineError(f"duplicate or misplaced {kind}= line")
        elif builder is not None:
            media = builder.media
            if kind == "c" and media.connection is None:
                media.connection = _connection(value)
            elif kind == "b":
                media.bandwidths.append(_bandwidth(value))
            else:
                media.extra_lines.append((kind, value))
        elif kind == "s" and not self.have_name:
            desc.name = value
            self.have_name = True
        elif kind == "t" and not self.have_timing:
            desc.timing = _timing(value)
            self.have_timing = True
        elif kind == "c" and desc.connection is None:
            desc.connection = _connection(value)
        elif kind == "b":
            desc.bandwidths.append(_bandwidth(value))
        else:
            # RFC 8866 §5: i=, u=, e=, p=, r=, z=, k=, a second t= ... are kept, not interpreted
            desc.extra_lines.append((kind, value))


def feed_lines(
    text: str | bytes, line: Callable[[str], None], *, max_length: int, what: str
) -> None:
    """Check the size and encoding of an SDP-like body, then hand each non-empty line (LF or
    CRLF endings) to ``line``; a :class:`_LineError` becomes an :class:`SdpError` naming the
    line number and the line. Shared by SDP and trickle-ice-sdpfrag (RFC 8840) parsing."""
    if isinstance(text, bytes | bytearray | memoryview):
        if len(text) > max_length:
            raise SdpError(f"{what} is larger than {max_length} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError(f"{what} is not valid UTF-8") from None
    if not isinstance(text, str):
        raise SdpError(f"{what} must be text")
    if len(text) > max_length:
        raise SdpError(f"{what} is larger than {max_length} characters")
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(" \t\r")
        if not stripped:
            continue
        try:
            line(stripped)
        except _LineError as exc:
            raise SdpError(str(exc), number, stripped) from None


def parse(text: str | bytes, *, max_length: int = MAX_SDP_LENGTH) -> SessionDescription:
    """Parse an SDP (LF or CRLF line endings); raises :class:`SdpError` and nothing else."""
    parser = _Parser()
    feed_lines(text, parser.line, max_length=max_length, what="SDP")
    try:
        if parser.builder is not None:
            parser.builder.finish()
    except _LineError as exc:  # pragma: no cover - finish() only reads validated data
        raise SdpError(str(exc)) from None
    if not parser.have_version:
        raise SdpError("empty SDP (no v= line)")
    if not parser.have_origin:
        raise SdpError("missing o= line")
    desc = parser.desc
    desc.extra_lines.sort(key=extra_line_order)
    for media in desc.media:
        media.extra_lines.sort(key=extra_line_order)
    return desc
