"""What the SFU can forward, and the codec/extension negotiation rules of offer/answer.

An SFU never decodes, so "supporting" a codec means knowing how to find keyframes and layers in
it and being able to forward it unchanged. The tables here are our capabilities; the functions
apply RFC 3264 / RFC 8829 §5.3 intersection rules to them (payload type kept from the offer,
H.264 profile matching per RFC 6184 §8.2.2, RTX only together with its `apt` codec).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from .sdp import HeaderExtension, RtpCodec, parse_parameters, reverse_direction

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)


@dataclass(slots=True)
class CodecCapability:
    """A codec we can forward, with the payload type we offer it under when free.

    RTX is its own entry (`name="rtx"`, `fmtp="apt=<preferred_payload_type of the codec>"`),
    exactly as it appears in SDP, so codec preferences copied from a publisher keep their
    retransmission pairing.
    """

    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None
    rtcp_fb: list[str] = field(default_factory=list)
    preferred_payload_type: int | None = None

    @property
    def parameters(self) -> dict[str, str]:
        return parse_parameters(self.fmtp)

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"


@dataclass(slots=True, frozen=True)
class HeaderExtensionCapability:
    """An RTP header extension we understand, its preferred id and the media kinds it fits."""

    uri: str
    preferred_id: int
    kinds: frozenset[str] = frozenset(("audio", "video"))


_VIDEO_FEEDBACK = ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]


def _video(name: str, pt: int, fmtp: str | None = None) -> list[CodecCapability]:
    return [
        CodecCapability(name, 90000, None, fmtp, list(_VIDEO_FEEDBACK), pt),
        CodecCapability("rtx", 90000, None, f"apt={pt}", [], pt + 1),
    ]


def _h264(profile_level_id: str, pt: int) -> list[CodecCapability]:
    fmtp = f"level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"
    return _video("H264", pt, fmtp)


# Preferred payload types follow Chromium's numbering, so answers from Chromium (the common
# case) agree with our offers and the session-wide payload-type table rarely has to move.
DEFAULT_AUDIO_CODECS: list[CodecCapability] = [
    CodecCapability("opus", 48000, 2, "minptime=10;useinbandfec=1", ["transport-cc"], 111),
]
DEFAULT_VIDEO_CODECS: list[CodecCapability] = [
    *_video("VP8", 96),
    *_video("VP9", 98, "profile-id=0"),
    *_h264("42e01f", 108),
    *_h264("42001f", 102),
    *_h264("640c1f", 112),
    *_video("AV1", 45),
]
DEFAULT_HEADER_EXTENSIONS: list[HeaderExtensionCapability] = [
    HeaderExtensionCapability(URI_AUDIO_LEVEL, 1, frozenset(("audio",))),
    HeaderExtensionCapability(URI_ABS_SEND_TIME, 2),
    HeaderExtensionCapability(URI_TRANSPORT_CC, 3),
    HeaderExtensionCapability(URI_MID, 4),
    HeaderExtensionCapability(URI_RID, 10, frozenset(("video",))),
    HeaderExtensionCapability(URI_REPAIRED_RID, 11, frozenset(("video",))),
    # AV1 SVC's frame information (AV1 RTP spec, Appendix A): read from publishers and
    # forwarded with AV1 only (sfu/track.py forwarding_maps)
    HeaderExtensionCapability(URI_DEPENDENCY_DESCRIPTOR, 12, frozenset(("video",))),
]

# -- H.264 profiles (RFC 6184 §8.1 profile-level-id; profile_idc + constraint flags, H.264 A.2)
# (profile_idc, mask over profile-iop, expected bits, profile)
_H264_PROFILES: tuple[tuple[int, int, int, str], ...] = (
    (0x42, 0b0100_1111, 0b0100_0000, "constrained-baseline"),
    (0x4D, 0b1000_1111, 0b1000_0000, "constrained-baseline"),
    (0x58, 0b1100_1111, 0b1100_0000, "constrained-baseline"),
    (0x42, 0b0100_1111, 0b0000_0000, "baseline"),
    (0x58, 0b1100_1111, 0b1000_0000, "baseline"),
    (0x4D, 0b1010_1111, 0b0000_0000, "main"),
    (0x64, 0b1111_1111, 0b0000_0000, "high"),
    (0x64, 0b1111_1111, 0b0000_1100, "constrained-high"),
    (0xF4, 0b1111_1111, 0b0000_0000, "predictive-high-444"),
)


def h264_profile(params: Mapping[str, str]) -> str | None:
    """The H.264 profile named by `profile-level-id` (default 42000a, RFC 6184 §8.1)."""
    text = params.get("profile-level-id", "42000a")
    if len(text) != 6:
        return None
    try:
        profile_idc = int(text[0:2], 16)
        profile_iop = int(text[2:4], 16)
    except ValueError:
        return None
    for idc, mask, bits, name in _H264_PROFILES:
        if profile_idc == idc and profile_iop & mask == bits:
            return name
    return None


def codec_matches(codec: RtpCodec, cap: CodecCapability) -> bool:
    """Whether an offered codec is the same format as one of our capabilities.

    Name/clock/channels must agree; some codecs also carry identity in fmtp: H.264 the
    packetization mode and profile (RFC 6184 §8.2.2, levels may differ), VP9 `profile-id`,
    AV1 `profile`.
    """
    if codec.name.lower() != cap.name.lower() or codec.clock_rate != cap.clock_rate:
        return False
    if (codec.channels or 1) != (cap.channels or 1):
        return False
    name = cap.name.lower()
    if name == "h264":
        ours, theirs = cap.parameters, codec.parameters
        if ours.get("packetization-mode", "0") != theirs.get("packetization-mode", "0"):
            return False
        profile = h264_profile(ours)
        return profile is not None and profile == h264_profile(theirs)
    if name == "vp9":
        return cap.parameters.get("profile-id", "0") == codec.parameters.get("profile-id", "0")
    if name == "av1":
        return cap.parameters.get("profile", "0") == codec.parameters.get("profile", "0")
    return True


def _feedback_key(fb: str) -> str:
    return " ".join(fb.lower().split())


def _intersect_feedback(theirs: list[str], ours: list[str]) -> list[str]:
    allowed = {_feedback_key(fb) for fb in ours}
    return [fb for fb in theirs if _feedback_key(fb) in allowed]


def _rtx_supported(cap: CodecCapability, caps: list[CodecCapability]) -> CodecCapability | None:
    if cap.preferred_payload_type is None:
        return None
    apt = str(cap.preferred_payload_type)
    for other in caps:
        if other.is_rtx and other.clock_rate == cap.clock_rate and other.parameters.get(
            "apt"
        ) == apt:
            return other
    return None


def negotiate_codecs(offered: list[RtpCodec], caps: list[CodecCapability]) -> list[RtpCodec]:
    """The answerer's codec list (RFC 8829 §5.3.1): the offer's order and payload types,
    only formats we support, rtcp-fb intersected, RTX only if its `apt` codec is kept."""
    kept: dict[int, CodecCapability] = {}
    media_caps = [cap for cap in caps if not cap.is_rtx]
    for codec in offered:
        if codec.is_rtx:
            continue
        for cap in media_caps:
            if codec_matches(codec, cap):
                kept[codec.payload_type] = cap
                break
    result: list[RtpCodec] = []
    rtx_for: set[int] = set()
    for codec in offered:
        if codec.is_rtx:
            apt = codec.apt
            if apt is None or apt not in kept or apt in rtx_for:
                continue
            rtx_cap = _rtx_supported(kept[apt], caps)
            if rtx_cap is None or codec.clock_rate != rtx_cap.clock_rate:
                continue
            rtx_for.add(apt)
            result.append(RtpCodec(codec.payload_type, codec.name, codec.clock_rate,
                                   codec.channels, codec.fmtp, []))
        elif codec.payload_type in kept:
            feedback = _intersect_feedback(codec.rtcp_fb, kept[codec.payload_type].rtcp_fb)
            result.append(RtpCodec(codec.payload_type, codec.name, codec.clock_rate,
                                   codec.channels, codec.fmtp, feedback))
    return result


def accept_answered_codecs(offered: list[RtpCodec], answered: list[RtpCodec]) -> list[RtpCodec]:
    """The codecs an answer accepted from our offer, matched by payload type (RFC 3264 §6.1)
    in the answer's preference order; anything we did not offer is ignored.

    Each codec keeps the form we offered it in (fmtp included), rtcp-fb is intersected: the
    same payload type then means the same thing in every later offer of the session.
    """
    ours = {c.payload_type: c for c in offered}

    def same(codec: RtpCodec) -> RtpCodec | None:
        mine = ours.get(codec.payload_type)
        if mine is None or mine.name.lower() != codec.name.lower():
            return None
        return mine if mine.clock_rate == codec.clock_rate else None

    media = {c.payload_type for c in answered if not c.is_rtx and same(c) is not None}
    result: list[RtpCodec] = []
    for codec in answered:
        mine = same(codec)
        if mine is None:
            continue
        if mine.is_rtx:
            if mine.apt in media:
                result.append(RtpCodec(mine.payload_type, mine.name, mine.clock_rate,
                                       mine.channels, mine.fmtp, []))
            continue
        feedback = _intersect_feedback(codec.rtcp_fb, mine.rtcp_fb)
        result.append(RtpCodec(mine.payload_type, mine.name, mine.clock_rate, mine.channels,
                               mine.fmtp, feedback))
    return result


def negotiate_extensions(
    offered: list[HeaderExtension], caps: list[HeaderExtensionCapability], kind: str
) -> list[HeaderExtension]:
    """Keep the offerer's ids for the extensions we understand (RFC 8285 §6); the direction
    in the answer mirrors the offered one."""
    known = {cap.uri for cap in caps if kind in cap.kinds}
    result: list[HeaderExtension] = []
    seen: set[str] = set()
    for ext in offered:
        if ext.uri in known and ext.uri not in seen and 1 <= ext.id <= 255:
            seen.add(ext.uri)
            direction = None if ext.direction is None else reverse_direction(ext.direction)
            result.append(HeaderExtension(ext.id, ext.uri, direction))
    return result


def capabilities_from_codecs(codecs: list[RtpCodec]) -> list[CodecCapability]:
    """Turn negotiated codecs (e.g. a publisher's) into preferences for another session, so
    the SFU offers subscribers exactly the format it receives, under the same payload types
    when they are free."""
    return [
        CodecCapability(c.name, c.clock_rate, c.channels, c.fmtp, list(c.rtcp_fb), c.payload_type)
        for c in codecs
    ]


# -- identity keys: what "the same codec" / "the same extension" means across a BUNDLE group --


def codec_keys(codecs: list[RtpCodec]) -> dict[int, Hashable]:
    """A key per payload type that identifies the codec configuration (RFC 8843 §9: one
    payload type must mean the same thing in every bundled m-section). RTX is keyed by the
    key of its `apt` codec rather than by the apt number."""
    keys: dict[int, Hashable] = {}
    for c in codecs:
        if not c.is_rtx:
            params = tuple(sorted(c.parameters.items()))
            keys[c.payload_type] = (c.name.lower(), c.clock_rate, c.channels or 1, params)
    for c in codecs:
        if c.is_rtx:
            apt = c.apt
            target = keys.get(apt) if apt is not None else None
            keys[c.payload_type] = ("rtx", c.clock_rate, target if target else ("apt", apt))
    return keys


class IdAllocator:
    """Session-wide table of payload types (or extension ids) to identity keys.

    Once an id was used for a key in this session it keeps being offered for it; ids are
    never handed out twice for different keys while both could still be in use. `in_use`
    (what the live m-sections currently use) always wins over the table.
    """

    __slots__ = ("_by_id", "_by_key", "_ranges", "_valid")

    def __init__(self, valid: range, *ranges: range) -> None:
        self._valid = valid
        self._ranges = ranges
        self._by_key: dict[Hashable, int] = {}
        self._by_id: dict[int, Hashable] = {}

    def register(self, ident: int, key: Hashable) -> None:
        """Record that `ident` now means `key` (e.g. because a remote description said so)."""
        old_key = self._by_id.pop(ident, None)
        if old_key is not None:
            self._by_key.pop(old_key, None)
        old_id = self._by_key.pop(key, None)
        if old_id is not None:
            self._by_id.pop(old_id, None)
        self._by_key[key] = ident
        self._by_id[ident] = key

    def lookup(self, key: Hashable) -> int | None:
        return self._by_key.get(key)

    def allocate(
        self, key: Hashable, preferred: int | None, in_use: Mapping[int, Hashable]
    ) -> int | None:
        """An id for `key`: the one it had, else `preferred`, else the first free one; None
        when every id is taken by something in use."""
        known = self._by_key.get(key)
        if known is not None and in_use.get(known, key) == key:
            return known
        candidates: list[int] = []
        if preferred is not None and preferred in self._valid:
            candidates.append(preferred)
        for r in self._ranges:
            candidates.extend(r)
        for ident in candidates:
            if in_use.get(ident, key) != key:
                continue
            owner = self._by_id.get(ident)
            if owner is None or owner == key:
                self.register(ident, key)
                return ident
        for ident in candidates:  # table full: evict an entry no live section uses
            if ident not in in_use:
                self.register(ident, key)
                return ident
        return None
