"""What every member the SFU sends media to shares: its down-tracks and the RTCP of its leg.

Seed-API subscribers and WHEP viewers differ in how they choose what to receive; once a
down-track is live they are the same: feedback about our SSRCs (PLI/FIR → keyframe request at
the source, NACK → retransmission from the cache, receiver reports → round-trip time) and a
sender report per stream every second (RFC 3550 §6.4.1). RTCP is terminated per leg (issue 3).
"""

from __future__ import annotations

import time

import trio

from trio_sfu.proto.bwe import BandwidthEstimator, ProbeCluster
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    RtcpPacket,
    Sdes,
    SenderReport,
    TransportCcFeedback,
    serialize_compound,
)
from trio_sfu.proto.rtp import TransportCcSequencer
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu.allocator import UNMEASURED_LAYER_BITRATES, Hint, LayerPlanner, TrackDemand
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.model import PublisherInfo
from trio_sfu.sfu.node_stats import LOSS_BUCKETS, RTT_BUCKETS, Buckets
from trio_sfu.sfu.remote import RemoteTrack
from trio_sfu.sfu.ticks import Tick, Ticker
from trio_sfu.sfu.track import DownTrack, TrackSource

#: Sender reports towards a receiver (RFC 3550 §6.2; one receiver per leg, so a fixed interval).
REPORT_INTERVAL = 1.0
#: Bytes of one padding packet of a bandwidth probe (header, transport-cc, 255 padding octets)
PROBE_PACKET_SIZE = 275
#: A probe cluster is paced over its duration (~100 ms) in steps this far apart (see
#: Downstream._send_probe)
PROBE_STEP = 0.005


class Downstream(Member):
    def __init__(
        self,
        room: RoomContext,
        connection_id: str,
        pc: ServerPeerConnection,
        *,
        ticker: Ticker,
    ) -> None:
        super().__init__(room, connection_id, pc)
        #: runs :meth:`_report` once a second with every other leg's (sfu/ticks.py)
        self._ticker = ticker
        self._tick: Tick | None = None
        self._twcc: TransportCcSequencer | None = None
        #: How much this receiver's downlink carries, from its transport-cc feedback (or REMB)
        #: about what we sent it (issue 11): what its layer choice will be allocated from.
        self.bwe = BandwidthEstimator()
        #: whether the receiver ever sent transport-cc feedback; until it does, the loss in
        #: its receiver reports feeds ``bwe`` (its only congestion signal)
        self._twcc_seen = False
        #: which simulcast stream each down-track gets, from ``bwe`` (run once a second)
        self.layer_planner = LayerPlanner()
        self._sent_samples: dict[int, tuple[float, int]] = {}  # ssrc -> (when, octets)
        self._probe: tuple[DownTrack, ProbeCluster] | None = None  # to send after the plan
        self.probes_sent = 0
        #: live down-tracks by the SSRC we send them under (what the receiver's RTCP names)
        self.live: dict[int, DownTrack] = {}
        self.pc.on_rtcp = self._on_rtcp
        # Feedback from the receiver (RTCP rate, not per media packet) and the totals of
        # down-tracks that ended, for counters().
        self.nacks_received = 0
        self.nacks_answered = 0
        self.pli_received = 0
        self.fir_received = 0
        self._ended_octets = 0
        #: what the receiver's reports said, one observation per report block (≈ 1/s/stream)
        self.rtt_reports = Buckets(RTT_BUCKETS)
        self.loss_reports = Buckets(LOSS_BUCKETS)

    def counters(self) -> dict[str, int]:
        out = super().counters()
        out["nacks_received"] = self.nacks_received
        out["nacks_answered"] = self.nacks_answered
        out["pli_received"] = self.pli_received
        out["fir_received"] = self.fir_received
        out["rtx_out"] = self.nacks_answered
        out["bytes_out"] = self._ended_octets + sum(d.sent_octets for d in self.live.values())
        return out

    # The room's events (from the bus), applied to this member.
    def publisher_joined(self, info: PublisherInfo) -> None:
        raise NotImplementedError

    def publisher_left(self, publisher_id: str) -> None:
        raise NotImplementedError

    def publisher_changed(self, info: PublisherInfo) -> None:
        """A live publisher added, removed, muted or unmuted tracks (TrackChange, issue 15)."""
        raise NotImplementedError

    def new_downtrack(self, transceiver: Transceiver, source: TrackSource) -> DownTrack:
        return DownTrack(
            self.pc,
            transceiver,
            source,
            twcc=self._twcc_sequencer,
            on_sent=self.bwe.on_packet_sent,
        )

    def start_forwarding(self, downtrack: DownTrack, now: float) -> bool:
        """Activate a negotiated down-track and attach it to its source; the source is asked
        for a keyframe at once so the first frame comes fast (issue 3)."""
        if not downtrack.activate():
            return False
        downtrack.source.attach(downtrack)
        self.live[downtrack.transceiver.sender_ssrc] = downtrack
        downtrack.request_keyframe(now)
        return True

    def stop_forwarding(self, downtrack: DownTrack) -> None:
        sent = downtrack.sent_octets
        downtrack.close()
        if self.live.pop(downtrack.transceiver.sender_ssrc, None) is not None:
            self._ended_octets += sent

    def leave(self) -> None:
        """Stop forwarding to it (its sources forget its down-tracks; a relayed one nobody
        else watches is unsubscribed); the room's state and every pod hear SUB_LEFT."""
        self.close_downtracks()
        self.room.subscriber_left(self.id)

    def reports(self) -> tuple[Buckets, Buckets]:
        return self.rtt_reports, self.loss_reports

    def close_downtracks(self) -> None:
        for downtrack in list(self.live.values()):
            self._ended_octets += downtrack.sent_octets
            downtrack.close()
        self.live.clear()

    def _twcc_sequencer(self, ext_id: int) -> TransportCcSequencer:
        # One transport-wide sequence space per receiver transport, shared by its streams.
        if self._twcc is None or self._twcc.ext_id != ext_id:
            self._twcc = TransportCcSequencer(ext_id)
        return self._twcc

    def _on_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        live = self.live
        for packet in packets:
            if isinstance(packet, Pli):
                self.pli_received += 1
                downtrack = live.get(packet.media_ssrc)
                if downtrack is not None:
                    downtrack.request_keyframe(now)
            elif isinstance(packet, Fir):
                self.fir_received += 1
                for entry in packet.entries:
                    downtrack = live.get(entry.ssrc)
                    if downtrack is not None:
                        downtrack.request_keyframe(now)
            elif isinstance(packet, Nack):
                self.nacks_received += len(packet.lost)
                downtrack = live.get(packet.media_ssrc)
                if downtrack is not None:
                    missed = [seq for seq in packet.lost if not downtrack.retransmit(seq, now)]
                    self.nacks_answered += len(packet.lost) - len(missed)
                    if missed and isinstance(downtrack.source, RemoteTrack):
                        # Relayed media this pod lacks: ask the publisher's pod (issue 9).
                        rewriter = downtrack.rewriter
                        if rewriter is not None:
                            inputs = [rewriter.to_input_sequence(seq) for seq in missed]
                            downtrack.source.nack_missed(
                                [seq for seq in inputs if seq is not None],
                                now,
                                rewriter.source_ssrc,
                            )
            elif isinstance(packet, TransportCcFeedback):
                self._twcc_seen = True
                self.bwe.on_transport_cc(packet.packets, packet.reference_us, now)
            elif isinstance(packet, Remb):
                self.bwe.on_remb(packet.bitrate)
            elif isinstance(packet, ReceiverReport | SenderReport):
                unix = time.time()
                lost = expected = 0
                for block in packet.reports:
                    downtrack = live.get(block.ssrc)
                    if downtrack is not None:
                        previous = downtrack.stats.last_report
                        rtt = downtrack.stats.on_receiver_report(block, now, unix)
                        if rtt is not None:
                            self.rtt_reports.observe(rtt)
                            self.bwe.on_rtt(rtt)
                        self.loss_reports.observe(block.fraction_lost / 256)
                        if previous is not None:
                            # RFC 3550 §6.4.1: the fraction is of the packets expected since
                            # the last report, the extended highest sequence numbers' span
                            span = block.highest_sequence - previous.highest_sequence
                            if 0 < span < 0x8000:
                                expected += span
                                lost += round(block.fraction_lost * span / 256)
                if expected and not self._twcc_seen:
                    self.bwe.on_loss_report(lost, expected, now)

    def layer_hint(self, downtrack: DownTrack) -> tuple[Hint, int | None]:
        """The receiver's ``LAYER`` hint and rendered width for a track (seed-API
        subscribers send them; a WHEP viewer cannot, so it gets ``auto``)."""
        return "auto", None

    def priority(self, downtrack: DownTrack) -> int:
        """Who gets bandwidth first: a screen share (issue 11 §3)."""
        return 2 if downtrack.source.info.app_id == "screen" else 0

    def plan_layers(self, now: float) -> None:
        """Give each simulcast down-track the stream its share of the estimate carries
        (:class:`LayerPlanner`); single-layer tracks take their measured share first."""
        demands: list[TrackDemand] = []
        current: dict[str, int] = {}
        simulcast: dict[str, DownTrack] = {}
        samples: dict[int, tuple[float, int]] = {}
        for ssrc, downtrack in self.live.items():
            if downtrack.paused:
                continue
            key = str(ssrc)
            source = downtrack.source
            rates = source.layer_bitrates(now)
            if source.fanout.layers:
                # streams above the default one are not being sent (review_streams)
                rates = rates[: source.fanout.default + 1]
            if rates:
                hint, width = self.layer_hint(downtrack)
                widths = source.layer_widths()
                defaults = UNMEASURED_LAYER_BITRATES[-len(rates) :]
                demands.append(
                    TrackDemand(
                        key,
                        "video",
                        tuple(r or d for r, d in zip(rates, defaults, strict=False)),
                        self.priority(downtrack),
                        hint,
                        width,
                        widths if all(widths) else None,
                    )
                )
                layer = downtrack.layer
                current[key] = layer if layer is not None else len(rates) - 1
                simulcast[key] = downtrack
                continue
            octets = downtrack.sent_octets
            then, before = self._sent_samples.get(ssrc, (now, octets))
            samples[ssrc] = (now, octets)
            rate = 8 * (octets - before) / (now - then) if now > then else 0.0
            demands.append(
                TrackDemand(key, "audio" if source.kind == "audio" else "video", (rate,))
            )
        self._sent_samples = samples
        if not simulcast:
            return
        bwe, planner = self.bwe, self.layer_planner
        padder = next((d for d in simulcast.values() if d.can_pad), None)
        plan = planner.plan(
            bwe.estimate, bwe.decreases, demands, current, now, probing=padder is not None,
            windows=bwe.loss_windows,
        )
        for key, layer in plan.items():
            if layer != current[key]:
                simulcast[key].set_layer(layer, now)
        target = planner.probe_target
        if target is not None and padder is not None:
            cluster = bwe.probe(target, now)
            if cluster is not None:
                self._probe = (padder, cluster)

    async def _send_probe(self, padder: DownTrack, cluster: ProbeCluster) -> None:
        """Pace a probe cluster at its bit rate over its duration (~100 ms, at least 4 kB):
        long enough to outlast a token-bucket shaper's burst allowance (a few kB passed at
        line rate would prove a rate the link cannot carry), short enough that the excess
        over a capped link stays within its queue instead of pushing media out of it. The
        estimator judges the cluster only once all of it was sent and reported."""
        self.probes_sent += 1
        total = max(cluster.min_bytes, int(cluster.bitrate * cluster.duration / 8))
        count = max(cluster.min_packets, -(-total // PROBE_PACKET_SIZE))
        steps = max(1, round(cluster.duration / PROBE_STEP))
        start = trio.current_time()
        for step in range(steps):
            # as many packets as the cluster's rate allows by the end of this step
            due = -(-count * (step + 1) // steps) - -(-count * step // steps)
            if due:
                padder.send_padding(due, PROBE_PACKET_SIZE, cluster.id, trio.current_time())
            if step + 1 < steps:
                await trio.sleep_until(start + (step + 1) * PROBE_STEP)

    async def report_loop(self) -> None:
        """A sender report per forwarded stream every second, so the receiver can synchronise
        audio and video and measure round-trip time (RFC 3550 §6.4.1), and the layer plan:
        :meth:`_report`, run by the SFU's :class:`Ticker` with every other leg's in one task
        step. This task only paces the bandwidth probes a plan asks for, and holds the
        registration: it ends with the connection's nursery."""
        with self._ticker.registered(self._report) as tick:
            self._tick = tick
            while True:
                await tick.wait()  # raises what _report raised: this connection fails
                probe, self._probe = self._probe, None
                if probe is not None:
                    await self._send_probe(*probe)

    def _report(self, now: float, unix: float) -> None:
        self.plan_layers(now)
        if self._probe is not None and self._tick is not None:
            self._tick.wake()
        for downtrack in list(self.live.values()):
            sr = downtrack.sender_report(now, unix)
            if sr is not None:
                sdes = Sdes.cname_for(sr.ssrc, downtrack.transceiver.cname)
                self.pc.send_rtcp(serialize_compound([sr, sdes]))
