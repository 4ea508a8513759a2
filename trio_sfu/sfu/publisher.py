"""A publisher: one browser (or bot) connection sending audio and/or video into a room."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_sfu.cluster.commands import PublisherInfo
from trio_sfu.proto.rtcp import RtcpPacket
from trio_sfu.rtc.events import IncomingStream
from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.track import PublishedTrack

if TYPE_CHECKING:
    from trio_sfu.sfu.room import Room

log = logging.getLogger(__name__)


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
        pc.on_rtp = self._on_rtp
        pc.on_rtcp = self._on_rtcp

    @property
    def info(self) -> PublisherInfo:
        return PublisherInfo(
            self.id, self.user, self.room.sfu.node_id, tuple(t.info for t in self.tracks)
        )

    def track(self, track_id: str) -> PublishedTrack | None:
        return next((t for t in self.tracks if t.track_id == track_id), None)

    # -- media ----------------------------------------------------------------------------

    def _on_rtp(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        track = stream.sink
        if track is None:
            track = self._by_transceiver.get(id(stream.transceiver))
            if track is None:
                return
            stream.sink = track
        track.on_rtp(stream, packet, now)

    def _on_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        # Sender reports and receiver feedback from publishers are terminated here; the SFU
        # keeps its own RTCP per leg (issue 3: "RTCP is terminated per leg").
        return

    # -- lifecycle ------------------------------------------------------------------------

    async def on_connected(self) -> None:
        await super().on_connected()
        if not self.announced:
            self.announced = True
            await self.room.publisher_ready(self)
