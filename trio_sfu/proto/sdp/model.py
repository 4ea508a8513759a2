"""The SDP data model (RFC 8866 plus the WebRTC attributes) and its serializer.

The model types what JSEP needs and keeps everything else (unknown attributes, unusual lines) in
order, so an SDP a browser sends survives a parse/serialize trip, and so `parse(serialize(x)) == x`
for every description we build ourselves. Serialization always writes CRLF line endings and a
canonical attribute order (roughly the order Chromium uses), which is what browsers expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aioice import Candidate

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: frozenset[str] = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))
SETUP_VALUES: frozenset[str] = frozenset(("actpass", "active", "passive", "holdconn"))

# Extra lines (i=, u=, e=, p=, r=, z=, k= and letters we do not know) are kept in a canonical
# order: the ones RFC 8866 §5 places before the connection/bandwidth/time lines come first.
_EARLY_LINE_TYPES = frozenset("iuep")


def extra_line_order(line: tuple[str, str]) -> int:
    """Sort key that puts the lines RFC 8866 §5 wants early before the others."""
    return 0 if line[0] in _EARLY_LINE_TYPES else 1


def reverse_direction(direction: Direction) -> Direction:
    """The direction as seen from the other side (sendonly <-> recvonly)."""
    if direction == "sendonly":
        return "recvonly"
    if direction == "recvonly":
        return "sendonly"
    return direction


def parse_parameters(text: str | None) -> dict[str, str]:
    """`a=b;c=d` style parameters (fmtp, rid restrictions); a bare key maps to ''."""
    params: dict[str, str] = {}
    if not text:
        return params
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        params[key.strip()] = value.strip() if sep else ""
    return params


@dataclass(slots=True)
class Origin:
    """The o= line (RFC 8866 §5.2); JSEP bumps `session_version` for every new description."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"


@dataclass(slots=True)
class Timing:
    """The first t= line; WebRTC sessions are always `t=0 0` (unbounded)."""

    start: int = 0
    stop: int = 0


@dataclass(slots=True)
class Connection:
    """A c= line (RFC 8866 §5.7); in WebRTC only informative, ICE decides the real address."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"


@dataclass(slots=True)
class Bandwidth:
    """A b= line, e.g. `b=AS:2000` or `b=TIAS:1500000`."""

    type: str
    value: int


@dataclass(slots=True)
class Attribute:
    """An attribute we do not model, kept verbatim; `value` is None for a flag (`a=name`)."""

    name: str
    value: str | None = None


@dataclass(slots=True)
class Group:
    """`a=group:<semantics> <mids>` (RFC 5888), in WebRTC almost always BUNDLE (RFC 8843)."""

    semantics: str
    mids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MsidSemantic:
    """The legacy `a=msid-semantic:WMS ...` line that Chromium still sends and expects."""

    semantics: str
    identifiers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RtpCodec:
    """One payload type of an RTP m-section: rtpmap + fmtp + rtcp-fb lines together."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None
    rtcp_fb: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> dict[str, str]:
        """The fmtp parameters; codec matching and RTX `apt` lookups need them parsed."""
        return parse_parameters(self.fmtp)

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"

    @property
    def apt(self) -> int | None:
        """For RTX (RFC 4588 §8.6): the payload type this one retransmits."""
        value = self.parameters.get("apt", "")
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 3 else None

    def rtpmap_value(self) -> str:
        text = f"{self.payload_type} {self.name}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


@dataclass(slots=True)
class HeaderExtension:
    """`a=extmap:<id>[/<direction>] <uri> [<attributes>]` (RFC 8285 §8)."""

    id: int
    uri: str
    direction: Direction | None = None
    attributes: str | None = None

    def value(self) -> str:
        text = str(self.id) if self.direction is None else f"{self.id}/{self.direction}"
        text = f"{text} {self.uri}"
        return text if self.attributes is None else f"{text} {self.attributes}"


@dataclass(slots=True)
class SsrcAttribute:
    """One `a=ssrc:<ssrc> <name>[:<value>]` line (RFC 5576 §4.1), order matters to Chromium."""

    ssrc: int
    name: str
    value: str | None = None


@dataclass(slots=True)
class SsrcGroup:
    """`a=ssrc-group:<semantics> <ssrcs>`; FID pairs a media SSRC with its RTX SSRC."""

    semantics: str
    ssrcs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Rid:
    """`a=rid:<id> send|recv [<restrictions>]` (RFC 8851 §4)."""

    id: str
    direction: Literal["send", "recv"]
    params: str | None = None

    @property
    def restrictions(self) -> dict[str, str]:
        return parse_parameters(self.params)

    @property
    def payload_types(self) -> list[int]:
        """The `pt=` restriction (RFC 8851 §5); empty means every negotiated format."""
        raw = self.restrictions.get("pt", "")
        return [int(p) for p in raw.split(",") if p.isascii() and p.isdigit() and len(p) <= 3]

    def value(self) -> str:
        text = f"{self.id} {self.direction}"
        return text if self.params is None else f"{text} {self.params}"


@dataclass(slots=True)
class SimulcastRid:
    """One rid in an `a=simulcast` list; `paused` is the `~` prefix (RFC 8853 §5.1)."""

    rid: str
    paused: bool = False


@dataclass(slots=True)
class Simulcast:
    """`a=simulcast` (RFC 8853): each list entry is one stream given as its alternative rids."""

    send: list[list[SimulcastRid]] = field(default_factory=list)
    recv: list[list[SimulcastRid]] = field(default_factory=list)

    def value(self) -> str:
        parts: list[str] = []
        for direction, streams in (("send", self.send), ("recv", self.recv)):
            if streams:
                text = ";".join(
                    ",".join(("~" if r.paused else "") + r.rid for r in alternatives)
                    for alternatives in streams
                )
                parts.append(f"{direction} {text}")
        return " ".join(parts)


class IceCandidate(Candidate):
    """An aioice Candidate that also keeps the extension pairs aioice drops.

    Chromium adds `network-id`, `network-cost` and sometimes `ufrag`; losing them would break
    the promise that nothing a browser sends is lost, and aioice's Candidate compares by
    identity, which makes parsed descriptions impossible to compare. Being a Candidate, it can
    be handed to the ICE agent as is.
    """

    extensions: list[tuple[str, str]]

    def __init__(
        self,
        foundation: str,
        component: int,
        transport: str,
        priority: int,
        host: str,
        port: int,
        type: str,
        related_address: str | None = None,
        related_port: int | None = None,
        tcptype: str | None = None,
        generation: int | None = None,
        extensions: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(
            foundation=foundation,
            component=component,
            transport=transport,
            priority=priority,
            host=host,
            port=port,
            type=type,
            related_address=related_address,
            related_port=related_port,
            tcptype=tcptype,
            generation=generation,
        )
        self.extensions = list(extensions) if extensions else []

    @classmethod
    def from_candidate(cls, candidate: Candidate) -> IceCandidate:
        if isinstance(candidate, IceCandidate):
            return candidate
        return cls(
            foundation=candidate.foundation,
            component=candidate.component,
            transport=candidate.transport,
            priority=candidate.priority,
            host=candidate.host,
            port=candidate.port,
            type=candidate.type,
            related_address=candidate.related_address,
            related_port=candidate.related_port,
            tcptype=candidate.tcptype,
            generation=candidate.generation,
        )

    def to_sdp(self) -> str:
        text: str = super().to_sdp()
        for name, value in self.extensions:
            text += f" {name} {value}"
        return text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return self.to_sdp() == IceCandidate.from_candidate(other).to_sdp()

    def __hash__(self) -> int:
        return hash(self.to_sdp())

    def __repr__(self) -> str:
        return f"IceCandidate({self.to_sdp()})"


def _fingerprint_lines(out: list[str], fingerprints: list[tuple[str, str]]) -> None:
    for algorithm, value in fingerprints:
        out.append(f"a=fingerprint:{algorithm} {value}")


@dataclass(slots=True, eq=True)
class MediaSection:
    """One m= section with its attributes (RFC 8866 §5.14 and the WebRTC extensions).

    `formats` is the m-line format list as written (payload types for RTP); `codecs` describes
    those formats that have an rtpmap line, in m-line order (WebRTC endpoints write rtpmap even
    for static payload types; one without stays a bare format). Builders keep
    the two consistent, e.g. through :meth:`set_codecs`.
    """

    kind: str
    port: int
    protocol: str
    formats: list[str] = field(default_factory=list)
    port_count: int | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    extra_lines: list[tuple[str, str]] = field(default_factory=list)
    mid: str | None = None
    direction: Direction | None = None
    msid: list[tuple[str, str | None]] = field(default_factory=list)
    rtcp_mux: bool = False
    rtcp_mux_only: bool = False
    rtcp_rsize: bool = False
    rtcp: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    candidates: list[IceCandidate] = field(default_factory=list)
    end_of_candidates: bool = False
    bundle_only: bool = False
    codecs: list[RtpCodec] = field(default_factory=list)
    extmaps: list[HeaderExtension] = field(default_factory=list)
    extmap_allow_mixed: bool = False
    ssrcs: list[SsrcAttribute] = field(default_factory=list)
    ssrc_groups: list[SsrcGroup] = field(default_factory=list)
    rids: list[Rid] = field(default_factory=list)
    simulcast: Simulcast | None = None
    sctp_port: int | None = None
    max_message_size: int | None = None
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Port 0 without bundle-only: rejected or stopped (RFC 8829 §5.2.2, RFC 8843 §6)."""
        return self.port == 0 and not self.bundle_only

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.protocol.upper()

    @property
    def is_datachannel(self) -> bool:
        return self.kind == "application" and self.protocol.upper().endswith("DTLS/SCTP")

    def set_codecs(self, codecs: list[RtpCodec]) -> None:
        """Replace the codecs and the m-line format list together."""
        self.codecs = list(codecs)
        self.formats = [str(c.payload_type) for c in codecs]

    def codec(self, payload_type: int) -> RtpCodec | None:
        for codec in self.codecs:
            if codec.payload_type == payload_type:
                return codec
        return None

    def attribute(self, name: str) -> str | None:
        """The value of the first unmodelled attribute called `name` ('' for a flag)."""
        for attr in self.attributes:
            if attr.name == name:
                return "" if attr.value is None else attr.value
        return None

    def to_lines(self, out: list[str]) -> None:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out.append(" ".join(["m=" + self.kind, port, self.protocol, *self.formats]))
        early = [line for line in self.extra_lines if line[0] in _EARLY_LINE_TYPES]
        late = [line for line in self.extra_lines if line[0] not in _EARLY_LINE_TYPES]
        out.extend(f"{t}={v}" for t, v in early)
        if self.connection is not None:
            c = self.connection
            out.append(f"c={c.nettype} {c.addrtype} {c.address}")
        out.extend(f"b={b.type}:{b.value}" for b in self.bandwidths)
        out.extend(f"{t}={v}" for t, v in late)
        if self.rtcp is not None:
            out.append(f"a=rtcp:{self.rtcp}")
        out.extend(f"a=candidate:{c.to_sdp()}" for c in self.candidates)
        if self.end_of_candidates:
            out.append("a=end-of-candidates")
        if self.ice_ufrag is not None:
            out.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd is not None:
            out.append(f"a=ice-pwd:{self.ice_pwd}")
        if self.ice_options:
            out.append("a=ice-options:" + " ".join(self.ice_options))
        _fingerprint_lines(out, self.fingerprints)
        if self.setup is not None:
            out.append(f"a=setup:{self.setup}")
        if self.mid is not None:
            out.append(f"a=mid:{self.mid}")
        if self.bundle_only:
            out.append("a=bundle-only")
        out.extend(f"a=extmap:{e.value()}" for e in self.extmaps)
        if self.extmap_allow_mixed:
            out.append("a=extmap-allow-mixed")
        if self.direction is not None:
            out.append(f"a={self.direction}")
        for stream, track in self.msid:
            out.append(f"a=msid:{stream}" if track is None else f"a=msid:{stream} {track}")
        if self.rtcp_mux:
            out.append("a=rtcp-mux")
        if self.rtcp_mux_only:
            out.append("a=rtcp-mux-only")
        if self.rtcp_rsize:
            out.append("a=rtcp-rsize")
        for attr in self.attributes:
            out.append(f"a={attr.name}" if attr.value is None else f"a={attr.name}:{attr.value}")
        for codec in self.codecs:
            out.append(f"a=rtpmap:{codec.rtpmap_value()}")
            out.extend(f"a=rtcp-fb:{codec.payload_type} {fb}" for fb in codec.rtcp_fb)
            if codec.fmtp is not None:
                out.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
        for group in self.ssrc_groups:
            out.append(f"a=ssrc-group:{group.semantics} " + " ".join(map(str, group.ssrcs)))
        for ssrc in self.ssrcs:
            if ssrc.value is None:
                out.append(f"a=ssrc:{ssrc.ssrc} {ssrc.name}")
            else:
                out.append(f"a=ssrc:{ssrc.ssrc} {ssrc.name}:{ssrc.value}")
        out.extend(f"a=rid:{rid.value()}" for rid in self.rids)
        if self.simulcast is not None:
            out.append(f"a=simulcast:{self.simulcast.value()}")
        if self.sctp_port is not None:
            out.append(f"a=sctp-port:{self.sctp_port}")
        if self.max_message_size is not None:
            out.append(f"a=max-message-size:{self.max_message_size}")


@dataclass(slots=True, eq=True)
class SessionDescription:
    """A whole SDP. Use :func:`trio_sfu.proto.sdp.parse` to read one and `str()` to write one."""

    version: int = 0
    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    timing: Timing = field(default_factory=Timing)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    extra_lines: list[tuple[str, str]] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    direction: Direction | None = None
    msid_semantic: MsidSemantic | None = None
    extmap_allow_mixed: bool = False
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaSection] = field(default_factory=list)

    # -- effective values: a media-level attribute wins over the session-level one ------------
    # (RFC 8839 §5.4 for ICE, RFC 8842 §5.1 for fingerprint/setup, RFC 8866 §6.7 direction)

    def effective_ice_ufrag(self, media: MediaSection) -> str | None:
        return media.ice_ufrag if media.ice_ufrag is not None else self.ice_ufrag

    def effective_ice_pwd(self, media: MediaSection) -> str | None:
        return media.ice_pwd if media.ice_pwd is not None else self.ice_pwd

    def effective_ice_options(self, media: MediaSection) -> list[str]:
        return media.ice_options or self.ice_options

    def effective_fingerprints(self, media: MediaSection) -> list[tuple[str, str]]:
        return media.fingerprints or self.fingerprints

    def effective_setup(self, media: MediaSection) -> str | None:
        return media.setup if media.setup is not None else self.setup

    def effective_direction(self, media: MediaSection) -> Direction:
        if media.direction is not None:
            return media.direction
        return self.direction if self.direction is not None else "sendrecv"

    def effective_extmap_allow_mixed(self, media: MediaSection) -> bool:
        return media.extmap_allow_mixed or self.extmap_allow_mixed

    def bundle_group(self) -> Group | None:
        """The first BUNDLE group; with max-bundle it is the only one we use."""
        for group in self.groups:
            if group.semantics.upper() == "BUNDLE":
                return group
        return None

    def media_by_mid(self, mid: str) -> MediaSection | None:
        for media in self.media:
            if media.mid == mid:
                return media
        return None

    def serialize(self) -> str:
        o = self.origin
        out = [
            f"v={self.version}",
            f"o={o.username} {o.session_id} {o.session_version} {o.nettype} {o.addrtype} "
            f"{o.address}",
            f"s={self.name}",
        ]
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t in _EARLY_LINE_TYPES)
        if self.connection is not None:
            c = self.connection
            out.append(f"c={c.nettype} {c.addrtype} {c.address}")
        out.extend(f"b={b.type}:{b.value}" for b in self.bandwidths)
        out.append(f"t={self.timing.start} {self.timing.stop}")
        out.extend(f"{t}={v}" for t, v in self.extra_lines if t not in _EARLY_LINE_TYPES)
        if self.ice_lite:
            out.append("a=ice-lite")
        for group in self.groups:
            out.append(" ".join([f"a=group:{group.semantics}", *group.mids]))
        if self.extmap_allow_mixed:
            out.append("a=extmap-allow-mixed")
        if self.msid_semantic is not None:
            ms = self.msid_semantic
            out.append(" ".join([f"a=msid-semantic:{ms.semantics}", *ms.identifiers]))
        if self.ice_ufrag is not None:
            out.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd is not None:
            out.append(f"a=ice-pwd:{self.ice_pwd}")
        if self.ice_options:
            out.append("a=ice-options:" + " ".join(self.ice_options))
        _fingerprint_lines(out, self.fingerprints)
        if self.setup is not None:
            out.append(f"a=setup:{self.setup}")
        if self.direction is not None:
            out.append(f"a={self.direction}")
        for attr in self.attributes:
            out.append(f"a={attr.name}" if attr.value is None else f"a={attr.name}:{attr.value}")
        for media in self.media:
            media.to_lines(out)
        out.append("")
        return "\r\n".join(out)

    def __str__(self) -> str:
        return self.serialize()
