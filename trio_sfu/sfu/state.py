"""Room state: who publishes and subscribes where. In memory here; Redis in cluster mode.

The interface is Trio-native and small on purpose: the SFU never sees Redis types, and the
embedded default is the same contract with a dict behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from trio_sfu.sfu.model import PublisherInfo, SubscriberInfo


@dataclass(slots=True)
class RoomState:
    room: str
    publishers: dict[str, PublisherInfo] = field(default_factory=dict)
    subscribers: dict[str, SubscriberInfo] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.publishers and not self.subscribers

    def as_json(self) -> dict[str, object]:
        """The seed's in-cluster lists, as served by ``GET /rooms/{room}``."""
        return {
            "room": self.room,
            "publishers": [
                {"id": p.publisher_id, "user": p.user, "audio": p.audio, "video": p.video}
                for p in sorted(self.publishers.values(), key=lambda p: p.publisher_id)
            ],
            "subscribers": [
                {"id": s.subscriber_id, "user": s.user}
                for s in sorted(self.subscribers.values(), key=lambda s: s.subscriber_id)
            ],
        }


class StateStore(Protocol):
    async def claim_id(self, connection_id: str, node: str) -> bool:
        """Reserve a connection id; False if a live connection already has it (409)."""
        ...

    async def release_id(self, connection_id: str) -> None: ...

    async def add_publisher(self, room: str, info: PublisherInfo) -> None: ...

    async def remove_publisher(self, room: str, publisher_id: str) -> None: ...

    async def add_subscriber(self, room: str, info: SubscriberInfo) -> None: ...

    async def remove_subscriber(self, room: str, subscriber_id: str) -> None: ...

    async def room(self, room: str) -> RoomState | None: ...

    async def rooms(self) -> list[RoomState]: ...


class MemoryStateStore:
    """The embedded default: one process, one dict, nothing to expire."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._rooms: dict[str, RoomState] = {}

    async def claim_id(self, connection_id: str, node: str) -> bool:
        if connection_id in self._ids:
            return False
        self._ids[connection_id] = node
        return True

    async def release_id(self, connection_id: str) -> None:
        self._ids.pop(connection_id, None)

    def _room(self, room: str) -> RoomState:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = RoomState(room)
        return state

    def _prune(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is not None and state.empty:
            del self._rooms[room]

    async def add_publisher(self, room: str, info: PublisherInfo) -> None:
        self._room(room).publishers[info.publisher_id] = info

    async def remove_publisher(self, room: str, publisher_id: str) -> None:
        state = self._rooms.get(room)
        if state is not None:
            state.publishers.pop(publisher_id, None)
            self._prune(room)

    async def add_subscriber(self, room: str, info: SubscriberInfo) -> None:
        self._room(room).subscribers[info.subscriber_id] = info

    async def remove_subscriber(self, room: str, subscriber_id: str) -> None:
        state = self._rooms.get(room)
        if state is not None:
            state.subscribers.pop(subscriber_id, None)
            self._prune(room)

    async def room(self, room: str) -> RoomState | None:
        state = self._rooms.get(room)
        if state is None:
            return None
        return RoomState(room, dict(state.publishers), dict(state.subscribers))

    async def rooms(self) -> list[RoomState]:
        return [
            RoomState(s.room, dict(s.publishers), dict(s.subscribers))
            for _, s in sorted(self._rooms.items())
        ]
