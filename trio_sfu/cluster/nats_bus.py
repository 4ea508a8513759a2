"""The cluster's command bus on NATS: per-room and per-node subjects, one connection per pod.

``NatsBus`` is the ``Bus`` the SFU already uses single-node (``sfu/bus.py``), plus node-
directed commands and the media relay. It owns one nats-py client on the trio-asyncio loop;
everything the SFU calls is Trio-native and bounded:

- ``publish``/``send_to_node`` cross the bridge once per command (≈ 73 µs, DESIGN.md — fine for
  the control plane) and, while NATS is down, raise ``BackendUnavailable`` at once rather than
  buffering: a command that reaches nobody should become a ``503`` the client can retry, not a
  silent gap in a room's history.
- Listeners are NATS subscriptions whose callback hands decoded commands to a Trio memory
  channel (a sync ``send_nowait`` from the asyncio side, no bridged call per message).
- nats-py reconnects forever with short waits and replays our subscriptions on the new server,
  so listeners and the relay survive a NATS restart without the SFU doing anything. If the
  client ever closes for good, ``run`` builds a new one and resubscribes from its registry.

Subjects (names escaped by ``codec.subject_token``; ``p`` is the cluster prefix):
``p.room.<room>`` room commands, ``p.node.<node>`` node commands,
``p.media.<node>.<publisher>.<track>`` relayed RTP, ``p.want.<node>`` relay interest,
``p.http.<node>`` HTTP requests forwarded to the pod holding a connection (request/reply).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import nats.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from trio_sfu.cluster import aio
from trio_sfu.cluster.aio import BackendUnavailable, trio_asyncio
from trio_sfu.cluster.codec import CodecError, decode, encode, subject_token
from trio_sfu.cluster.relay import MediaRelay
from trio_sfu.sfu.bus import LISTENER_BACKLOG
from trio_sfu.sfu.errors import NodeUnreachable
from trio_sfu.sfu.model import Command

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "trio-sfu"
#: A prefix is one or more plain subject tokens (no wildcards, no empty tokens).
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")


#: Outbound bytes nats-py may hold before the relay drops media rather than queue more
#: (below nats-py's own 2 MiB limit, where its ``publish`` would start waiting).
MEDIA_PENDING_LIMIT = 1024 * 1024

#: How long an abandoned PING may wait for its PONG (see ``_aio_ping``); the client's own stale
#: check (two unanswered pings) reconnects long before.
_PONG_PATIENCE = 60
#: How long :func:`until_cancelled_for_sure` keeps cancelling a call that swallows it.
_CANCEL_PATIENCE = 5.0


def _consume_result(future: asyncio.Future[None]) -> None:
    """Mark an abandoned probe's outcome as seen (asyncio warns about unretrieved errors)."""
    if not future.cancelled():
        future.exception()


class _Registration:
    """One subscription we want to hold, whichever client is current."""

    __slots__ = ("client", "on_message", "on_request", "sub", "subject")

    def __init__(
        self,
        subject: str,
        on_message: Callable[[bytes], None] | None = None,
        on_request: Callable[[bytes, str], None] | None = None,
    ) -> None:
        self.subject = subject
        self.on_message = on_message
        self.on_request = on_request  # requests: the reply subject comes along
        self.client: Client | None = None
        self.sub: Any = None

    async def deliver(self, msg: Msg) -> None:
        # nats-py insists on a coroutine callback; ours are sync hand-offs.
        if self.on_request is not None:
            if msg.reply:
                self.on_request(msg.data, msg.reply)
        elif self.on_message is not None:
            self.on_message(msg.data)


class NatsBus:
    """Room and node commands plus the media relay over one NATS connection per pod."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        reconnect_wait: float = 0.5,
        connect_timeout: float = 1.0,
        ping_interval: float = 2.0,
        call_timeout: float = aio.CALL_TIMEOUT,
        start_timeout: float = 2.0,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"invalid NATS subject prefix {prefix!r}")
        self.url = url
        self.node_id = node_id
        self.prefix = prefix
        self.reconnect_wait = reconnect_wait
        self.connect_timeout = connect_timeout
        # Two unanswered pings (2 × ping_interval) declare a silent server dead.
        self.ping_interval = ping_interval
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self._client: Client | None = None  # the current client, connected or not
        self._registry: set[_Registration] = set()
        self._probe: tuple[tuple[Client, int], asyncio.Future[None]] | None = None
        self._connected_once = trio.Event()
        self._outage = False
        self._closing = False
        self.relay = MediaRelay(self, node_id)

    # -- names and state -------------------------------------------------------------------

    def subject(self, kind: str, *names: str) -> str:
        return ".".join((self.prefix, kind, *(subject_token(n) for n in names)))

    @property
    def subscriptions(self) -> int:
        """NATS subscriptions this bus holds now (listeners, relay tracks, the relay inbox)."""
        return len(self._registry)

    @property
    def reconnects(self) -> int:
        """Reconnections of the current client so far (nats-py's count)."""
        client = self._client
        return int(client.stats["reconnects"]) if client is not None else 0

    @property
    def spans_pods(self) -> bool:
        return True

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected

    async def ready(self) -> bool:
        """Connected, and the server answers a PING within a second (for ``/readyz``)."""
        client = self._client
        if client is None or not client.is_connected:
            await trio.lowlevel.checkpoint()
            return False
        try:
            await self._call(self._aio_ping, client, 1.0, timeout=1.5)
        except BackendUnavailable:
            return False
        return True

    async def _aio_ping(self, client: Client, timeout: float, *, fresh: bool = False) -> None:
        """A PING/PONG round trip, bounded by ``timeout``, that is safe to abandon.

        Two nats-py (2.16) traps shape it. ``flush(timeout)`` cancels its PONG future on timeout,
        and the late PONG then raises InvalidStateError in ``_process_pong``, ending the read
        loop: a client that looks connected and hears nothing until the stale-ping check
        replaces it. So the round trip runs in its own task with a long limit (a reconnect drops
        its future first) and callers stop *waiting* after ``timeout``, cancelling nothing.
        And the PING goes straight to the transport, ahead of commands still pending for the
        flusher task, so we wait for those to be handed over first: the PONG then proves the
        server has everything we sent before it (``fresh``: a SUB we rely on next).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A reconnect discards outstanding PONG futures: a probe from an earlier connection
        # would never finish, so probes are shared only within one connection.
        generation = (client, client.stats["reconnects"])
        held = self._probe
        probe = held[1] if held is not None and held[0] == generation else None
        if fresh or probe is None or probe.done():
            while client.pending_data_size and client.is_connected:
                if loop.time() >= deadline:
                    raise BackendUnavailable("NATS: outbound buffer not draining")
                await asyncio.sleep(0)
            probe = asyncio.ensure_future(client.flush(_PONG_PATIENCE))
            probe.add_done_callback(_consume_result)
            self._probe = (generation, probe)
        done, _ = await asyncio.wait({probe}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            raise BackendUnavailable("NATS: no PONG in time")
        try:
            probe.result()
        except (AssertionError, AttributeError, nats.errors.Error, OSError) as exc:
            # nats-py asserts a transport it just lost; any of these means "not there now"
            raise BackendUnavailable(f"NATS: {type(exc).__name__}") from exc

    async def _call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        try:
            return await aio.call(fn, *args, timeout=timeout or self.call_timeout)
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"NATS: {type(exc).__name__}: {exc}") from exc

    async def _require_connection(self) -> Client:
        client = self._client
        if client is None or not client.is_connected:
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable("NATS is not connected")
        return client

    # -- publishing ------------------------------------------------------------------------

    async def publish_raw(self, subject: str, data: bytes) -> None:
        client = await self._require_connection()
        await self._call(client.publish, subject, data)

    async def publish(self, room: str, command: Command) -> None:
        await self.publish_raw(self.subject("room", room), encode(command))

    async def send_to_node(self, node_id: str, command: Command) -> None:
        await self.publish_raw(self.subject("node", node_id), encode(command))

    def publish_now(self, subject: str, data: bytes) -> bool:
        """The relay's publish: sync, on the loop's thread, no bridge, nothing awaited.

        nats-py's ``publish`` appends the command to its outbound buffer and kicks its flusher
        task without suspending while that buffer is below its limit (2 MiB), so stepping the
        coroutine once runs it to the end. False when not connected, or when the buffer holds
        ``MEDIA_PENDING_LIMIT`` already (NATS is not keeping up: media that late is dropped).
        """
        client = self._client
        if client is None or not client.is_connected:
            return False
        if client.pending_data_size + len(data) > MEDIA_PENDING_LIMIT:
            return False
        publish = client.publish(subject, data)
        try:
            publish.send(None)
        except StopIteration:
            return True
        # It suspended after queueing the command (nats-py waiting for its buffer to drain):
        # the bytes go out with the flusher's next write; we do not wait for that.
        publish.close()
        return True

    async def request_node(self, node_id: str, data: bytes, timeout: float) -> bytes:
        """Request/reply with one pod (``p.http.<node>``): its answer within ``timeout``.

        Raises NodeUnreachable at once when no pod listens there (the server's no-responders
        status: the node is not running), BackendUnavailable when NATS is down or the node
        did not answer in time.
        """
        client = await self._require_connection()
        subject = self.subject("http", node_id)
        try:
            msg = await aio.call(client.request, subject, data, timeout, timeout=timeout + 0.5)
        except nats.errors.NoRespondersError as exc:
            raise NodeUnreachable(node_id) from exc
        except nats.errors.TimeoutError as exc:
            raise BackendUnavailable(f"node {node_id} did not answer in {timeout:g} s") from exc
        except nats.errors.Error as exc:
            raise BackendUnavailable(f"NATS: {type(exc).__name__}: {exc}") from exc
        return bytes(msg.data)

    @asynccontextmanager
    async def serve_node_requests(
        self, on_request: Callable[[bytes, str], None]
    ) -> AsyncIterator[None]:
        """Answer requests sent to this pod with ``request_node`` for the block:
        ``on_request(data, reply_subject)`` runs on the asyncio side (a sync hand-off); the
        answer goes back with ``publish_raw(reply_subject, ...)``. Held across outages."""
        registration = _Registration(self.subject("http", self.node_id), on_request=on_request)
        try:
            await self._call(self._aio_register, registration, False)
            yield
        finally:
            await self._unregister(registration)

    # -- subscribing -----------------------------------------------------------------------

    @asynccontextmanager
    async def subscription(
        self,
        subject: str,
        on_message: Callable[[bytes], None],
        *,
        require_connected: bool = True,
    ) -> AsyncIterator[None]:
        """Hold a subscription for the block; ``on_message`` runs on the asyncio side.

        With ``require_connected`` (requests from clients), NATS must be up now and the server
        has confirmed the subscription when the block starts. Without it (the relay's own
        inbox), the subscription is registered and made whenever a connection exists.
        """
        registration = _Registration(subject, on_message=on_message)
        if require_connected:
            await self._require_connection()
        try:
            await self._call(self._aio_register, registration, require_connected)
        except BaseException:
            await self._unregister(registration)
            raise
        try:
            yield
        finally:
            await self._unregister(registration)

    async def _unregister(self, registration: _Registration) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._call(self._aio_unregister, registration)
            except BackendUnavailable:
                pass  # the server forgets our subscriptions when the connection goes anyway

    async def _aio_register(self, registration: _Registration, confirm: bool) -> None:
        self._registry.add(registration)
        client = self._client
        # A client still making its first connection subscribes the registry once connected.
        if client is not None and (client.is_connected or client.is_reconnecting):
            if registration.client is not client:
                await self._aio_subscribe(client, registration)
            if confirm:
                # A PING round trip: the server has our SUB before the caller relies on it.
                await self._aio_ping(client, self.call_timeout, fresh=True)

    async def _aio_subscribe(self, client: Client, registration: _Registration) -> None:
        registration.client = client
        registration.sub = await client.subscribe(registration.subject, cb=registration.deliver)

    async def _aio_unregister(self, registration: _Registration) -> None:
        self._registry.discard(registration)
        sub, registration.sub = registration.sub, None
        registration.client = None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # closed or already gone: nothing to undo

    @asynccontextmanager
    async def _commands(
        self, subject: str, extra: dict[str, str]
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Command]]:
        send, recv = trio.open_memory_channel[Command](LISTENER_BACKLOG)
        warned = False

        def on_message(data: bytes) -> None:
            nonlocal warned
            try:
                command = decode(data)
            except CodecError as exc:
                if not warned:  # a pod of another release, or garbage: say so once
                    warned = True
                    log.warning("undecodable command", extra={**extra, "error": str(exc)})
                return
            try:
                send.send_nowait(command)
            except trio.WouldBlock:
                log.warning("bus listener too slow; cut off", extra=extra)
                send.close()
            except trio.ClosedResourceError:
                pass

        async with self.subscription(subject, on_message):
            try:
                yield recv
            finally:
                send.close()

    def listen(self, room: str) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        """The room's commands, from every pod (ours included), in publication order."""
        return self._commands(self.subject("room", room), {"room": room})

    def listen_node(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        """Commands sent to this pod with ``send_to_node``."""
        return self._commands(self.subject("node", self.node_id), {"node": self.node_id})

    # -- the connection --------------------------------------------------------------------

    async def _on_disconnected(self) -> None:
        if not self._outage and not self._closing:
            self._outage = True
            log.warning("NATS disconnected; reconnecting", extra={"node": self.node_id})

    async def _on_reconnected(self) -> None:
        self._outage = False
        self.relay.renew_wants()
        log.info("NATS reconnected", extra={"node": self.node_id})

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # nats-py dropped a message for a subscriber that fell behind.
            if exc.subject.startswith(f"{self.prefix}.media."):
                self.relay.counters.overflow += 1
            return
        # Every failed reconnect attempt lands here; the outage itself is logged once.
        log.debug("NATS error", extra={"node": self.node_id, "error": repr(exc)})

    async def _aio_hold_connection(self) -> None:
        """asyncio, for the bus's lifetime: keep one client, replacing it if it ever closes."""
        while True:
            client = Client()
            closed = asyncio.Event()

            async def on_closed(closed: asyncio.Event = closed) -> None:
                closed.set()

            self._client = client
            try:
                # With max_reconnect_attempts=-1, connect() itself retries until a server
                # answers, then nats-py reconnects after any loss and replays subscriptions.
                await until_cancelled_for_sure(
                    client.connect(
                        servers=[self.url],
                        name=f"trio-sfu {self.node_id}",
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                        connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                        ping_interval=self.ping_interval,  # type: ignore[arg-type]
                        max_outstanding_pings=2,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        error_cb=self._on_error,
                        closed_cb=on_closed,
                    )
                )
            except (OSError, nats.errors.Error) as exc:
                log.warning("NATS connect failed", extra={"node": self.node_id, "error": repr(exc)})
                await asyncio.sleep(self.reconnect_wait)
                continue
            for registration in list(self._registry):
                if registration.client is not client and registration in self._registry:
                    await self._aio_subscribe(client, registration)
            if self._outage:
                self._outage = False
                self.relay.renew_wants()
                log.info("NATS connected", extra={"node": self.node_id})
            self._connected_once.set()  # a trio.Event set from asyncio: fine in trio-asyncio
            await closed.wait()
            log.warning("NATS client closed; opening a new one", extra={"node": self.node_id})
            await asyncio.sleep(self.reconnect_wait)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection and the relay until cancelled (inside ``aio.open_asyncio()``).

        Reports started once connected, or after ``start_timeout`` if NATS is down at start-up
        (the pod still serves what needs no NATS; ``ready()`` tells when NATS is there).
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_asyncio.aio_as_trio(self._aio_hold_connection))
                with trio.move_on_after(self.start_timeout):
                    await self._connected_once.wait()
                if not self._connected_once.is_set():
                    self._outage = True
                    log.warning("NATS unreachable at start-up", extra={"node": self.node_id})
                await nursery.start(self.relay.run)
                task_status.started()
        finally:
            self._closing = True
            client, self._client = self._client, None
            if client is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(self.call_timeout):
                    try:
                        await trio_asyncio.aio_as_trio(client.close)()
                    except (OSError, nats.errors.Error):
                        pass


async def until_cancelled_for_sure(call: Awaitable[T]) -> T:
    """Await ``call`` (asyncio) in a task of its own that a cancellation really ends.

    nats-py's ``connect()`` with ``max_reconnect_attempts=-1`` retries forever, and Python
    3.11's ``asyncio.wait_for`` (around its read of the server's INFO) swallows a cancellation
    that lands as the read completes (bpo-42130, fixed in 3.12): against a port that accepts and
    resets, one cancel in a few was lost and the retry loop went on, so a pod stopping — or
    giving up at start-up with ``--require-backends`` — hung in its NATS task (seen in CI). So
    on cancellation the call is cancelled again until it ends, for at most
    :data:`_CANCEL_PATIENCE` seconds; then the cancellation goes on regardless."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _CANCEL_PATIENCE
        while not task.done() and loop.time() < give_up:
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller hears of it
        raise
