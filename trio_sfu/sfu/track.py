"""Forwarding: one published track fanned out to its subscribers' down-tracks.

The per-packet path is ``PublishedTrack.on_rtp`` → ``DownTrack.forward`` for each subscriber →
``RtpRewriter.rewrite`` → ``PeerConnection.send_rtp``: plain method calls inside the UDP reader,
with everything that does not depend on the packet precomputed per down-track (DESIGN.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_sfu.cluster.commands import CodecInfo, TrackInfo
from trio_sfu.proto.capabilities import (
    URI_MID,
    URI_REPAIRED_RID,
    URI_RID,
    URI_TRANSPORT_CC,
    CodecCapability,
    codec_matches,
)
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtcp import Fir, FirEntry, Pli
from trio_sfu.proto.rtp import RtpRewriter, TransportCcSequencer
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.peer import PeerConnection

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

#: Extensions a subscriber must not see as the publisher wrote them: MID/RID name the
#: publisher's m-section and layer, and transport-cc numbers the publisher's transport.
_NOT_FORWARDED = frozenset((URI_MID, URI_RID, URI_REPAIRED_RID, URI_TRANSPORT_CC))
#: Keyframe requests towards a publisher: at most one per track per interval (issue 3).
KEYFRAME_INTERVAL = 0.5


def codec_infos(transceiver: Transceiver) -> tuple[CodecInfo, ...]:
    return tuple(
        CodecInfo(c.name, c.clock_rate, c.channels, c.fmtp, c.payload_type, tuple(c.rtcp_fb))
        for c in transceiver.codecs
    )


def codec_preferences(track: TrackInfo) -> list[CodecCapability]:
    """Offer a subscriber exactly the formats the publisher sends (an SFU cannot transcode)."""
    return [
        CodecCapability(c.name, c.clock_rate, c.channels, c.fmtp, list(c.rtcp_fb), c.payload_type)
        for c in track.codecs
    ]


class PublishedTrack:
    """One incoming track of a publisher (one m-section; simulcast layers choose one stream)."""

    def __init__(
        self,
        pc: PeerConnection,
        transceiver: Transceiver,
        track_id: str,
        *,
        publisher_id: str,
    ) -> None:
        self.pc = pc
        self.transceiver = transceiver
        self.track_id = track_id
        self.publisher_id = publisher_id
        self.kind = transceiver.kind
        self.info = TrackInfo(track_id, transceiver.kind, codec_infos(transceiver))
        self.downtracks: list[DownTrack] = []
        #: the SSRC currently forwarded (PLI/FIR target); learned from the first packet
        self.media_ssrc: int | None = (
            transceiver.remote_ssrcs[0] if transceiver.remote_ssrcs else None
        )
        #: with simulcast, the one layer we forward (the highest the publisher announced)
        self.selected_rid: str | None = (
            transceiver.remote_rids[-1] if transceiver.remote_rids else None
        )
        self._rtx_pts = frozenset(c.payload_type for c in transceiver.codecs if c.is_rtx)
        self._keyframe_at = -KEYFRAME_INTERVAL
        self._fir_seq = 0
        self.packets = 0
        self.keyframes_requested = 0

    def __repr__(self) -> str:
        return f"<PublishedTrack {self.publisher_id}/{self.track_id} {self.kind}>"

    # -- the hot path ---------------------------------------------------------------------

    def on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        if stream.repairs is not None or (packet[1] & 0x7F) in self._rtx_pts:
            return  # RTX repairs our own NACKs towards the publisher (not sent yet)
        if self.selected_rid is not None and stream.rid != self.selected_rid:
            return
        self.media_ssrc = stream.ssrc
        self.packets += 1
        for downtrack in self.downtracks:
            downtrack.forward(packet)

    # -- control --------------------------------------------------------------------------

    def attach(self, downtrack: DownTrack) -> None:
        self.downtracks = [*self.downtracks, downtrack]

    def detach(self, downtrack: DownTrack) -> None:
        self.downtracks = [d for d in self.downtracks if d is not downtrack]

    def request_keyframe(self, now: float) -> bool:
        """PLI (or FIR if PLI was not negotiated) to the publisher, throttled per track."""
        if self.kind != "video" or self.media_ssrc is None:
            return False
        if now - self._keyframe_at < KEYFRAME_INTERVAL:
            return False
        self._keyframe_at = now
        self.keyframes_requested += 1
        t = self.transceiver
        if t.pli or not t.fir:
            self.pc.send_rtcp(
                Pli(sender_ssrc=t.sender_ssrc, media_ssrc=self.media_ssrc).serialize()
            )
        else:
            # RFC 5104 §4.3.1.1: a new request increments the FIR sequence number.
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            fir = Fir(sender_ssrc=t.sender_ssrc, entries=[FirEntry(self.media_ssrc, self._fir_seq)])
            self.pc.send_rtcp(fir.serialize())
        return True


class DownTrack:
    """One published track as one subscriber receives it: a sendonly transceiver + rewriter.

    The rewriter is built once the subscriber's answer fixed the payload types and extension
    ids; until then (and after :meth:`close`) nothing is forwarded.
    """

    def __init__(
        self,
        pc: PeerConnection,
        transceiver: Transceiver,
        source: PublishedTrack,
        *,
        twcc: Callable[[int], TransportCcSequencer | None],
    ) -> None:
        self.pc = pc
        self.transceiver = transceiver
        self.source = source
        self._twcc = twcc
        self.rewriter: RtpRewriter | None = None
        self._send = pc.send_rtp
        self.forwarded = 0
        self.unmapped = 0

    def __repr__(self) -> str:
        return f"<DownTrack {self.source!r} -> {self.pc.name}>"

    def activate(self) -> bool:
        """Build the rewriter from what was negotiated; False if nothing can be forwarded."""
        t = self.transceiver
        if t.stopped or not t.sending:
            return False
        pt_map: dict[int, int] = {}
        clock_rate = 90000
        for pub in self.source.transceiver.media_codecs:
            cap = CodecCapability(pub.name, pub.clock_rate, pub.channels, pub.fmtp)
            for sub in t.media_codecs:
                if codec_matches(sub, cap):
                    pt_map[pub.payload_type] = sub.payload_type
                    clock_rate = sub.clock_rate
                    break
        if not pt_map:
            log.warning(
                "subscriber accepted none of the publisher's codecs",
                extra={"peer": self.pc.name, "track": self.source.track_id},
            )
            return False
        ext_map: dict[int, int] = {}
        for ext in self.source.transceiver.header_extensions:
            if ext.uri in _NOT_FORWARDED:
                continue
            out = t.extension_id(ext.uri)
            if out is not None:
                ext_map[ext.id] = out
        twcc_id = t.extension_id(URI_TRANSPORT_CC)
        self.rewriter = RtpRewriter(
            t.sender_ssrc,
            pt_map,
            ext_map,
            clock_rate=clock_rate,
            twcc=self._twcc(twcc_id) if twcc_id is not None else None,
        )
        return True

    def forward(self, packet: bytes) -> None:
        rewriter = self.rewriter
        if rewriter is None:
            return
        out = rewriter.rewrite(packet)
        if out is None:
            self.unmapped += 1
            return
        self.forwarded += 1
        self._send(out)

    def close(self) -> None:
        self.rewriter = None
        self.source.detach(self)
