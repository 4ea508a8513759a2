"""The JSEP session: offers, answers and the m-line layout of one peer connection.

The SFU is the answerer for a browser's first offer (publishers and subscribers alike) and the
offerer afterwards, when it adds a sendonly m-section per remote track for a subscriber and
stops it again when the publisher leaves. Everything is max-bundle (one ICE/DTLS transport) and
rtcp-mux. A stopped section is recycled by the next added transceiver (RFC 8829 §5.2.2), so a
subscriber that watches publishers come and go keeps an SDP of bounded size.

Remote descriptions are validated completely before anything changes: an unacceptable one
raises :class:`SdpError` and leaves the session as it was. Calling methods in the wrong
signaling state is our own bug, not the peer's, and raises :class:`JsepStateError`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Literal

from aioice import Candidate

from ..capabilities import (
    DEFAULT_AUDIO_CODECS,
    DEFAULT_HEADER_EXTENSIONS,
    DEFAULT_VIDEO_CODECS,
    CodecCapability,
    HeaderExtensionCapability,
    IdAllocator,
    accept_answered_codecs,
    codec_keys,
    negotiate_codecs,
    negotiate_extensions,
)
from ..errors import SdpError
from ..sdp import (
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
    parse,
    reverse_direction,
)
from .remote import (
    RemoteTransport,
    fail,
    intersect,
    record_remote,
    remote_transport,
    simulcast_answer,
)
from .types import (
    DtlsRole,
    JsepStateError,
    LocalTransport,
    MediaKind,
    RemoteChanges,
    SignalingState,
    Transceiver,
)

# RFC 8829 §5.1.2: the RTP profiles an answerer must accept, and the SCTP ones (RFC 8841).
_RTP_PROTOCOLS = frozenset(
    ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/DTLS/RTP/SAVPF", "TCP/DTLS/RTP/SAVP",
     "TCP/TLS/RTP/SAVPF", "RTP/SAVPF", "RTP/SAVP")
)
_SCTP_PROTOCOLS = frozenset(("UDP/DTLS/SCTP", "TCP/DTLS/SCTP"))
_RTP_PROTOCOL = "UDP/TLS/RTP/SAVPF"
_SCTP_PROTOCOL = "UDP/DTLS/SCTP"
_DATACHANNEL_FORMAT = "webrtc-datachannel"
# RFC 8851 §10: rid-id = 1*(alpha-numeric / "-" / "_"); RFC 8852 §3.1 caps the extension at 16
# bytes (and libwebrtc refuses longer rids).
_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")


@dataclass(slots=True, eq=False)
class _Slot:
    """One m-line position of the session (committed or pending)."""

    mid: str
    kind: str
    protocol: str
    formats: list[str]
    transceiver: Transceiver | None = None
    data: bool = False
    # zero port in the current local or remote description: recyclable (RFC 8829 §5.2.2)
    rejected: bool = False
    # the section's codecs as last written or offered, repeated when it is stopped (§5.2.2)
    codecs: list[RtpCodec] = field(default_factory=list)


class JsepSession:
    """The negotiation state of one peer connection (see the module docstring)."""

    # Slotted: past 30 attributes Python gives each instance its own ~1.6 KiB dict (issue 10, memory
    # per idle peer).
    __slots__ = (
        "_data_wanted", "_dtls_role", "_ext_ids", "_next_mid", "_pending_ice_restart",
        "_pending_slots", "_pending_transport", "_pts", "_random", "_rollback", "_session_id",
        "_session_version", "_slots", "_transceivers", "audio_codecs", "current_local_description",
        "current_remote_description", "data_mid", "header_extensions", "new_transceiver_direction",
        "pending_local_description", "pending_remote_description", "recycle", "remote_candidates",
        "remote_end_of_candidates", "remote_fingerprints", "remote_ice_lite", "remote_ice_pwd",
        "remote_ice_ufrag", "remote_max_message_size", "remote_sctp_port", "remote_setup",
        "signaling_state", "transport", "video_codecs",
    )

    def __init__(
        self,
        transport: LocalTransport,
        *,
        audio_codecs: list[CodecCapability] | None = None,
        video_codecs: list[CodecCapability] | None = None,
        header_extensions: list[HeaderExtensionCapability] | None = None,
        new_transceiver_direction: Direction = "recvonly",
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.transport = transport
        self.audio_codecs = list(DEFAULT_AUDIO_CODECS if audio_codecs is None else audio_codecs)
        self.video_codecs = list(DEFAULT_VIDEO_CODECS if video_codecs is None else video_codecs)
        self.header_extensions = list(
            DEFAULT_HEADER_EXTENSIONS if header_extensions is None else header_extensions
        )
        #: direction of transceivers created for new m-sections of a remote offer
        self.new_transceiver_direction: Direction = new_transceiver_direction
        #: reuse stopped m-sections for new transceivers in our offers (RFC 8829 §5.2.2); off
        #: for a peer that cannot take a recycled m-line (GStreamer 1.22's webrtcbin keeps the
        #: stopped section's transceiver and refuses its direction change), which then gets
        #: a new m-section for every new transceiver
        self.recycle = True
        self._random = random_bytes
        self.signaling_state: SignalingState = "stable"
        self.data_mid: str | None = None
        self.current_local_description: SessionDescription | None = None
        self.current_remote_description: SessionDescription | None = None
        self.pending_local_description: SessionDescription | None = None
        self.pending_remote_description: SessionDescription | None = None
        self.remote_ice_ufrag: str | None = None
        self.remote_ice_pwd: str | None = None
        self.remote_ice_lite = False
        self.remote_candidates: list[Candidate] = []
        self.remote_end_of_candidates = False
        self.remote_fingerprints: list[tuple[str, str]] = []
        self.remote_setup: str | None = None
        self.remote_sctp_port: int | None = None
        self.remote_max_message_size: int | None = None
        self._dtls_role: DtlsRole | None = None
        self._transceivers: list[Transceiver] = []
        self._slots: list[_Slot] = []
        self._pending_slots: list[_Slot] = []
        self._pending_transport: RemoteTransport | None = None
        self._pending_ice_restart = False
        self._rollback: tuple[list[Transceiver], tuple[str, str]] | None = None
        self._data_wanted = False
        self._next_mid = 0
        self._session_id = int.from_bytes(self._random(8), "big") >> 2
        self._session_version = 0
        self._pts = IdAllocator(range(128), range(96, 128), range(35, 64))
        self._ext_ids = IdAllocator(range(1, 256), range(1, 15), range(16, 256))

    # -- public state ---------------------------------------------------------------------

    @property
    def transceivers(self) -> list[Transceiver]:
        """Live transceivers in m-line order, then the ones not yet in any m-section."""
        return list(self._transceivers)

    def transceiver(self, mid: str) -> Transceiver | None:
        """The transceiver of an m-section, e.g. for the mid found in an RTP header extension."""
        for t in self._transceivers:
            if t.mid == mid and not t.stopped:
                return t
        return None

    @property
    def local_description(self) -> SessionDescription | None:
        return self.pending_local_description or self.current_local_description

    @property
    def remote_description(self) -> SessionDescription | None:
        return self.pending_remote_description or self.current_remote_description

    @property
    def dtls_role(self) -> DtlsRole | None:
        """Our DTLS role once an answer fixed it (RFC 8842 §5.2: `active` is the client)."""
        return self._dtls_role

    # -- local changes --------------------------------------------------------------------

    def add_transceiver(
        self,
        kind: MediaKind,
        direction: Direction = "sendrecv",
        *,
        stream_id: str | None = None,
        track_id: str | None = None,
        codec_preferences: list[CodecCapability] | None = None,
        send_rids: list[str] | None = None,
    ) -> Transceiver:
        """A new transceiver; it gets an m-section (recycled if possible) in our next offer.

        ``send_rids`` (video, lowest quality first) offers that many simulcast streams
        (RFC 8853 ``a=simulcast:send``, RFC 8851 ``a=rid``), each on an SSRC of its own that
        the packets name with the MID and RID header extensions (RFC 8852)."""
        if kind not in ("audio", "video"):
            raise ValueError(f"unknown media kind {kind!r}")
        rids = list(send_rids or ())
        if rids and (kind != "video" or len(set(rids)) != len(rids)
                     or not all(_RID.fullmatch(r) for r in rids)):
            raise ValueError(f"simulcast needs video and distinct rids (RFC 8851 §10), "
                             f"got {kind} {rids!r}")
        t = Transceiver(
            kind=kind,
            direction=direction,
            sender_ssrc=self._ssrc(),
            sender_rtx_ssrc=self._ssrc() if kind == "video" else None,
            cname=self._token(12),
            stream_id=stream_id or self._uuid(),
            track_id=track_id or self._uuid(),
            codec_preferences=list(codec_preferences) if codec_preferences else None,
            send_rids={rid: self._ssrc() for rid in rids},
        )
        self._transceivers.append(t)
        return t

    def add_data_channel(self) -> None:
        """Include an `m=application` section in our next offer (once per session)."""
        self._data_wanted = True

    def stop_transceiver(self, t: Transceiver) -> None:
        """Next offer/answer writes its section with port 0 and no msid; recycled later."""
        if t.stopped:
            return
        t.direction = "inactive"
        if t.mid is None:
            t.stopped = True
            self._transceivers.remove(t)
        else:
            t.stopping = True

    # -- offers ---------------------------------------------------------------------------

    def create_offer(self, *, ice_restart: bool = False) -> SessionDescription:
        """Our offer (applied as the pending local description): -> have-local-offer.

        With `ice_restart`, fresh ICE credentials are generated and written to
        `self.transport` (RFC 8839 §4.4.1.1.1); the driver hands them to its ICE agent.
        """
        if self.signaling_state != "stable":
            raise JsepStateError(f"create_offer in state {self.signaling_state}")
        old_credentials = (self.transport.ice_ufrag, self.transport.ice_pwd)
        if ice_restart:
            self._new_ice_credentials()
        slots = [replace(s) for s in self._slots]
        waiting = [t for t in self._transceivers if t.mid is None and not t.stopped]
        assigned: list[Transceiver] = []
        for i, slot in enumerate(slots):  # RFC 8829 §5.2.2: recycle zero-port sections
            if slot.rejected and waiting and self.recycle:
                t = waiting.pop(0)
                slots[i] = _Slot(self._new_mid(), t.kind, _RTP_PROTOCOL, [], t)
                assigned.append(t)
        for new in waiting:
            slots.append(_Slot(self._new_mid(), new.kind, _RTP_PROTOCOL, [], new))
            assigned.append(new)
        if self._data_wanted and not any(s.data and not s.rejected for s in slots):
            slots.append(_Slot(self._new_mid(), "application", _SCTP_PROTOCOL,
                               [_DATACHANNEL_FORMAT], data=True))
        pts_in_use, ids_in_use = self._ids_in_use(slots)
        sections: list[MediaSection] = []
        for i, slot in enumerate(slots):
            live = slot.transceiver
            if slot.data and not slot.rejected:
                m = self._data_section(slot, "actpass")
            elif live is None or slot.rejected or live.stopped or live.stopping:
                m = self._zero_port_section(slot, "actpass")
            else:
                live.mid, live.mline_index = slot.mid, i
                codecs = live.codecs or self._offer_codecs(self._caps(live), pts_in_use)
                exts = live.header_extensions or self._offer_extensions(live.kind, ids_in_use)
                rids, simulcast = _simulcast_offer(live)
                m = self._rtp_section(slot, live, codecs, exts, live.direction, "actpass", True,
                                      rids, simulcast)
                slot.codecs = list(codecs)
            slot.formats = list(m.formats)
            sections.append(m)
        desc = self._description(sections, extmap_allow_mixed=True, bundle=True)
        self._pending_slots = slots
        self._rollback = (assigned, old_credentials)
        self.pending_local_description = desc
        self.signaling_state = "have-local-offer"
        return desc

    def rollback(self) -> None:
        """Drop our pending offer (have-local-offer -> stable), e.g. on glare."""
        if self.signaling_state != "have-local-offer" or self._rollback is None:
            raise JsepStateError(f"rollback in state {self.signaling_state}")
        assigned, (ufrag, pwd) = self._rollback
        for t in assigned:
            t.mid = t.mline_index = None
        for i, slot in enumerate(self._slots):
            if slot.transceiver is not None:
                slot.transceiver.mline_index = i
        self.transport.ice_ufrag, self.transport.ice_pwd = ufrag, pwd
        self._pending_slots, self._rollback = [], None
        self.pending_local_description = None
        self.signaling_state = "stable"

    # -- remote descriptions --------------------------------------------------------------

    def set_remote_description(
        self, desc: SessionDescription | str, type: Literal["offer", "answer"]
    ) -> RemoteChanges:
        """Apply the peer's offer or answer; SdpError (state unchanged) if unacceptable."""
        if type == "offer":
            if self.signaling_state != "stable":
                raise JsepStateError(f"remote offer in state {self.signaling_state}")
            return self._apply_offer(parse(desc) if isinstance(desc, str) else desc)
        if type == "answer":
            if self.signaling_state != "have-local-offer":
                raise JsepStateError(f"remote answer in state {self.signaling_state}")
            return self._apply_answer(parse(desc) if isinstance(desc, str) else desc)
        raise JsepStateError(f"unknown description type {type!r}")

    def _apply_offer(self, desc: SessionDescription) -> RemoteChanges:
        if len(desc.media) < len(self._slots):
            raise SdpError("offer has fewer m-sections than the session (RFC 8829 §5.2.2)")
        mids = [m.mid for m in desc.media]
        for i, m in enumerate(desc.media):
            if m.mid is None:
                raise fail(m, i, "missing a=mid (RFC 8829 §5.2.1)")
        if len(set(mids)) != len(mids):
            raise SdpError("duplicate a=mid values in offer")
        group = desc.bundle_group()
        if group is not None and any(mid not in mids for mid in group.mids):
            raise SdpError("BUNDLE group names a mid that has no m-section")
        slots: list[_Slot] = []
        create: list[bool] = []
        has_data = False
        for i, m in enumerate(desc.media):
            mid = m.mid or ""
            old = self._slots[i] if i < len(self._slots) else None
            if old is not None and old.mid == mid:
                if old.kind != m.kind:
                    raise fail(m, i, f"kind changed from {old.kind} to {m.kind}")
                slot = replace(old, protocol=m.protocol, formats=list(m.formats),
                               codecs=list(m.codecs) or old.codecs)
            elif old is not None and not old.rejected:
                raise fail(m, i, f"replaces live mid {old.mid!r} (only zero-port is recycled)")
            else:
                slot = _Slot(mid, m.kind, m.protocol, list(m.formats),
                             data=m.kind == "application", codecs=list(m.codecs))
            accept = self._acceptable(m, i, slot, group, has_data, any(not s.rejected
                                                                      for s in slots))
            slot.rejected = not accept
            has_data = has_data or (slot.data and accept)
            create.append(accept and not slot.data and slot.transceiver is None)
            slots.append(slot)
        transport = self._bundle_transport(desc, slots, group, answer=False)
        changes = self._transport_changes(transport)
        # -- validated: commit -------------------------------------------------------------
        waiting = [t for t in self._transceivers if t.mid is None and not t.stopped]
        for i, (slot, m) in enumerate(zip(slots, desc.media, strict=True)):
            if create[i]:
                match = next((t for t in waiting if t.kind == m.kind), None)
                if match is not None:
                    waiting.remove(match)
                else:
                    kind: MediaKind = "audio" if m.kind == "audio" else "video"
                    match = self.add_transceiver(kind, self.new_transceiver_direction)
                    changes.added.append(match)
                slot.transceiver = match
            t = slot.transceiver
            if t is None:
                if slot.data and slot.rejected and self.data_mid == slot.mid:
                    changes.data_channel_stopped = True
                continue
            if slot.rejected:
                if not t.stopped:
                    t.stopped, t.stopping, t.current_direction = True, False, None
                    changes.stopped.append(t)
            else:
                t.mid, t.mline_index = slot.mid, i
                record_remote(t, m)
        self._note_mids(mids)
        if any(s.data and not s.rejected for s in slots) and self.data_mid is None:
            changes.data_channel_added = True
        self._commit_transport(desc, slots, transport)
        self._pending_ice_restart = changes.ice_restart
        self._pending_slots = slots
        self.pending_remote_description = desc
        self.signaling_state = "have-remote-offer"
        return changes

    def _acceptable(self, m: MediaSection, index: int, slot: _Slot, group: Group | None,
                    has_data: bool, has_accepted: bool) -> bool:
        """Whether we answer this offered section with a real port (False: port 0)."""
        if m.stopped:
            return False
        if group is not None and slot.mid not in group.mids:
            return False  # max-bundle: a section outside the BUNDLE group is rejected
        if group is None and has_accepted:
            return False
        if m.kind == "application":
            return (not has_data and m.protocol.upper() in _SCTP_PROTOCOLS
                    and _DATACHANNEL_FORMAT in m.formats)
        if m.kind not in ("audio", "video") or m.protocol.upper() not in _RTP_PROTOCOLS:
            return False
        t = slot.transceiver
        if t is None:
            caps = self.audio_codecs if m.kind == "audio" else self.video_codecs
            if not any(not c.is_rtx for c in negotiate_codecs(m.codecs, caps)):
                return False
        elif t.stopped:
            return False
        if not m.rtcp_mux:
            raise fail(m, index, "a=rtcp-mux is required (RFC 8829 §5.1.3)")
        return True

    def _apply_answer(self, desc: SessionDescription) -> RemoteChanges:
        offer = self.pending_local_description
        slots = [replace(s) for s in self._pending_slots]
        if offer is None or len(desc.media) != len(slots):
            raise SdpError("answer does not have the offer's m-sections (RFC 3264 §6)")
        negotiated: list[tuple[list[RtpCodec], list[HeaderExtension], Direction]] = []
        tolerated: list[str] = []
        for i, (slot, m, mine) in enumerate(zip(slots, desc.media, offer.media, strict=True)):
            if m.kind != mine.kind:
                raise fail(m, i, f"answer has kind {m.kind}, offer {mine.kind}")
            accepted = not m.stopped
            if accepted and mine.port == 0:
                # RFC 3264 §6 forbids it, yet aiortc and libdatachannel answer a stopped
                # section with a live port. What we offered decides: it stays rejected.
                tolerated.append(str(fail(m, i, "answer accepts a section the offer rejected; "
                                             "taken as rejected")))
                accepted = False
            if accepted and m.mid != slot.mid:
                raise fail(m, i, f"answer mid differs from the offer's {slot.mid!r}")
            slot.rejected = not accepted
            negotiated.append(([], [], "inactive"))
            if not accepted or slot.data:
                continue
            if not m.rtcp_mux:
                raise fail(m, i, "a=rtcp-mux is required")
            codecs = accept_answered_codecs(mine.codecs, m.codecs)
            if not any(not c.is_rtx for c in codecs):
                raise fail(m, i, "answer accepts the section with no codec we offered")
            offered_uris = {e.uri for e in mine.extmaps}
            exts = [HeaderExtension(e.id, e.uri) for e in m.extmaps
                    if e.uri in offered_uris and 1 <= e.id <= 255]
            answered = reverse_direction(desc.effective_direction(m))
            direction = intersect(mine.direction or "sendrecv", answered)
            negotiated[i] = (codecs, exts, direction)
        group = desc.bundle_group()
        accepted_mids = [s.mid for s in slots if not s.rejected]
        if len(accepted_mids) > 1 and (group is None
                                       or any(mid not in group.mids for mid in accepted_mids)):
            raise SdpError("answer does not BUNDLE all accepted sections (we are max-bundle)")
        transport = self._bundle_transport(desc, slots, group, answer=True)
        role: DtlsRole | None = None
        if transport is not None:
            role = "server" if transport.setup == "active" else "client"
            if self._dtls_role is not None and role != self._dtls_role:
                raise SdpError(f"answer a=setup:{transport.setup} would change the DTLS role")
        changes = self._transport_changes(transport)
        changes.tolerated = tolerated
        # -- validated: commit -------------------------------------------------------------
        for i, (slot, m) in enumerate(zip(slots, desc.media, strict=True)):
            t = slot.transceiver
            if slot.data:
                if slot.rejected and self.data_mid == slot.mid:
                    self.data_mid, changes.data_channel_stopped = None, True
                elif not slot.rejected:
                    changes.data_channel_added = self.data_mid is None
                    self.data_mid = slot.mid
                continue
            if t is None:
                continue
            if slot.rejected:
                if not t.stopped:
                    changes.stopped.append(t)
                t.stopped, t.stopping, t.current_direction = True, False, None
                continue
            codecs, exts, direction = negotiated[i]
            t.codecs, t.header_extensions, t.current_direction = codecs, exts, direction
            t.rtcp_rsize = m.rtcp_rsize
            self._register(codecs, exts)
            record_remote(t, m)
            if t.send_rids:
                taken = _accepted_rids(m)
                t.send_rids = {r: s for r, s in t.send_rids.items() if r in taken}
        if role is not None:
            self._dtls_role = role
        self._note_mids([m.mid for m in desc.media if m.mid is not None])
        self._commit_transport(desc, slots, transport)
        self._finish(slots)
        self.current_local_description = offer
        self.current_remote_description = desc
        self.pending_local_description = None
        return changes

    # -- answers --------------------------------------------------------------------------

    def create_answer(self) -> SessionDescription:
        """Our answer to the pending remote offer (RFC 8829 §5.3): -> stable."""
        offer = self.pending_remote_description
        if self.signaling_state != "have-remote-offer" or offer is None:
            raise JsepStateError(f"create_answer in state {self.signaling_state}")
        if self._pending_ice_restart:
            self._new_ice_credentials()
        transport = self._pending_transport
        setup = "passive"
        if transport is not None:
            if transport.setup == "active":
                setup = "passive"
            elif transport.setup == "passive":
                setup = "active"
            elif self._dtls_role is not None:
                setup = "active" if self._dtls_role == "client" else "passive"
            else:
                setup = self.transport.setup_when_answering
        slots = self._pending_slots
        sections: list[MediaSection] = []
        results: list[tuple[list[RtpCodec], list[HeaderExtension], Direction] | None] = []
        for slot, m in zip(slots, offer.media, strict=True):
            t = slot.transceiver
            result = None
            if slot.rejected:
                section = self._zero_port_section(slot, setup)
            elif slot.data:
                section = self._data_section(slot, setup)
            elif t is None or t.stopped or t.stopping:
                section = self._zero_port_section(slot, setup)
            else:
                codecs = negotiate_codecs(m.codecs, self._caps(t))
                if not any(not c.is_rtx for c in codecs):
                    section = self._zero_port_section(slot, setup)
                else:
                    exts = negotiate_extensions(m.extmaps, self.header_extensions, t.kind)
                    direction = intersect(t.direction,
                                           reverse_direction(offer.effective_direction(m)))
                    rids, simulcast = simulcast_answer(m, codecs, direction)
                    section = self._rtp_section(slot, t, codecs, exts, direction, setup,
                                                m.rtcp_rsize, rids, simulcast)
                    section.protocol = m.protocol
                    result = (codecs, exts, direction)
                    slot.codecs = list(codecs)
            results.append(result)
            sections.append(section)
        offered_group = offer.bundle_group()
        mixed = offer.extmap_allow_mixed or any(m.extmap_allow_mixed for m in offer.media)
        answer = self._description(sections, extmap_allow_mixed=mixed,
                                   bundle=offered_group is not None,
                                   order=offered_group.mids if offered_group else None)
        # -- commit ------------------------------------------------------------------------
        for slot, section, result in zip(slots, sections, results, strict=True):
            t = slot.transceiver
            slot.rejected = section.port == 0 and not section.bundle_only
            if slot.data and not slot.rejected:
                self.data_mid = slot.mid
            elif slot.data and self.data_mid == slot.mid:
                self.data_mid = None
            if t is None or slot.data:
                continue
            if result is None:
                t.stopped, t.stopping, t.current_direction = True, False, None
                slot.rejected = True
                continue
            t.codecs, t.header_extensions, t.current_direction = result
            t.rtcp_rsize = section.rtcp_rsize
            self._register(result[0], result[1])
        if transport is not None:
            self._dtls_role = "client" if setup == "active" else "server"
        self._finish(slots)
        self.current_local_description = answer
        self.current_remote_description = offer
        self.pending_remote_description = None
        return answer

    # -- building sections ----------------------------------------------------------------

    def _caps(self, t: Transceiver) -> list[CodecCapability]:
        if t.codec_preferences:
            return t.codec_preferences
        return self.audio_codecs if t.kind == "audio" else self.video_codecs

    def _ids_in_use(
        self, slots: list[_Slot]
    ) -> tuple[dict[int, Hashable], dict[int, Hashable]]:
        pts: dict[int, Hashable] = {}
        ids: dict[int, Hashable] = {}
        for slot in slots:
            t = slot.transceiver
            if t is not None and not slot.rejected and not t.stopped:
                pts.update(codec_keys(t.codecs))
                ids.update((e.id, e.uri) for e in t.header_extensions)
        return pts, ids

    def _offer_codecs(self, caps: list[CodecCapability],
                      in_use: dict[int, Hashable]) -> list[RtpCodec]:
        """Our codecs with session-wide payload types (RFC 8843 §9), RTX after its codec."""
        result: list[RtpCodec] = []
        for cap in caps:
            if cap.is_rtx:
                continue
            codec = RtpCodec(0, cap.name, cap.clock_rate, cap.channels, cap.fmtp,
                             list(cap.rtcp_fb))
            key = codec_keys([codec])[0]
            codec.payload_type = self._allocate_pt(key, cap.preferred_payload_type, in_use)
            result.append(codec)
            apt = str(cap.preferred_payload_type)
            rtx = next((c for c in caps if c.is_rtx and c.parameters.get("apt") == apt), None)
            if rtx is not None and cap.preferred_payload_type is not None:
                pt = self._allocate_pt(("rtx", rtx.clock_rate, key), rtx.preferred_payload_type,
                                       in_use)
                result.append(RtpCodec(pt, rtx.name, rtx.clock_rate, None,
                                       f"apt={codec.payload_type}"))
        return result

    def _allocate_pt(self, key: Hashable, preferred: int | None,
                     in_use: dict[int, Hashable]) -> int:
        pt = self._pts.allocate(key, preferred, in_use)
        if pt is None:
            raise JsepStateError("no free RTP payload type left in this session")
        in_use[pt] = key
        return pt

    def _offer_extensions(self, kind: str, in_use: dict[int, Hashable]) -> list[HeaderExtension]:
        result: list[HeaderExtension] = []
        for cap in self.header_extensions:
            if kind in cap.kinds:
                ident = self._ext_ids.allocate(cap.uri, cap.preferred_id, in_use)
                if ident is not None:
                    in_use[ident] = cap.uri
                    result.append(HeaderExtension(ident, cap.uri))
        return result

    def _register(self, codecs: list[RtpCodec], exts: list[HeaderExtension]) -> None:
        for pt, key in codec_keys(codecs).items():
            self._pts.register(pt, key)
        for ext in exts:
            self._ext_ids.register(ext.id, ext.uri)

    def _transport_attributes(self, m: MediaSection, setup: str) -> None:
        tr = self.transport
        candidates = [IceCandidate.from_candidate(c) for c in tr.candidates]
        m.port, m.connection = 9, Connection("IN", "IP4", "0.0.0.0")
        if candidates:
            first = candidates[0]
            try:
                version = ipaddress.ip_address(first.host).version
                m.port = first.port
                m.connection = Connection("IN", f"IP{version}", first.host)
            except ValueError:  # an mDNS name: keep the placeholder address (RFC 8839 §4.3.1)
                pass
        m.candidates = candidates
        m.end_of_candidates = tr.end_of_candidates
        m.ice_ufrag, m.ice_pwd = tr.ice_ufrag, tr.ice_pwd
        m.ice_options = list(tr.ice_options)
        m.fingerprints = list(tr.fingerprints)
        m.setup = setup

    def _rtp_section(self, slot: _Slot, t: Transceiver, codecs: list[RtpCodec],
                     exts: list[HeaderExtension], direction: Direction, setup: str,
                     rtcp_rsize: bool, rids: list[Rid], simulcast: Simulcast | None
                     ) -> MediaSection:
        m = MediaSection(t.kind, 9, _RTP_PROTOCOL, mid=slot.mid, direction=direction,
                         rtcp_mux=True, rtcp_rsize=rtcp_rsize)
        # RFC 8829 §5.2.1 / RFC 8858 §4.2: our RTCP mux policy is "require", so offers say
        # rtcp-mux-only; answers must not (RFC 8858 §4.3), they only confirm rtcp-mux.
        m.rtcp_mux_only = setup == "actpass"
        self._transport_attributes(m, setup)
        m.set_codecs([replace(c, rtcp_fb=list(c.rtcp_fb)) for c in codecs])
        m.extmaps = [replace(e) for e in exts]
        m.rids, m.simulcast = rids, simulcast
        if direction in ("sendrecv", "sendonly"):  # RFC 8830 msid, RFC 5576 ssrc lines
            m.msid = [(t.stream_id, t.track_id)]
            if simulcast is not None and simulcast.send:
                return m  # RFC 8853 §5.1: streams named by rid; their SSRCs come with the media
            msid = f"{t.stream_id} {t.track_id}"
            ssrcs = [t.sender_ssrc]
            if t.sender_rtx_ssrc is not None and any(c.is_rtx for c in codecs):
                ssrcs.append(t.sender_rtx_ssrc)
                m.ssrc_groups = [SsrcGroup("FID", list(ssrcs))]
            for ssrc in ssrcs:
                m.ssrcs.append(SsrcAttribute(ssrc, "cname", t.cname))
                m.ssrcs.append(SsrcAttribute(ssrc, "msid", msid))
        return m

    def _data_section(self, slot: _Slot, setup: str) -> MediaSection:
        m = MediaSection("application", 9, slot.protocol, [_DATACHANNEL_FORMAT], mid=slot.mid)
        self._transport_attributes(m, setup)
        m.sctp_port = self.transport.sctp_port
        m.max_message_size = self.transport.max_message_size
        return m

    def _zero_port_section(self, slot: _Slot, setup: str) -> MediaSection:
        """A rejected/stopped section in the full form browsers write (RFC 8829 §5.2.2).

        Port 0, `a=inactive`, no msid, no ssrc, no candidates and not in the BUNDLE group — but
        with the session's ICE credentials, fingerprint and setup, rtcp-mux and the section's
        own codecs. A bare `m=video 0 ... 0` is legal SDP, yet real stacks refuse it: aiortc
        wants ICE credentials in every section, GStreamer a fingerprint, werift one of its
        codecs (issue 8). Sections we know no codecs for keep the static format 0.
        """
        m = MediaSection(slot.kind, 0, slot.protocol, mid=slot.mid)
        self._transport_attributes(m, setup)
        m.port, m.connection = 0, Connection("IN", "IP4", "0.0.0.0")
        m.candidates, m.end_of_candidates = [], False
        if slot.data and slot.protocol.upper() in _SCTP_PROTOCOLS:
            m.formats, m.sctp_port = [_DATACHANNEL_FORMAT], self.transport.sctp_port
        elif "RTP/" in slot.protocol.upper():
            m.direction, m.rtcp_mux = "inactive", True
            t = slot.transceiver
            codecs = t.codecs if t is not None and t.codecs else slot.codecs
            if codecs:
                m.set_codecs([replace(c, rtcp_fb=list(c.rtcp_fb)) for c in codecs])
            else:
                m.formats = ["0"]
        else:
            m.formats = list(slot.formats) or ["0"]
        return m

    def _description(self, sections: list[MediaSection], *, extmap_allow_mixed: bool,
                     bundle: bool, order: list[str] | None = None) -> SessionDescription:
        self._session_version += 1
        desc = SessionDescription(
            origin=Origin("-", self._session_id, self._session_version, "IN", "IP4",
                          "127.0.0.1"),
            ice_lite=self.transport.ice_lite,
            extmap_allow_mixed=extmap_allow_mixed,
            msid_semantic=MsidSemantic("WMS", ["*"]),
            media=sections,
        )
        if bundle:  # RFC 8843 §7.3: the first mid is the BUNDLE tag; keep the offerer's order
            mids = [m.mid for m in sections if not m.stopped and m.mid is not None]
            if order:
                mids.sort(key=lambda mid: order.index(mid) if mid in order else len(order))
            desc.groups = [Group("BUNDLE", mids)] if mids else []
        return desc

    # -- shared bookkeeping ---------------------------------------------------------------

    def _bundle_transport(self, desc: SessionDescription, slots: list[_Slot],
                          group: Group | None, *, answer: bool) -> RemoteTransport | None:
        """The transport of the BUNDLE-tag section: the first accepted mid of the group."""
        accepted = {s.mid: i for i, s in enumerate(slots) if not s.rejected}
        order = [mid for mid in (group.mids if group else []) if mid in accepted]
        order += [mid for mid in accepted if mid not in order]
        if not order:
            return None
        index = accepted[order[0]]
        transport = remote_transport(desc, desc.media[index], index, answer)
        if not answer and self._dtls_role is not None:
            wanted = "passive" if self._dtls_role == "client" else "active"
            if transport.setup not in ("actpass", wanted):
                raise SdpError(f"offer a=setup:{transport.setup} would change the DTLS role")
        return transport

    def _transport_changes(self, transport: RemoteTransport | None) -> RemoteChanges:
        changes = RemoteChanges()
        if transport is not None:
            changes.ice_restart = self.remote_ice_ufrag is not None and (
                transport.ufrag != self.remote_ice_ufrag or transport.pwd != self.remote_ice_pwd
            )
            changes.fingerprint_changed = bool(self.remote_fingerprints) and (
                {(a.lower(), v.upper()) for a, v in transport.fingerprints}
                != {(a.lower(), v.upper()) for a, v in self.remote_fingerprints}
            )
        return changes

    def _commit_transport(self, desc: SessionDescription, slots: list[_Slot],
                          transport: RemoteTransport | None) -> None:
        self._pending_transport = transport
        if transport is not None:
            self.remote_ice_ufrag, self.remote_ice_pwd = transport.ufrag, transport.pwd
            self.remote_ice_lite = transport.ice_lite
            self.remote_candidates = list(transport.candidates)
            self.remote_end_of_candidates = transport.end_of_candidates
            self.remote_fingerprints = transport.fingerprints
            self.remote_setup = transport.setup
        for slot, m in zip(slots, desc.media, strict=True):
            if slot.data and not slot.rejected:
                # RFC 8841 §5.2 / §6.1: defaults when the attributes are absent
                self.remote_sctp_port = m.sctp_port if m.sctp_port is not None else 5000
                size = m.max_message_size
                self.remote_max_message_size = 65536 if size is None else size

    def _finish(self, slots: list[_Slot]) -> None:
        """Commit the m-line layout; forget transceivers whose section was recycled."""
        self._slots, self._pending_slots, self._rollback = slots, [], None
        self._pending_ice_restart = False
        in_slots = {id(s.transceiver): i for i, s in enumerate(slots) if s.transceiver}
        kept: list[Transceiver] = []
        for t in self._transceivers:
            if id(t) in in_slots:
                t.mline_index = in_slots[id(t)]
                kept.append(t)
            elif t.mid is None and not t.stopped:
                kept.append(t)
        kept.sort(key=lambda t: in_slots.get(id(t), len(slots)))
        self._transceivers = kept
        if not any(s.data and not s.rejected for s in slots):
            self.data_mid = None
        self.signaling_state = "stable"

    def _note_mids(self, mids: list[str | None]) -> None:
        """Mids are never reused (RFC 8829 §5.2.2): our counter passes every numeric mid."""
        for mid in mids:
            if mid is not None and mid.isascii() and mid.isdigit() and len(mid) < 12:
                self._next_mid = max(self._next_mid, int(mid) + 1)

    def _new_mid(self) -> str:
        mid = str(self._next_mid)
        self._next_mid += 1
        return mid

    # -- randomness -----------------------------------------------------------------------

    def _ssrc(self) -> int:
        return int.from_bytes(self._random(4), "big") or 1

    def _token(self, length: int) -> str:
        """`length` ICE-safe characters (RFC 8839 §5.4 ice-char: ALPHA / DIGIT / "+" / "/")."""
        return base64.b64encode(self._random(length))[:length].decode("ascii")

    def _uuid(self) -> str:
        h = self._random(16).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _new_ice_credentials(self) -> None:
        self.transport.ice_ufrag = self._token(8)
        self.transport.ice_pwd = self._token(24)


def _simulcast_offer(t: Transceiver) -> tuple[list[Rid], Simulcast | None]:
    """RFC 8853 §5.1: ``a=rid:<id> send`` per stream and ``a=simulcast:send q;h;f``, for a
    transceiver that sends simulcast (none once an answer declined it)."""
    if not t.send_rids or t.direction not in ("sendrecv", "sendonly"):
        return [], None
    rids = list(t.send_rids)
    return [Rid(r, "send") for r in rids], Simulcast(send=[[SimulcastRid(r)] for r in rids])


def _accepted_rids(m: MediaSection) -> set[str]:
    """The streams an answer takes (RFC 8853 §5.3: its ``a=simulcast:recv``, each with an
    ``a=rid:<id> recv``); a paused one (``~``) is accepted too, it is only not wanted now."""
    if m.simulcast is None:
        return set()
    declared = {r.id for r in m.rids if r.direction == "recv"}
    return {alts[0].rid for alts in m.simulcast.recv if alts and alts[0].rid in declared}
