"""The media relay's own NATS connection: nats-py on a plain asyncio loop in one thread.

Why a thread (issue 10): on the trio-asyncio loop every NATS message cost the receiving pod
≈ 0.7–0.8 ms of CPU (``bench.relay``: each socket read, parser step, queue hand-off and task
step of nats-py goes through trio-asyncio's scheduler as well as asyncio's), more than the
packets it carried cost to forward. The same nats-py code on a stock ``SelectorEventLoop`` in a
thread of its own costs a fraction of that, and Trio pays only for the hand-offs.

Every crossing is batched, never per packet (``cluster/relay`` owns both directions):

- Trio → thread: the relay's senders append to deques; the thread's pump is woken with one
  ``loop.call_soon_threadsafe`` only when it sleeps, and only once per Trio scheduling batch.
- thread → Trio: received messages go into one deque; the Trio pump is woken with one
  ``TrioToken.run_sync_soon`` only when it sleeps.
- Control calls (subscribe, unsubscribe: a few per track and pod) cross with
  :meth:`MediaLink.call`, bounded like every other backend call.

Lifetime: :meth:`MediaLink.run` starts the thread and its loop and stops both when its Trio
task is cancelled (the client closed, the loop closed, the thread joined), so the thread never
outlives the nursery that runs it. The command bus (``nats_bus``) keeps its own connection on
trio-asyncio: a few messages per second, where a call-per-message bridge is simplest.

nats-py reconnects forever with short waits and replays our subscriptions on the new server;
if the client ever closes for good, the thread builds a new one and resubscribes from its
registry, like the bus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import nats.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from trio_sfu.sfu.errors import BackendUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long stopping may take (closing the client, ending the loop) before the thread is left
#: to finish on its own (a daemon thread: it cannot keep the process alive).
STOP_TIMEOUT = 3.0
#: An abandoned PING may wait this long for its PONG (see ``_aio_confirm``).
_PONG_PATIENCE = 60


def _consume_result(future: asyncio.Future[None]) -> None:
    """Mark an abandoned probe's outcome as seen (asyncio warns about unretrieved errors)."""
    if not future.cancelled():
        future.exception()


class _Registration:
    """One media subscription we want to hold, whichever client is current (thread side)."""

    __slots__ = ("client", "on_message", "sub", "subject")

    def __init__(self, subject: str, on_message: Callable[[bytes], None]) -> None:
        self.subject = subject
        self.on_message = on_message
        self.client: Client | None = None
        self.sub: Any = None

    async def deliver(self, msg: Msg) -> None:
        # nats-py insists on a coroutine callback; ours is a sync hand-off.
        self.on_message(msg.data)


class MediaLink:
    """One nats-py client in a thread of its own, for media (see the module docstring).

    Trio side: :meth:`run`, :meth:`subscription`, :meth:`call_soon`, :attr:`connected`.
    Thread side (the relay's pump, the subscription callbacks): :meth:`aio_publish`.
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        reconnect_wait: float = 0.5,
        connect_timeout: float = 1.0,
        ping_interval: float = 2.0,
        call_timeout: float = 1.5,
        start_timeout: float = 2.0,
        on_reconnected: Callable[[], None] | None = None,
        on_slow_consumer: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.node_id = node_id
        self.reconnect_wait = reconnect_wait
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        #: Trio side, called (in Trio) when the client reconnected after a loss
        self.on_reconnected = on_reconnected
        #: thread side: nats-py dropped a message because we fell behind
        self.on_slow_consumer = on_slow_consumer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._client: Client | None = None
        #: subscriptions to hold; changed on the thread only
        self._registry: set[_Registration] = set()
        self._closing = False

    # -- state (read from either side: plain attribute reads) -------------------------------

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected

    @property
    def subscriptions(self) -> int:
        return len(self._registry)

    @property
    def thread_alive(self) -> bool:
        """Whether the link's thread runs now (tests check it ends with ``run``)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    _thread: threading.Thread | None = None

    # -- lifetime (Trio) ---------------------------------------------------------------------

    async def run(
        self,
        pump: Callable[[], Coroutine[Any, Any, None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the thread (the connection and ``pump``, an asyncio coroutine function) until
        cancelled; then close the client and join the thread before returning.

        Reports started once connected, or after ``start_timeout`` if NATS is down (it keeps
        trying; ``connected`` tells)."""
        if self._thread is not None:
            raise RuntimeError("MediaLink.run is already running")
        token = trio.lowlevel.current_trio_token()
        # A stock loop, made directly: trio-asyncio's policy must not hand us one of its own.
        loop = asyncio.SelectorEventLoop()
        started = trio.Event()
        finished = trio.Event()
        failure: list[BaseException] = []
        stop = asyncio.Event()

        def report(event: trio.Event) -> None:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:
                pass

        def thread_main() -> None:
            asyncio.set_event_loop(None)
            try:
                loop.run_until_complete(self._aio_main(pump, stop, lambda: report(started)))
            except BaseException as exc:  # reported to the Trio task, which raises it
                failure.append(exc)
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
                    report(finished)

        self._loop, self._token, self._closing = loop, token, False
        thread = self._thread = threading.Thread(
            target=thread_main, name=f"trio-sfu nats media {self.node_id}", daemon=True
        )
        thread.start()
        try:
            await started.wait()
            task_status.started()
            await finished.wait()  # only if the thread failed: cancellation is the way out
        finally:
            self._closing = True
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:
                    pass  # closed meanwhile: the thread is ending
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
                await finished.wait()
            if finished.is_set():
                thread.join()
                self._thread = None
            else:
                log.warning("NATS media thread did not stop in time", extra={"node": self.node_id})
            self._client = None
        if failure:
            raise failure[0]

    async def _aio_main(
        self,
        pump: Callable[[], Coroutine[Any, Any, None]],
        stop: asyncio.Event,
        started: Callable[[], None],
    ) -> None:
        connected = asyncio.Event()
        tasks = {
            asyncio.ensure_future(self._aio_hold_connection(connected)),
            asyncio.ensure_future(pump()),
        }
        stopping = asyncio.ensure_future(stop.wait())
        try:
            waiting = asyncio.ensure_future(connected.wait())
            await asyncio.wait(
                {waiting, stopping, *tasks},
                timeout=self.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiting.cancel()
            started()
            done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._closing = True
            stopping.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(stopping, *tasks, return_exceptions=True)
            client, self._client = self._client, None
            if client is not None:
                try:
                    await asyncio.wait_for(client.close(), STOP_TIMEOUT / 2)
                except (TimeoutError, OSError, nats.errors.Error):
                    pass
        for task in tasks & done:
            task.result()  # a pump or connection bug: raise it in the Trio task

    # -- crossing from Trio ------------------------------------------------------------------

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the thread's loop soon (a thread-safe wake-up); no-op once stopped."""
        loop = self._loop
        if loop is not None and not self._closing:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass  # the loop closed meanwhile

    def report_to_trio(self, fn: Callable[[], object]) -> None:
        """Thread side: run ``fn`` in Trio soon (one ``run_sync_soon``); no-op once Trio ended."""
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        """Await ``fn(*args)`` on the thread's loop from Trio, bounded by ``timeout``.

        Timeouts and connection errors become BackendUnavailable; a Trio cancellation cancels
        the coroutine on the thread too.
        """
        loop, token = self._loop, self._token
        if loop is None or token is None or self._closing or loop.is_closed():
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable("the NATS media link is not running")

        async def job() -> T:
            return await fn(*args)

        future = asyncio.run_coroutine_threadsafe(job(), loop)
        done = trio.Event()

        def finished(_: concurrent.futures.Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(finished)
        try:
            with trio.move_on_after(self.call_timeout if timeout is None else timeout):
                await done.wait()
        finally:
            if not done.is_set():
                future.cancel()
        if not done.is_set():
            raise BackendUnavailable(f"NATS media: {getattr(fn, '__name__', fn)} timed out")
        try:
            return future.result()
        except (OSError, nats.errors.Error, concurrent.futures.CancelledError) as exc:
            raise BackendUnavailable(f"NATS media: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def subscription(
        self, subject: str, on_message: Callable[[bytes], None]
    ) -> AsyncIterator[None]:
        """Hold a subscription for the block, across reconnections; ``on_message(data)`` runs
        on the link's thread. NATS must be up now, and the server has the subscription (a PING
        round trip) when the block starts; else BackendUnavailable."""
        if not self.connected:
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable("NATS is not connected")
        registration = _Registration(subject, on_message)
        try:
            await self.call(self._aio_register, registration)
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
                await self.call(self._aio_unregister, registration)
            except BackendUnavailable:
                pass  # stopped, or the server forgets our subscriptions with the connection

    # -- the thread's side -------------------------------------------------------------------

    async def aio_publish(self, subject: str, data: bytes) -> bool:
        """Thread side (the relay's pump): publish if connected, else report False."""
        client = self._client
        if client is None or not client.is_connected:
            return False
        await client.publish(subject, data)
        return True

    async def _aio_register(self, registration: _Registration) -> None:
        self._registry.add(registration)
        client = self._client
        if client is None or not client.is_connected:
            raise BackendUnavailable("NATS is not connected")
        if registration.client is not client:
            await self._aio_subscribe(client, registration)
        await self._aio_confirm(client, self.call_timeout)

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

    async def _aio_confirm(self, client: Client, timeout: float) -> None:
        """A PING round trip after what we sent so far: the server has our SUB.

        As in ``NatsBus._aio_ping`` (nats-py 2.16): ``flush(timeout)`` must not be cancelled
        (a late PONG then ends the client's read loop), so the round trip runs in its own task
        with a long limit and we only stop waiting; and the PING overtakes commands pending for
        the flusher task, so those are handed over first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while client.pending_data_size and client.is_connected:
            if loop.time() >= deadline:
                raise BackendUnavailable("NATS: outbound buffer not draining")
            await asyncio.sleep(0)
        probe = asyncio.ensure_future(client.flush(_PONG_PATIENCE))
        probe.add_done_callback(_consume_result)
        done, _ = await asyncio.wait({probe}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            raise BackendUnavailable("NATS: no PONG in time")
        try:
            probe.result()
        except (AssertionError, AttributeError, nats.errors.Error, OSError) as exc:
            raise BackendUnavailable(f"NATS: {type(exc).__name__}") from exc

    async def _on_reconnected(self) -> None:
        if self.on_reconnected is not None:
            self.report_to_trio(self.on_reconnected)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            if self.on_slow_consumer is not None:
                self.on_slow_consumer()
            return
        # Every failed reconnect attempt lands here; the bus logs the outage itself.
        log.debug("NATS media error", extra={"node": self.node_id, "error": repr(exc)})

    async def _aio_hold_connection(self, connected: asyncio.Event) -> None:
        """Thread, for the link's lifetime: keep one client, replacing it if it ever closes."""
        while True:
            client = Client()
            closed = asyncio.Event()

            async def on_closed(closed: asyncio.Event = closed) -> None:
                closed.set()

            self._client = client
            try:
                # With max_reconnect_attempts=-1, connect() itself retries until a server
                # answers, then nats-py reconnects after any loss and replays subscriptions.
                await client.connect(
                    servers=[self.url],
                    name=f"trio-sfu {self.node_id} media",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                    ping_interval=self.ping_interval,  # type: ignore[arg-type]
                    max_outstanding_pings=2,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    closed_cb=on_closed,
                )
            except (OSError, nats.errors.Error) as exc:
                log.debug(
                    "NATS media connect failed", extra={"node": self.node_id, "error": repr(exc)}
                )
                await asyncio.sleep(self.reconnect_wait)
                continue
            for registration in list(self._registry):
                if registration.client is not client and registration in self._registry:
                    await self._aio_subscribe(client, registration)
            connected.set()
            await self._on_reconnected()  # (re)connected: the relay renews its wants
            await closed.wait()
            if self._closing:
                return
            log.warning("NATS media client closed; opening a new one", extra={"node": self.node_id})
            await asyncio.sleep(self.reconnect_wait)
