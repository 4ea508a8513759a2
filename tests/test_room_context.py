"""Issue 16: a room runs on what its SFU hands it (``context.Host``), not on the SFU.

A :class:`Room` is built here on a small host that is no ``Sfu``: what its members ask of it
(the :class:`~trio_sfu.sfu.context.RoomContext` calls) reaches that host as the state and bus
updates a real SFU applies, in order, and its track lookups carry the room's name. The whole
path with a real SFU is in tests/test_sfu.py and tests/test_cluster_tracks.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trio_sfu.sfu.bus import LocalBus
from trio_sfu.sfu.context import RoomContext
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.model import (
    Chat,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SubLeft,
    TrackChange,
    TrackInfo,
)
from trio_sfu.sfu.room import Room
from trio_sfu.sfu.state import MemoryStateStore

ALICE = PublisherInfo("alice-1", "alice", "pod-a", (TrackInfo("v0", "video", ()),))


class Host:
    """A host that records the updates it is asked to apply reliably, and the lookups."""

    def __init__(self) -> None:
        self.node_id = "pod-a"
        self.limits = SfuLimits()
        self.state = MemoryStateStore()
        self.bus = LocalBus()
        self.relay = None
        self.updates: list[tuple[str, tuple[object, ...]]] = []
        self.lookups: list[tuple[str, str, str]] = []

    def reliably(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self.updates.append((fn.__name__, args))

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        raise AssertionError("nothing to spawn here")

    def track_source(self, room: str, publisher: PublisherInfo, track: TrackInfo) -> Any:
        self.lookups.append((room, publisher.publisher_id, track.track_id))
        return None


async def test_a_room_speaks_for_its_members_through_its_host() -> None:
    host = Host()
    room: RoomContext = Room(host, "r")
    assert (room.name, room.node_id, room.relay, room.speaker) == ("r", "pod-a", None, None)
    assert room.limits is host.limits
    assert room.track_source(ALICE, ALICE.tracks[0]) is None
    assert host.lookups == [("r", "alice-1", "v0")]

    await room.publisher_ready(ALICE)
    room.tracks_changed(ALICE)
    await room.chat("bob-1", "hi")
    room.publisher_left("alice-1")
    room.subscriber_left("bob-1")
    assert host.updates == [
        ("_record_then_announce", (ALICE,)),
        ("add_publisher", ("r", ALICE)),
        ("publish", ("r", TrackChange("r", ALICE))),
        ("publish", ("r", Chat("r", "bob-1", "hi"))),
        ("remove_publisher", ("r", "alice-1")),
        ("publish", ("r", PubLeft("r", "alice-1"))),
        ("remove_subscriber", ("r", "bob-1")),
        ("publish", ("r", SubLeft("r", "bob-1"))),
    ]


async def test_a_publisher_is_announced_only_once_the_state_store_holds_it() -> None:
    """PUB_JOIN goes on the bus only after the state store recorded the publisher (so the
    sweep of a pod killed right after announcing finds it), with its tracks as they are by
    then; one that left meanwhile is recorded (its removal follows) but not announced."""
    host = Host()
    room = Room(host, "r")

    class Publisher:
        info = PublisherInfo("alice-1", "alice", "pod-a", (TrackInfo("v1", "video", ()),))

    room.publishers["alice-1"] = Publisher()  # type: ignore[assignment]
    await room._record_then_announce(ALICE)
    state = await host.state.room("r")
    assert state is not None and "alice-1" in state.publishers
    assert host.updates == [("publish", ("r", PubJoin("r", Publisher.info)))]
    del room.publishers["alice-1"]
    host.updates.clear()
    await room._record_then_announce(ALICE)
    assert host.updates == []
