"""A publisher: one browser (or bot) connection sending audio and/or video into a room."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from trio_sfu.cluster.commands import PublisherInfo
from trio_sfu.proto.capabilities import URI_TRANSPORT_CC
from trio_sfu.proto.rtcp import ReceiverReport, RtcpPacket, Sdes, SenderReport, serialize_compound
from trio_sfu.proto.rtp import find_extension
from trio_sfu.proto.twcc import TwccRecorder
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.track import PublishedTrack

if TYPE_CHECKING:
    from trio_sfu.sfu.room import Room

log = logging.getLogger(__name__)

#: Receiver reports towards a publisher.
REPORT_INTERVAL = 1.0
#: A timer sleep longer than this counts as idle: the next packet wakes the task.
IDLE_SLEEP = 0.06


class Publisher(Member):
    role = "publisher"

    def __init__(self, room: Room, connection_id: str, pc: ServerPeerConnection) -> None:
        super().__init__(room, connection_id, pc)
        self.tracks: list[PublishedTrack] = []
        for t in pc.transceivers:
            if t.stopped or not t.receiving or not t.media_codecs:
                continue
            track_id = t.remote_msid[1] if t.remote_msid and t.remote_msid[1] else f"mid{t.mid}"
            self.tracks.append(PublishedTrack(pc, t, track_id, publisher_id=connection_id))
        self._by_transceiver = {id(track.transceiver): track for track in self.tracks}
        self.announced = False
        # transport-cc: the publisher's browser estimates its upload bandwidth from our
        # feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01); one sequence space
        # for the whole bundled transport, so one recorder and one extension id.
        self._twcc_id = next(
            (
                t.transceiver.extension_id(URI_TRANSPORT_CC)
                for t in self.tracks
                if t.transceiver.transport_cc
            ),
            None,
        )
        self.twcc = TwccRecorder() if self._twcc_id is not None else None
        relay = room.sfu.relay
        self._relay_sinks = []
        if relay is not None:
            for track in self.tracks:
                sink = relay.sender(connection_id, track.track_id)
                track.relay_sink = sink
                self._relay_sinks.append(sink)
        self._wake = trio.Event()
        self._idle = False
        pc.on_rtp = self._on_rtp
        pc.on_rtcp = self._on_rtcp
        pc.on_path_changed = self._path_changed

    def _path_changed(self, now: float) -> None:
        """The publisher's media moved (a new address, or UDP to ICE-TCP): what it sent on the
        old path while that failed is lost, so ask for keyframes now rather than after every
        subscriber's decoder gave up."""
        for track in self.tracks:
            track.request_keyframe(now)

    def close_relay(self) -> None:
        """The publisher left: other pods stop receiving its tracks."""
        for track in self.tracks:
            track.relay_sink = None
        for sink in self._relay_sinks:
            sink.close()
        self._relay_sinks.clear()

    @property
    def info(self) -> PublisherInfo:
        return PublisherInfo(
            self.id, self.user, self.room.sfu.node_id, tuple(t.info for t in self.tracks)
        )

    def track(self, track_id: str) -> PublishedTrack | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    # -- media ----------------------------------------------------------------------------

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        if self._idle:  # the timer task sleeps long: this packet may need it sooner
            self._idle = False
            self._wake.set()
        twcc = self.twcc
        if twcc is not None:
            value = find_extension(packet, self._twcc_id)  # type: ignore[arg-type]
            if value is not None and len(value) == 2:
                twcc.record((value[0] << 8) | value[1], now)
        track = stream.sink
        if track is None:
            track = self._by_transceiver.get(id(stream.transceiver))
            if track is None:
                return
            stream.sink = track
        track.on_rtp(stream, packet, now)

    def _on_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        # RTCP is terminated per leg: the publisher's SRs feed our receiver reports (LSR/DLSR);
        # nothing it sends is relayed to subscribers.
        for packet in packets:
            if isinstance(packet, SenderReport):
                for track in self.tracks:
                    track.on_sender_report(packet, now)

    async def _timers(self) -> None:
        """The publisher leg's timers, in one task that sleeps until the earliest deadline:
        transport-cc feedback (~50 ms while packets arrive), NACKs and deferred keyframe
        requests when due, and a receiver report every second (RFC 3550 §6.2's interval,
        fixed: a publisher leg has exactly one receiver, us). When nothing but the next report
        is pending the task sleeps until then; the first packet to arrive wakes it, since it
        may start a feedback interval or reveal a gap to NACK."""
        tracks = self.tracks
        sender = tracks[0].transceiver.sender_ssrc
        cname = tracks[0].transceiver.cname
        twcc = self.twcc
        next_report = trio.current_time() + REPORT_INTERVAL
        while True:
            deadline = next_report
            for track in tracks:
                deadline = min(deadline, track.next_timer())
            if twcc is not None:
                due = twcc.get_timer()
                if due is not None:
                    deadline = min(deadline, due)
            self._wake = trio.Event()
            self._idle = deadline - trio.current_time() > IDLE_SLEEP
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._idle = False
            now = trio.current_time()
            if twcc is not None:
                due = twcc.get_timer()
                if due is not None and due <= now:
                    media = next((t.media_ssrc for t in tracks if t.media_ssrc is not None), 0)
                    for feedback in twcc.build_feedback(now, sender, media):
                        self.pc.send_rtcp(feedback.serialize())
            for track in tracks:
                if track.next_timer() <= now:
                    track.tick(now)
            if now >= next_report:
                next_report = now + REPORT_INTERVAL
                blocks = [b for track in tracks for b in track.report_blocks(now)]
                for i in range(0, max(len(blocks), 1), 31):  # at most 31 blocks per RR
                    rr = ReceiverReport(ssrc=sender, reports=blocks[i : i + 31])
                    self.pc.send_rtcp(serialize_compound([rr, Sdes.cname_for(sender, cname)]))

    async def on_connected(self) -> None:
        await super().on_connected()
        self.pc.start_soon(self._timers)
        if not self.announced:
            self.announced = True
            await self.room.publisher_ready(self)
