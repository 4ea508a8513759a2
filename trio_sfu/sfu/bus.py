"""Room commands between members: an in-process fan-out here, NATS in cluster mode.

Every member of a room hears every command for that room, its own included, in the order they
were published — the same guarantee a NATS subject gives one subscriber — so the SFU's room
logic is written once for both modes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio

from trio_sfu.sfu.model import Command

log = logging.getLogger(__name__)

#: A listener this far behind is cut off rather than buffering without bound.
LISTENER_BACKLOG = 10_000


class Bus(Protocol):
    @property
    def connected(self) -> bool:
        """False while the bus cannot deliver (NATS unreachable): a member joining then would
        not hear its room, so joins are refused until it is back."""
        ...

    @property
    def spans_pods(self) -> bool:
        """Whether other pods hear what this one publishes (NATS), or only this process's
        own listeners do: what a room applies to itself at once need not go out then."""
        ...

    async def publish(self, room: str, command: Command) -> None: ...

    def listen(self, room: str) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        """An async context manager yielding the room's commands until it exits."""
        ...

    async def send_to_node(self, node_id: str, command: Command) -> None:
        """A command for one node only (keyframe requests for its publishers' tracks)."""
        ...

    def listen_node(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        """This node's own commands."""
        ...


class LocalBus:
    """The embedded default: per-room lists of memory channels.

    With one node every track is local, so node-directed commands have no one to reach; they
    are delivered to this node's own listeners, which keeps the code paths identical.
    """

    NODE = "\x00node"  # a key no room name can take

    def __init__(self) -> None:
        self._listeners: dict[str, set[trio.MemorySendChannel[Command]]] = {}

    @property
    def connected(self) -> bool:
        return True  # in-process: always delivers

    @property
    def spans_pods(self) -> bool:
        return False  # one process: its listeners are all there is

    async def send_to_node(self, node_id: str, command: Command) -> None:
        await self.publish(self.NODE, command)

    def listen_node(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        return self.listen(self.NODE)

    async def publish(self, room: str, command: Command) -> None:
        for send in list(self._listeners.get(room, ())):
            try:
                send.send_nowait(command)
            except trio.WouldBlock:
                log.warning("bus listener too slow; dropped", extra={"room": room})
                send.close()
                self._listeners[room].discard(send)
            except trio.ClosedResourceError:
                self._listeners[room].discard(send)
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def listen(self, room: str) -> AsyncIterator[trio.MemoryReceiveChannel[Command]]:
        send, recv = trio.open_memory_channel[Command](LISTENER_BACKLOG)
        self._listeners.setdefault(room, set()).add(send)
        try:
            yield recv
        finally:
            listeners = self._listeners.get(room)
            if listeners is not None:
                listeners.discard(send)
                if not listeners:
                    del self._listeners[room]
            send.close()
