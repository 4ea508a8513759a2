"""A WHEP viewer: one audio and one video track, fed by a publisher of the room.

Unlike a seed-API subscriber, a viewer never renegotiates: its offer fixed one sendonly audio
and one sendonly video section, and that is what it keeps. Following the room's live publisher
(`POST /whep/{room}`), it moves its down-tracks to a new publisher when the followed one leaves
or is replaced — same SSRCs, sequence numbers and timestamps continuing (RtpRewriter.remap +
switch_source) — so the player decodes on with no new POST. A viewer of a named publisher
(`POST /whep/{room}/{publisher}`) ends when that publisher leaves.
"""

from __future__ import annotations

import logging

import trio

from trio_sfu.rtc.server import ServerPeerConnection
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.model import PublisherInfo, TrackInfo
from trio_sfu.sfu.ticks import Ticker
from trio_sfu.sfu.track import DownTrack

log = logging.getLogger(__name__)


class WhepViewer(Downstream):
    role = "whep"

    def __init__(
        self,
        room: RoomContext,
        connection_id: str,
        pc: ServerPeerConnection,
        *,
        publisher_id: str | None,
        ticker: Ticker,
    ) -> None:
        super().__init__(room, connection_id, pc, ticker=ticker)
        #: None: follow the room's live publisher; else only this one
        self.pinned = publisher_id
        self.following: str | None = None
        #: the first sendonly audio and video transceivers, and what they forward
        self.downtracks: dict[str, DownTrack] = {}  # by kind
        self._candidates: list[PublisherInfo] = []  # joined publishers, newest last

    # -- choosing and following a publisher -------------------------------------------------

    def start(self, publishers: list[PublisherInfo]) -> None:
        """Attach to the pinned publisher or the newest live one (called once, after the
        answer, so the transceivers are negotiated)."""
        self._candidates = [p for p in publishers if p.tracks]
        target = self._choose()
        if target is not None:
            self._follow(target, trio.current_time())

    def _choose(self) -> PublisherInfo | None:
        if self.pinned is not None:
            return next((p for p in self._candidates if p.publisher_id == self.pinned), None)
        return self._candidates[-1] if self._candidates else None

    def _follow(self, info: PublisherInfo, now: float) -> bool:
        switched = False
        used: set[str] = set()
        for t in self.pc.transceivers:
            if t.stopped or not t.sending or t.kind in used:
                continue
            used.add(t.kind)  # WHEP: one audio and one video track
            track = _first(info.tracks, t.kind)
            source = self.room.track_source(info, track) if track else None
            if source is None:
                continue
            current = self.downtracks.get(t.kind)
            if current is None:
                downtrack = self.new_downtrack(t, source)
                if self.start_forwarding(downtrack, now):
                    self.downtracks[t.kind] = downtrack
                    switched = True
            elif current.switch(source, now):
                switched = True
        if switched:
            log.info(
                "viewer follows",
                extra={**self.log_extra, "publisher": info.publisher_id, "was": self.following},
            )
            self.following = info.publisher_id
        return switched

    def publisher_joined(self, info: PublisherInfo) -> None:
        if not info.tracks or any(p.publisher_id == info.publisher_id for p in self._candidates):
            return
        self._candidates.append(info)
        if self.pinned is None or self.pinned == info.publisher_id:
            # Follow mode: the newest publisher is the live one (a reconnecting publisher is a
            # new connection id, so this is also how a rejoin is followed).
            self._follow(info, trio.current_time())

    def publisher_left(self, publisher_id: str) -> None:
        self._candidates = [p for p in self._candidates if p.publisher_id != publisher_id]
        if publisher_id != self.following:
            return
        self.following = None
        if self.pinned is not None:
            self.pc.close("the publisher left")
            return
        replacement = self._choose()
        if replacement is not None:
            self._follow(replacement, trio.current_time())
        # else: keep the transceivers; the next publisher to join is followed.

    def publisher_changed(self, info: PublisherInfo) -> None:
        """The followed publisher's tracks changed: keep forwarding its first audio and first
        video track (a viewer never renegotiates; a kind it no longer sends just pauses)."""
        known = [p for p in self._candidates if p.publisher_id == info.publisher_id]
        if not known:
            self.publisher_joined(info)
            return
        self._candidates = [info if p is known[0] else p for p in self._candidates]
        if info.publisher_id != self.following:
            return
        now = trio.current_time()
        for kind, downtrack in self.downtracks.items():
            track = _first(info.tracks, kind)
            if track is None or track.track_id == downtrack.source.track_id:
                continue
            source = self.room.track_source(info, track)
            if source is not None:
                downtrack.switch(source, now)
        if len(self.downtracks) < 2:
            self._follow(info, now)  # a kind it had not sent before

    def send(self, text: str) -> bool:
        return False  # a viewer has no command channel

    async def on_connected(self) -> None:
        await super().on_connected()
        self.pc.start_soon(self.report_loop)

    def close_downtracks(self) -> None:
        super().close_downtracks()
        self.downtracks.clear()


def _first(tracks: tuple[TrackInfo, ...], kind: str) -> TrackInfo | None:
    return next((t for t in tracks if t.kind == kind), None)
