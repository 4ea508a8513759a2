"""What a member sees of its room, and what a room sees of the SFU hosting it (issue 16).

Members (publishers, subscribers, WHEP viewers) are handed a :class:`RoomContext`, rooms a
:class:`Host`. Both are protocols named here, below the classes that implement them
(``room.Room``, ``service.Sfu``), so a member never reaches the SFU through its room and no
module of the SFU imports one that builds on it: the import graph has no cycle
(tests/test_import_graph.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from trio_sfu.sfu.bus import Bus
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.model import PublisherInfo, TrackInfo
from trio_sfu.sfu.remote import Relay
from trio_sfu.sfu.state import StateStore
from trio_sfu.sfu.track import TrackSource


class RoomContext(Protocol):
    """A member's room: its name and limits, where its media comes from and goes, and how
    the member tells the room what it did."""

    @property
    def name(self) -> str: ...

    @property
    def limits(self) -> SfuLimits:
        """What each member may send and have queued (chat rate, send-buffer cap)."""
        ...

    @property
    def node_id(self) -> str:
        """This pod (a publisher's info names it, so other pods know where its media is)."""
        ...

    @property
    def relay(self) -> Relay | None:
        """The cross-pod media relay; None: every track is local."""
        ...

    @property
    def speaker(self) -> str | None:
        """The room's active speaker (a publisher id, maybe on another pod), or None."""
        ...

    def track_source(self, publisher: PublisherInfo, track: TrackInfo) -> TrackSource | None:
        """What a down-track of ``track`` forwards from (local, or relayed from its pod)."""
        ...

    async def publisher_infos(self) -> list[PublisherInfo]:
        """The room's live publishers, on every pod (a subscriber's first offer)."""
        ...

    async def publisher_ready(self, info: PublisherInfo) -> None:
        """A publisher's transport is up: record it and tell the room (PUB_JOIN)."""
        ...

    def tracks_changed(self, info: PublisherInfo) -> None:
        """A live publisher's tracks changed (TrackChange)."""
        ...

    def publisher_left(self, publisher_id: str) -> None:
        """An announced publisher left (PUB_LEFT)."""
        ...

    def subscriber_left(self, subscriber_id: str) -> None:
        """A subscriber or viewer left (SUB_LEFT)."""
        ...

    async def chat(self, from_id: str, text: str) -> None: ...


class Host(Protocol):
    """What a room needs of the SFU hosting it (``service.Sfu``)."""

    node_id: str
    limits: SfuLimits
    state: StateStore
    bus: Bus

    @property
    def relay(self) -> Relay | None: ...

    def reliably(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Apply a state or bus update now, or once its backend is back, in order."""
        ...

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Start a task that lives as long as the SFU."""
        ...

    def track_source(
        self, room: str, publisher: PublisherInfo, track: TrackInfo
    ) -> TrackSource | None: ...
