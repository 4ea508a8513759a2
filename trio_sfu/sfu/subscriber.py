"""A subscriber: one connection receiving the room's publishers, renegotiated as they come and go.

The seed's rules live here: no `PUB_JOIN` and no media of the subscriber's own user; auto mode
takes every other publisher, manual mode only those named by `SUB`; one renegotiation at a time
— changes arriving meanwhile only update the *wanted* set and are merged into the next offer.
"""

from __future__ import annotations

import logging
import math

import trio

from trio_sfu.proto.errors import SdpError
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.allocator import FIXED_LAYERS, HINTS, Hint
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.model import PublisherInfo
from trio_sfu.sfu.speaker import speaker_line
from trio_sfu.sfu.ticks import Ticker
from trio_sfu.sfu.track import DownTrack, codec_preferences

log = logging.getLogger(__name__)

#: How long a subscriber may take to answer an SDP_OFFER before the offer is withdrawn.
ANSWER_TIMEOUT = 15.0
#: A failed offer is sent again this many times (after 1 s, 2 s, 4 s), then withdrawn.
RETRIES = 3
RETRY_DELAY = 1.0

TrackKey = tuple[str, str]  # (publisher id, track id)


class Subscriber(Downstream):
    role = "sub"

    def __init__(
        self, room: RoomContext, connection_id: str, pc: ServerPeerConnection, *, ticker: Ticker
    ) -> None:
        super().__init__(room, connection_id, pc, ticker=ticker)
        self.mode = "auto"
        #: publishers of the room this subscriber may receive (its own user excluded)
        self.known: dict[str, PublisherInfo] = {}
        #: the control channel opened and the publishers known then were announced: from
        #: here on each is announced as it comes
        self._greeted = False
        #: publishers it should receive now (auto: all known; manual: those named by SUB)
        self.wanted: set[str] = set()
        self.downtracks: dict[TrackKey, DownTrack] = {}
        #: ``LAYER`` and ``SIZE`` hints per received track (issue 11): ``off`` pauses the
        #: track at once; the others (and sizes) are kept for the layer allocator
        self.layer_hints: dict[TrackKey, str] = {}
        self.sizes: dict[TrackKey, tuple[int, int]] = {}
        self.negotiations = 0
        self._dirty = trio.Event()
        self._answers_send, self._answers = trio.open_memory_channel[str](math.inf)
        self._awaiting_answer = False
        #: down-tracks added to the session, forwarding once an answer accepts them
        self._pending: list[DownTrack] = []
        self._tolerated_logged = False
        #: down-tracks of removed tracks, whose sections the next offer stops
        self._retiring: list[DownTrack] = []
        pc.on_path_changed = self._path_changed

    def _path_changed(self, now: float, receiving: bool) -> None:
        """This subscriber's media moved to another path: what was sent on the old one is
        lost, so its decoders need keyframes (the publisher's throttle merges this request
        with the one when the subscriber's own input follows, ``receiving``)."""
        for downtrack in self.downtracks.values():
            downtrack.request_keyframe(now)

    # -- room events ----------------------------------------------------------------------

    def publisher_joined(self, info: PublisherInfo) -> None:
        if info.user == self.user or info.publisher_id in self.known:
            return  # the seed's rule: never a user's own media; joins are idempotent
        self.known[info.publisher_id] = info
        if self._greeted:
            self._announce(info)
        if self.mode == "auto":
            self.wanted.add(info.publisher_id)
            self._changed()
        elif self._greeted:
            self.send(dc_protocol.media(list(self.known.values())))

    def _announce(self, info: PublisherInfo) -> None:
        self.send(dc_protocol.pub_join(info.publisher_id))
        for track in info.tracks:  # PUB_JOIN is about the connection, TRACK_ADD its tracks
            self.send(dc_protocol.track_add(info.publisher_id, track))
            if track.muted:
                self.send(dc_protocol.muted(info.publisher_id, track.track_id, True))

    def publisher_left(self, publisher_id: str) -> None:
        if self.known.pop(publisher_id, None) is None:
            return
        self.send(dc_protocol.pub_left(publisher_id))
        self.wanted.discard(publisher_id)
        # Stop forwarding at once; the m-section is stopped in the next offer.
        for key, downtrack in self.downtracks.items():
            if key[0] == publisher_id:
                self.stop_forwarding(downtrack)
        self._changed()
        if self.mode == "manual":
            self.send(dc_protocol.media(list(self.known.values())))

    def publisher_changed(self, info: PublisherInfo) -> None:
        """A publisher's tracks changed (issue 15): TRACK_ADD / TRACK_REMOVE / MUTED, and a
        renegotiation if the set of tracks changed (a removed track stops forwarding now; its
        section is stopped in the next offer and recycled by a later one). A mute alone is
        no renegotiation."""
        if info.user == self.user:
            return
        old = self.known.get(info.publisher_id)
        if old is None:
            self.publisher_joined(info)
            return
        self.known[info.publisher_id] = info
        before = {t.track_id: t for t in old.tracks}
        after = {t.track_id: t for t in info.tracks}
        pid = info.publisher_id
        for track_id in before.keys() - after.keys():
            self.send(dc_protocol.track_remove(pid, track_id))
            downtrack = self.downtracks.pop((pid, track_id), None)
            if downtrack is not None:
                self.stop_forwarding(downtrack)
                self._retiring.append(downtrack)
        for track in info.tracks:
            previous = before.get(track.track_id)
            if previous is None:
                self.send(dc_protocol.track_add(pid, track))
                if track.muted:
                    self.send(dc_protocol.muted(pid, track.track_id, True))
            elif previous.muted != track.muted:
                self.send(dc_protocol.muted(pid, track.track_id, track.muted))
        if before.keys() != after.keys():
            if pid in self.wanted:
                self._changed()
            if self.mode == "manual":
                self.send(dc_protocol.media(list(self.known.values())))

    def _changed(self) -> None:
        self._dirty.set()

    # -- commands -------------------------------------------------------------------------

    async def on_control_open(self) -> None:
        # Publishers the room told us about while the channel was still connecting could not
        # be announced then; the state read below skips them, as known.
        self._greeted = True
        for info in list(self.known.values()):
            self._announce(info)
        for info in await self.room.publisher_infos():
            self.publisher_joined(info)
        speaker = self.room.speaker  # a late joiner learns the room's speaker (issue 11)
        if speaker is not None:
            self.send_event(speaker_line(speaker))
        self.pc.start_soon(self._negotiator)
        self.pc.start_soon(self.report_loop)

    async def handle(self, command: dc_protocol.ClientCommand) -> None:
        if isinstance(command, dc_protocol.SdpAnswer):
            if not self._awaiting_answer:
                self.send(dc_protocol.error("no SDP_OFFER is waiting for an answer"))
                return
            self._answers_send.send_nowait(command.sdp)
        elif isinstance(command, dc_protocol.SdpRecycle):
            # Off: new tracks always get new m-sections (a stack that cannot take a recycled
            # m-line, e.g. GStreamer 1.22); the SDP then grows with every publisher seen.
            self.pc.jsep.recycle = command.on
        elif isinstance(command, dc_protocol.SubMode):
            self.mode = command.mode
            self.wanted = set(self.known) if self.mode == "auto" else set()
            self._changed()
            if self.mode == "manual":
                self.send(dc_protocol.media(list(self.known.values())))
        elif isinstance(command, dc_protocol.Sub | dc_protocol.Unsub):
            if self.mode != "manual":
                self.send(dc_protocol.error("SUB and UNSUB need SUB_MODE manual"))
            elif isinstance(command, dc_protocol.Unsub):
                self.wanted.discard(command.publisher_id)
                self._changed()
            elif command.publisher_id not in self.known:
                self.send(dc_protocol.error(f"no publisher {command.publisher_id} in this room"))
            else:
                self.wanted.add(command.publisher_id)
                self._changed()
        elif isinstance(command, dc_protocol.LayerHint | dc_protocol.SizeHint):
            key = (command.publisher_id, command.track_id)
            downtrack = self.downtracks.get(key)
            if downtrack is None:
                pid, track_id = command.publisher_id, command.track_id
                self.send(dc_protocol.error(f"no track {track_id} of {pid}"))
                return
            # hints live as long as their track (bounded by what the room sends us)
            for gone in [k for k in self.layer_hints if k not in self.downtracks]:
                del self.layer_hints[gone]
            for gone in [k for k in self.sizes if k not in self.downtracks]:
                del self.sizes[gone]
            if isinstance(command, dc_protocol.SizeHint):
                self.sizes[key] = (command.width, command.height)
                return
            self.layer_hints[key] = command.layer
            if downtrack in self.live.values():
                self._apply_layer_hint(downtrack, command.layer)
        else:
            await super().handle(command)

    def _apply_layer_hint(self, downtrack: DownTrack, layer: str) -> None:
        # Pausing, resuming and switching layers never renegotiate: the m-section and SSRC
        # stay. low/mid/high take effect at once (the target's next keyframe); auto is the
        # layer planner's, from the next plan on.
        now = trio.current_time()
        if layer == "off":
            downtrack.pause()
            return
        downtrack.resume(now)
        fixed = FIXED_LAYERS.get(layer)
        if fixed is not None:
            downtrack.set_layer(fixed, now)

    def layer_hint(self, downtrack: DownTrack) -> tuple[Hint, int | None]:
        key = (downtrack.source.publisher_id, downtrack.source.track_id)
        size = self.sizes.get(key)
        wanted = self.layer_hints.get(key, "auto")
        hint: Hint = "auto"
        for known in HINTS:
            if known == wanted:
                hint = known
        return hint, (size[0] if size else None)

    def priority(self, downtrack: DownTrack) -> int:
        """A screen share first, then the room's active speaker (issue 11 §3)."""
        if downtrack.source.publisher_id == self.room.speaker:
            return max(super().priority(downtrack), 1)
        return super().priority(downtrack)

    # -- renegotiation (one at a time; changes meanwhile are merged into the next offer) --------

    async def _negotiator(self) -> None:
        """One offer at a time. When a renegotiation fails (no answer in time, an answer we
        cannot apply) the connection and the media already flowing stay up and the client
        hears ``ERROR`` with the reason; the *same* offer is sent again after 1, 2 and 4 s (a
        client may have applied it, so only that offer is sure to fit its state, and a late
        answer to it still counts); after that it is withdrawn (RFC 8829 §4.1.10 rollback)
        until the next change."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            self._pending.extend(self._apply_wanted())
            if not self._needs_offer():
                continue
            offer = self.pc.create_offer()
            self.negotiations += 1
            while True:  # answers left over from an earlier offer are not for this one
                try:
                    self._answers.receive_nowait()
                except trio.WouldBlock:
                    break
            self._awaiting_answer = True  # until this offer is settled, resends included
            try:
                for attempt in range(RETRIES + 1):
                    if not self.send(dc_protocol.sdp_offer(offer)):
                        self.pc.close("control channel gone during renegotiation")
                        return
                    problem = await self._await_answer()
                    if problem is None:
                        self._activate()
                        break
                    last = attempt == RETRIES
                    if last:
                        self.pc.rollback()
                    then = "offer withdrawn until the next change" if last else "sending it again"
                    self.send(dc_protocol.error(f"{problem}; {then}"))
                    log.warning(
                        "renegotiation failed",
                        extra={**self.log_extra, "reason": problem, "attempt": attempt + 1},
                    )
                    if not last:
                        await trio.sleep(RETRY_DELAY * 2**attempt)
            finally:
                self._awaiting_answer = False

    async def _await_answer(self) -> str | None:
        """Wait for the answer to the offer in flight and apply it; the problem, or None."""
        answer: str | None = None
        with trio.move_on_after(ANSWER_TIMEOUT):
            answer = await self._answers.receive()
        if answer is None:
            return f"no SDP_ANSWER within {ANSWER_TIMEOUT:g} s"
        try:
            tolerated = self.pc.handle_answer(answer)
        except SdpError as exc:
            return f"bad SDP_ANSWER: {exc}"
        self._note_tolerated(tolerated)
        return None

    def _note_tolerated(self, tolerated: list[str]) -> None:
        """Say once per connection that the client's answers bend the rules (not per offer)."""
        if tolerated and not self._tolerated_logged:
            self._tolerated_logged = True
            log.info("tolerated SDP_ANSWER", extra={**self.log_extra, "detail": tolerated[0]})

    def _needs_offer(self) -> bool:
        return any(t.mid is None or t.stopping for t in self.pc.jsep.transceivers)

    def _apply_wanted(self) -> list[DownTrack]:
        """Bring the transceivers in line with ``wanted``; return the new (inactive) down-tracks."""
        retiring, self._retiring = self._retiring, []
        for key in [k for k in self.downtracks if k[0] not in self.wanted]:
            retiring.append(self.downtracks.pop(key))
        for downtrack in retiring:
            self.stop_forwarding(downtrack)
            self.pc.stop_transceiver(downtrack.transceiver)
        added: list[DownTrack] = []
        for publisher_id in sorted(self.wanted):
            info = self.known.get(publisher_id)
            if info is None:
                continue
            for track in info.tracks:
                key = (publisher_id, track.track_id)
                if key in self.downtracks:
                    continue
                source = self.room.track_source(info, track)
                if source is None:
                    continue
                t = self.pc.add_transceiver(
                    track.kind,
                    "sendonly",
                    stream_id=publisher_id,
                    track_id=track.track_id,
                    codec_preferences=codec_preferences(track),
                )
                downtrack = self.new_downtrack(t, source)
                self.downtracks[key] = downtrack
                added.append(downtrack)
        return added

    def _activate(self) -> None:
        """Start forwarding the down-tracks the last answer accepted."""
        now = trio.current_time()
        pending, self._pending = self._pending, []
        for downtrack in pending:
            key = (downtrack.source.publisher_id, downtrack.source.track_id)
            if self.downtracks.get(key) is not downtrack:
                continue  # its publisher left meanwhile
            if downtrack.transceiver.mid is None:
                self._pending.append(downtrack)  # in no offer yet
            elif (  # start_forwarding: False if the answer rejected it
                self.start_forwarding(downtrack, now) and self.layer_hints.get(key) == "off"
            ):
                downtrack.pause()

    def close_downtracks(self) -> None:
        super().close_downtracks()
        self.downtracks.clear()
