"""Forwarding: one published track fanned out to its subscribers' down-tracks.

The per-packet path is ``PublishedTrack.on_rtp`` → ``ForwardingGroup.forward`` for each group
of subscribers that see the same rewrite (one ``RtpRewriter.rewrite``) → ``DownTrack.deliver``
for each member → ``ServerPeerConnection.send_rtp_as`` (the peer core's: its SSRC and
transport-cc number patched in, SRTP, send): plain method calls inside the UDP reader, with
everything that does not depend on the packet precomputed per group or per down-track
(DESIGN.md, issue 10).
RTCP is terminated per leg (issue 3): the publisher leg gets our receiver reports, NACKs and
keyframe requests; each subscriber leg gets our sender reports and NACK retransmissions from
the track's packet cache.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Final, Protocol

from trio_sfu.proto.capabilities import (
    URI_AUDIO_LEVEL,
    URI_DEPENDENCY_DESCRIPTOR,
    URI_MID,
    URI_REPAIRED_RID,
    URI_RID,
    URI_TRANSPORT_CC,
    CodecCapability,
    codec_matches,
)
from trio_sfu.proto.codecs.av1_dd import DTI_SWITCH, DependencyDescriptorReader
from trio_sfu.proto.codecs.vp8 import is_keyframe as vp8_is_keyframe
from trio_sfu.proto.codecs.vp8 import keyframe_width
from trio_sfu.proto.codecs.vp8 import temporal_info as vp8_temporal_info
from trio_sfu.proto.codecs.vp9 import (
    SVC_END,
    SVC_KEYFRAME,
    SVC_SS,
    SVC_START,
    SVC_SWITCH_TO_SHIFT,
    SVC_SWITCH_UP,
)
from trio_sfu.proto.codecs.vp9 import layer_info as vp9_layer_info
from trio_sfu.proto.codecs.vp9 import parse_descriptor as parse_vp9_descriptor
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.layers import NO_LIMIT
from trio_sfu.proto.rtcp import Fir, FirEntry, Nack, Pli, ReportBlock, SenderReport
from trio_sfu.proto.rtp import (
    RtpRewriter,
    TransportCcSequencer,
    find_extension,
    packet_loudness,
    payload_offset,
    seq_delta,
)
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu.dynacast import LayerDemand
from trio_sfu.sfu.feedback import (
    FirSequence,
    KeyframeGate,
    KeyframeThrottle,
    NackGenerator,
    PacketCache,
    ReceiveStatistics,
    SendStatistics,
    rtx_unwrap,
    rtx_wrap,
)
from trio_sfu.sfu.feedback.keyframe import KEYFRAME_WAIT
from trio_sfu.sfu.groups import Fanout, ForwardingGroup, GroupKey
from trio_sfu.sfu.model import CodecInfo, TrackInfo

log = logging.getLogger(__name__)

#: Extensions a subscriber must not see as the publisher wrote them: MID/RID name the
#: publisher's m-section and layer, and transport-cc numbers the publisher's transport.
_NOT_FORWARDED: Final = frozenset((URI_MID, URI_RID, URI_REPAIRED_RID, URI_TRANSPORT_CC))
#: Keyframe requests towards a publisher: at most one per track per interval (issue 3).
KEYFRAME_INTERVAL: Final = 0.5
#: Until a receiver report or the SCTP association tells us better, the round-trip time.
DEFAULT_RTT: Final = 0.1
#: Retransmissions remembered per down-track (sequence numbers modulo this), to ignore a NACK
#: repeated within one round trip.
_RESENT_SLOTS: Final = 1024

_TS: Final = struct.Struct("!I")
#: Bytes a forwarded packet takes on the wire beyond its RTP bytes (IPv4 20 + UDP 8 + the
#: SRTP tag 16): what a layer's bitrate costs a subscriber's link, for the allocator
WIRE_OVERHEAD: Final = 44
#: V=2, P (padding) and X (one-byte extension block) set; PT; seq; timestamp; SSRC
_PADDING_HEADER: Final = struct.Struct("!BBHII")


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


class TrackSink(Protocol):
    """The relay's per-packet entry for one local track (sync, never blocks)."""

    #: whether another pod currently wants the track (a call is a no-op otherwise)
    wanted: bool

    def __call__(self, packet: bytes) -> None: ...

    def close(self) -> None: ...


class TrackSource(Protocol):
    """What a down-track forwards from: a local publisher's track, or a track relayed from
    another pod (cluster mode). Described by data (:class:`TrackInfo`), so the down-track never
    needs the publisher's own transceiver."""

    info: TrackInfo
    publisher_id: str
    track_id: str
    kind: str
    clock_rate: int
    cache: PacketCache | None

    fanout: Fanout

    def attach(self, downtrack: DownTrack, carry: ForwardingGroup | None = None) -> None:
        """Start forwarding to ``downtrack`` (a video one from the next keyframe on)."""

    def detach(self, downtrack: DownTrack) -> None: ...

    def request_keyframe(self, now: float, layer: int | None = None) -> bool:
        """Ask the publisher for a keyframe of simulcast stream ``layer`` (None: the top)."""

    def cache_for(self, ssrc: int) -> PacketCache | None:
        """The packet cache of the incoming stream ``ssrc`` (NACKs are answered from it)."""

    def layer_bitrates(self, now: float) -> tuple[float, ...]:
        """Measured bits/s of each simulcast stream, lowest first (empty: not simulcast)."""

    def layer_widths(self) -> tuple[int, ...]:
        """Frame width of each simulcast stream from its last keyframe (0: unknown)."""


def forwarding_maps(
    source: TrackInfo, transceiver: Transceiver
) -> tuple[dict[int, int], dict[int, int], int, dict[int, int]]:
    """(payload type map, extension id map, clock rate, RTX payload type per output PT) for
    forwarding ``source`` on the negotiated ``transceiver`` (issue 3: payload types mapped per
    subscriber)."""
    t = transceiver
    pt_map: dict[int, int] = {}
    rtx_pt: dict[int, int] = {}
    clock_rate = 90000
    for pub in source.codecs:
        if pub.name.lower() == "rtx":
            continue
        cap = CodecCapability(pub.name, pub.clock_rate, pub.channels, pub.fmtp)
        for sub in t.media_codecs:
            if codec_matches(sub, cap):
                pt_map[pub.payload_type] = sub.payload_type
                clock_rate = sub.clock_rate
                rtx = t.rtx_payload_type(sub.payload_type)
                if rtx is not None and t.sender_rtx_ssrc is not None and t.nack:
                    rtx_pt[sub.payload_type] = rtx
                break
    ext_map: dict[int, int] = {}
    # The dependency descriptor goes with AV1 (the publisher's first codec, what it sends)
    # alone: its frame numbers are one stream's, so after a simulcast switch (VP8's, say) a
    # receiver would take the new stream's frames for old ones; AV1 SVC cannot be decoded
    # without it.
    first = next((c for c in source.codecs if c.name.lower() != "rtx"), None)
    av1 = first is not None and first.name.upper() == "AV1"
    for ext_id, uri in source.extensions:
        if uri in _NOT_FORWARDED or (uri == URI_DEPENDENCY_DESCRIPTOR and not av1):
            continue
        out = t.extension_id(uri)
        if out is not None:
            ext_map[ext_id] = out
    return pt_map, ext_map, clock_rate, rtx_pt


#: A stream silent this long at a bitrate sample has stopped (frames come every 33-50 ms at
#: 20-30 frames/s; a slower one is measured over a little less than its second, no harm).
QUIET_AFTER: Final = 0.2
#: The shortest stretch a bitrate sample is taken over: a keyframe alone would pass off a
#: shorter one's rate as many times the stream's.
MIN_SAMPLE: Final = 0.5


class Ingress:
    """One incoming media SSRC of a track (the only stream, or one simulcast layer)."""

    __slots__ = (
        "bitrate",
        "cache",
        "last_seen",
        "last_ts",
        "layer",
        "nack",
        "octets",
        "rid",
        "sampled_at",
        "sampled_octets",
        "ssrc",
        "stats",
        "width",
    )

    def __init__(
        self,
        ssrc: int,
        rid: str | None,
        clock_rate: int,
        nack: bool,
        *,
        layer: int = 0,
        cache: PacketCache | None = None,
    ) -> None:
        self.ssrc = ssrc
        self.rid = rid
        self.stats = ReceiveStatistics(clock_rate)
        self.nack = NackGenerator() if nack else None
        #: simulcast: the stream's index, lowest quality first (-1: a rid not announced)
        self.layer = layer
        #: the stream's own packets (sequence numbers of streams collide), for NACKs
        self.cache = cache
        self.last_ts = -1  # the newest timestamp: a new one starts a frame
        self.last_seen = 0.0  # when its last packet came (a simulcast stream's, else unused)
        self.octets = 0
        self.sampled_at = -1.0  # not yet
        self.sampled_octets = 0
        self.bitrate = 0.0
        #: frame width from the stream's last keyframe (VP8), 0 while unknown
        self.width = 0

    def sample_bitrate(self, now: float) -> float:
        """Bits/s over the last second or so (read by the layer allocator, not per packet).
        A stream that sent nothing keeps its last rate: it is paused (dynacast, or the
        encoder's own choice), and the allocator needs what resuming it would cost. So a
        stream that stopped within the second is measured up to its last packet, not over
        the silence after it (a third of a second of h read as a third of its rate, and a
        capped subscriber was switched up to it), and not at all if that is too short."""
        if now - self.sampled_at >= 1.0:
            if self.sampled_at >= 0 and self.octets != self.sampled_octets:
                end = now
                if self.sampled_at < self.last_seen < now - QUIET_AFTER:
                    end = self.last_seen  # it stopped: paused
                if end - self.sampled_at >= MIN_SAMPLE:
                    span = end - self.sampled_at
                    self.bitrate = 8 * (self.octets - self.sampled_octets) / span
            self.sampled_at, self.sampled_octets = now, self.octets
        return self.bitrate


#: A simulcast stream that sent nothing for this long is not being sent (review_streams).
STREAM_TIMEOUT: Final = 2.0

#: After a publisher's path moved, gaps in its streams for this long are the failed path's,
#: not losses worth a retransmission (a keyframe was asked for instead).
PATH_GAP_WINDOW: Final = 1.0


class PublishedTrack:
    """One incoming track of a publisher (one m-section; simulcast layers choose one stream)."""

    def __init__(
        self,
        pc: ServerPeerConnection,
        transceiver: Transceiver,
        track_id: str,
        *,
        publisher_id: str,
    ) -> None:
        self.pc = pc
        self.transceiver = transceiver
        self.track_id = track_id
        self.publisher_id = publisher_id
        self.kind: str = transceiver.kind
        self.info = TrackInfo(
            track_id,
            transceiver.kind,
            codec_infos(transceiver),
            tuple((e.id, e.uri) for e in transceiver.header_extensions),
            rids=tuple(transceiver.remote_rids) if transceiver.kind == "video" else (),
        )
        media = transceiver.media_codecs
        self.clock_rate = media[0].clock_rate if media else 90000
        video = self.kind == "video"
        #: simulcast (RFC 8853): the announced rids, lowest quality first (proto/jsep orders
        #: them); each forwarding group picks one stream (issue 11). Empty: one stream.
        self.layers: list[str] = list(transceiver.remote_rids) if video else []
        self.fanout = Fanout(
            len(self.layers),
            clock_rate=self.clock_rate,
            vp8=bool(media) and media[0].name.upper() == "VP8",
        )
        #: the SSRC of the top (default) stream: PLI/FIR target, what new subscribers start on
        self.media_ssrc: int | None = (
            transceiver.remote_ssrcs[0] if transceiver.remote_ssrcs else None
        )
        #: with simulcast, the top stream: new subscribers start on it, the relay carries it
        self.selected_rid: str | None = self.layers[-1] if self.layers else None
        #: the top stream's cache (every stream has its own, see :meth:`cache_for`)
        self.cache = PacketCache() if video else None
        self._nack = video and transceiver.nack
        self._apt = {c.payload_type: c.apt for c in transceiver.codecs if c.is_rtx and c.apt}
        self._ingress: dict[int, Ingress] = {}
        self.keyframes = KeyframeThrottle(KEYFRAME_INTERVAL)
        #: per simulcast stream (the top one is :attr:`keyframes`): a PLI for one stream
        #: gets a keyframe of that stream only, so each is throttled on its own
        self._layer_keyframes = [KeyframeThrottle(KEYFRAME_INTERVAL) for _ in self.layers[:-1]]
        self._layer_keyframes.append(self.keyframes)
        self._layer_ssrcs: list[int | None] = [None] * len(self.layers)
        #: while set, packets are dropped until a keyframe starts (see _resyncing)
        self._resync_until = 0.0
        self.resync_dropped = 0
        self.gate: KeyframeGate[DownTrack] = KeyframeGate(
            (c.payload_type, c.name) for c in media if video
        )
        self._fir: dict[int, FirSequence] = {}  # RFC 5104 §4.3.1.1: per target SSRC
        self.packets = 0
        self.rtx_received = 0
        #: RTX padding-only packets (bandwidth probes, RFC 4588 §8.3: no OSN), never forwarded
        self.padding_received = 0
        #: the relay's entry for this track (cluster mode): called per packet, a no-op unless
        #: another pod currently wants the track; with simulcast, the top stream's
        self.relay_sink: TrackSink | None = None
        #: with simulcast, the relay's entry per stream (the top one is :attr:`relay_sink`):
        #: another pod receives the streams its subscribers need (sfu/remote.py)
        self.layer_sinks: list[TrackSink | None] = [None] * len(self.layers)
        #: the publisher's MUTE (issue 15): its packets are dropped before this track sees them
        self.muted = False
        #: RFC 6464 audio levels (issue 11): the negotiated extension id (0: none) and the
        #: loudness summed since the room's speaker timer last took it (:meth:`take_levels`)
        self.level_id = (transceiver.extension_id(URI_AUDIO_LEVEL) or 0) if not video else 0
        self.level_total = 0
        self.level_count = 0
        #: VP9 SVC (RFC 9628): the payload types whose descriptor says which spatial and
        #: temporal layer a packet is; per spatial layer the octets received, their rate
        #: (sampled about once a second) and the widths of its scalability structure
        self._vp9_pts = frozenset(
            c.payload_type for c in media if video and not self.layers and c.name.upper() == "VP9"
        )
        #: VP8 with temporal layers (L1T3): its descriptor's TID
        self._vp8_pts = frozenset(
            c.payload_type for c in media if video and not self.layers and c.name.upper() == "VP8"
        )
        #: AV1 SVC, and VP8's temporal layers once the publisher negotiated the dependency
        #: descriptor (AV1 RTP spec, Appendix A; libwebrtc then leaves VP8's picture id and
        #: TID out of its payload descriptor): the extension says it (id 0: not negotiated)
        self._dd_pts = frozenset(
            c.payload_type
            for c in media
            if video and not self.layers and c.name.upper() in ("AV1", "VP8")
        )
        self._dd_id = (transceiver.extension_id(URI_DEPENDENCY_DESCRIPTOR) or 0) if video else 0
        self._dd = DependencyDescriptorReader()
        self._svc_octets = [0] * 8
        self._svc_sampled = [0] * 8
        self._svc_rates: tuple[float, ...] = ()
        self._svc_sampled_at = 0.0
        self._svc_widths: tuple[int, ...] = ()
        #: when review_streams first saw media (streams are judged only after STREAM_TIMEOUT)
        #: and the streams found not sent while wanted (until they arrive again)
        self._streams_since = 0.0
        self._missing: set[int] = set()
        #: dynacast (issue 11): which simulcast streams the publisher should send
        self.demand = LayerDemand(self.layers) if self.layers else None
        #: called when a stream the publisher was told to stop is needed again (the
        #: publisher re-plans at once instead of at its next report)
        self.on_demand: Callable[[], None] | None = None
        #: called (with ``now``) when a packet made a NACK due: the publisher's timer task
        #: sleeps through packets, so it must hear of it (issue 10)
        self.on_timer: Callable[[float], None] | None = None

    def __repr__(self) -> str:
        return f"<PublishedTrack {self.publisher_id}/{self.track_id} {self.kind}>"

    # -- the hot path ---------------------------------------------------------------------

    def on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        if self.level_id:  # an audio track: two int additions for the room's speaker
            self.level_total += packet_loudness(packet, self.level_id)
            self.level_count += 1
        apt = self._apt.get(packet[1] & 0x7F)
        if apt is not None or stream.repairs is not None:
            # RFC 4588: a retransmission we asked for; forward the original it carries.
            ingress = self._repaired(stream)
            if ingress is None or apt is None:
                return
            unwrapped = rtx_unwrap(packet, ingress.ssrc, apt)
            if unwrapped is None:
                self.padding_received += 1
                return  # padding-only probe
            seq, packet = unwrapped
            if ingress.nack is not None:
                ingress.nack.on_packet(seq, now)
            self.rtx_received += 1
            if self.layers:
                self._on_layer(ingress, packet, seq, -1, now)
                return
        else:
            ingress = self._ingress.get(stream.ssrc)
            if ingress is None:
                ingress = self._new_ingress(stream)
            seq = (packet[2] << 8) | packet[3]
            ts = _TS.unpack_from(packet, 4)[0]
            ingress.stats.update(seq, ts, now)
            if ingress.nack is not None and ingress.nack.on_packet(seq, now):
                self.request_keyframe(now, ingress.layer)  # too lost to repair: start afresh
            if self.layers:
                self._on_layer(ingress, packet, seq, ts, now)
                return
        if ingress.rid != self.selected_rid:
            return
        self.media_ssrc = ingress.ssrc
        self.packets += 1
        if self._resync_until and self._resyncing(packet, now):
            return
        if self.cache is not None:
            self.cache.put(packet)
        if self.gate.waiting or self.keyframes.pending:
            self._watch_keyframes(packet, now)
        if self._vp9_pts and packet[1] & 0x7F in self._vp9_pts:
            self._on_vp9(packet, seq, now)
        elif self._dd_id and packet[1] & 0x7F in self._dd_pts:
            self._on_dd(packet, seq, now)
        elif self._vp8_pts and packet[1] & 0x7F in self._vp8_pts:
            self._on_vp8(packet, seq, now)
        else:
            for group in self.fanout.groups:
                group.forward(packet, now)
        sink = self.relay_sink
        if sink is not None:
            sink(packet)

    def _on_vp9(self, packet: bytes, seq: int, now: float) -> None:
        """A VP9 packet: its layers counted (the SVC bitrates the planner reads) and handed
        to each group, whole to a group forwarding everything, through the selector to one
        with a layer limit (:meth:`ForwardingGroup.forward_svc`)."""
        fanout = self.fanout
        info = vp9_layer_info(packet[payload_offset(packet) :])
        if info is None:
            return  # a truncated descriptor: no decoder could use it
        sid, tid, flags = info
        if flags & SVC_SS:
            desc = parse_vp9_descriptor(packet[payload_offset(packet) :])
            if desc is not None and desc.spatial_layers:
                fanout.svc_layers = desc.spatial_layers
                self._svc_widths = tuple(w for w, _ in desc.resolutions)
        self._on_svc(packet, seq, sid, tid, flags, now)

    def _on_vp8(self, packet: bytes, seq: int, now: float) -> None:
        """A VP8 packet of a stream with temporal layers (L1T2/L1T3: its descriptor's TID,
        RFC 7741 §4.2) goes the SVC way, so a subscriber may get fewer frames; one without
        them is forwarded as is."""
        offset = payload_offset(packet)
        info = vp8_temporal_info(packet, offset)
        if info is None:
            for group in self.fanout.groups:
                if group.selector is None:  # (no group has a limit without temporal layers)
                    group.forward(packet, now)
            return
        tid, sync, start = info
        flags = (SVC_START if start else 0) | (SVC_SWITCH_UP if sync else 0)
        if start and tid == 0 and vp8_is_keyframe(packet[offset:]):
            flags |= SVC_KEYFRAME
        self._on_svc(packet, seq, 0, tid, flags, now)

    def _on_dd(self, packet: bytes, seq: int, now: float) -> None:
        """An AV1 (or VP8) packet with the dependency descriptor: its frame's spatial and
        temporal ids, start and end; a keyframe brings the template structure (how many
        layers, their resolutions). Without a readable descriptor the packet goes to the groups
        forwarding everything only."""
        value = find_extension(packet, self._dd_id)
        if not self.fanout.svc_choices > 1 and (value is None or len(value) <= 3):
            # one layer so far, and no new structure: forwarded as is (most streams; a
            # descriptor is parsed per packet only for a stream with layers to choose from)
            for group in self.fanout.groups:
                group.forward(packet, now)
            return
        desc = self._dd.parse(value)
        if desc is None:
            for group in self.fanout.groups:
                if group.selector is None:
                    group.forward(packet, now)
            return
        flags = (SVC_START if desc.start_of_frame else 0) | (SVC_END if desc.end_of_frame else 0)
        structure = self._dd.structure
        assert structure is not None
        if desc.structure_attached:
            self.fanout.svc_layers = structure.max_spatial_id + 1
            self.fanout.svc_temporal = structure.max_temporal_id + 1
            self._svc_widths = tuple(w for w, _ in structure.resolutions)
            if desc.start_of_frame and desc.spatial_id == 0:
                flags |= SVC_KEYFRAME  # a structure comes with a keyframe (§A.8.2)
        sid, tid = desc.spatial_id, desc.temporal_id
        # the highest temporal layer of this spatial layer whose decoding may start at this
        # frame (its decode target's indication is "switch", §A.8.3.3); often a T0 frame's
        switch_to = -1
        for target, (s, t) in enumerate(structure.target_layers):
            dtis = desc.dtis
            if s == sid and t > switch_to and target < len(dtis) and dtis[target] == DTI_SWITCH:
                switch_to = t
        if switch_to > tid:
            flags |= (switch_to + 1) << SVC_SWITCH_TO_SHIFT
        self._on_svc(packet, seq, sid, tid, flags, now)

    def _on_svc(self, packet: bytes, seq: int, sid: int, tid: int, flags: int, now: float) -> None:
        fanout = self.fanout
        # per spatial layer, or with one spatial layer per temporal one (the choice then)
        layer = sid if fanout.svc_layers > 1 else tid
        self._svc_octets[layer & 7] += len(packet) + WIRE_OVERHEAD
        if tid >= fanout.svc_temporal:
            fanout.svc_temporal = tid + 1
        ts = _TS.unpack_from(packet, 4)[0]
        if fanout.svc_seq < 0 or seq_delta(seq, fanout.svc_seq) >= 0:  # not a late one
            fanout.svc_seq, fanout.svc_ts = seq, ts
        for group in fanout.groups:
            if group.selector is None:
                group.forward(packet, now)
            else:
                group.forward_svc(packet, sid, tid, seq, ts, flags, now)

    def _on_layer(self, ingress: Ingress, packet: bytes, seq: int, ts: int, now: float) -> None:
        """A simulcast track's packet (any stream; ``ts`` -1 for a repaired one, which never
        starts a frame): cached per stream, then every group's selector decides."""
        layer = ingress.layer
        if layer < 0:
            return  # a rid the offer did not announce
        frame_start = keyframe = False
        if ts >= 0 and ts != ingress.last_ts:
            # The first packet of a frame (a new timestamp): only then can it be a keyframe,
            # so the codec's detector runs once per frame per stream, not per packet.
            ingress.last_ts = ts
            frame_start = True
            keyframe = self.gate.is_keyframe(packet)
            if keyframe:
                self._layer_keyframes[layer].on_keyframe()
                if self.fanout.vp8:
                    ingress.width = keyframe_width(packet[payload_offset(packet) :])
        else:
            ts = _TS.unpack_from(packet, 4)[0]
        ingress.octets += len(packet) + WIRE_OVERHEAD
        ingress.last_seen = now
        cache = ingress.cache
        if cache is not None:
            cache.put(packet)
        fanout = self.fanout
        # new subscribers wait at the gate for a keyframe of the default stream
        if layer == fanout.default and (self.gate.waiting or self._layer_keyframes[layer].pending):
            self._watch_keyframes(packet, now, layer)
        if layer == fanout.top:
            self.media_ssrc = ingress.ssrc
            self.packets += 1
        sink = self.layer_sinks[layer]
        if sink is not None:
            sink(packet)  # to the pods whose subscribers get this stream
        ssrc = ingress.ssrc
        for group in self.fanout.groups:
            group.forward_layer(packet, layer, ssrc, seq, ts, keyframe, frame_start, now)

    def _new_ingress(self, stream: IncomingStream) -> Ingress:
        layers = self.layers
        layer = layers.index(stream.rid) if stream.rid in layers else (-1 if layers else 0)
        top = not layers or layer == len(layers) - 1
        cache = self.cache if top else (PacketCache() if layer >= 0 else None)
        ingress = Ingress(
            stream.ssrc, stream.rid, self.clock_rate, self._nack, layer=layer, cache=cache
        )
        if ingress.nack is not None:
            ingress.nack.on_gap = self._nack_due
        if layers and layer >= 0:
            self._layer_ssrcs[layer] = stream.ssrc
        self._ingress[stream.ssrc] = ingress
        return ingress

    def _nack_due(self, now: float) -> None:
        on_timer = self.on_timer
        if on_timer is not None:
            on_timer(now)

    def cache_for(self, ssrc: int) -> PacketCache | None:
        ingress = self._ingress.get(ssrc)
        return ingress.cache if ingress is not None else self.cache

    def layer_bitrates(self, now: float) -> tuple[float, ...]:
        """Bits/s of each simulcast stream, lowest first (0 for one not seen yet); for VP9
        SVC what each spatial layer costs with the ones below it (it cannot be received
        alone)."""
        if self.fanout.svc_choices > 1:
            return self._svc_bitrates(now)
        rates = [0.0] * len(self.layers)
        for ingress in self._ingress.values():
            if ingress.layer >= 0 and self.layers:
                rates[ingress.layer] = ingress.sample_bitrate(now)
        return tuple(rates)

    def _svc_bitrates(self, now: float) -> tuple[float, ...]:
        layers = self.fanout.svc_choices
        if now - self._svc_sampled_at >= 1.0:
            if self._svc_sampled_at:
                elapsed = now - self._svc_sampled_at
                total, rates = 0.0, []
                for sid in range(layers):
                    total += 8 * (self._svc_octets[sid] - self._svc_sampled[sid]) / elapsed
                    rates.append(total)
                if total:  # nothing came: paused, keep what it cost
                    self._svc_rates = tuple(rates)
            self._svc_sampled = list(self._svc_octets)
            self._svc_sampled_at = now
        rates_now = self._svc_rates
        return rates_now if len(rates_now) == layers else (0.0,) * layers

    def layer_widths(self) -> tuple[int, ...]:
        """Frame width of each simulcast stream from its last keyframe (0: unknown); for VP9
        SVC each spatial layer's, from the scalability structure."""
        fanout = self.fanout
        if fanout.temporal_choice:
            return (0,) * fanout.svc_temporal  # one size: SIZE does not choose among them
        if fanout.svc_layers > 1:
            svc = self._svc_widths
            return svc if len(svc) == fanout.svc_layers else (0,) * fanout.svc_layers
        widths = [0] * len(self.layers)
        for ingress in self._ingress.values():
            if ingress.layer >= 0 and self.layers:
                widths[ingress.layer] = ingress.width
        return tuple(widths)

    def needed_layers(self) -> set[int]:
        """The simulcast streams some subscriber needs now (dynacast): each group's current
        and target stream, and the top stream for subscribers waiting at the keyframe gate
        and for other pods while the relay carries it."""
        needed: set[int] = set()
        for group in self.fanout.groups:
            selector = group.selector
            if selector is None:
                continue
            if selector.target_stream is not None:
                needed.add(selector.target_stream)
            if selector.current is not None:
                needed.add(selector.current)  # flows until the target's keyframe
        if self.gate.waiting:
            needed.add(self.fanout.default)
        for layer, sink in enumerate(self.layer_sinks):
            if sink is not None and sink.wanted:
                needed.add(layer)  # another pod's subscribers get it
        return needed

    def review_streams(self, now: float) -> None:
        """Follow what the publisher actually sends (about once a second): libwebrtc sends
        fewer simulcast streams than it announced when its camera is small or its uplink
        thin (a 320x240 camera with q/h/f sends only q), and stops the top ones when its
        bandwidth drops. The default stream — what new subscribers start on and subscribers
        without a choice of their own get — is the highest one arriving, or paused by our
        own ``LAYERS`` (resuming it brings it back); subscribers following the default move
        with it, at a keyframe of the new one (asked for)."""
        if not self.layers or not self._ingress:
            return
        fanout, demand = self.fanout, self.demand
        last_seen = [0.0] * len(self.layers)
        for ingress in self._ingress.values():
            if ingress.layer >= 0:
                last_seen[ingress.layer] = max(last_seen[ingress.layer], ingress.last_seen)
        if not self._streams_since:
            self._streams_since = now
        if now - self._streams_since < STREAM_TIMEOUT:
            return  # the first packets of every stream may still be on their way
        default = 0
        missing = self._missing
        for layer in range(len(self.layers) - 1, -1, -1):
            paused = demand is not None and layer not in demand.active
            if now - last_seen[layer] < STREAM_TIMEOUT:
                missing.discard(layer)
            elif not paused:
                missing.add(layer)  # wanted, and not sent
            # a stream we paused comes back when asked, unless it had stopped on its own
            # before (then asking resumes nothing: the encoder leaves it out)
            if layer not in missing:
                default = max(default, layer)
        old = fanout.default
        if default == old:
            return
        fanout.default = default
        log.info(
            "simulcast default stream changed",
            extra={
                "publisher": self.publisher_id,
                "track": self.track_id,
                "from": self.layers[old],
                "to": self.layers[default],
            },
        )
        for group in fanout.groups:
            selector = group.selector
            if selector is None or selector.target_stream != old:
                continue
            if any(member.layer is None for member in group.members):
                selector.set_target(default, now=now)
        self.request_keyframe(now, default)

    def plan_demand(self, now: float) -> tuple[str, ...] | None:
        """The rids to announce to the publisher (``LAYERS``), or None when nothing changes
        (or the track is not simulcast).

        Streams the publisher left out on its own (``review_streams``' missing ones) stay
        announced however unneeded: pausing one saves nothing (the encoder is not sending
        it), and libwebrtc starts a stream it left out by itself once its uplink estimate
        (which begins at 300 kbit/s) or its CPU allows, but never an encoding set inactive.
        Paused, a top stream late to start would never come and every subscriber following
        the default would stay below it for good."""
        demand = self.demand
        if demand is None or demand.update(self.needed_layers() | self._missing, now) is None:
            return None
        return demand.announced_rids()

    def take_levels(self) -> tuple[int, int]:
        """(loudness total, packets) since the last call; the speaker timer's read."""
        out = self.level_total, self.level_count
        self.level_total = self.level_count = 0
        return out

    def _watch_keyframes(self, packet: bytes, now: float, layer: int | None = None) -> None:
        """Only while a subscriber waits for its first keyframe or a request is pending
        (``layer``: the simulcast stream ``packet`` is of, the default one)."""
        throttle = self.keyframes if layer is None else self._layer_keyframes[layer]
        released = self.gate.watch(packet, now, throttle)
        if released:
            for downtrack in released:
                self.fanout.add(downtrack)
        elif self.gate.waiting:
            self.request_keyframe(now, layer)  # throttled: keeps asking while someone waits

    def _repaired(self, stream: IncomingStream) -> Ingress | None:
        if stream.repairs is not None:
            return self._ingress.get(stream.repairs)
        for ingress in self._ingress.values():
            if ingress.rid == stream.rid:
                return ingress
        return None

    # -- control --------------------------------------------------------------------------

    def attach(self, downtrack: DownTrack, carry: ForwardingGroup | None = None) -> None:
        """A new subscriber of a video track waits for the next keyframe (``gate``)."""
        # A switched down-track (``carry``: WHEP following a new publisher) continues its
        # numbering in a group at once; switch() asks for the keyframe. A new one waits.
        if self.gate.active and carry is None:
            self.gate.hold(downtrack)
        else:
            self.fanout.add(downtrack, carry)

    def detach(self, downtrack: DownTrack) -> None:
        self.gate.drop(downtrack)
        self.fanout.remove(downtrack)

    @property
    def uses_fir(self) -> bool:
        """Keyframe requests go out as FIR (RFC 5104) rather than PLI (RFC 4585)."""
        return not self.transceiver.pli and self.transceiver.fir

    @property
    def nack_requested(self) -> int:
        """Sequence numbers this track asked the publisher to retransmit (RFC 4585 NACKs)."""
        return sum(i.nack.requested for i in self._ingress.values() if i.nack is not None)

    def resend_to_relay(
        self, sequence_numbers: tuple[int, ...], now: float, layer: int | None = None
    ) -> None:
        """Another pod's subscribers lost these relayed packets (a ``Nack`` command, issue 9):
        relay them again from the cache (of simulcast stream ``layer``; None: the top or only
        one); if some are gone, ask the publisher for a keyframe."""
        sink, cache = self.relay_sink, self.cache
        if layer is not None and self.layers:
            sink = self.layer_sinks[layer]
            ssrc = self._layer_ssrcs[layer]
            cache = self.cache_for(ssrc) if ssrc is not None else None
        if sink is None or cache is None:
            return
        missing = False
        for seq in sequence_numbers:
            packet = cache.get(seq)
            if packet is None:
                missing = True
            else:
                sink(packet)
        if missing:
            self.request_keyframe(now, layer)

    def layer_of(self, rid: str | None) -> int | None:
        """The simulcast stream a relayed stream's rid names (None, the track's own name: the
        top one); None when the track has one stream or the rid is unknown."""
        if not self.layers:
            return None
        if rid is None:
            return len(self.layers) - 1
        return self.layers.index(rid) if rid in self.layers else None

    def request_keyframe(self, now: float, layer: int | None = None) -> bool:
        """PLI (or FIR if only FIR was negotiated) to the publisher, throttled per track, or
        per simulcast stream: ``layer`` names one (None: the top stream)."""
        if self.kind != "video":
            return False
        if layer is None or not self.layers:
            layer = self.fanout.default if self.layers else -1
        demand = self.demand
        if demand is not None and demand.missing(layer) and self.on_demand is not None:
            self.on_demand()  # a paused stream is wanted: resuming it brings the keyframe
        ssrc = self._layer_ssrcs[layer] if self.layers else self.media_ssrc
        if ssrc is None or not self._layer_keyframes[layer].allow(now):
            return False
        self._send_keyframe_request(ssrc)
        return True

    def _resyncing(self, packet: bytes, now: float) -> bool:
        """Whether to drop ``packet``: after the publisher's path moved, nothing goes out
        (not even to the cache) until the keyframe asked for starts, at most KEYFRAME_WAIT.
        What comes first is the publisher's backlog from the failed path — frames whose
        references were lost — and Chromium held a complete keyframe ~2 s behind such a
        frame (measured: first frames 6.1 s after UDP failed instead of 4.1 s)."""
        if now < self._resync_until and not self.gate.is_keyframe(packet):
            self.resync_dropped += 1
            return True
        self._resync_until = 0.0
        return False

    def hold_keyframe_requests(self) -> None:
        """The publisher's path moved but its media has not come over the new one yet:
        requests wait (:meth:`KeyframeThrottle.hold`) until :meth:`media_resumed`."""
        if self.kind != "video":
            return
        for throttle in self._layer_keyframes:
            throttle.hold()

    def media_resumed(self, now: float) -> None:
        """The publisher's media comes over its new path: ask for a keyframe of every
        stream at once, throttle or not; what it sent while the old path failed is lost, and
        not worth repairing (:meth:`NackGenerator.skip_gaps_until`)."""
        if self.kind != "video":
            return
        for ingress in self._ingress.values():
            if ingress.nack is not None:
                ingress.nack.skip_gaps_until(now + PATH_GAP_WINDOW)
        if not self.layers and self.gate.active:
            self._resync_until = now + KEYFRAME_WAIT
        ssrcs = self._layer_ssrcs if self.layers else [self.media_ssrc]
        for throttle, ssrc in zip(self._layer_keyframes, ssrcs, strict=True):
            throttle.release(now)
            if ssrc is not None:
                self._send_keyframe_request(ssrc)

    def _send_keyframe_request(self, ssrc: int) -> None:
        t = self.transceiver
        if not self.uses_fir:
            pli = Pli(sender_ssrc=t.sender_ssrc, media_ssrc=ssrc)
            self.pc.send_rtcp(pli.serialize())
        else:
            # RFC 5104 §4.3.1.1: a new request increments the FIR sequence number.
            fir = self._fir.get(ssrc)
            if fir is None:
                fir = self._fir[ssrc] = FirSequence()
            entry = FirEntry(ssrc, fir.next_request())
            self.pc.send_rtcp(Fir(sender_ssrc=t.sender_ssrc, entries=[entry]).serialize())

    def next_timer(self) -> float:
        """When :meth:`tick` has something to do (inf: nothing pending)."""
        due = float("inf")
        for ingress in self._ingress.values():
            if ingress.nack is not None:
                timer = ingress.nack.get_timer()
                if timer is not None and timer < due:
                    due = timer
        for throttle in self._layer_keyframes:
            timer = throttle.get_timer()
            if timer is not None and timer < due:
                due = timer
        for group in self.fanout.groups:
            selector = group.selector
            if selector is not None:
                timer = selector.next_request()
                if timer < due:
                    due = timer
        timer = self.keyframes.get_timer()
        return timer if timer is not None and timer < due else due

    def tick(self, now: float) -> None:
        """Timers of the publisher leg: NACKs that are due, deferred keyframe requests."""
        sender = self.transceiver.sender_ssrc
        rtt = self.pc.transport_rtt or DEFAULT_RTT
        for ingress in self._ingress.values():
            if ingress.nack is None:
                continue
            lost = ingress.nack.due(now, rtt)
            if lost:
                self.pc.send_rtcp(Nack.from_lost(sender, ingress.ssrc, lost).serialize())
        if not self.layers:
            if self.media_ssrc is not None and self.keyframes.due(now):
                self._send_keyframe_request(self.media_ssrc)
            for group in self.fanout.groups:
                # an SVC group going up a spatial layer waits for a keyframe (L3T3_KEY)
                selector = group.selector
                if selector is not None and selector.keyframe_request(now) is not None:
                    self.request_keyframe(now)
            return
        for layer, throttle in enumerate(self._layer_keyframes):
            ssrc = self._layer_ssrcs[layer]
            if ssrc is not None and throttle.due(now):
                self._send_keyframe_request(ssrc)
        for group in self.fanout.groups:
            # A group waiting to switch keeps asking for its target's keyframe (throttled).
            selector = group.selector
            if selector is not None:
                stream = selector.keyframe_request(now)
                if stream is not None:
                    self.request_keyframe(now, stream)

    def report_blocks(self, now: float) -> list[ReportBlock]:
        return [
            i.stats.report_block(i.ssrc, now) for i in self._ingress.values() if i.stats.started
        ]

    def on_sender_report(self, sr: SenderReport, now: float) -> None:
        ingress = self._ingress.get(sr.ssrc)
        if ingress is not None:
            ingress.stats.on_sender_report(sr.ntp_msw, sr.ntp_lsw, now)


class DownTrack:
    """One published track as one subscriber receives it: a sendonly transceiver in a
    forwarding group of its source (:mod:`trio_sfu.sfu.groups`).

    The group's rewriter does what every subscriber with the same negotiated mapping shares;
    the down-track adds what is its own — its SSRC, its transport-wide sequence number, SRTP
    and the send (:meth:`deliver`). It joins a group once the subscriber's answer fixed the
    payload types and extension ids; until then (and after :meth:`close`) nothing is sent.
    """

    def __init__(
        self,
        pc: ServerPeerConnection,
        transceiver: Transceiver,
        source: TrackSource,
        *,
        twcc: Callable[[int], TransportCcSequencer | None],
        on_sent: Callable[[int, int, float, int], None] | None = None,
    ) -> None:
        self.pc = pc
        self.transceiver = transceiver
        self.source = source
        self._twcc = twcc
        #: (transport-wide seq, bytes, now, probe id or -1) of each packet sent with a
        #: transport-cc number: the subscriber transport's bandwidth estimator (proto/bwe.py)
        #: matches its feedback
        self._on_sent = on_sent
        self.group: ForwardingGroup | None = None
        self.group_key: GroupKey = ((), (), source.clock_rate, 0)
        #: RTT and our SRs; counts and timestamp mapping come from the group when reporting
        self.stats = SendStatistics(source.clock_rate)
        self._send = pc.send_rtp_as
        self._ssrc = transceiver.sender_ssrc
        self._sequencer: TransportCcSequencer | None = None
        self._rtx_pt: dict[int, int] = {}
        self._rtx_seq = 0
        # When each recently retransmitted sequence number went out (slot = seq % size).
        self._resent_seq = [-1] * _RESENT_SLOTS
        self._resent_at = [0.0] * _RESENT_SLOTS
        # What this subscriber was sent = its group's counts minus these (set on joining).
        self._base_packets = 0
        self._base_octets = 0
        self._sent_packets = 0
        self._sent_octets = 0
        self.retransmitted = 0
        self.nack_misses = 0
        self.nack_repeats = 0  # NACKs for a packet retransmitted less than an RTT ago
        self.switches = 0
        #: the simulcast stream this subscriber should get (None: the source's default, the
        #: top); set by the layer allocator and ``LAYER`` hints (:meth:`set_layer`)
        self.layer: int | None = None
        self.layer_switches = 0
        #: while paused (``LAYER … off``): its numbering as of the pause, to continue from
        self._paused: ForwardingGroup | None = None
        self._paused_waiting = False  # paused before its first keyframe came

    def __repr__(self) -> str:
        return f"<DownTrack {self.source!r} -> {self.pc.name}>"

    @property
    def rewriter(self) -> RtpRewriter | None:
        """The rewriter of the group this down-track is in (None: not forwarding)."""
        return self.group.rewriter if self.group is not None else None

    def activate(self) -> bool:
        """Work out the forwarding mapping from what was negotiated; False if nothing can be
        forwarded. The source's :meth:`TrackSource.attach` then puts it in a group."""
        t = self.transceiver
        if t.stopped or not t.sending:
            return False
        if not self._configure(self.source.info):
            log.warning(
                "subscriber accepted none of the publisher's codecs",
                extra={**self.pc.log_extra, "track": self.source.track_id},
            )
            return False
        return True

    def _configure(self, info: TrackInfo) -> bool:
        t = self.transceiver
        pt_map, ext_map, clock_rate, rtx_pt = forwarding_maps(info, t)
        if not pt_map:
            return False
        twcc_id = t.extension_id(URI_TRANSPORT_CC) or 0
        self.group_key = (
            tuple(sorted(pt_map.items())),
            tuple(sorted(ext_map.items())),
            clock_rate,
            twcc_id,
        )
        self._sequencer = self._twcc(twcc_id) if twcc_id else None
        self._rtx_pt = rtx_pt
        self._ssrc = t.sender_ssrc
        return True

    def new_rewriter(self) -> RtpRewriter:
        """A rewriter for a new group with this down-track's mapping. Its SSRC and
        transport-cc numbers are placeholders: :meth:`deliver` writes each member's own."""
        pt_map, ext_map, clock_rate, twcc_id = self.group_key
        return RtpRewriter(
            0,
            dict(pt_map),
            dict(ext_map),
            clock_rate=clock_rate,
            twcc=TransportCcSequencer(twcc_id) if twcc_id else None,
        )

    @property
    def sent_octets(self) -> int:
        """RTP payload octets sent on this down-track so far: its share of what the groups it
        belonged to sent (read for logs and /metrics, never per packet)."""
        group = self.group
        return group.stats.octets - self._base_octets if group is not None else self._sent_octets

    def joined(self, group: ForwardingGroup) -> None:
        self.group = group
        self._base_packets = group.stats.packets - self._sent_packets
        self._base_octets = group.stats.octets - self._sent_octets

    def left(self, group: ForwardingGroup) -> None:
        self._sent_packets = group.stats.packets - self._base_packets
        self._sent_octets = group.stats.octets - self._base_octets
        self.group = None

    @property
    def paused(self) -> bool:
        return self._paused is not None or self._paused_waiting

    def pause(self) -> bool:
        """Stop sending without renegotiating (``LAYER … off``): the m-section stays, the
        source just leaves this subscriber out. Its numbering is kept so :meth:`resume`
        continues it. Call only on a started down-track (attached to its source); False if
        already paused."""
        if self.paused:
            return False
        group = self.group
        if group is None:
            # still waiting for its first keyframe: leave the wait, rejoin it on resume
            self.source.detach(self)
            self._paused_waiting = True
            return True
        # A copy of the group's state now: the group goes on for its other members.
        snapshot = group.copy()
        self.source.detach(self)
        self._paused = snapshot
        return True

    def resume(self, now: float) -> bool:
        """Send again after :meth:`pause`: the same SSRC, sequence numbers continuing at the
        last sent + 1, timestamps advanced by the time paused (as :meth:`switch`), and a
        keyframe requested so the decoder recovers at once."""
        if self._paused_waiting:
            self._paused_waiting = False
            self.source.attach(self)
            self.source.request_keyframe(now)
            return True
        snapshot = self._paused
        if snapshot is None:
            return False
        self._paused = None
        self.source.attach(self, carry=snapshot)
        group = self.group
        if group is not None:
            gap = now - snapshot.last_forward if snapshot.last_forward else 0.0
            group.rewriter.switch_source(gap)
            fanout = self.source.fanout
            if group.selector is not None:
                # a simulcast group restarts at a keyframe of the stream it should get
                group.selector.resync()
                layer = self.layer if self.layer is not None else fanout.default
                group.selector.set_target(*fanout.layer_target(layer), now=now)
            elif fanout.svc_choices > 1 and self.layer is not None:
                # an SVC subscriber with a limit: a selector again (Fanout.add drops one
                # carried over), starting at the keyframe asked for below
                fanout.limit_svc(group, self.layer, now, adopt=False)
        self.request_keyframe(now)
        return True

    def set_layer(self, layer: int, now: float) -> bool:
        """Receive simulcast stream ``layer`` (0 = lowest) from the next keyframe of it on,
        without renegotiating: same SSRC, sequence numbers and timestamps continuing. The
        current stream flows until then (a switch down at most ``down_timeout``, then the
        track pauses until the keyframe). False if the source is not simulcast or nothing
        changes."""
        fanout = self.source.fanout
        choices = fanout.choices
        if choices < 2:
            return False
        top = choices - 1
        layer = min(max(layer, 0), top)
        following = fanout.default if fanout.layers else top  # what layer None means
        if layer == (self.layer if self.layer is not None else following):
            return False
        self.layer = layer
        self.layer_switches += 1
        if self.group is None:
            return True  # waiting for its first keyframe or paused: joins at this layer
        group = fanout.split(self)  # numbering of its own that continues the group's
        assert group is not None
        if group.selector is None:  # SVC: a limit of its own from now on
            fanout.limit_svc(group, layer, now, adopt=True)
        else:
            group.selector.set_target(*fanout.layer_target(layer), now=now)
        assert group.selector is not None
        if group.selector.waiting() or fanout.layers:
            self.source.request_keyframe(now, layer)
        return True

    @property
    def forwarded_layer(self) -> int | None:
        """The simulcast stream being forwarded now, or for VP9 SVC the highest spatial layer
        (None: none, or a single layer)."""
        group = self.group
        selector = group.selector if group is not None else None
        fanout = self.source.fanout
        choices = fanout.svc_choices
        if fanout.layers or choices < 2:
            return selector.current if selector is not None else None
        limit = (
            NO_LIMIT
            if selector is None
            else selector.temporal
            if fanout.temporal_choice
            else selector.spatial
        )
        if limit >= choices:
            return choices - 1  # everything
        return limit if selector is not None and selector.current is not None else None

    def request_keyframe(self, now: float) -> bool:
        """A keyframe of the stream this subscriber gets (its PLI/FIR, a resume)."""
        group = self.group
        sel = group.selector if group is not None else None
        layer = self.layer
        if sel is not None:
            layer = sel.current if sel.current is not None else sel.target_stream
        return self.source.request_keyframe(now, layer)

    def switch(self, source: TrackSource, now: float) -> bool:
        """Forward ``source`` instead, without renegotiating: same SSRC, sequence numbers and
        timestamps continue (a WHEP viewer following a replaced publisher). False, and no
        change, if the subscriber did not negotiate any of the new source's codecs."""
        group = self.group
        if group is None:
            return False
        pt_map, ext_map, _, _ = forwarding_maps(source.info, self.transceiver)
        if not pt_map:
            return False
        self.source.detach(self)
        self._configure(source.info)
        self.source = source
        self.switches += 1
        # Numbering of its own that continues the old group's: a group of its own.
        source.attach(self, carry=group)
        rewriter = self.rewriter
        assert rewriter is not None
        rewriter.remap(pt_map, ext_map)
        rewriter.switch_source(now - group.last_forward if group.last_forward else 0.0)
        assert self.group is not None
        if self.group.selector is not None:
            self.group.selector.resync()
        self.request_keyframe(now)
        return True

    def deliver(self, out: bytes, twcc_offset: int, now: float) -> None:
        """Send the group's rewritten packet as this subscriber's (the per-member hot path)."""
        sequencer = self._sequencer
        seq = 0
        if sequencer is not None:
            seq = sequencer.next_seq
            sequencer.next_seq = (seq + 1) & 0xFFFF
            on_sent = self._on_sent
            if on_sent is not None and twcc_offset >= 0:
                on_sent(seq, len(out), now, -1)
        self._send(out, self._ssrc, twcc_offset, seq)

    @property
    def rtt(self) -> float:
        """This subscriber's round-trip time: from its receiver reports (RFC 3550 §6.4.1,
        LSR/DLSR against our SRs), else its transport's SCTP SRTT, else a default."""
        return self.stats.rtt or self.pc.transport_rtt or DEFAULT_RTT

    def retransmit(self, out_seq: int, now: float) -> bool:
        """Answer the subscriber's NACK for ``out_seq`` from the source's cache (RFC 4585
        §6.2.1), as RTX when negotiated (RFC 4588), else as the original packet.

        A NACK repeated within one round trip of our retransmission is not answered again:
        the repair is still on its way (libwebrtc's receiver re-NACKs on its own timer)."""
        group = self.group
        if group is None:
            return False
        rewriter = group.rewriter
        # an SVC group's own numbering, else the cache of the stream the rewriter forwards
        # now (simulcast streams each have one)
        cache = group.cache or self.source.cache_for(rewriter.source_ssrc)
        if cache is None:
            return False
        slot = out_seq % _RESENT_SLOTS
        if self._resent_seq[slot] == out_seq and now - self._resent_at[slot] < self.rtt:
            self.nack_repeats += 1
            return False
        in_seq = rewriter.to_input_sequence(out_seq)
        original = cache.get(in_seq) if in_seq is not None else None
        pictures = group.pictures
        if original is not None and pictures is not None and group.cache is None:
            # the VP8 picture ids the subscriber saw (renumbered since a layer switch)
            original = pictures.rewrite(original, payload_offset(original), resend=True)
        out = rewriter.rewrite_as(original, out_seq) if original is not None else None
        if out is None:
            self.nack_misses += 1
            return False
        twcc_offset = rewriter.twcc_offset
        ssrc = self._ssrc
        rtx_pt = self._rtx_pt.get(out[1] & 0x7F)
        if rtx_pt is not None:
            rtx_ssrc = self.transceiver.sender_rtx_ssrc
            assert rtx_ssrc is not None
            out = rtx_wrap(out, rtx_ssrc, rtx_pt, self._rtx_seq)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            if out is None:
                return False
            ssrc = rtx_ssrc
        self.retransmitted += 1
        self._resent_seq[slot] = out_seq
        self._resent_at[slot] = now
        sequencer = self._sequencer
        seq = 0
        if sequencer is not None:
            seq = sequencer.next_seq
            sequencer.next_seq = (seq + 1) & 0xFFFF
            on_sent = self._on_sent
            if on_sent is not None and twcc_offset >= 0:
                on_sent(seq, len(out), now, -1)
        self._send(out, ssrc, twcc_offset, seq)
        return True

    @property
    def can_pad(self) -> bool:
        """Whether :meth:`send_padding` can probe this subscriber's link: RTX (RFC 4588)
        and transport-cc negotiated, and a stream started (so its RTX SSRC is known)."""
        return (
            bool(self._rtx_pt)
            and self._sequencer is not None
            and self._sequencer.ext_id <= 14  # the one-byte element the padding carries
            and self._on_sent is not None
            and self.group is not None
            and self.transceiver.sender_rtx_ssrc is not None
        )

    def send_padding(self, packets: int, size: int, probe: int, now: float) -> int:
        """Send ``packets`` padding-only RTX packets of about ``size`` bytes each, numbered
        for transport-cc and recorded as probe ``probe`` by the estimator (a probe cluster,
        :meth:`BandwidthEstimator.probe`). The receiver drops them after counting their
        arrival (RFC 4588 §8.3 padding carries no original sequence number). Returns the
        bytes sent."""
        if not self.can_pad:
            return 0
        sequencer, on_sent, group = self._sequencer, self._on_sent, self.group
        assert sequencer is not None and on_sent is not None and group is not None
        rtx_ssrc = self.transceiver.sender_rtx_ssrc
        assert rtx_ssrc is not None
        rtx_pt = next(iter(self._rtx_pt.values()))
        pad = min(max(size - 20, 1), 255)  # RFC 3550 §5.1: the last octet counts the padding
        body = bytes(pad - 1) + bytes([pad])
        ts = group.rewriter.last_timestamp
        ext = bytes([0xBE, 0xDE, 0x00, 0x01, (sequencer.ext_id << 4) | 1, 0, 0, 0])
        sent = 0
        for _ in range(packets):
            header = _PADDING_HEADER.pack(0xB0, rtx_pt, self._rtx_seq, ts, rtx_ssrc)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            packet = header + ext + body
            seq = sequencer.next_seq
            sequencer.next_seq = (seq + 1) & 0xFFFF
            on_sent(seq, len(packet), now, probe)
            self._send(packet, rtx_ssrc, 17, seq)  # transport-cc value after the element byte
            sent += len(packet)
        return sent

    def sender_report(self, now: float, unix: float) -> SenderReport | None:
        group = self.group
        if group is None:
            return None
        sent = group.stats
        self.stats.follow(sent, sent.packets - self._base_packets, sent.octets - self._base_octets)
        return self.stats.sender_report(self._ssrc, now, unix)

    def close(self) -> None:
        self.source.detach(self)
        self.group = None
        self._paused = None
        self._paused_waiting = False
