"""The SFU's face towards HTTP: join as publisher or subscriber, leave, list rooms.

Every connection gets its own task under :meth:`Sfu.run`'s nursery, which holds the peer's own
nursery; when the peer ends for any reason (STOP, DELETE, consent timeout, DTLS alert, server
shutdown) that task removes the member from the room, the state store and the bus — cleanup
has exactly one place to happen.
"""

from __future__ import annotations

import logging
from typing import Literal

import trio

from trio_sfu.cluster.bus import Bus, LocalBus
from trio_sfu.cluster.commands import PubLeft, PublisherInfo, SubJoin, SubLeft, SubscriberInfo
from trio_sfu.cluster.state import MemoryStateStore, StateStore
from trio_sfu.rtc.server import RtcServer, ServerPeerConnection
from trio_sfu.sfu import protocol
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound, Unavailable
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.publisher import Publisher
from trio_sfu.sfu.room import Room
from trio_sfu.sfu.subscriber import Subscriber
from trio_sfu.sfu.track import PublishedTrack
from trio_sfu.sfu.viewer import WhepViewer

log = logging.getLogger(__name__)

Role = Literal["pub", "sub", "whep"]
#: How long DELETE waits for a connection's cleanup before answering anyway.
STOP_TIMEOUT = 5.0
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


class Sfu:
    def __init__(
        self,
        rtc: RtcServer,
        *,
        state: StateStore | None = None,
        bus: Bus | None = None,
        node_id: str = "local",
    ) -> None:
        self.rtc = rtc
        self.state: StateStore = state if state is not None else MemoryStateStore()
        self.bus: Bus = bus if bus is not None else LocalBus()
        self.node_id = node_id
        self.rooms: dict[str, Room] = {}
        self._gone: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host every connection; cancelling this closes them all (server shutdown)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

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
                await self.state.add_subscriber(room_name, info)
                await self.bus.publish(room_name, SubJoin(room_name, info))
            await nursery.start(self._lifetime, member)
        except BaseException:
            await self.state.release_id(peer_id)
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
        """The room's publishers a viewer could watch, oldest first; 409/404 if none fits."""
        state = await self.state.room(room)
        publishers = [p for p in (state.publishers.values() if state else ()) if p.tracks]
        if publisher_id is not None:
            if not any(p.publisher_id == publisher_id for p in publishers):
                raise NotFound(f"no live publisher {publisher_id} in room {room}")
        elif not publishers:
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
        try:
            if isinstance(member, Publisher):
                room.publishers.pop(member.id, None)
                if member.announced:
                    await self.state.remove_publisher(name, member.id)
                    await self.bus.publish(name, PubLeft(name, member.id))
            elif isinstance(member, Downstream):
                room.subscribers.pop(member.id, None)
                member.close_downtracks()
                await self.state.remove_subscriber(name, member.id)
                await self.bus.publish(name, SubLeft(name, member.id))
            await self.state.release_id(member.id)
        finally:
            if room.empty and self.rooms.get(name) is room:
                del self.rooms[name]
                room.stop()
        log.info("left", extra={**member.log_extra, "reason": member.pc.close_reason})

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
        return [state.as_json() for state in await self.state.rooms()]

    async def room_info(self, room: str) -> dict[str, object]:
        state = await self.state.room(room)
        if state is None or state.empty:
            raise NotFound(f"no room {room}")
        return state.as_json()

    # -- media routing ----------------------------------------------------------------------

    def track_source(self, publisher_id: str, track_id: str) -> PublishedTrack | None:
        """The local track a subscriber forwards from (cluster mode adds relayed tracks)."""
        for room in self.rooms.values():
            publisher = room.publishers.get(publisher_id)
            if publisher is not None:
                return publisher.track(track_id)
        return None
