"""A publisher: one browser (or bot) connection sending audio and/or video into a room.

Its tracks may change over the connection's life (issue 15): the publisher stays the offerer
of everything it sends and renegotiates with ``SDP_OFFER`` on the control channel; we answer
``SDP_ANSWER`` and never offer to a publisher, so there is no glare to resolve. ``ADD_MEDIA``
labels the section its next offer adds, ``REMOVE_MEDIA`` stops forwarding a track at once and
``MUTE`` pauses one without any renegotiation. Every change reaches the room as one
``TrackChange`` carrying the publisher's whole new info.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

import trio

from trio_sfu.proto.capabilities import URI_TRANSPORT_CC
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.jsep import Transceiver
from trio_sfu.proto.rtcp import ReceiverReport, RtcpPacket, Sdes, SenderReport, serialize_compound
from trio_sfu.proto.rtp import find_extension
from trio_sfu.proto.twcc import TwccRecorder
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.model import PublisherInfo, relay_stream
from trio_sfu.sfu.ticks import next_tick
from trio_sfu.sfu.track import PublishedTrack, TrackSink

log = logging.getLogger(__name__)

#: Receiver reports towards a publisher.
REPORT_INTERVAL = 1.0
#: A timer sleep longer than this counts as idle: the next packet re-checks its deadline.
IDLE_SLEEP = 0.06
#: ... at most this often: a publisher without transport-cc sends no feedback to move the sleep
#: with, and a NACK is announced at once (``PublishedTrack.on_timer``); what is left (a refused
#: keyframe request's retry, an SVC selector's request) may wait this long
IDLE_RECHECK = 0.02
#: Transport-cc feedback is due every ~50 ms (``TwccRecorder``) and goes out with the first
#: packet to arrive after that (within a frame interval, 33 ms at 30 frames/s: 50-83 ms apart,
#: inside libwebrtc's own 50-250 ms); the timer task sends it only when no packet came for this
#: long past due (the stream paused or ended), so feedback never costs a wake-up of its own.
FEEDBACK_GRACE = 0.04
#: The label of a track no ``ADD_MEDIA`` named (a first offer's tracks, older clients).
DEFAULT_APP_IDS = {"audio": "mic", "video": "camera"}
#: ``ADD_MEDIA`` labels waiting for an offer, per kind (a bound: a client cannot grow it).
MAX_PENDING_LABELS = 16


def track_key(t: Transceiver) -> str:
    """A received section's track id: the msid track id (RFC 8830 §2), else ``mid<N>``."""
    return t.remote_msid[1] if t.remote_msid and t.remote_msid[1] else f"mid{t.mid}"


def receiving(t: Transceiver) -> bool:
    """Whether a section currently brings us media we can forward."""
    return not t.stopped and not t.stopping and t.receiving and bool(t.media_codecs)


class Publisher(Member):
    role = "pub"

    def __init__(
        self,
        room: RoomContext,
        connection_id: str,
        pc: ServerPeerConnection,
        app_ids: Sequence[str] = (),
    ) -> None:
        """``app_ids``: labels of the first offer's media sections in order (the POST's
        ``app_ids``); sections without one are ``mic``/``camera``."""
        super().__init__(room, connection_id, pc)
        self.tracks: list[PublishedTrack] = []
        self._by_transceiver: dict[int, PublishedTrack] = {}
        #: labels of each track (APP_ID) and the tracks a REMOVE_MEDIA retired for good
        self.app_ids: dict[str, str] = {}
        self._retired: set[str] = set()
        self._labels: dict[str, deque[str]] = {"audio": deque(), "video": deque()}
        self.renegotiations = 0
        labels = iter(app_ids)
        for t in pc.transceivers:
            label = next(labels, None) if t.kind in self._labels else None
            if receiving(t):
                if label is not None:
                    self._labels[t.kind].append(label)
                self._add_track(t)
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
        self._relay = room.relay
        #: the relay's entries per relayed stream name (model.relay_stream)
        self._relay_sinks: dict[str, TrackSink] = {}
        for track in self.tracks:
            self._open_relay(track)
        #: the timer task's sleep (None while it runs): a packet or a demand change moves its
        #: deadline or cancels it instead of waking the task through an Event
        self._sleep: trio.CancelScope | None = None
        #: when the next packet should re-check the sleep's deadline (inf: not needed)
        self._recheck_at = math.inf
        self._next_report = math.inf
        #: the transport-cc due time the sleep's deadline was last worked out with
        self._armed_feedback: float | None = None
        #: a simulcast stream the publisher was told to stop is wanted again (dynacast)
        self._demand_due = False
        #: incoming RTP streams seen (the peer forgets them once closed; we keep the totals)
        self._streams: list[IncomingStream] = []
        pc.on_rtp = self._on_rtp
        pc.on_rtcp = self._on_rtcp
        pc.on_path_changed = self._path_changed

    def _path_changed(self, now: float, receiving: bool) -> None:
        """The publisher's path moved (a new address, or UDP to ICE-TCP): what it sent on the
        old path while that failed is lost, so ask for keyframes as soon as its media comes
        over the new path (``receiving``) rather than after every subscriber's decoder gave
        up; until then a request would be answered on the failing path, so none is sent."""
        for track in self.tracks:
            if receiving:
                track.media_resumed(now)
            else:
                track.hold_keyframe_requests()

    def _demand_rose(self) -> None:
        self._demand_due = True
        if self._sleep is not None:
            self._sleep.cancel()

    def _plan_demand(self, now: float) -> None:
        """Dynacast (issue 11, sfu/dynacast.py): tell the publisher which streams of each
        simulcast track some subscriber needs (``LAYERS``); it may stop encoding the rest."""
        self._demand_due = False
        for track in self.tracks:
            rids = track.plan_demand(now)
            if rids is not None:
                self.send(dc_protocol.layers(track.track_id, rids))

    def _add_track(self, t: Transceiver) -> PublishedTrack:
        track = PublishedTrack(self.pc, t, track_key(t), publisher_id=self.id)
        track.on_demand = self._demand_rose
        track.on_timer = self._rearm
        labels = self._labels[t.kind]
        self.app_ids[track.track_id] = labels.popleft() if labels else DEFAULT_APP_IDS[t.kind]
        self.tracks.append(track)
        self._by_transceiver[id(t)] = track
        return track

    def _open_relay(self, track: PublishedTrack) -> None:
        """The track's relay entries: one, or one per simulcast stream (the top one under
        the track's own name, so a pod receiving only that stream needs nothing new)."""
        if self._relay is None:
            return
        sink = self._relay.sender(self.id, track.track_id)
        track.relay_sink = sink
        self._relay_sinks[track.track_id] = sink
        for layer, rid in enumerate(track.layers):
            if layer == len(track.layers) - 1:
                track.layer_sinks[layer] = sink
                continue
            name = relay_stream(track.track_id, rid)
            track.layer_sinks[layer] = self._relay_sinks[name] = self._relay.sender(self.id, name)

    def _close_relay(self, track: PublishedTrack) -> None:
        track.relay_sink = None
        track.layer_sinks = [None] * len(track.layers)
        for name in [track.track_id, *(relay_stream(track.track_id, r) for r in track.layers)]:
            sink = self._relay_sinks.pop(name, None)
            if sink is not None:
                sink.close()

    def _drop_track(self, track: PublishedTrack) -> None:
        """Stop forwarding ``track`` at once: subscribers stop its sections on TrackChange."""
        self.tracks.remove(track)
        self._by_transceiver.pop(id(track.transceiver), None)
        self.app_ids.pop(track.track_id, None)
        for stream in self.pc.incoming_streams:
            if stream.sink is track:
                stream.sink = None  # looked up again: the transceiver no longer maps to it
        self._close_relay(track)

    def leave(self) -> None:
        """Other pods stop receiving its tracks; an announced publisher leaves the room's
        state and every pod hears PUB_LEFT."""
        for track in self.tracks:
            self._close_relay(track)
        if self.announced:
            self.room.publisher_left(self.id)

    @property
    def info(self) -> PublisherInfo:
        return PublisherInfo(
            self.id,
            self.user,
            self.room.node_id,
            tuple(
                replace(t.info, app_id=self.app_ids.get(t.track_id, ""), muted=t.muted)
                for t in self.tracks
            ),
        )

    def track(self, track_id: str) -> PublishedTrack | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    def counters(self) -> dict[str, int]:
        out = super().counters()
        out["rtx_in"] = sum(t.rtx_received for t in self.tracks)
        out["padding_in"] = sum(t.padding_received for t in self.tracks)
        out["nacks_sent"] = sum(t.nack_requested for t in self.tracks)
        out["pli_sent"] = out["fir_sent"] = 0
        for t in self.tracks:
            out["fir_sent" if t.uses_fir else "pli_sent"] += t.keyframes.sent
        out["keyframe_requests_throttled"] = sum(t.keyframes.suppressed for t in self.tracks)
        out["bytes_in"] = sum(s.octets for s in self._streams)
        return out

    # -- media ----------------------------------------------------------------------------

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        twcc = self.twcc
        if twcc is not None:
            value = find_extension(packet, self._twcc_id)  # type: ignore[arg-type]
            if value is not None and len(value) == 2:
                due = twcc.record((value[0] << 8) | value[1], now)
                if due is not None and due <= now:
                    self._send_feedback(twcc, now)  # on this wake-up, not a timer's own
                    due = None
                if due != self._armed_feedback:
                    self._armed_feedback = due
                    self._rearm(now)
        track = stream.sink
        if track is None:
            track = self._by_transceiver.get(id(stream.transceiver))
            if track is None:
                return
            stream.sink = track
            self._streams.append(stream)  # once per stream: its octets count in counters()
        if not track.muted:  # MUTE: nothing forwarded or relayed until it unmutes (issue 15)
            track.on_rtp(stream, packet, now)
        if now >= self._recheck_at:
            self._rearm(now)

    def _send_feedback(self, twcc: TwccRecorder, now: float) -> None:
        """Transport-cc feedback for what arrived since the last (draft-holmer-rmcat-
        transport-wide-cc-extensions-01 §3)."""
        tracks = self.tracks
        sender = tracks[0].transceiver.sender_ssrc
        media = next((t.media_ssrc for t in tracks if t.media_ssrc is not None), 0)
        for feedback in twcc.build_feedback(now, sender, media):
            self.pc.send_rtcp(feedback.serialize())

    def _rearm(self, now: float) -> None:
        """Move the timer task's sleep to :meth:`_deadline` (earlier or later) without waking
        it (a wake-up costs more than the rest of a packet's ingest, issue 10): a packet
        started a feedback interval, feedback went out with a packet, a gap made a NACK due
        (``PublishedTrack.on_timer``, at once), or the task sleeps long and a packet may have
        started another timer (a keyframe request's retry: seen within ``IDLE_RECHECK``, or
        with the next feedback)."""
        deadline = self._deadline()
        sleep = self._sleep
        if sleep is not None:
            sleep.deadline = deadline
        self._set_recheck(deadline, now, now + IDLE_RECHECK)

    def _set_recheck(self, deadline: float, now: float, at: float) -> None:
        """Packets re-check the deadline (from ``at`` on) only while the task sleeps long
        with no feedback pending: a feedback interval moves it anyway."""
        idle = self._armed_feedback is None and deadline - now > IDLE_SLEEP
        self._recheck_at = at if idle else math.inf

    def _deadline(self) -> float:
        """When the timer task has something to do next. Transport-cc feedback is sent by
        the packet that finds it due (:meth:`_on_rtp`); the task sends it only once packets
        stop coming, ``FEEDBACK_GRACE`` later."""
        deadline = self._next_report
        for track in self.tracks:
            due = track.next_timer()
            if due < deadline:
                deadline = due
        twcc = self.twcc
        feedback = twcc.get_timer() if twcc is not None else None
        if feedback is not None and feedback + FEEDBACK_GRACE < deadline:
            deadline = feedback + FEEDBACK_GRACE
        return deadline

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
        is pending the task sleeps until then; the first packet to arrive brings that sleep's
        deadline forward if it started a feedback interval or revealed a gap to NACK
        (:meth:`_rearm`), without waking the task."""
        tracks = self.tracks
        sender = tracks[0].transceiver.sender_ssrc
        cname = tracks[0].transceiver.cname
        # on the process's grid: every leg's reports in one wake-up (sfu/ticks.py)
        self._next_report = next_report = next_tick(trio.current_time(), REPORT_INTERVAL)
        while True:
            twcc = self.twcc  # a renegotiation may bring transport-cc along (issue 15)
            deadline = self._deadline()
            self._armed_feedback = twcc.get_timer() if twcc is not None else None
            self._set_recheck(deadline, trio.current_time(), -math.inf)  # the next packet
            with trio.CancelScope(deadline=deadline) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
            self._recheck_at = math.inf
            now = trio.current_time()
            if twcc is not None:
                due = twcc.get_timer()
                if due is not None and due <= now:
                    self._send_feedback(twcc, now)
                    self._armed_feedback = None
            for track in tracks:
                if track.next_timer() <= now:
                    track.tick(now)
            if self._demand_due:
                self._plan_demand(now)
            if now >= next_report:
                self._next_report = next_report = next_tick(now, REPORT_INTERVAL)
                for track in tracks:
                    track.review_streams(now)
                self._plan_demand(now)
                blocks = [b for track in tracks for b in track.report_blocks(now)]
                for i in range(0, max(len(blocks), 1), 31):  # at most 31 blocks per RR
                    rr = ReceiverReport(ssrc=sender, reports=blocks[i : i + 31])
                    self.pc.send_rtcp(serialize_compound([rr, Sdes.cname_for(sender, cname)]))

    # -- tracks over time (issue 15) ---------------------------------------------------------

    async def handle(self, command: dc_protocol.ClientCommand) -> None:
        if isinstance(command, dc_protocol.SdpOffer):
            self._renegotiate(command.sdp)
        elif isinstance(command, dc_protocol.AddMedia):
            labels = self._labels[command.kind]
            if len(labels) >= MAX_PENDING_LABELS:
                self.send(dc_protocol.error(f"more than {MAX_PENDING_LABELS} ADD_MEDIA pending"))
            else:
                labels.append(command.app_id)
        elif isinstance(command, dc_protocol.RemoveMedia):
            matching = [
                t
                for t in self.tracks
                if t.kind == command.kind and self.app_ids.get(t.track_id) == command.app_id
            ]
            if not matching:
                self.send(dc_protocol.error(f"no {command.kind} track {command.app_id} to remove"))
                return
            if len(matching) > 1:
                # Two tracks of one label (two unlabelled cameras, a label used again): which
                # one goes is for the next SDP_OFFER's stopped section to say, not a guess.
                self.send(
                    dc_protocol.error(
                        f"{len(matching)} {command.kind} tracks are labelled {command.app_id}; "
                        "nothing removed now: the next SDP_OFFER's stopped section decides"
                    )
                )
                return
            track = matching[0]
            self._retired.add(track.track_id)
            self._drop_track(track)
            self._announce_change("removed")
        elif isinstance(command, dc_protocol.Mute):
            found = self.track(command.track_id)
            if found is None:
                self.send(dc_protocol.error(f"no track {command.track_id} to mute"))
                return
            if found.muted == command.on:
                return
            found.muted = command.on
            if not command.on:  # the first frame after unmuting must be decodable
                found.request_keyframe(trio.current_time())
            self._announce_change("muted" if command.on else "unmuted")
        else:
            await super().handle(command)

    def _renegotiate(self, offer: str) -> None:
        """Apply the publisher's new offer and answer it; then bring the tracks in line with
        the sections that now bring media (RFC 8829 §5.3.1: a section may be added, stopped
        — port 0 — or turned inactive/recvonly by removeTrack). A bad offer changes nothing
        (the JSEP session's state stays as it was) and gets ``ERROR``."""
        try:
            answer = self.pc.handle_offer(offer)
        except SdpError as exc:
            self.send(dc_protocol.error(f"bad SDP_OFFER: {exc}"))
            return
        except RuntimeError as exc:  # JsepStateError: not stable (cannot happen: no offers)
            self.send(dc_protocol.error(f"SDP_OFFER refused: {exc}"))
            return
        self.renegotiations += 1
        live = {id(t): t for t in self.pc.transceivers if receiving(t)}
        removed = [
            track
            for track in self.tracks
            if id(track.transceiver) not in live or track_key(track.transceiver) != track.track_id
        ]
        for track in removed:
            self._drop_track(track)
        known = {t.track_id for t in self.tracks}
        added = []
        for t in live.values():
            key = track_key(t)
            if id(t) in self._by_transceiver or key in known or key in self._retired:
                continue
            track = self._add_track(t)
            self._open_relay(track)
            added.append(track)
            known.add(key)
        if self._twcc_id is None and added:
            self._twcc_id = next(
                (
                    t.transceiver.extension_id(URI_TRANSPORT_CC)
                    for t in added
                    if t.transceiver.transport_cc
                ),
                None,
            )
            if self._twcc_id is not None:
                self.twcc = TwccRecorder()
        self.send(dc_protocol.sdp_answer(answer))
        if added or removed:
            self._announce_change("renegotiated")

    def _announce_change(self, why: str) -> None:
        if not self.announced:
            return  # the PUB_JOIN, still to come, carries the tracks as they are then
        info = self.info
        self.room.tracks_changed(info)
        log.info(
            "publisher tracks changed",
            extra={**self.log_extra, "why": why, "audio": info.audio, "video": info.video},
        )

    async def on_connected(self) -> None:
        await super().on_connected()
        self.pc.start_soon(self._timers)
        if not self.announced:
            self.announced = True
            await self.room.publisher_ready(self.info)
