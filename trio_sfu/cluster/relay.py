"""The NATS media relay: decrypted RTP from a publisher's pod to the pods of its subscribers.

DESIGN.md ("Crossing into asyncio") sets the shape: a bridged nats-py publish costs ≈ 73 µs, a
deque hand-off ≈ 2 µs, so no packet ever crosses the trio-asyncio bridge on its own.

- Sending: ``sender(pub, track)`` returns a *sync* callable the publisher's ``on_rtp`` calls per
  packet. It appends to the track's bounded deque and, for the first packet since the last
  flush, schedules one plain asyncio callback (``loop.call_soon``). That callback runs once the
  current Trio step is over (the UDP reader's pass, with every packet it read), packs whatever
  each track has queued into one NATS message and hands it to nats-py without awaiting
  (``RelayLink.publish_now``: nats-py's ``publish`` queues the bytes and kicks its own
  flusher, it never suspends below its outbound limit). It never waits to fill a batch, so
  batching adds no latency of its own; no asyncio task, event or future per batch.
- Receiving: ``subscribe(node, pub, track, on_packet)`` subscribes to the track's subject; the
  nats-py subscription callback unpacks the message and calls ``on_packet(packet, now)`` for
  each packet, there and then (trio-asyncio runs asyncio callbacks on Trio's thread, between
  Trio steps, so a sync call into Trio-side forwarding code is legal): no queue, no Trio task
  to wake per message.
- Interest: a pod publishes a track only while another pod wants it (issue 4). A receiving pod
  announces each subscription on the publisher pod's want subject and refreshes it every
  ``want_interval``; the publisher pod forgets a want that was not refreshed for ``want_ttl``,
  so a killed pod stops costing bandwidth, and a restarted NATS needs nothing but the next
  refresh.

Cost (issue 10; docs/cluster.md "The media relay" has the figures): the cost is per NATS
message, whatever it carries — mostly the receiving pod's wake-up and the Trio rounds each hop
between nats-py's tasks takes — so the relay takes as few hops per message as nats-py's public
API allows. Driving nats-py from a thread of its own, every crossing batched, was measured too
and cost the same within the noise (cross-thread wake-ups and GIL hand-offs replace
trio-asyncio's steps), so media stays on the trio-asyncio loop with the command bus.

Media message: ``MEDIA_VERSION`` (one byte), then per packet a 2-byte big-endian length and the
packet. Want message: ``MEDIA_VERSION``, then msgpack ``[op, from_node, [[pub, track], ...]]``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import msgpack
import trio

from trio_sfu.cluster.aio import BackendUnavailable, trio_asyncio
from trio_sfu.cluster.framing import (
    _VERSION_BYTE,
    MAX_MESSAGE,
    MEDIA_VERSION,
    pack_packets,
    unpack_packets,
)

log = logging.getLogger(__name__)


#: Packets queued per track before the oldest are dropped (the flush callback starved):
#: ≈ 1 s of a 2.5 Mbit/s video track; older media is useless to a subscriber anyway.
QUEUE_LIMIT = 256

WANT = 1
RELEASE = 0


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class RelayLink(Protocol):
    """What the relay needs from the NATS connection (``NatsBus`` provides it)."""

    def subject(self, kind: str, *names: str) -> str: ...

    def subscription(
        self,
        subject: str,
        on_message: Callable[[bytes], None],
        *,
        require_connected: bool = True,
    ) -> AbstractAsyncContextManager[None]:
        """Trio: subscribed for the block, across reconnections; ``on_message`` runs on the
        asyncio side. ``require_connected``: raise BackendUnavailable unless NATS is up now."""
        ...

    async def publish_raw(self, subject: str, data: bytes) -> None:
        """Trio, bridged: raises BackendUnavailable when NATS is down."""
        ...

    def publish_now(self, subject: str, data: bytes) -> bool:
        """Sync, on the loop's thread: queue ``data`` for NATS without awaiting anything; False
        if not connected or the outbound buffer is full (nothing is buffered then)."""
        ...


@dataclass(slots=True)
class RelayCounters:
    packets_sent: int = 0
    messages_sent: int = 0
    packets_received: int = 0
    messages_received: int = 0
    #: packets dropped on the sending pod: queue overflow, NATS down, or a packet too large
    dropped: int = 0
    #: received messages that were not a media message of our version
    malformed: int = 0
    #: received messages nats-py dropped because this pod fell behind (slow consumer)
    overflow: int = 0
    #: media subscriptions open now (one per remote track this pod receives)
    subscriptions: int = 0


class TrackSender:
    """The per-packet entry of one published track: sync, never blocks, never bridges.

    Calling it with a packet (``bytes``, not mutated afterwards) queues it for the relay's next
    flush if any other pod wants this track; otherwise it returns at once.
    """

    __slots__ = ("_relay", "closed", "key", "pending", "queue", "subject", "wanted")

    def __init__(self, relay: MediaRelay, key: tuple[str, str], subject: str) -> None:
        self._relay = relay
        self.key = key
        self.subject = subject
        self.queue: deque[bytes] = deque(maxlen=relay.queue_limit)
        #: queued in the relay's ready list already (so it is listed once per flush)
        self.pending = False
        #: some other pod holds a live want for this track
        self.wanted = False
        self.closed = False

    def __call__(self, packet: bytes) -> None:
        if not self.wanted:
            return
        queue = self.queue
        if len(queue) == queue.maxlen:  # the deque drops the oldest itself
            self._relay.counters.dropped += 1
        queue.append(packet)
        if not self.pending:
            self.pending = True
            relay = self._relay
            relay._ready.append(self)
            if not relay._flush_scheduled:
                relay._schedule_flush()

    def close(self) -> None:
        """The track ended: stop relaying it (idempotent)."""
        if not self.closed:
            self.closed = True
            self.wanted = False
            self.queue.clear()
            if self._relay._senders.get(self.key) is self:
                del self._relay._senders[self.key]


class _Inbound:
    __slots__ = ("closed", "failed", "key", "on_packet")

    def __init__(self, key: tuple[str, str, str], on_packet: Callable[[bytes, float], None]):
        self.key = key
        self.on_packet = on_packet
        self.closed = False
        self.failed = False


class MediaRelay:
    """Relays RTP between pods over NATS; see the module docstring for the moving parts."""

    def __init__(
        self,
        link: RelayLink,
        node_id: str,
        *,
        queue_limit: int = QUEUE_LIMIT,
        max_message: int = MAX_MESSAGE,
        want_interval: float = 1.0,
        want_ttl: float = 3.5,
    ) -> None:
        self._link = link
        self.node_id = node_id
        self.queue_limit = queue_limit
        self.max_message = max_message
        self.want_interval = want_interval
        self.want_ttl = want_ttl
        self.counters = RelayCounters()
        # sending side
        self._senders: dict[tuple[str, str], TrackSender] = {}
        self._ready: list[TrackSender] = []
        #: the asyncio loop (trio-asyncio's) while ``run`` runs; flushes are its callbacks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._outage = False  # the last flush could not publish (logged once per outage)
        #: (publisher, track) → {wanting node → lease expiry (time.monotonic)}
        self._interest: dict[tuple[str, str], dict[str, float]] = {}
        # receiving side
        self._inbound: dict[tuple[str, str, str], _Inbound] = {}
        self._running = False
        #: set when NATS reconnected: renew every want now, not at the next interval
        self._renew_now = trio.Event()
        #: set when the refresh loop has work again (a subscription or a lease) after none
        self._work = trio.Event()

    # -- sending pod -----------------------------------------------------------------------

    def sender(self, publisher_id: str, track_id: str) -> TrackSender:
        """The sync per-packet function for a local track (the same object on repeat calls)."""
        key = (publisher_id, track_id)
        sender = self._senders.get(key)
        if sender is None:
            subject = self._link.subject("media", self.node_id, publisher_id, track_id)
            sender = self._senders[key] = TrackSender(self, key, subject)
            sender.wanted = bool(self._live_leases(key, time.monotonic()))
        return sender

    def wanted(self, publisher_id: str, track_id: str) -> bool:
        """Whether another pod currently receives this local track."""
        return bool(self._live_leases((publisher_id, track_id), time.monotonic()))

    def _live_leases(self, key: tuple[str, str], now: float) -> dict[str, float]:
        leases = self._interest.get(key)
        if leases is None:
            return {}
        for node in [n for n, expiry in leases.items() if expiry <= now]:
            del leases[node]
        if not leases:
            del self._interest[key]
            self._update_sender(key)
        return leases

    def _update_sender(self, key: tuple[str, str]) -> None:
        sender = self._senders.get(key)
        if sender is not None:
            sender.wanted = key in self._interest
            if not sender.wanted:
                sender.queue.clear()

    def _on_want(self, data: bytes) -> None:
        """A want/release from a receiving pod (runs in the nats-py callback, asyncio side)."""
        try:
            if data[0] != MEDIA_VERSION:
                raise ValueError("unknown want message version")
            op, node, items = msgpack.unpackb(memoryview(data)[1:], raw=False)
            if type(node) is not str or op not in (WANT, RELEASE):
                raise ValueError("bad want message")
            keys = [(pub, track) for pub, track in items]
            if not all(type(pub) is str and type(track) is str for pub, track in keys):
                raise ValueError("bad want message")
        except Exception:
            self.counters.malformed += 1
            return
        expiry = time.monotonic() + self.want_ttl
        for key in keys:
            if op == WANT:
                self._interest.setdefault(key, {})[node] = expiry
                self._work.set()  # a lease to expire (trio-asyncio: the same thread)
            else:
                leases = self._interest.get(key)
                if leases is not None:
                    leases.pop(node, None)
                    if not leases:
                        del self._interest[key]
            self._update_sender(key)

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for key in list(self._interest):
            self._live_leases(key, now)

    def _schedule_flush(self) -> None:
        """Flush once the current Trio step is over (the first packet since the last flush)."""
        loop = self._loop
        if loop is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """asyncio callback: publish what the senders queued, one message per track per flush
        (more only past ``max_message``). Sync from start to end: nothing here awaits."""
        self._flush_scheduled = False
        ready, self._ready = self._ready, []
        counters = self.counters
        publish_now = self._link.publish_now
        for sender in ready:
            sender.pending = False
            queue = sender.queue
            while queue:
                message, count, too_large = pack_packets(queue, self.max_message)
                counters.dropped += too_large
                if not count:
                    continue
                try:
                    sent = publish_now(sender.subject, message)
                except Exception as exc:  # a closing client, a payload over the server's limit
                    sent = False
                    if not self._outage:
                        log.warning(
                            "relay publish failed",
                            extra={"node": self.node_id, "error": repr(exc)},
                        )
                if sent:
                    self._outage = False
                    counters.messages_sent += 1
                    counters.packets_sent += count
                else:
                    # Media this old is useless when NATS returns: drop it all, count it.
                    self._outage = True
                    counters.dropped += count + len(queue)
                    queue.clear()

    # -- receiving pod ---------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        node_id: str,
        publisher_id: str,
        track_id: str,
        on_packet: Callable[[bytes, float], None],
    ) -> AsyncIterator[None]:
        """Receive a remote track for the block: ``on_packet(packet, now)`` from a Trio task.

        Raises BackendUnavailable if NATS is down, ValueError if this pod already receives the
        track (the SFU subscribes once per track and fans out locally).
        """
        if not self._running:
            raise RuntimeError("MediaRelay.subscribe before NatsBus.run started")
        key = (node_id, publisher_id, track_id)
        if key in self._inbound:
            raise ValueError(f"already receiving {key}")
        inbound = _Inbound(key, on_packet)
        counters = self.counters

        def on_message(data: bytes) -> None:
            # The nats-py subscription callback, once per NATS message: forward right here.
            if inbound.closed:
                return
            try:
                packets = unpack_packets(data)
            except ValueError:
                counters.malformed += 1
                return
            counters.messages_received += 1
            counters.packets_received += len(packets)
            now = trio.current_time()
            try:
                for packet in packets:
                    on_packet(packet, now)
            except Exception:
                # One subscription's bug must not stop every relayed track of the pod.
                if not inbound.failed:
                    inbound.failed = True
                    log.exception(
                        "relayed packet handler failed",
                        extra={"node": node_id, "peer": publisher_id, "track": track_id},
                    )

        subject = self._link.subject("media", node_id, publisher_id, track_id)
        self._inbound[key] = inbound
        self._work.set()  # a want to renew
        try:
            async with self._link.subscription(subject, on_message):
                counters.subscriptions += 1
                try:
                    await self._send_wants(node_id, WANT, [(publisher_id, track_id)])
                    yield
                finally:
                    counters.subscriptions -= 1
                    inbound.closed = True
                    del self._inbound[key]
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        try:
                            await self._send_wants(node_id, RELEASE, [(publisher_id, track_id)])
                        except BackendUnavailable:
                            pass  # the lease expires on its own
        finally:
            inbound.closed = True
            if self._inbound.get(key) is inbound:
                del self._inbound[key]

    async def _send_wants(self, node: str, op: int, items: list[tuple[str, str]]) -> None:
        data = _VERSION_BYTE + msgpack.packb([op, self.node_id, items])
        await self._link.publish_raw(self._link.subject("want", node), data)

    def renew_wants(self) -> None:
        """NATS reconnected (issue 9): the publisher pods may have let our leases lapse during
        the outage, so renew them now rather than up to ``want_interval`` later. Safe to call
        from the asyncio side (trio-asyncio runs both on one thread)."""
        self._renew_now.set()

    async def _refresh_wants(self) -> None:
        """Trio: renew our leases on every publisher pod we receive from; expire others'.

        With neither (a pod whose rooms are all its own) it sleeps until a subscription or a
        want arrives: a wake-up a second of an idle pod is a measurable part of its CPU
        (docs/benchmarks.md, "Round 2: the cluster's background")."""
        while True:
            if not self._inbound and not self._interest:
                self._work = trio.Event()
                await self._work.wait()
            with trio.move_on_after(self.want_interval):
                await self._renew_now.wait()
            self._renew_now = trio.Event()
            self._expire_leases()
            by_node: dict[str, list[tuple[str, str]]] = {}
            for node, pub, track in self._inbound:
                by_node.setdefault(node, []).append((pub, track))
            for node, items in by_node.items():
                try:
                    await self._send_wants(node, WANT, items)
                except BackendUnavailable:
                    break  # NATS is down; the next round tries again

    # -- lifetime --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The relay's wants and flushes; ``NatsBus.run`` runs this inside the trio-asyncio
        loop."""
        self._loop = await trio_asyncio.aio_as_trio(_running_loop)()
        try:
            if self._ready:
                self._schedule_flush()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refresh_wants)
                self._running = True
                try:
                    async with self._link.subscription(
                        self._link.subject("want", self.node_id),
                        self._on_want,
                        require_connected=False,
                    ):
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    self._running = False
        finally:
            self._loop = None
            self._flush_scheduled = False
