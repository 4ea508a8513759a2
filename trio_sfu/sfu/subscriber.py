"""A subscriber: one connection receiving the room's publishers, renegotiated as they come and go.

The seed's rules live here: no `PUB_JOIN` and no media of the subscriber's own user; auto mode
takes every other publisher, manual mode only those named by `SUB`; one renegotiation at a time
— changes arriving meanwhile only update the *wanted* set and are merged into the next offer.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import trio

from trio_sfu.cluster.commands import PublisherInfo
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    RtcpPacket,
    Sdes,
    SenderReport,
    serialize_compound,
)
from trio_sfu.proto.rtp import TransportCcSequencer
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu import protocol
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.track import DownTrack, codec_preferences

if TYPE_CHECKING:
    from trio_sfu.sfu.room import Room

log = logging.getLogger(__name__)

#: How long a subscriber may take to answer an SDP_OFFER before we give up on it.
ANSWER_TIMEOUT = 15.0
#: Sender reports towards a subscriber (RFC 3550 §6.2; one receiver per leg, so fixed).
REPORT_INTERVAL = 1.0

TrackKey = tuple[str, str]  # (publisher id, track id)


class Subscriber(Member):
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
        self._twcc: TransportCcSequencer | None = None
        self._downtracks_by_ssrc: dict[int, DownTrack] = {}
        pc.on_rtcp = self._on_rtcp

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
                downtrack.close()
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
        self.pc.start_soon(self._report_loop)

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
            downtrack.close()
            self._downtracks_by_ssrc.pop(downtrack.transceiver.sender_ssrc, None)
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
                source = self.room.sfu.track_source(publisher_id, track.track_id)
                if source is None:
                    continue
                t = self.pc.add_transceiver(
                    track.kind,
                    "sendonly",
                    stream_id=publisher_id,
                    track_id=track.track_id,
                    codec_preferences=codec_preferences(track),
                )
                downtrack = DownTrack(self.pc, t, source, twcc=self._twcc_sequencer)
                self.downtracks[key] = downtrack
                added.append(downtrack)
        return added

    def _activate(self, added: list[DownTrack]) -> None:
        now = trio.current_time()
        for downtrack in added:
            key = (downtrack.source.publisher_id, downtrack.source.track_id)
            if self.downtracks.get(key) is not downtrack:
                continue  # its publisher left while we negotiated
            if downtrack.activate():
                downtrack.source.attach(downtrack)
                self._downtracks_by_ssrc[downtrack.transceiver.sender_ssrc] = downtrack
                # The first frame comes fast: ask the publisher for a keyframe now.
                downtrack.source.request_keyframe(now)

    def _twcc_sequencer(self, ext_id: int) -> TransportCcSequencer:
        if self._twcc is None or self._twcc.ext_id != ext_id:
            self._twcc = TransportCcSequencer(ext_id)
        return self._twcc

    # -- feedback from the subscriber -----------------------------------------------------

    def _on_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        for packet in packets:
            if isinstance(packet, Pli):
                downtrack = self._downtracks_by_ssrc.get(packet.media_ssrc)
                if downtrack is not None:
                    downtrack.source.request_keyframe(now)
            elif isinstance(packet, Fir):
                for entry in packet.entries:
                    downtrack = self._downtracks_by_ssrc.get(entry.ssrc)
                    if downtrack is not None:
                        downtrack.source.request_keyframe(now)
            elif isinstance(packet, Nack):
                downtrack = self._downtracks_by_ssrc.get(packet.media_ssrc)
                if downtrack is not None:
                    for seq in packet.lost:
                        downtrack.retransmit(seq)
            elif isinstance(packet, ReceiverReport | SenderReport):
                unix = time.time()
                for block in packet.reports:
                    downtrack = self._downtracks_by_ssrc.get(block.ssrc)
                    if downtrack is not None:
                        downtrack.stats.on_receiver_report(block, now, unix)

    async def _report_loop(self) -> None:
        """A sender report per forwarded stream every second, so the subscriber can
        synchronise audio and video and measure round-trip time (RFC 3550 §6.4.1)."""
        while True:
            await trio.sleep(REPORT_INTERVAL)
            now, unix = trio.current_time(), time.time()
            for downtrack in list(self._downtracks_by_ssrc.values()):
                sr = downtrack.sender_report(now, unix)
                if sr is not None:
                    sdes = Sdes.cname_for(sr.ssrc, downtrack.transceiver.cname)
                    self.pc.send_rtcp(serialize_compound([sr, sdes]))

    def close_downtracks(self) -> None:
        for downtrack in self.downtracks.values():
            downtrack.close()
        self.downtracks.clear()
        self._downtracks_by_ssrc.clear()
