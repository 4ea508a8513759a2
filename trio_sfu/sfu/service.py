"""The SFU's face towards HTTP: join as publisher or subscriber, leave, list rooms.

Every connection gets its own task under :meth:`Sfu.run`'s nursery, which holds the peer's own
nursery; when the peer ends for any reason (STOP, DELETE, consent timeout, DTLS alert, server
shutdown) that task removes the member from the room, the state store and the bus — cleanup
has exactly one place to happen.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import trio

from trio_sfu.rtc.server import RtcServer, ServerPeerConnection
from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.bus import Bus, LocalBus
from trio_sfu.sfu.downstream import REPORT_INTERVAL
from trio_sfu.sfu.errors import (
    BackendUnavailable,
    BadRequest,
    Conflict,
    NotFound,
    SfuError,
    TooMany,
    Unavailable,
)
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.model import (
    ROLE_NAMES,
    KeyframeRequest,
    Nack,
    PubJoin,
    PubLeft,
    PublisherInfo,
    Role,
    SubJoin,
    SubLeft,
    SubscriberInfo,
    TrackInfo,
    parse_relay_stream,
)
from trio_sfu.sfu.node_stats import NodeStats
from trio_sfu.sfu.publisher import Publisher
from trio_sfu.sfu.remote import Relay, RemoteTrack
from trio_sfu.sfu.room import Room
from trio_sfu.sfu.state import MemoryStateStore, StateStore
from trio_sfu.sfu.subscriber import Subscriber
from trio_sfu.sfu.ticks import Ticker
from trio_sfu.sfu.track import PublishedTrack, TrackSource
from trio_sfu.sfu.viewer import WhepViewer

log = logging.getLogger(__name__)

#: How long DELETE waits for a connection's cleanup before answering anyway.
STOP_TIMEOUT = 5.0
#: Retry period of state/bus updates that failed because Redis or NATS was unreachable.
OUTBOX_RETRY = 1.0
#: Retry-After for new sessions refused while draining or while a backend is down.
DRAIN_RETRY_AFTER = 2
#: labels a publisher's POST may give its first offer's sections (``?app_ids=``)
MAX_INITIAL_APP_IDS = 64
BACKEND_RETRY_AFTER = 2
#: Back-off (seconds) of the node-command subscription while the bus is unreachable.
BACKEND_RETRY_MIN = 0.25
BACKEND_RETRY_MAX = 5.0
#: Retry-After for a join refused because its room or this node is full.
ROOM_FULL_RETRY_AFTER = 5
ROOMS_FULL_RETRY_AFTER = 5
#: Retry-After for a join refused because too many sessions are still connecting.
HALF_OPEN_RETRY_AFTER = 2


def _snake(name: str) -> str:
    """``BadRequest`` → ``bad_request`` (a refusal's kind as a metrics label)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@contextmanager
def backend_errors() -> Iterator[None]:
    """A request that needs Redis/NATS while they are down: 503 with Retry-After (issue 4),
    raised within the backends' 2 s deadline, never a hang and never a 500."""
    try:
        yield
    except BackendUnavailable as exc:
        raise Unavailable(
            f"cluster backend unavailable: {exc}", retry_after=BACKEND_RETRY_AFTER
        ) from exc


#: A WHEP viewer of a room without a publisher is told to come back after this many seconds.
WHEP_RETRY_AFTER = 2
#: Direction of our transceivers for the m-sections of a joining peer's offer.
_DIRECTION_FOR_NEW_SECTIONS: dict[str, str] = {
    "pub": "recvonly",
    "sub": "inactive",
    "whep": "sendonly",
}
_ROLE_NAMES = {"pub": "publisher", "sub": "subscriber", "whep": "WHEP viewer"}
_ROLE_TYPES: dict[Role, type[Member]] = {"pub": Publisher, "sub": Subscriber, "whep": WhepViewer}


class Outbox:
    """Updates of one backend, applied in order, each retried until the backend answers."""

    def __init__(self) -> None:
        self._items: deque[tuple[Callable[..., Awaitable[object]], tuple[object, ...]]] = deque()
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        self._items.append((fn, args))
        self._wakeup.set()

    async def flush(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._items:
                fn, args = self._items[0]
                try:
                    await fn(*args)
                except BackendUnavailable:
                    await trio.sleep(OUTBOX_RETRY)
                    continue
                self._items.popleft()


class Sfu:
    def __init__(
        self,
        rtc: RtcServer,
        *,
        state: StateStore | None = None,
        bus: Bus | None = None,
        relay: Relay | None = None,
        node_id: str = "local",
        limits: SfuLimits | None = None,
    ) -> None:
        self.rtc = rtc
        self.limits = limits if limits is not None else SfuLimits()
        self.state: StateStore = state if state is not None else MemoryStateStore()
        self.bus: Bus = bus if bus is not None else LocalBus()
        #: the cross-pod media relay (cluster mode); None: every track is local
        self.relay = relay
        self.node_id = node_id
        self.rooms: dict[str, Room] = {}
        #: rooms whose listener is starting: registered in ``rooms`` once it runs
        self._opening: dict[str, trio.Event] = {}
        #: sessions still connecting, by client address (admission control, issue 14 item 4)
        self._half_open: dict[str, int] = {}
        self._half_open_total = 0
        self._remote: dict[tuple[str, str], RemoteTrack] = {}
        #: state and bus updates that must not be lost to an outage, retried in order; one
        #: outbox per backend, so a Redis outage never holds back a PUB_LEFT on NATS (issue 9)
        self._outboxes = {"state": Outbox(), "bus": Outbox()}
        #: SIGTERM: no new sessions, connected clients told to RECONNECT (issue 4)
        self.draining = False
        #: set once draining begins (room-event streams tell their watchers, then close)
        self.drained = trio.Event()
        self._gone: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        #: join outcomes, timings and the totals of members that left (read by /metrics)
        self.stats = NodeStats()
        #: every subscriber leg's once-a-second reports, from one task (sfu/ticks.py)
        self.ticker = Ticker(REPORT_INTERVAL)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host every connection; cancelling this closes them all (server shutdown)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._node_commands)
            nursery.start_soon(self.ticker.run)
            for outbox in self._outboxes.values():
                nursery.start_soon(outbox.flush)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def reliably(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Apply a state or bus update now if possible, else as soon as the backend is back,
        in order (a departure must not be lost to an outage: the room would keep a ghost)."""
        backend = "bus" if getattr(fn, "__self__", None) is self.bus else "state"
        self._outboxes[backend].put(fn, args)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Start a background task that lives as long as the SFU (remote tracks, requests)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _node_commands(self) -> None:
        """Commands other pods address to this one: keyframe requests for our publishers'
        tracks from pods whose subscribers lost a picture (throttled at the track), and NACKs
        for relayed packets those pods could not answer (issue 9). While the bus is down (at
        start-up, or lost) /readyz says 503; the subscription is retried with back-off rather
        than taking the process down."""
        delay = BACKEND_RETRY_MIN
        while True:
            try:
                async with self.bus.listen_node() as inbox:
                    delay = BACKEND_RETRY_MIN
                    async for command in inbox:
                        if isinstance(command, KeyframeRequest | Nack):
                            # the relayed stream: a track, or one of its simulcast streams
                            track_id, rid = parse_relay_stream(command.track_id)
                            track = self.local_track(command.publisher_id, track_id)
                            if track is None:
                                continue
                            layer = track.layer_of(rid)
                            if isinstance(command, Nack):
                                track.resend_to_relay(
                                    command.sequence_numbers, trio.current_time(), layer
                                )
                            else:
                                track.request_keyframe(trio.current_time(), layer)
                return
            except BackendUnavailable as exc:
                log.warning(
                    "node commands unavailable, retrying",
                    extra={"node": self.node_id, "error": str(exc), "retry_in": delay},
                )
                await trio.sleep(delay)
                delay = min(delay * 2, BACKEND_RETRY_MAX)

    # -- joining --------------------------------------------------------------------------

    async def publish(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        source: str | None = None,
        app_ids: Sequence[str] = (),
    ) -> str:
        """Join as a publisher; ``source`` is the client's address (admission limits),
        ``app_ids`` the labels of the offer's media sections in order (issue 15)."""
        if len(app_ids) > MAX_INITIAL_APP_IDS:
            raise BadRequest(f"at most {MAX_INITIAL_APP_IDS} app_ids")
        for app_id in app_ids:
            if not dc_protocol.valid_id(app_id):
                raise BadRequest("each of app_ids must match [A-Za-z0-9_.-]{1,64}")
        return await self._counted(
            "pub", self._join("pub", room, peer_id, offer_sdp, source=source, app_ids=app_ids)
        )

    async def subscribe(
        self, room: str, peer_id: str, offer_sdp: str, *, source: str | None = None
    ) -> str:
        return await self._counted(
            "sub", self._join("sub", room, peer_id, offer_sdp, source=source)
        )

    async def whep(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        publisher_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """A WHEP viewer: sendonly audio + video following the room's live publisher (or the
        named one). No live publisher → 409 with Retry-After (draft-ietf-wish-whep)."""
        return await self._counted(
            "whep",
            self._join("whep", room, peer_id, offer_sdp, publisher_id=publisher_id, source=source),
        )

    async def _counted(self, role: Role, join: Awaitable[str]) -> str:
        """A join, timed from the request to the answer, and its outcome counted (/metrics:
        ``ok`` or the refusal's kind, e.g. ``conflict``, ``unavailable``, ``cancelled``)."""
        began = trio.current_time()
        name = ROLE_NAMES[role]  # the logs' and metrics' vocabulary
        try:
            answer = await join
        except SfuError as error:
            self.stats.refused(name, _snake(type(error).__name__))
            raise
        except trio.Cancelled:
            self.stats.refused(name, "cancelled")
            raise
        except BaseException:
            self.stats.refused(name, "error")
            raise
        self.stats.joined(name, trio.current_time() - began)
        return answer

    async def _join(
        self,
        role: Role,
        room_name: str,
        peer_id: str,
        offer_sdp: str,
        *,
        publisher_id: str | None = None,
        source: str | None = None,
        app_ids: Sequence[str] = (),
    ) -> str:
        if not dc_protocol.valid_id(room_name):
            raise BadRequest("room must match [A-Za-z0-9_.-]{1,64}")
        if not dc_protocol.valid_id(peer_id):
            raise BadRequest("id must match [A-Za-z0-9_.-]{1,64}")
        nursery = self._nursery
        if nursery is None:
            raise Unavailable("the SFU is not running", retry_after=1)
        if self.draining:
            raise Unavailable("this node is draining; try again", retry_after=DRAIN_RETRY_AFTER)
        if not self.bus.connected:
            # A member that joined now would not hear its room until NATS is back (issue 9).
            raise Unavailable(
                "cluster backend unavailable: NATS is not connected",
                retry_after=BACKEND_RETRY_AFTER,
            )
        self._admit(source)
        try:
            with backend_errors():
                publishers: list[PublisherInfo] = []
                if role == "whep":
                    publishers = await self._live_publishers(room_name, publisher_id)
                if not await self.state.claim_id(peer_id, self.node_id):
                    raise Conflict(f"a connection with id {peer_id} is already live")
        except BaseException:
            self._settle(source)
            raise
        # Everything below is undone if the join does not complete, whatever stops it (a
        # client reset cancels the request, a backend fails, a refusal): the peer and its
        # routes, the member and its store entry, a room it alone opened (issue 14 item 1).
        pc: ServerPeerConnection | None = None
        member: Member | None = None
        try:
            pc = self.rtc.create_peer(
                f"{role}:{room_name}/{peer_id}",
                new_transceiver_direction=_DIRECTION_FOR_NEW_SECTIONS[role],
            )
            answer = pc.handle_offer(offer_sdp)
            self._check_offer(role, pc)
            with backend_errors():  # a room's first member subscribes to its bus subject
                room = await self._room(room_name)
            if len(room.publishers) + len(room.subscribers) >= self.limits.max_members_per_room:
                raise TooMany(
                    f"room {room_name} is full ({self.limits.max_members_per_room} members "
                    "on this node)",
                    retry_after=ROOM_FULL_RETRY_AFTER,
                )
            # No checkpoint between getting the room and joining it: a room is never seen
            # empty (and dropped) by another join's cleanup while we are on our way in.
            if role == "pub":
                member = Publisher(room, peer_id, pc, app_ids)
                room.publishers[peer_id] = member
            else:
                if role == "sub":
                    member = Subscriber(room, peer_id, pc, ticker=self.ticker)
                else:
                    member = viewer = WhepViewer(
                        room, peer_id, pc, publisher_id=publisher_id, ticker=self.ticker
                    )
                    viewer.start(publishers)
                room.subscribers[peer_id] = member
            member.connecting_from = source  # half-open until DTLS is up (or it leaves)
            source = None
            if role != "pub":
                info = SubscriberInfo(peer_id, member.user, self.node_id)
                with backend_errors():
                    await self.state.add_subscriber(room_name, info)
                self.reliably(self.bus.publish, room_name, SubJoin(room_name, info))
            await nursery.start(self._lifetime, member)
        except BaseException:
            self._settle(source)
            with trio.CancelScope(shield=True):
                await self._abort_join(room_name, peer_id, pc, member)
            raise
        log.info("joined", extra=member.log_extra)
        return answer

    @staticmethod
    def _check_offer(role: Role, pc: ServerPeerConnection) -> None:
        if role == "sub" and pc.jsep.data_mid is None:
            raise BadRequest("a subscriber offer needs a data channel (m=application)")
        if role == "pub" and not any(t.receiving and t.media_codecs for t in pc.transceivers):
            raise BadRequest("a publisher offer needs audio or video we can receive")
        if role == "whep" and not any(t.sending and t.media_codecs for t in pc.transceivers):
            raise BadRequest("a WHEP offer needs recvonly (or sendrecv) audio or video")

    async def _live_publishers(self, room: str, publisher_id: str | None) -> list[PublisherInfo]:
        """The room's publishers a viewer could watch, oldest first; 409/404 if none fits.

        A publisher of this pod that is still connecting (its offer told us its tracks, its
        ICE/DTLS is not up yet) counts as coming: the viewer gets its 201 now and is attached
        when the publisher is announced (issue 8) — WHIP and WHEP clients are often started
        together.
        """
        state = await self.state.room(room)
        publishers = [p for p in (state.publishers.values() if state else ()) if p.tracks]
        local = self.rooms.get(room)
        coming = {
            p.id
            for p in (local.publishers.values() if local else ())
            if not p.announced and p.tracks and p.pc.close_reason is None
        }
        if publisher_id is not None:
            if publisher_id not in coming and not any(
                p.publisher_id == publisher_id for p in publishers
            ):
                raise NotFound(f"no live publisher {publisher_id} in room {room}")
        elif not publishers and not coming:
            raise Conflict(f"room {room} has no live publisher yet", retry_after=WHEP_RETRY_AFTER)
        return publishers

    async def _room(self, name: str) -> Room:
        """The room, registered only once its listener runs (a join that waits for another
        join to open the same room shares it; a failed opening registers nothing)."""
        while True:
            room = self.rooms.get(name)
            if room is not None:
                return room
            opening = self._opening.get(name)
            if opening is None:
                break
            await opening.wait()  # then look again: that opening may have failed
        if len(self.rooms) + len(self._opening) >= self.limits.max_rooms:
            raise Unavailable(
                f"this node hosts its maximum of {self.limits.max_rooms} rooms",
                retry_after=ROOMS_FULL_RETRY_AFTER,
            )
        opened = self._opening[name] = trio.Event()
        try:
            room = Room(self, name)
            assert self._nursery is not None
            await self._nursery.start(room.listen)
            self.rooms[name] = room
            return room
        finally:
            del self._opening[name]
            opened.set()

    def _admit(self, source: str | None) -> None:
        """Count a join from ``source`` as half-open, or refuse it: one address may not hold
        more than its share of connecting sessions, nor everyone together more than the
        node's (each costs ~100 KiB until DTLS is up or ``--connect-timeout`` ends it)."""
        if source is None:
            return  # in-process callers (tests, the client library) are not admitted
        limits = self.limits
        if self._half_open.get(source, 0) >= limits.max_half_open_per_source:
            raise TooMany(
                f"too many sessions from {source} still connecting "
                f"(at most {limits.max_half_open_per_source})",
                retry_after=HALF_OPEN_RETRY_AFTER,
            )
        if self._half_open_total >= limits.max_half_open:
            raise Unavailable(
                f"too many sessions still connecting on this node (at most {limits.max_half_open})",
                retry_after=HALF_OPEN_RETRY_AFTER,
            )
        self._half_open[source] = self._half_open.get(source, 0) + 1
        self._half_open_total += 1

    def _settle(self, source: str | None) -> None:
        """A session admitted from ``source`` stopped being half-open (connected or gone)."""
        if source is None:
            return
        left = self._half_open[source] - 1
        if left:
            self._half_open[source] = left
        else:
            del self._half_open[source]
        self._half_open_total -= 1

    def _connected(self, member: Member) -> None:
        source, member.connecting_from = member.connecting_from, None
        self._settle(source)

    async def _when_connected(self, member: Member) -> None:
        connected = False
        try:
            await member.pc.wait_connected()
            connected = True
        except* ConnectionError:
            pass  # closed before connecting: _remove settles it
        if connected:
            self._connected(member)

    async def _abort_join(
        self,
        room_name: str,
        peer_id: str,
        pc: ServerPeerConnection | None,
        member: Member | None,
    ) -> None:
        """Undo a join that did not complete (called shielded)."""
        if member is not None:
            await self._remove(member)  # no-op if its lifetime already did it
        if pc is not None:
            pc.abandon()  # its routes, if it never ran (run's teardown did it otherwise)
        if member is None:
            # The member's removal released the id; without one, release it here, at once,
            # so the client may retry with this id right away.
            try:
                await self.state.release_id(peer_id)
            except BackendUnavailable:
                self.reliably(self.state.release_id, peer_id)
        room = self.rooms.get(room_name)
        if room is not None and room.empty:
            self._drop_room(room)

    def _drop_room(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        room.stop()

    async def _lifetime(
        self, member: Member, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        gone = self._gone[id(member)] = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(member.pc.run)
                member.pc.start_soon(member.serve)
                member.pc.start_soon(self._time_connect, member)
                if member.connecting_from is not None:
                    member.pc.start_soon(self._when_connected, member)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._remove(member)
                self._gone.pop(id(member), None)
                gone.set()

    async def _time_connect(self, member: Member) -> None:
        """ICE + DTLS set-up time, from the accepted join to DTLS up (/metrics)."""
        failed = False
        try:
            await member.pc.wait_connected()
        except* ConnectionError:
            failed = True  # closed before connecting: its session time says so
        if not failed:
            self.stats.connected(member.role_name, trio.current_time() - member.started)

    async def _remove(self, member: Member) -> None:
        """Take a member out of its room, the state store and the bus; once only."""
        if member.removed:
            await trio.lowlevel.checkpoint()
            return
        member.removed = True
        self._connected(member)
        room = self.rooms.get(member.room.name)
        if room is not member.room:
            room = None  # cannot happen: a room stays registered while it has members
        if room is not None:
            room.remove(member)
        member.leave()
        self.reliably(self.state.release_id, member.id)
        if room is not None and room.empty:
            self._drop_room(room)
        counters = member.counters()
        seconds = trio.current_time() - member.started
        reports = member.reports()
        self.stats.left(member.role_name, seconds, counters, reports)
        log.info(
            "left",
            extra={
                **member.log_extra,
                "reason": member.pc.close_reason,
                "duration": round(seconds, 3),
                "bytes_in": counters.get("bytes_in", 0),
                "bytes_out": counters.get("bytes_out", 0),
            },
        )
        await trio.lowlevel.checkpoint()

    # -- leaving and listing --------------------------------------------------------------

    def member(self, role: Role, room_name: str, peer_id: str) -> Member:
        room = self.rooms.get(room_name)
        member: Member | None = None
        if room is not None:
            found = (room.publishers if role == "pub" else room.subscribers).get(peer_id)
            if isinstance(found, _ROLE_TYPES[role]):
                member = found
        if member is None:
            raise NotFound(f"no {_ROLE_NAMES[role]} {peer_id} in room {room_name}")
        return member

    def ice_credentials(self, role: Role, room_name: str, peer_id: str) -> tuple[str, str]:
        """The connection's current local ICE ufrag/pwd (WHIP/WHEP derive their ETag from it)."""
        agent = self.member(role, room_name, peer_id).pc.ice_agent
        return agent.local_ufrag, agent.local_pwd

    def restart_ice(
        self, role: Role, room_name: str, peer_id: str, remote_ufrag: str, remote_pwd: str
    ) -> tuple[str, str]:
        """ICE restart (RFC 8445 §9) from a WHIP/WHEP PATCH: new local credentials."""
        member = self.member(role, room_name, peer_id)
        return member.pc.restart_ice(remote_ufrag, remote_pwd)

    def gone(self, member: Member) -> trio.Event | None:
        """Set once ``member``'s lifetime has ended — its tasks done, its removal finished and
        nothing of the pod's left referring to it (None if it already has)."""
        return self._gone.get(id(member))

    async def stop(self, role: Role, room_name: str, peer_id: str) -> None:
        member = self.member(role, room_name, peer_id)
        gone = self.gone(member)
        member.pc.close("delete")
        if gone is not None:
            with trio.move_on_after(STOP_TIMEOUT):
                await gone.wait()

    async def list_rooms(self) -> list[dict[str, object]]:
        with backend_errors():
            return [state.as_json() for state in await self.state.rooms()]

    async def room_info(self, room: str) -> dict[str, object]:
        with backend_errors():
            state = await self.state.room(room)
        if state is None or state.empty:
            raise NotFound(f"no room {room}")
        return state.as_json()

    # -- media routing ----------------------------------------------------------------------

    # -- cluster ----------------------------------------------------------------------------

    def local_truth(
        self,
    ) -> tuple[list[tuple[str, PublisherInfo]], list[tuple[str, SubscriberInfo]]]:
        """What this node hosts, for the state store to re-assert after Redis lost it."""
        publishers = [
            (room.name, p.info)
            for room in self.rooms.values()
            for p in room.publishers.values()
            if p.announced
        ]
        subscribers = [
            (room.name, SubscriberInfo(s.id, s.user, self.node_id))
            for room in self.rooms.values()
            for s in room.subscribers.values()
        ]
        return publishers, subscribers

    async def on_dead_node(self, node_id: str, removed: list[tuple[str, str, str]]) -> None:
        """Another pod died (its heartbeat expired): the state store removed its members; tell
        every room so subscribers get PUB_LEFT (issue 4: within 15 s)."""
        log.warning("node gone", extra={"node": node_id, "members": len(removed)})
        for room, kind, connection_id in removed:
            command = (
                PubLeft(room, connection_id) if kind == "pub" else SubLeft(room, connection_id)
            )
            self.reliably(self.bus.publish, room, command)

    async def on_revived(self) -> None:
        """Redis lost sight of this pod long enough for others to sweep it (they announced our
        publishers as gone); the store has re-asserted our state, so announce them again."""
        for room_name, info in self.local_truth()[0]:
            self.reliably(self.bus.publish, room_name, PubJoin(room_name, info))
        await trio.lowlevel.checkpoint()

    async def ready(self) -> bool:
        """Readiness for Kubernetes: running, not draining, backends reachable."""
        if self._nursery is None or self.draining:
            return False
        for backend in (self.state, self.bus):
            check = getattr(backend, "ready", None)
            if check is not None and not await check():
                return False
        return True

    def drain(self, *, reconnect: bool = True) -> None:
        """SIGTERM: refuse new sessions (``/readyz`` turns 503) and, with ``reconnect``, ask
        every connected client to reconnect (through the load balancer, to a live pod); the
        app sends the RECONNECTs only after ``--drain-notice`` (issue 9), once balancers had
        time to stop sending new clients here. It exits once empty or after its timeout."""
        if not self.draining:
            self.draining = True
            self.drained.set()
            log.info("draining", extra={"node": self.node_id, "members": self.members})
        if reconnect:
            self.send_reconnect()

    def send_reconnect(self) -> None:
        """RECONNECT to every connected client (they come back through the load balancer)."""
        told = 0
        for room in self.rooms.values():
            for member in [*room.publishers.values(), *room.subscribers.values()]:
                told += member.send(dc_protocol.RECONNECT)
        log.info("RECONNECT sent", extra={"node": self.node_id, "told": told})

    @property
    def half_open(self) -> int:
        """Sessions admitted from a client address and not yet connected (admission control)."""
        return self._half_open_total

    @property
    def members(self) -> int:
        return sum(len(r.publishers) + len(r.subscribers) for r in self.rooms.values())

    def local_track(self, publisher_id: str, track_id: str) -> PublishedTrack | None:
        for room in self.rooms.values():
            publisher = room.publishers.get(publisher_id)
            if publisher is not None:
                return publisher.track(track_id)
        return None

    def track_source(
        self, room: str, publisher: PublisherInfo, track: TrackInfo
    ) -> TrackSource | None:
        """What a subscriber forwards from: the local track, or this pod's one subscription to a
        track relayed from the publisher's pod (issue 4: each remote track once per pod)."""
        local = self.local_track(publisher.publisher_id, track.track_id)
        if local is not None or publisher.node == self.node_id or self.relay is None:
            return local
        key = (publisher.publisher_id, track.track_id)
        remote = self._remote.get(key)
        if remote is None:
            remote = self._remote[key] = RemoteTrack(
                room,
                publisher,
                track,
                spawn=self.spawn,
                relay=self.relay,
                bus=self.bus,
                on_idle=self.forget_remote,
            )
        return remote

    def forget_remote(self, remote: RemoteTrack) -> None:
        if self._remote.get(remote.key) is remote:
            del self._remote[remote.key]
