"""The SFU's face towards HTTP: join as publisher or subscriber, leave, list rooms.

Every connection gets its own task under :meth:`Sfu.run`'s nursery, which holds the peer's own
nursery; when the peer ends for any reason (STOP, DELETE, consent timeout, DTLS alert, server
shutdown) that task removes the member from the room, the state store and the bus — cleanup
has exactly one place to happen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import trio

from trio_sfu.cluster.bus import Bus, LocalBus
from trio_sfu.cluster.commands import (
    KeyframeRequest,
    Nack,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SubJoin,
    SubLeft,
    SubscriberInfo,
    TrackInfo,
)
from trio_sfu.cluster.errors import BackendUnavailable
from trio_sfu.cluster.state import MemoryStateStore, StateStore
from trio_sfu.rtc.server import RtcServer, ServerPeerConnection
from trio_sfu.sfu import protocol
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound, Unavailable
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.publisher import Publisher
from trio_sfu.sfu.remote import Relay, RemoteTrack
from trio_sfu.sfu.room import Room
from trio_sfu.sfu.subscriber import Subscriber
from trio_sfu.sfu.track import PublishedTrack, TrackSource
from trio_sfu.sfu.viewer import WhepViewer

log = logging.getLogger(__name__)

Role = Literal["pub", "sub", "whep"]
#: How long DELETE waits for a connection's cleanup before answering anyway.
STOP_TIMEOUT = 5.0
#: Retry period of state/bus updates that failed because Redis or NATS was unreachable.
OUTBOX_RETRY = 1.0
#: Retry-After for new sessions refused while draining or while a backend is down.
DRAIN_RETRY_AFTER = 2
BACKEND_RETRY_AFTER = 2


def vars_of(counters: object) -> dict[str, int]:
    """The int fields of a (slots) dataclass of counters, inherited ones included."""
    if dataclasses.is_dataclass(counters):
        names: Iterable[str] = [f.name for f in dataclasses.fields(counters)]
    else:
        names = vars(counters)
    return {n: v for n in names if isinstance(v := getattr(counters, n), int)}


def process_metrics() -> dict[str, float]:
    """The Prometheus process collector's standard names, so load testers and dashboards can
    read the pod's CPU time and memory from ``/metrics`` (``trio-sfu load`` plots the CPU)."""
    out: dict[str, float] = {"process_cpu_seconds_total": round(time.process_time(), 6)}
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        out["process_resident_memory_bytes"] = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: CPU time only
        pass
    return out


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
_ROLE_TYPES: dict[str, type[Member]] = {"pub": Publisher, "sub": Subscriber, "whep": WhepViewer}


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
    ) -> None:
        self.rtc = rtc
        self.state: StateStore = state if state is not None else MemoryStateStore()
        self.bus: Bus = bus if bus is not None else LocalBus()
        #: the cross-pod media relay (cluster mode); None: every track is local
        self.relay = relay
        self.node_id = node_id
        self.rooms: dict[str, Room] = {}
        self._remote: dict[tuple[str, str], RemoteTrack] = {}
        #: state and bus updates that must not be lost to an outage, retried in order; one
        #: outbox per backend, so a Redis outage never holds back a PUB_LEFT on NATS (issue 9)
        self._outboxes = {"state": Outbox(), "bus": Outbox()}
        #: SIGTERM: no new sessions, connected clients told to RECONNECT (issue 4)
        self.draining = False
        self._gone: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host every connection; cancelling this closes them all (server shutdown)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._node_commands)
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
        for relayed packets those pods could not answer (issue 9)."""
        async with self.bus.listen_node() as commands:
            async for command in commands:
                if isinstance(command, KeyframeRequest | Nack):
                    track = self.local_track(command.publisher_id, command.track_id)
                    if track is None:
                        continue
                    if isinstance(command, Nack):
                        track.resend_to_relay(command.sequence_numbers, trio.current_time())
                    else:
                        track.request_keyframe(trio.current_time())

    # -- joining --------------------------------------------------------------------------

    async def publish(self, room: str, peer_id: str, offer_sdp: str) -> str:
        return await self._join("pub", room, peer_id, offer_sdp)

    async def subscribe(self, room: str, peer_id: str, offer_sdp: str) -> str:
        return await self._join("sub", room, peer_id, offer_sdp)

    async def whep(
        self, room: str, peer_id: str, offer_sdp: str, *, publisher_id: str | None = None
    ) -> str:
        """A WHEP viewer: sendonly audio + video following the room's live publisher (or the
        named one). No live publisher → 409 with Retry-After (draft-ietf-wish-whep)."""
        return await self._join("whep", room, peer_id, offer_sdp, publisher_id=publisher_id)

    async def _join(
        self,
        role: Role,
        room_name: str,
        peer_id: str,
        offer_sdp: str,
        *,
        publisher_id: str | None = None,
    ) -> str:
        if not protocol.valid_id(room_name):
            raise BadRequest("room must match [A-Za-z0-9_.-]{1,64}")
        if not protocol.valid_id(peer_id):
            raise BadRequest("id must match [A-Za-z0-9_.-]{1,64}")
        nursery = self._nursery
        if nursery is None:
            raise Unavailable("the SFU is not running", retry_after=1)
        if self.draining:
            raise Unavailable("this node is draining; try again", retry_after=DRAIN_RETRY_AFTER)
        with backend_errors():
            publishers: list[PublisherInfo] = []
            if role == "whep":
                publishers = await self._live_publishers(room_name, publisher_id)
            if not await self.state.claim_id(peer_id, self.node_id):
                raise Conflict(f"a connection with id {peer_id} is already live")
        try:
            pc = self.rtc.create_peer(
                f"{role}:{room_name}/{peer_id}",
                new_transceiver_direction=_DIRECTION_FOR_NEW_SECTIONS[role],
            )
            try:
                answer = pc.handle_offer(offer_sdp)
                self._check_offer(role, pc)
            except BaseException:
                pc.abandon()
                raise
            with backend_errors():  # a room's first member subscribes to its bus subject
                room = await self._room(room_name)
            member: Member
            if role == "pub":
                member = Publisher(room, peer_id, pc)
                room.publishers[peer_id] = member
            else:
                if role == "sub":
                    member = Subscriber(room, peer_id, pc)
                else:
                    member = viewer = WhepViewer(room, peer_id, pc, publisher_id=publisher_id)
                    viewer.start(publishers)
                room.subscribers[peer_id] = member
                info = SubscriberInfo(peer_id, member.user, self.node_id)
                with backend_errors():
                    await self.state.add_subscriber(room_name, info)
                self.reliably(self.bus.publish, room_name, SubJoin(room_name, info))
            await nursery.start(self._lifetime, member)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:  # at once, so the client may retry with this id right away
                    await self.state.release_id(peer_id)
                except BackendUnavailable:
                    self.reliably(self.state.release_id, peer_id)
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
        coming = {p.id for p in (local.publishers.values() if local else ())
                  if not p.announced and p.tracks and p.pc.close_reason is None}
        if publisher_id is not None:
            if publisher_id not in coming and not any(
                p.publisher_id == publisher_id for p in publishers
            ):
                raise NotFound(f"no live publisher {publisher_id} in room {room}")
        elif not publishers and not coming:
            raise Conflict(f"room {room} has no live publisher yet", retry_after=WHEP_RETRY_AFTER)
        return publishers

    async def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(self, name)
            assert self._nursery is not None
            await self._nursery.start(room.listen)
        return room

    async def _lifetime(
        self, member: Member, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        gone = self._gone[id(member)] = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(member.pc.run)
                member.pc.start_soon(member.serve)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._remove(member)
                self._gone.pop(id(member), None)
                gone.set()

    async def _remove(self, member: Member) -> None:
        room = member.room
        name = room.name
        if isinstance(member, Publisher):
            room.publishers.pop(member.id, None)
            member.close_relay()
            if member.announced:
                self.reliably(self.state.remove_publisher, name, member.id)
                self.reliably(self.bus.publish, name, PubLeft(name, member.id))
        elif isinstance(member, Downstream):
            room.subscribers.pop(member.id, None)
            member.close_downtracks()
            self.reliably(self.state.remove_subscriber, name, member.id)
            self.reliably(self.bus.publish, name, SubLeft(name, member.id))
        self.reliably(self.state.release_id, member.id)
        if room.empty and self.rooms.get(name) is room:
            del self.rooms[name]
            room.stop()
        log.info("left", extra={**member.log_extra, "reason": member.pc.close_reason})
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

    async def stop(self, role: Role, room_name: str, peer_id: str) -> None:
        member = self.member(role, room_name, peer_id)
        gone = self._gone.get(id(member))
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
            log.info("draining", extra={"node": self.node_id, "members": self.members})
        if reconnect:
            self.send_reconnect()

    def send_reconnect(self) -> None:
        """RECONNECT to every connected client (they come back through the load balancer)."""
        told = 0
        for room in self.rooms.values():
            for member in [*room.publishers.values(), *room.subscribers.values()]:
                told += member.send(protocol.RECONNECT)
        log.info("RECONNECT sent", extra={"node": self.node_id, "told": told})

    def metrics(self) -> dict[str, float]:
        """Plain counters for ``GET /metrics`` (Prometheus text): read, never computed per
        packet."""
        out: dict[str, float] = {
            "trio_sfu_rooms": len(self.rooms),
            "trio_sfu_publishers": sum(len(r.publishers) for r in self.rooms.values()),
            "trio_sfu_subscribers": sum(len(r.subscribers) for r in self.rooms.values()),
            "trio_sfu_remote_tracks": len(self._remote),
            "trio_sfu_outbox": sum(len(o) for o in self._outboxes.values()),
            "trio_sfu_outbox_state": len(self._outboxes["state"]),
            "trio_sfu_outbox_bus": len(self._outboxes["bus"]),
            "trio_sfu_draining": int(self.draining),
        }
        out.update(process_metrics())
        # The hot path's plain ints, summed here at scrape time (never per packet): live peers'
        # counters, and the forwarding groups (issue 10) of local and relayed tracks.
        peers: dict[str, int] = {}
        groups = downtracks = track_packets = track_rtx = 0
        for room in self.rooms.values():
            for member in [*room.publishers.values(), *room.subscribers.values()]:
                for name, value in vars_of(member.pc.stats).items():
                    peers[name] = peers.get(name, 0) + value
            for publisher in room.publishers.values():
                for track in publisher.tracks:
                    track_packets += track.packets
                    track_rtx += track.rtx_received
                    groups += len(track.fanout.groups)
                    downtracks += len(track.fanout)
        for remote in self._remote.values():
            groups += len(remote.fanout.groups)
            downtracks += len(remote.fanout)
        for name, value in peers.items():
            out[f"trio_sfu_peer_{name}"] = value
        out["trio_sfu_track_packets"] = track_packets
        out["trio_sfu_track_rtx_received"] = track_rtx
        out["trio_sfu_forwarding_groups"] = groups
        out["trio_sfu_downtracks"] = downtracks
        for name, value in vars_of(self.rtc.endpoint.stats).items():
            out[f"trio_sfu_udp_{name}_total"] = value
        tcp = self.rtc.tcp
        if tcp is not None:
            out["trio_sfu_tcp_connections"] = tcp.connections
            for name, value in vars_of(tcp.stats).items():
                out[f"trio_sfu_tcp_{name}_total"] = value
        counters = getattr(self.relay, "counters", None)
        if counters is not None:
            for name, value in vars_of(counters).items():
                suffix = "" if name == "subscriptions" else "_total"
                out[f"trio_sfu_relay_{name}{suffix}"] = value
        for name, value in self.media_counters().items():
            out[f"trio_sfu_live_{name}"] = value
        return out

    def media_counters(self) -> dict[str, int]:
        """The forwarding path's plain int counters, summed over the live tracks and
        down-tracks of this node (read only here, at scrape time; never per packet). They
        count what the members now in rooms did, so they fall when members leave: gauges,
        not Prometheus counters (hence no ``_total``)."""
        totals = dict.fromkeys(
            ("rtx_sent", "nack_misses", "nack_repeats",
             "source_switches", "rtp_received", "rtx_received", "keyframe_requests",
             "keyframe_requests_suppressed"),
            0,
        )
        for room in self.rooms.values():
            for publisher in room.publishers.values():
                for track in publisher.tracks:
                    totals["rtp_received"] += track.packets
                    totals["rtx_received"] += track.rtx_received
                    totals["keyframe_requests"] += track.keyframes.sent
                    totals["keyframe_requests_suppressed"] += track.keyframes.suppressed
            for member in room.subscribers.values():
                for downtrack in member.live.values():
                    totals["rtx_sent"] += downtrack.retransmitted
                    totals["nack_misses"] += downtrack.nack_misses
                    totals["nack_repeats"] += downtrack.nack_repeats
                    totals["source_switches"] += downtrack.switches
        return totals

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
            remote = self._remote[key] = RemoteTrack(self, room, publisher, track)
        return remote

    def forget_remote(self, remote: RemoteTrack) -> None:
        if self._remote.get(remote.key) is remote:
            del self._remote[remote.key]
