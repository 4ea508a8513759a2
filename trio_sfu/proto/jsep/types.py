"""The public data types of the JSEP core: our transport, transceivers, what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aioice import Candidate

from ..capabilities import URI_TRANSPORT_CC, CodecCapability
from ..sdp import Direction, HeaderExtension, RtpCodec, Simulcast

MediaKind = Literal["audio", "video"]
SignalingState = Literal["stable", "have-local-offer", "have-remote-offer"]
DtlsRole = Literal["client", "server"]


class JsepStateError(RuntimeError):
    """The caller used the session in the wrong state (e.g. create_answer while stable)."""


@dataclass(slots=True)
class LocalTransport:
    """Our side of the single bundled transport, written into every accepted m-section.

    Offers always use `a=setup:actpass`; answers use `setup_when_answering` ("passive" makes
    us the DTLS server, right for the SFU; "active" for a client) unless a DTLS association
    already fixed the roles (RFC 8842 §5.5).
    """

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    candidates: list[Candidate] = field(default_factory=list)
    ice_lite: bool = False
    ice_options: list[str] = field(default_factory=list)
    sctp_port: int = 5000
    max_message_size: int = 262144
    setup_when_answering: Literal["active", "passive"] = "passive"
    end_of_candidates: bool = True


@dataclass(slots=True, eq=False)
class Transceiver:
    """One m-section's worth of media: our sending identity and what was negotiated.

    `direction` is our wish; `current_direction` what the last completed offer/answer
    agreed. `codecs` lists the negotiated formats (RTX included) with the payload types in
    use on this session, in preference order.
    """

    kind: MediaKind
    direction: Direction
    sender_ssrc: int
    sender_rtx_ssrc: int | None
    cname: str
    stream_id: str
    track_id: str
    codec_preferences: list[CodecCapability] | None = None
    mid: str | None = None
    mline_index: int | None = None
    current_direction: Direction | None = None
    stopped: bool = False
    stopping: bool = False
    codecs: list[RtpCodec] = field(default_factory=list)
    header_extensions: list[HeaderExtension] = field(default_factory=list)
    rtcp_rsize: bool = False
    remote_ssrcs: list[int] = field(default_factory=list)
    remote_rtx_ssrcs: dict[int, int] = field(default_factory=dict)
    remote_rids: list[str] = field(default_factory=list)
    remote_simulcast: Simulcast | None = None
    remote_msid: tuple[str, str | None] | None = None
    remote_cname: str | None = None
    #: our simulcast streams (RFC 8853), lowest quality first, each with its own SSRC; empty
    #: for one stream on ``sender_ssrc``. An answer keeps only the streams it accepts
    #: (RFC 8829 §5.10: an answer without ``a=simulcast`` leaves one stream, sent on
    #: ``sender_ssrc``)
    send_rids: dict[str, int] = field(default_factory=dict)

    @property
    def media_codecs(self) -> list[RtpCodec]:
        return [c for c in self.codecs if not c.is_rtx]

    @property
    def sending(self) -> bool:
        return self.current_direction in ("sendrecv", "sendonly")

    @property
    def receiving(self) -> bool:
        return self.current_direction in ("sendrecv", "recvonly")

    def codec(self, payload_type: int) -> RtpCodec | None:
        for c in self.codecs:
            if c.payload_type == payload_type:
                return c
        return None

    def rtx_payload_type(self, payload_type: int) -> int | None:
        """The RTX payload type retransmitting `payload_type` (RFC 4588), if negotiated."""
        for c in self.codecs:
            if c.is_rtx and c.apt == payload_type:
                return c.payload_type
        return None

    def extension_id(self, uri: str) -> int | None:
        for ext in self.header_extensions:
            if ext.uri == uri:
                return ext.id
        return None

    def has_feedback(self, feedback: str, payload_type: int | None = None) -> bool:
        """Whether rtcp-fb `feedback` (e.g. "nack pli") was negotiated for a codec."""
        return any(
            feedback in c.rtcp_fb
            for c in self.codecs
            if payload_type is None or c.payload_type == payload_type
        )

    @property
    def nack(self) -> bool:
        return self.has_feedback("nack")

    @property
    def pli(self) -> bool:
        return self.has_feedback("nack pli")

    @property
    def fir(self) -> bool:
        return self.has_feedback("ccm fir")

    @property
    def remb(self) -> bool:
        return self.has_feedback("goog-remb")

    @property
    def transport_cc(self) -> bool:
        """transport-cc feedback needs both the rtcp-fb and the header extension."""
        return self.has_feedback("transport-cc") and self.extension_id(URI_TRANSPORT_CC) is not None


@dataclass(slots=True)
class RemoteChanges:
    """What applying a remote description changed, for the driver to act on."""

    added: list[Transceiver] = field(default_factory=list)
    stopped: list[Transceiver] = field(default_factory=list)
    ice_restart: bool = False
    fingerprint_changed: bool = False
    data_channel_added: bool = False
    data_channel_stopped: bool = False
    #: deviations of the peer's description we accepted anyway (each a readable sentence)
    tolerated: list[str] = field(default_factory=list)
