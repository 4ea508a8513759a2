"""A subscriber: one connection receiving the room's publishers, renegotiated as they come and go.

The seed's rules live here: no `PUB_JOIN` and no media of the subscriber's own user; auto mode
takes every other publisher, manual mode only those named by `SUB`; one renegotiation at a time
— changes arriving meanwhile only update the *wanted* set and are merged into the next offer.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from trio_sfu.cluster.commands import PublisherInfo
from trio_sfu.proto.errors import SdpError
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu import protocol
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.track import DownTrack, codec_preferences

if TYPE_CHECKING:
    from trio_sfu.sfu.room import Room

log = logging.getLogger(__name__)

#: How long a subscriber may take to answer an SDP_OFFER before we give up on it.
ANSWER_TIMEOUT = 15.0

TrackKey = tuple[str, str]  # (publisher id, track id)


class Subscriber(Downstream):
    role = "subscriber"

    def __init__(self, room: Room, connection_id: str, pc: ServerPeerConnection) -> None:
        super().__init__(room, connection_id, pc)
        self.mode = "auto"
        #: publishers of the room this subscriber may receive (its own user excluded)
        self.known: dict[str, PublisherInfo] = {}
        #: publishers it should receive now (auto: all known; manual: those named by SUB)
        self.wanted: set[str] = set()
        self.downtracks: dict[TrackKey, DownTrack] = {}
        self.negotiations = 0
        self._dirty = trio.Event()
        self._answers_send, self._answers = trio.open_memory_channel[str](math.inf)
        self._awaiting_answer = False
        pc.on_path_changed = self._path_changed

    def _path_changed(self, now: float) -> None:
        """This subscriber's media moved to another path: what was sent on the old one is
        lost, so its decoders need keyframes."""
        for downtrack in self.downtracks.values():
            downtrack.source.request_keyframe(now)

    # -- room events ----------------------------------------------------------------------

    def publisher_joined(self, info: PublisherInfo) -> None:
        if info.user == self.user or info.publisher_id in self.known:
            return  # the seed's rule: never a user's own media; joins are idempotent
        self.known[info.publisher_id] = info
        self.send(protocol.pub_join(info.publisher_id))
        if self.mode == "auto":
            self.wanted.add(info.publisher_id)
            self._changed()
        else:
            self.send(protocol.media(list(self.known.values())))

    def publisher_left(self, publisher_id: str) -> None:
        if self.known.pop(publisher_id, None) is None:
            return
        self.send(protocol.pub_left(publisher_id))
        self.wanted.discard(publisher_id)
        # Stop forwarding at once; the m-section is stopped in the next offer.
        for key, downtrack in self.downtracks.items():
            if key[0] == publisher_id:
                self.stop_forwarding(downtrack)
        self._changed()
        if self.mode == "manual":
            self.send(protocol.media(list(self.known.values())))

    def _changed(self) -> None:
        self._dirty.set()

    # -- commands -------------------------------------------------------------------------

    async def on_control_open(self) -> None:
        for info in await self.room.publisher_infos():
            self.publisher_joined(info)
        self.pc.start_soon(self._negotiator)
        self.pc.start_soon(self.report_loop)

    async def handle(self, command: protocol.ClientCommand) -> None:
        if isinstance(command, protocol.SdpAnswer):
            if not self._awaiting_answer:
                self.send(protocol.error("no SDP_OFFER is waiting for an answer"))
                return
            self._answers_send.send_nowait(command.sdp)
        elif isinstance(command, protocol.SubMode):
            self.mode = command.mode
            self.wanted = set(self.known) if self.mode == "auto" else set()
            self._changed()
            if self.mode == "manual":
                self.send(protocol.media(list(self.known.values())))
        elif isinstance(command, protocol.Sub | protocol.Unsub):
            if self.mode != "manual":
                self.send(protocol.error("SUB and UNSUB need SUB_MODE manual"))
            elif isinstance(command, protocol.Unsub):
                self.wanted.discard(command.publisher_id)
                self._changed()
            elif command.publisher_id not in self.known:
                self.send(protocol.error(f"no publisher {command.publisher_id} in this room"))
            else:
                self.wanted.add(command.publisher_id)
                self._changed()
        else:
            await super().handle(command)

    # -- renegotiation (one at a time; changes meanwhile are merged into the next offer) --------

    async def _negotiator(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            added = self._apply_wanted()
            if not self._needs_offer():
                continue
            offer = self.pc.create_offer()
            self.negotiations += 1
            self._awaiting_answer = True
            if not self.send(protocol.sdp_offer(offer)):
                self.pc.close("control channel gone during renegotiation")
                return
            answer: str | None = None
            with trio.move_on_after(ANSWER_TIMEOUT):
                answer = await self._answers.receive()
            self._awaiting_answer = False
            if answer is None:
                self.send(protocol.error(f"no SDP_ANSWER within {ANSWER_TIMEOUT:.0f} s"))
                self.pc.close("no SDP_ANSWER")
                return
            try:
                self.pc.handle_answer(answer)
            except SdpError as exc:
                self.send(protocol.error(f"bad SDP_ANSWER: {exc}"))
                self.pc.close("bad SDP_ANSWER")
                return
            self._activate(added)

    def _needs_offer(self) -> bool:
        return any(t.mid is None or t.stopping for t in self.pc.jsep.transceivers)

    def _apply_wanted(self) -> list[DownTrack]:
        """Bring the transceivers in line with ``wanted``; return the new (inactive) down-tracks."""
        for key in [k for k in self.downtracks if k[0] not in self.wanted]:
            downtrack = self.downtracks.pop(key)
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
                source = self.room.sfu.track_source(self.room.name, info, track)
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

    def _activate(self, added: list[DownTrack]) -> None:
        now = trio.current_time()
        for downtrack in added:
            key = (downtrack.source.publisher_id, downtrack.source.track_id)
            if self.downtracks.get(key) is downtrack:  # else its publisher left meanwhile
                self.start_forwarding(downtrack, now)

    def close_downtracks(self) -> None:
        super().close_downtracks()
        self.downtracks.clear()
