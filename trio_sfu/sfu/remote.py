"""Tracks whose publisher lives on another pod, received once per pod through the relay.

However many local subscribers watch a remote track, this pod subscribes to its relay subject
once (issue 4) and fans out locally, exactly as for a local track: a :class:`RemoteTrack` is a
:class:`~trio_sfu.sfu.track.TrackSource`. It keeps its own packet cache, so local subscribers'
NACKs are answered here; keyframe requests go to the publisher's pod as a node command,
throttled here first so a room full of subscribers sends one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

import trio

from trio_sfu.cluster.commands import KeyframeRequest, PublisherInfo, TrackInfo
from trio_sfu.cluster.errors import BackendUnavailable
from trio_sfu.sfu.media import KeyframeGate, KeyframeThrottle, PacketCache
from trio_sfu.sfu.track import KEYFRAME_INTERVAL

if TYPE_CHECKING:
    from trio_sfu.sfu.service import Sfu
    from trio_sfu.sfu.track import DownTrack

log = logging.getLogger(__name__)


class TrackSink(Protocol):
    """The relay's per-packet entry for one local track (sync, never blocks)."""

    def __call__(self, packet: bytes) -> None: ...

    def close(self) -> None: ...


class Relay(Protocol):
    """The media relay as the SFU uses it (cluster/relay.py implements it over NATS)."""

    def sender(self, publisher_id: str, track_id: str) -> TrackSink: ...

    def subscribe(
        self,
        node_id: str,
        publisher_id: str,
        track_id: str,
        on_packet: Callable[[bytes, float], None],
    ) -> AbstractAsyncContextManager[None]: ...


class RemoteTrack:
    def __init__(self, sfu: Sfu, room: str, publisher: PublisherInfo, info: TrackInfo) -> None:
        self.sfu = sfu
        self.room = room
        self.node = publisher.node
        self.publisher_id = publisher.publisher_id
        self.track_id = info.track_id
        self.kind = info.kind
        self.info = info
        media = [c for c in info.codecs if c.name.lower() != "rtx"]
        self.clock_rate = media[0].clock_rate if media else 90000
        self.cache = PacketCache() if self.kind == "video" else None
        self.downtracks: list[DownTrack] = []
        self.keyframes = KeyframeThrottle(KEYFRAME_INTERVAL)
        self.gate: KeyframeGate[DownTrack] = KeyframeGate(
            (c.payload_type, c.name) for c in media if self.kind == "video"
        )
        self.packets = 0
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<RemoteTrack {self.publisher_id}/{self.track_id}@{self.node} {self.kind}>"

    @property
    def key(self) -> tuple[str, str]:
        return self.publisher_id, self.track_id

    # -- the hot path (called by the relay's receive pump) ---------------------------------

    def on_packet(self, packet: bytes, now: float) -> None:
        self.packets += 1
        if self.cache is not None:
            self.cache.put(packet)
        if self.gate.waiting or self.keyframes.pending:
            released = self.gate.watch(packet, now, self.keyframes)
            if released:
                self.downtracks = [*self.downtracks, *released]
            elif self.gate.waiting:
                self.request_keyframe(now)  # throttled: keeps asking while someone waits
        for downtrack in self.downtracks:
            downtrack.forward(packet, now)

    # -- TrackSource ----------------------------------------------------------------------

    def attach(self, downtrack: DownTrack) -> None:
        if self.gate.active:
            self.gate.hold(downtrack)  # a new video subscriber starts at a keyframe
        else:
            self.downtracks = [*self.downtracks, downtrack]
        if self._scope is None:
            self._scope = trio.CancelScope()
            self.sfu.spawn(self._receive, self._scope)

    def detach(self, downtrack: DownTrack) -> None:
        self.gate.drop(downtrack)
        self.downtracks = [d for d in self.downtracks if d is not downtrack]
        if not self.downtracks and not self.gate.waiting:
            self.stop()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.sfu.forget_remote(self)

    def request_keyframe(self, now: float) -> bool:
        if self.kind != "video" or not self.keyframes.allow(now):
            return False
        self.sfu.spawn(self._send_keyframe_request)
        return True

    # -- tasks ----------------------------------------------------------------------------

    async def _receive(self, scope: trio.CancelScope) -> None:
        """Hold the relay subscription while local subscribers need it; retry while NATS is
        away (the relay resumes by itself once connected; a subscribe can fail before)."""
        relay = self.sfu.relay
        assert relay is not None
        with scope:
            while True:
                try:
                    async with relay.subscribe(
                        self.node, self.publisher_id, self.track_id, self.on_packet
                    ):
                        await trio.sleep_forever()
                except BackendUnavailable:
                    await trio.sleep(0.5)

    async def _send_keyframe_request(self) -> None:
        try:
            await self.sfu.bus.send_to_node(
                self.node, KeyframeRequest(self.room, self.publisher_id, self.track_id)
            )
        except BackendUnavailable:
            pass  # the subscriber's decoder asks again
