"""The NATS media relay: decrypted RTP from a publisher's pod to the pods of its subscribers.

Media travels on a NATS connection of its own, driven by nats-py on a plain asyncio loop in a
thread (``cluster/media_link``); the command bus keeps its connection on trio-asyncio. Issue 10
measured why (``python -m bench.relay``, CPU per relayed packet, 300 packets/s): on
trio-asyncio the receiving pod paid ≈ 0.7–0.8 ms per NATS message — every socket read, parser
step and task step of nats-py ran through both schedulers — and the sending pod ≈ 25–30 µs per
packet; docs/cluster.md ("The media relay") has the before/after figures. No packet crosses
between Trio and the thread on its own:

- Sending: ``sender(pub, track)`` returns a *sync* callable the publisher's ``on_rtp`` calls per
  packet. It appends to the track's bounded deque (the oldest dropped) and lists the track once
  in the ready deque. If the thread's pump sleeps, a parked Trio task (the kicker) is
  rescheduled — a plain list operation — and, after the packets of this Trio step are queued,
  wakes the pump with one ``loop.call_soon_threadsafe``. The pump takes each ready track's
  packets off its deque and publishes them as one NATS message (``framing``); it never waits to
  fill a batch, so batching adds no latency of its own.
- Receiving: ``subscribe(node, pub, track, on_packet)`` subscribes on the media connection; the
  nats-py callback (thread) appends the message to one bounded deque and, only if the Trio pump
  sleeps, wakes it with one ``TrioToken.run_sync_soon``; the Trio pump unpacks and calls
  ``on_packet(packet, now)`` in order.
- Interest: a pod publishes a track only while another pod wants it (issue 4). A receiving pod
  announces each subscription on the publisher pod's want subject (over the command bus) and
  refreshes it every ``want_interval``; the publisher pod forgets a want that was not refreshed
  for ``want_ttl``, so a killed pod stops costing bandwidth, and a restarted NATS needs nothing
  but the next refresh (renewed at once when either connection reconnects).

Threads: the deques and flags shared with the thread are touched with single GIL-atomic
operations (``append``, ``popleft``, attribute stores), and each counter has one writer: the
thread counts ``packets_sent``, ``messages_sent``, ``unsent`` and ``overflow``; Trio the rest.

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
from typing import Any, Protocol

import msgpack
import trio

from trio_sfu.cluster.framing import (
    _VERSION_BYTE,
    MAX_MESSAGE,
    MEDIA_VERSION,
    pack_packets,
    unpack_packets,
)
from trio_sfu.cluster.media_link import MediaLink
from trio_sfu.sfu.errors import BackendUnavailable

log = logging.getLogger(__name__)


#: Packets queued per track before the oldest are dropped (NATS down or the pump starved):
#: ≈ 1 s of a 2.5 Mbit/s video track; older media is useless to a subscriber anyway.
QUEUE_LIMIT = 256
#: Received messages waiting for the Trio pump before the oldest are dropped.
RECEIVE_LIMIT = 4096

WANT = 1
RELEASE = 0


class RelayLink(Protocol):
    """What the relay needs from the command bus, for wants (``NatsBus`` provides it)."""

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


@dataclass(slots=True)
class RelayCounters:
    packets_sent: int = 0
    messages_sent: int = 0
    packets_received: int = 0
    messages_received: int = 0
    #: packets dropped on the sending pod because the track's queue was full (Trio counts)
    dropped: int = 0
    #: packets dropped on the sending pod by the pump: NATS down, or a packet too large
    #: (the media thread counts)
    unsent: int = 0
    #: received messages that were not a media message of our version
    malformed: int = 0
    #: received messages dropped because the Trio pump fell behind by RECEIVE_LIMIT, or by
    #: nats-py for a slow consumer (the media thread counts)
    overflow: int = 0
    #: media subscriptions open now (one per remote track this pod receives)
    subscriptions: int = 0


class TrackSender:
    """The per-packet entry of one published track: sync, never blocks, never bridges.

    Calling it with a packet (``bytes``, not mutated afterwards) queues it for the relay pump if
    any other pod wants this track; otherwise it returns at once.
    """

    __slots__ = ("_relay", "closed", "key", "pending", "queue", "subject", "wanted")

    def __init__(self, relay: MediaRelay, key: tuple[str, str], subject: str) -> None:
        self._relay = relay
        self.key = key
        self.subject = subject
        self.queue: deque[bytes] = deque(maxlen=relay.queue_limit)
        #: queued in the relay's ready list already (so it is listed once per pump round)
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
            kicker = relay._kicker
            if kicker is not None and relay._idle:
                relay._kicker = None
                trio.lowlevel.reschedule(kicker)

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
        media: MediaLink,
        node_id: str,
        *,
        queue_limit: int = QUEUE_LIMIT,
        max_message: int = MAX_MESSAGE,
        receive_limit: int = RECEIVE_LIMIT,
        want_interval: float = 1.0,
        want_ttl: float = 3.5,
    ) -> None:
        self._link = link
        self._media = media
        media.on_reconnected = self.renew_wants
        media.on_slow_consumer = self._on_slow_consumer
        self.node_id = node_id
        self.queue_limit = queue_limit
        self.max_message = max_message
        self.want_interval = want_interval
        self.want_ttl = want_ttl
        self.counters = RelayCounters()
        # sending side
        self._senders: dict[tuple[str, str], TrackSender] = {}
        #: tracks with queued packets, each listed once (Trio appends, the thread pops)
        self._ready: deque[TrackSender] = deque()
        #: True only while the thread's pump sleeps (or is about to)
        self._idle = False
        #: the parked Trio task that wakes the sleeping pump, once per Trio step (see kick)
        self._kicker: trio.lowlevel.Task | None = None
        self._wake_event: asyncio.Event | None = None  # the pump's, made on its loop
        #: (publisher, track) → {wanting node → lease expiry (time.monotonic)}
        self._interest: dict[tuple[str, str], dict[str, float]] = {}
        # receiving side
        self._inbound: dict[tuple[str, str, str], _Inbound] = {}
        self._received: deque[tuple[_Inbound, bytes]] = deque(maxlen=receive_limit)
        self._rx_waiting = False
        self._rx_event = trio.Event()
        self._running = False
        #: set when NATS reconnected: renew every want now, not at the next interval
        self._renew_now = trio.Event()

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

    def _on_slow_consumer(self) -> None:
        """Thread side: nats-py dropped a media message for our subscription."""
        self.counters.overflow += 1

    def _wake_pump(self) -> None:
        """Thread side (scheduled by the kicker): end the pump's sleep."""
        event = self._wake_event
        if event is not None:
            event.set()

    async def _kick(self) -> None:
        """Trio: wake the thread's pump once per Trio step that queued packets while it slept.

        A sender reschedules this task (no system call); it runs after the rest of the step —
        the UDP reader drains every datagram the socket holds in one step — so a frame's burst
        costs one ``call_soon_threadsafe``, and the pump finds it queued whole rather than
        competing with the reader for the GIL packet by packet.
        """
        media = self._media
        task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._kicker = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            if self._ready and self._idle:
                self._idle = False
                media.call_soon(self._wake_pump)
            self._kicker = task
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _aio_send_pump(self) -> None:
        """Thread: publish what the senders queued, one message per track per round."""
        wake = self._wake_event = asyncio.Event()
        try:
            await self._send_rounds(wake)
        finally:
            self._wake_event = None
            self._idle = False

    async def _send_rounds(self, wake: asyncio.Event) -> None:
        counters = self.counters
        publish = self._media.aio_publish
        ready = self._ready
        limit = self.max_message
        outage = False
        while True:
            if not ready:
                # Sleep, unless a sender listed a track after the check above: it saw
                # _idle False then, so it woke nobody (the order of these lines matters).
                wake.clear()
                self._idle = True
                if not ready:
                    await wake.wait()
                self._idle = False
                continue
            sender = ready.popleft()
            sender.pending = False  # before taking: a packet queued from now on lists it again
            queue = sender.queue
            packets = []
            try:
                while True:
                    packets.append(queue.popleft())
            except IndexError:
                pass  # empty (Trio may append meanwhile: those go next round)
            if not packets:
                continue
            messages, too_large = pack_packets(packets, limit)
            counters.unsent += too_large
            for index, (message, count) in enumerate(messages):
                try:
                    sent = await publish(sender.subject, message)
                except Exception as exc:  # nats-py's buffer limits, a closing client, ...
                    sent = False
                    if not outage:
                        log.warning(
                            "relay publish failed",
                            extra={"node": self.node_id, "error": repr(exc)},
                        )
                if sent:
                    outage = False
                    counters.messages_sent += 1
                    counters.packets_sent += count
                else:
                    # Media this old is useless when NATS returns: drop it all, count it.
                    outage = True
                    counters.unsent += sum(n for _, n in messages[index:])
                    try:
                        while True:
                            queue.popleft()
                            counters.unsent += 1
                    except IndexError:
                        pass
                    break

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
        received = self._received
        counters = self.counters

        media = self._media
        wake = self._wake_receiver

        def on_message(data: bytes) -> None:
            # Media thread, once per NATS message: a deque append, a wake-up only if needed.
            if len(received) == received.maxlen:
                counters.overflow += 1
            received.append((inbound, data))
            if self._rx_waiting:
                self._rx_waiting = False
                media.report_to_trio(wake)

        subject = self._link.subject("media", node_id, publisher_id, track_id)
        self._inbound[key] = inbound
        try:
            async with media.subscription(subject, on_message):
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

    def _wake_receiver(self) -> None:
        """Trio (``run_sync_soon`` from the media thread): end the receive pump's sleep."""
        self._rx_event.set()

    async def _receive_pump(self) -> None:
        """Trio: hand received packets to their subscriptions' ``on_packet``, in order."""
        received = self._received
        counters = self.counters
        while True:
            if not received:
                # Sleep, unless a message came after the check above: its callback saw
                # _rx_waiting False then, so it woke nobody.
                self._rx_event = trio.Event()
                self._rx_waiting = True
                if received:
                    self._rx_waiting = False
                    continue
                await self._rx_event.wait()
                continue
            now = trio.current_time()
            while True:
                try:
                    inbound, message = received.popleft()
                except IndexError:
                    break
                if inbound.closed:
                    continue
                try:
                    packets = unpack_packets(message)
                except ValueError:
                    counters.malformed += 1
                    continue
                counters.messages_received += 1
                counters.packets_received += len(packets)
                on_packet = inbound.on_packet
                try:
                    for packet in packets:
                        on_packet(packet, now)
                except Exception:
                    # One subscription's bug must not stop every relayed track of the pod.
                    if not inbound.failed:
                        inbound.failed = True
                        node, pub, track = inbound.key
                        log.exception(
                            "relayed packet handler failed",
                            extra={"node": node, "peer": pub, "track": track},
                        )
            # Everything queued so far is delivered; let other tasks run.
            await trio.lowlevel.checkpoint()

    def renew_wants(self) -> None:
        """NATS reconnected (issue 9): the publisher pods may have let our leases lapse during
        the outage, so renew them now rather than up to ``want_interval`` later. Trio side (the
        bus's trio-asyncio callbacks run on Trio's thread; the media link reports through
        ``run_sync_soon``)."""
        self._renew_now.set()

    async def _refresh_wants(self) -> None:
        """Trio: renew our leases on every publisher pod we receive from; expire others'."""
        while True:
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
        """The relay's pumps and its media thread (``MediaLink.run``: stopped and joined when
        this is cancelled); ``NatsBus.run`` runs this."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._media.run, self._aio_send_pump)
            nursery.start_soon(self._kick)
            nursery.start_soon(self._receive_pump)
            nursery.start_soon(self._refresh_wants)
            self._running = True
            try:
                async with self._link.subscription(
                    self._link.subject("want", self.node_id), self._on_want, require_connected=False
                ):
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._running = False
