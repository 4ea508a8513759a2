"""A room as this process sees it: its local members, and the commands all members hear.

Membership truth lives in the state store (so ``GET /rooms`` is the same everywhere); what
happens in the room travels as commands on the bus, which this object's listener applies to
the local subscribers. The same code path serves one process and a cluster.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.errors import BackendUnavailable
from trio_sfu.sfu.model import (
    Chat,
    Command,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SubJoin,
    SubLeft,
    TrackChange,
)
from trio_sfu.sfu.publisher import Publisher

if TYPE_CHECKING:
    from trio_sfu.sfu.service import Sfu

log = logging.getLogger(__name__)

#: Wait before listening again after a room's listener ended (a backend may be down).
LISTENER_RETRY = 0.5


class Room:
    def __init__(self, sfu: Sfu, name: str) -> None:
        self.sfu = sfu
        self.name = name
        #: what each member may send and have queued (chat rate, send-buffer cap)
        self.limits = sfu.limits
        self.publishers: dict[str, Publisher] = {}
        #: seed-API subscribers and WHEP viewers: everyone we send media to
        self.subscribers: dict[str, Downstream] = {}
        self._cancel = trio.CancelScope()
        self._listening = trio.Event()

    @property
    def empty(self) -> bool:
        return not self.publishers and not self.subscribers

    async def listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the room's bus commands to local members until :meth:`stop`.

        Started when the room opens (the first subscription's failure is the joiner's 503).
        A listener that ends later — NATS or the local bus cut off a listener that fell
        behind, a subscription lost — is made again, so a room never goes deaf while it has
        members (issue 9 item 4, issue 14 item 1).
        """
        with self._cancel:
            async with self.sfu.bus.listen(self.name) as inbox:
                task_status.started()
                await self._follow(inbox)
            while True:
                log.warning("room listener ended; listening again", extra={"room": self.name})
                await trio.sleep(LISTENER_RETRY)
                try:
                    async with self.sfu.bus.listen(self.name) as inbox:
                        await self._follow(inbox)
                except BackendUnavailable:
                    pass

    async def _follow(self, inbox: trio.MemoryReceiveChannel[Command]) -> None:
        async for command in inbox:
            self._apply(command)

    def stop(self) -> None:
        self._cancel.cancel()

    def _apply(self, command: Command) -> None:
        if isinstance(command, PubJoin):
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_joined(command.publisher)
        elif isinstance(command, TrackChange):
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_changed(command.publisher)
        elif isinstance(command, PubLeft):
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_left(command.publisher_id)
        elif isinstance(command, Chat):
            line = dc_protocol.chat(command.from_id, command.text)
            for subscriber in list(self.subscribers.values()):
                subscriber.send_chat(line)
        elif isinstance(command, SubJoin | SubLeft):
            pass

    # -- called by members ----------------------------------------------------------------

    async def publisher_infos(self) -> list[PublisherInfo]:
        try:
            state = await self.sfu.state.room(self.name)
        except BackendUnavailable:
            return []  # the bus's PubJoins still arrive; the state returns with Redis
        return list(state.publishers.values()) if state is not None else []

    async def publisher_ready(self, publisher: Publisher) -> None:
        """A publisher's transport is up: record it, then tell the room (PUB_JOIN)."""
        info = publisher.info
        self.sfu.reliably(self.sfu.state.add_publisher, self.name, info)
        self.sfu.reliably(self.sfu.bus.publish, self.name, PubJoin(self.name, info))
        log.info(
            "publisher joined",
            extra={
                "room": self.name,
                "peer": publisher.id,
                "audio": info.audio,
                "video": info.video,
            },
        )

    def tracks_changed(self, info: PublisherInfo) -> None:
        """A live publisher's tracks changed (issue 15): the state store keeps ``GET /rooms``
        counts true, the bus tells every pod's subscribers (TrackChange)."""
        self.sfu.reliably(self.sfu.state.add_publisher, self.name, info)
        self.sfu.reliably(self.sfu.bus.publish, self.name, TrackChange(self.name, info))

    async def chat(self, from_id: str, text: str) -> None:
        self.sfu.reliably(self.sfu.bus.publish, self.name, Chat(self.name, from_id, text))
        await trio.lowlevel.checkpoint()
