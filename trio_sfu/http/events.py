"""Room events over WebSocket: ``GET /rooms/{room}/events`` and, for admins, ``GET /events``.

A watcher subscribes to the room's commands on the bus — the same subject the room's members
hear, so a pod with no member in the room streams the same events as the pods hosting it
(issue 13, item 4) — and receives one JSON object per text message:

=====================  =============================================================
``room``               first message: the room as ``GET /rooms/{room}`` shows it
``publisher_joined``   ``peer``, ``user``, ``node``, ``tracks`` [{``id``, ``kind``}]
``publisher_left``     ``peer``
``subscriber_joined``  ``peer``, ``user``, ``node``
``subscriber_left``    ``peer``
``chat``               ``from``, ``text`` (only with ``?chat=1``)
``speaker``            ``peer``: the room's active speaker changed (issue 11); ``levels``
                       [{``peer``, ``dbov``}] of who is audible, loudest first
``node_drained``       ``node``: the pod serving this stream drains; it closes the
                       stream with 1012 (service restart) — reconnect to another pod
=====================  =============================================================

Every event carries ``type``, ``room`` and ``ts`` (Unix seconds). Tokens apply as for
``GET /rooms/{room}`` (any grant in the room; ``/events``: an admin token for all rooms),
sent as ``Authorization: Bearer`` or, since browsers cannot set headers on a WebSocket, as
``?access_token=`` (RFC 6750 §2.3). A watcher that does not keep up is not buffered without
bound: past :data:`WATCHER_BACKLOG` undelivered events the stream is closed with
:data:`CLOSE_TOO_SLOW`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from quart import Blueprint, websocket

from trio_sfu.auth import ANY_ROOM, Claims
from trio_sfu.http.guard import Guard, forbidden, unauthorized
from trio_sfu.sfu.errors import BackendUnavailable, BadRequest, Unavailable
from trio_sfu.sfu.model import ActiveSpeaker, Chat, Command, PubJoin, PubLeft, SubJoin, SubLeft
from trio_sfu.sfu.state import RoomState

log = logging.getLogger(__name__)

#: Events a watcher may have undelivered before it is dropped.
WATCHER_BACKLOG = 256
#: WebSocket close codes (RFC 6455 §7.4): dropped for being slow (application range), and the
#: pod going away (1012, IANA "Service Restart").
CLOSE_TOO_SLOW = 4008
CLOSE_DRAINING = 1012
CLOSE_BACKEND = 1011
CLOSE_TIMEOUT = 5.0
#: How often ``/events`` looks for rooms that appeared or emptied, and how many it follows.
ROOM_SCAN_INTERVAL = 1.0
MAX_WATCHED_ROOMS = 1000


class EventSource(Protocol):
    """What the stream needs from the SFU: the bus, the room state, and its drain signal."""

    node_id: str
    drained: trio.Event

    @property
    def bus(self) -> Any: ...

    @property
    def state(self) -> Any: ...


def event_of(command: Command, *, chat: bool) -> dict[str, Any] | None:
    """A bus command as the event watchers see; None for commands they do not."""
    if isinstance(command, PubJoin):
        p = command.publisher
        return {
            "type": "publisher_joined", "room": command.room, "peer": p.publisher_id,
            "user": p.user, "node": p.node,
            "tracks": [{"id": t.track_id, "kind": t.kind} for t in p.tracks],
        }
    if isinstance(command, PubLeft):
        return {"type": "publisher_left", "room": command.room, "peer": command.publisher_id}
    if isinstance(command, SubJoin):
        s = command.subscriber
        return {"type": "subscriber_joined", "room": command.room, "peer": s.subscriber_id,
                "user": s.user, "node": s.node}
    if isinstance(command, SubLeft):
        return {"type": "subscriber_left", "room": command.room, "peer": command.subscriber_id}
    if isinstance(command, Chat) and chat:
        return {"type": "chat", "room": command.room, "from": command.from_id,
                "text": command.text}
    return None


def speaker_event(command: ActiveSpeaker) -> dict[str, Any]:
    """A new active speaker as watchers see it."""
    return {
        "type": "speaker", "room": command.room, "peer": command.speaker,
        "levels": [{"peer": p, "dbov": v} for p, v in command.levels],
    }


def _claims(guard: Guard) -> Claims | None:
    """Bearer token from the header or ``access_token`` (RFC 6750 §2.1, §2.3); None if off."""
    verifier = guard.verifier
    if verifier is None:
        return None
    header = websocket.headers.get("Authorization", "")
    query = websocket.args.get("access_token")
    if header and query:
        raise unauthorized("send the token once: header or access_token", invalid=True)
    if header:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise unauthorized("the Authorization scheme must be Bearer")
    elif query:
        token = query
    else:
        raise unauthorized("a Bearer token is required (header, or ?access_token=)")
    try:
        return verifier.verify(token.strip())
    except Exception as error:  # TokenError and malformed input alike: 401, never 500
        raise unauthorized(str(error), invalid=True) from None


class Watcher:
    """One WebSocket: a bounded queue between the bus listeners and the socket."""

    def __init__(self, source: EventSource, *, chat: bool) -> None:
        self.source = source
        self.chat = chat
        self.send, self.receive = trio.open_memory_channel[dict[str, Any]](WATCHER_BACKLOG)
        self.too_slow = False
        #: the pump's current send: a consumer that stopped reading blocks it, so dropping
        #: the watcher must also cancel that
        self._sending = trio.CancelScope()

    def put(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", round(time.time(), 3))
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.too_slow = True
            self.send.close()
            self._sending.cancel()
        except trio.ClosedResourceError:
            pass

    async def follow(self, room: str, subscribed: trio.Event | None = None) -> None:
        """Forward one room's commands until cancelled (``subscribed`` set once listening)."""
        async with self.source.bus.listen(room) as commands:
            if subscribed is not None:
                subscribed.set()
            speaker = ""  # the room's decisions repeat; a watcher hears each change once
            async for command in commands:
                if isinstance(command, ActiveSpeaker):
                    if not command.speaker or command.speaker == speaker:
                        continue
                    speaker = command.speaker
                    self.put(speaker_event(command))
                    continue
                event = event_of(command, chat=self.chat)
                if event is not None:
                    self.put(event)

    async def snapshot(self, room: str) -> None:
        state: RoomState | None = await self.source.state.room(room)
        base = {"room": room, "publishers": [], "subscribers": []}
        self.put({"type": "room", **(state.as_json() if state is not None else base)})

    async def pump(self) -> tuple[int, str]:
        """Send queued events until the stream must end; the close code and reason."""
        drained = self.source.drained
        async with self.receive:
            while True:
                event: dict[str, Any] | None = {}
                if drained.is_set():
                    await websocket.send(json.dumps(
                        {"type": "node_drained", "room": None, "node": self.source.node_id,
                         "ts": round(time.time(), 3)}))
                    return CLOSE_DRAINING, "node drained: reconnect to another node"
                with trio.move_on_after(0.5):
                    try:
                        event = await self.receive.receive()
                    except trio.EndOfChannel:
                        event = None
                    if event is not None:
                        self._sending = trio.CancelScope()
                        with self._sending:
                            await websocket.send(json.dumps(event))
                if self.too_slow:
                    return CLOSE_TOO_SLOW, f"too slow: over {WATCHER_BACKLOG} events behind"
                if event is None:
                    return CLOSE_BACKEND, "event source ended"


async def _all_rooms(watcher: Watcher, nursery: trio.Nursery) -> None:
    """``/events``: follow every room the state store knows, as rooms come and go; each room
    starts with its ``room`` snapshot, taken once subscribed."""
    followed: dict[str, trio.CancelScope] = {}

    async def follow(room: str, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                subscribed = trio.Event()
                inner.start_soon(watcher.follow, room, subscribed)
                await subscribed.wait()
                await watcher.snapshot(room)

    while True:
        try:
            rooms = [s.room for s in await watcher.source.state.rooms()]
        except BackendUnavailable:
            rooms = list(followed)
        for room in rooms[:MAX_WATCHED_ROOMS]:
            if room not in followed:
                followed[room] = trio.CancelScope()
                nursery.start_soon(follow, room, followed[room])
        for room in [r for r in followed if r not in rooms]:
            followed.pop(room).cancel()
        await trio.sleep(ROOM_SCAN_INTERVAL)


def events_blueprint(source: EventSource, guard: Guard) -> Blueprint:
    bp = Blueprint("events", __name__)

    async def stream(room: str | None, start: Callable[[Watcher, trio.Nursery], Awaitable[None]]
                     ) -> None:
        watcher = Watcher(source, chat=websocket.args.get("chat") in ("1", "true", "yes"))
        if source.drained.is_set():
            raise Unavailable("this node is draining; try another", retry_after=2)
        extra = {"room": room, "client": websocket.remote_addr}
        code, reason = CLOSE_BACKEND, ""
        try:
            async with trio.open_nursery() as nursery:
                await start(watcher, nursery)
                await websocket.accept()
                log.info("watcher joined", extra=extra)
                code, reason = await watcher.pump()
                nursery.cancel_scope.cancel()
        except* BackendUnavailable as group:
            code, reason = CLOSE_BACKEND, f"cluster backend unavailable: {group.exceptions[0]}"
        log.info("watcher left", extra={**extra, "code": code, "reason": reason})
        with trio.move_on_after(CLOSE_TIMEOUT):  # a stalled client cannot hold us here
            await websocket.close(code, reason[:120])

    @bp.websocket("/rooms/<room>/events")
    async def room_events(room: str) -> None:
        from trio_sfu.sfu.dc_protocol import valid_id

        claims = _claims(guard)
        if not valid_id(room):
            raise BadRequest("room must match [A-Za-z0-9_.-]{1,64}")
        guard.authorize(claims, None, room)

        async def start(watcher: Watcher, nursery: trio.Nursery) -> None:
            # Subscribed before the snapshot is read: no event falls in between.
            subscribed = trio.Event()
            nursery.start_soon(watcher.follow, room, subscribed)
            await subscribed.wait()
            await watcher.snapshot(room)

        await stream(room, start)

    @bp.websocket("/events")
    async def all_events() -> None:
        claims = _claims(guard)
        if claims is not None and not (claims.admin and claims.room == ANY_ROOM):
            raise forbidden("/events needs an admin token for all rooms ('*')")

        async def start(watcher: Watcher, nursery: trio.Nursery) -> None:
            nursery.start_soon(_all_rooms, watcher, nursery)
            await trio.lowlevel.checkpoint()

        await stream(None, start)

    return bp

