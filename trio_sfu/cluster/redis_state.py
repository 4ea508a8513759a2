"""Room state in Redis, shared by every pod: ``GET /rooms/{room}`` reads the same bytes anywhere.

Each pod writes only its own members, each write is one Lua script (``redis_scripts``), and
each pod proves it is alive with a heartbeat key. Everything else follows from three rules:

- **Every key expires** unless its owner refreshes it, so nothing a crashed pod wrote outlives
  it for long, even with no other pod to clean up (issue 4: room data TTL defaults to a day).
- **A dead pod is swept by a live one**: a node whose heartbeat expired is removed from every
  room in one script, and the one pod whose script did it announces the departures.
- **The local truth wins**: whenever Redis may disagree with what this pod hosts (Redis
  restarted empty, a write failed or timed out, another pod swept us during a partition), the
  pod re-asserts it — adds what is missing, removes what it no longer hosts — in one script.

Redis calls cross into asyncio through ``aio.call``; every failure becomes
``BackendUnavailable`` within 2 s, so the SFU answers 503 instead of hanging, and the
background loop keeps retrying quietly while media between connected clients is unaffected.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from trio_sfu.cluster import aio
from trio_sfu.cluster.aio import BackendUnavailable
from trio_sfu.cluster.codec import (
    CodecError,
    decode_publisher,
    decode_subscriber,
    encode_publisher,
    encode_subscriber,
)
from trio_sfu.cluster.redis_scripts import SCRIPTS, split_token
from trio_sfu.sfu.dc_protocol import valid_id
from trio_sfu.sfu.model import PublisherInfo, SubscriberInfo
from trio_sfu.sfu.state import RoomState

log = logging.getLogger(__name__)

#: What this node currently hosts: (room, info) of its publishers and subscribers.
LocalTruth = Callable[
    [], tuple[Sequence[tuple[str, PublisherInfo]], Sequence[tuple[str, SubscriberInfo]]]
]
#: Told which members of a node were removed: (node_id, [(room, "pub" | "sub", id), ...]).
DeadNodeHandler = Callable[[str, list[tuple[str, str, str]]], Awaitable[None]]
#: Told that other pods had declared this node dead and announced its members' departure.
RevivedHandler = Callable[[], Awaitable[None]]

#: Issue 4: a request that needs Redis answers within 2 s. A mutation may first wait for a
#: re-assert in progress; this bounds the wait and the call together.
OP_DEADLINE = 1.9
#: One re-assert writes every member of the node in one script; it may take longer than a
#: single call on a large pod, and it holds back mutations only meanwhile.
RECONCILE_TIMEOUT = 5.0
#: ``ready()``: Redis answers a PING within this.
READY_TIMEOUT = 1.0
#: Refreshing TTLs walks every member of the node in Redis; a quarter of the TTL leaves three
#: more chances after a failed refresh, and this cap keeps a one-day TTL fresh without
#: walking the members every second.
MAX_REFRESH_INTERVAL = 600.0

#: Redis replies meaning "not now" rather than "your command is wrong".
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "OOM", "MISCONF", "READONLY", "MASTERDOWN", "TRYAGAIN")


def _check_name(what: str, name: str) -> None:
    # Names become parts of keys; ':' or NUL inside one would alias another key or token.
    if not valid_id(name):
        raise ValueError(f"{what} must match [A-Za-z0-9_.-]{{1,64}}: {name!r:.80}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Gate:
    """Many mutations at once, or one re-assert alone.

    A re-assert snapshots the local truth and writes it; a removal that ran between the two
    would be undone. Mutations share the gate; a re-assert takes it exclusively, and a
    waiting re-assert holds new mutations back so it cannot starve.
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            self._notify()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._exclusive = True
        try:
            while self._shared:
                await self._changed.wait()
            yield
        finally:
            self._exclusive = False
            self._notify()


class RedisStateStore:
    """The ``StateStore`` of cluster mode (cluster.md: "StateStore (Redis)")."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        prefix: str = "trio-sfu",
        room_ttl: float = 86400.0,
        heartbeat_interval: float = 1.0,
        heartbeat_ttl: float = 5.0,
        sweep_interval: float = 2.0,
    ) -> None:
        _check_name("node id", node_id)
        if not prefix or any(c in prefix for c in " \0\r\n"):
            raise ValueError(f"bad key prefix {prefix!r}")
        if not 0 < heartbeat_interval < heartbeat_ttl <= room_ttl:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_ttl <= room_ttl")
        if sweep_interval <= 0:
            raise ValueError("sweep_interval must be positive")
        self.node_id = node_id
        self.prefix = prefix
        self.room_ttl = room_ttl
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.sweep_interval = sweep_interval
        self.refresh_interval = max(heartbeat_interval, min(room_ttl / 4, MAX_REFRESH_INTERVAL))
        #: The heartbeat looks for dead nodes every this many beats, in the same script (one
        #: Redis round trip fewer per sweep interval); 0: the sweep loop looks on its own,
        #: when sweeps are wanted more often than heartbeats.
        self._sweep_every = (
            max(1, round(sweep_interval / heartbeat_interval))
            if sweep_interval >= heartbeat_interval
            else 0
        )
        #: dead nodes the heartbeat found, for the sweep loop
        self._dead_found: list[str] = []
        self._sweep_now = trio.Event()
        # No connection is made here; the pool connects lazily inside the asyncio loop.
        # One quick retry replaces a pooled connection that a Redis restart broke; more would
        # only delay the BackendUnavailable the caller needs within 2 s.
        # No socket timeout: every call already has a Trio deadline (``aio.call``), whose
        # cancellation makes redis-py drop the connection mid-reply. redis-py's own default
        # (5 s) armed two asyncio timers per command (``wait_for`` around the write, a timeout
        # around the read), and trio-asyncio keeps a cancelled timer until it is due, so each
        # command woke the loop twice more 5 s later: half of an idle pod's asyncio passes.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 1),
            client_name=f"trio-sfu:{node_id}",
        )
        self._scripts = {name: self._redis.register_script(s) for name, s in SCRIPTS.items()}
        self._common = (prefix, node_id, round(room_ttl * 1000), round(heartbeat_ttl * 1000))
        #: ids this node holds (claimed and not released), kept so a re-assert can restore them
        self._claims: set[str] = set()
        self._gate = _Gate()
        #: a mutation failed or timed out: Redis may not match the local truth
        # Start by re-asserting (an empty truth at first): a previous process with this node id
        # that died less than a heartbeat TTL ago would otherwise leave its members behind,
        # kept alive by our own TTL refreshes (a restarted container reusing its name).
        self._dirty = True
        #: other pods announced our members' departure; re-announce once re-asserted
        self._revive_pending = False
        self._outage = False
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._on_dead_node: DeadNodeHandler | None = None
        self._run_done = trio.Event()
        #: set by an answered heartbeat: the maintenance task has a chance to do its work
        self._wake = trio.Event()
        #: when the maintenance task refreshes the TTLs next (Trio clock)
        self._next_refresh = 0.0

    # -- calls into Redis -------------------------------------------------------------------

    async def _call(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = aio.CALL_TIMEOUT
    ) -> Any:
        try:
            return await aio.call(fn, *args, timeout=timeout)
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        except rexc.ResponseError as exc:
            if str(exc).startswith(_TRANSIENT_REPLIES):
                raise BackendUnavailable(f"redis: {exc}") from exc
            raise

    async def _script(self, name: str, *args: Any, timeout: float = aio.CALL_TIMEOUT) -> Any:
        script = self._scripts[name]

        async def run() -> Any:
            return await script(args=(*self._common, *args))

        return await self._call(run, timeout=timeout)

    async def _mutate(self, name: str, *args: Any) -> Any:
        """A write of this node's state: bounded, and marks us dirty if its outcome is unknown.

        A timed-out write may still have reached Redis, and a failed one left it stale; either
        way the next heartbeat re-asserts the local truth once Redis answers again.
        """
        done = False
        try:
            with trio.fail_after(OP_DEADLINE):
                async with self._gate.shared():
                    result = await self._script(name, *args)
            done = True
            return result
        except trio.TooSlowError:
            raise BackendUnavailable(f"redis: {name} timed out") from None
        finally:
            if not done:
                self._dirty = True

    # -- StateStore -------------------------------------------------------------------------

    async def claim_id(self, connection_id: str, node: str) -> bool:
        """Reserve an id across the cluster (else ``409``); a dead pod's id is freed here."""
        _check_name("connection id", connection_id)
        if node != self.node_id:
            raise ValueError(f"this store claims for node {self.node_id}, not {node}")
        if connection_id in self._claims:
            return False
        # Reserved locally first: a concurrent claim of the same id on this node must lose
        # even though Redis would say "already yours".
        self._claims.add(connection_id)
        claimed = False
        try:
            nursery = self._nursery
            may_sweep = "1" if nursery is not None else "0"
            ok, dead, removed = await self._mutate("claim", connection_id, may_sweep)
            claimed = bool(ok)
            if dead is not None and removed is not None and nursery is not None:
                self._dead_node_found(nursery, _text(dead), removed)
            return claimed
        finally:
            if not claimed:
                self._claims.discard(connection_id)

    async def release_id(self, connection_id: str) -> None:
        _check_name("connection id", connection_id)
        # Forgotten first: if Redis is unreachable now, the next re-assert releases it.
        self._claims.discard(connection_id)
        await self._mutate("release", connection_id)

    async def owner_of(self, connection_id: str) -> str | None:
        """The node holding a connection id (its claim), or None: where a request about that
        connection is forwarded (issue 9). BackendUnavailable when Redis does not answer."""
        _check_name("connection id", connection_id)
        if connection_id in self._claims:
            await trio.lowlevel.checkpoint()
            return self.node_id
        value = await self._call(self._redis.get, f"{self.prefix}:id:{connection_id}")
        return None if value is None else _text(value)

    async def live_nodes(self) -> list[str]:
        """Nodes whose heartbeat is current (this one included): where a draining pod sends
        new sessions (issue 9). BackendUnavailable when Redis does not answer."""
        members = await self._call(self._redis.smembers, f"{self.prefix}:nodes")
        nodes = sorted(_text(n) for n in members)
        if not nodes:
            return []
        alive = await self._call(
            self._redis.mget, [f"{self.prefix}:node:{n}:alive" for n in nodes]
        )
        return [n for n, beat in zip(nodes, alive, strict=True) if beat is not None]

    async def add_publisher(self, room: str, info: PublisherInfo) -> None:
        await self._add(room, "pub", info.publisher_id, encode_publisher(info))

    async def remove_publisher(self, room: str, publisher_id: str) -> None:
        await self._remove(room, "pub", publisher_id)

    async def add_subscriber(self, room: str, info: SubscriberInfo) -> None:
        await self._add(room, "sub", info.subscriber_id, encode_subscriber(info))

    async def remove_subscriber(self, room: str, subscriber_id: str) -> None:
        await self._remove(room, "sub", subscriber_id)

    async def _add(self, room: str, kind: str, connection_id: str, info: bytes) -> None:
        _check_name("room", room)
        _check_name("connection id", connection_id)
        await self._mutate("add", room, kind, connection_id, info)

    async def _remove(self, room: str, kind: str, connection_id: str) -> None:
        _check_name("room", room)
        _check_name("connection id", connection_id)
        await self._mutate("remove", room, kind, connection_id)

    async def room(self, room: str) -> RoomState | None:
        _check_name("room", room)
        states = await self._read(room)
        return states[0] if states else None

    async def rooms(self) -> list[RoomState]:
        return sorted(await self._read(""), key=lambda s: s.room)

    async def _read(self, room: str) -> list[RoomState]:
        states = []
        for name, pubs, subs in await self._script("read", room):
            state = RoomState(_text(name))
            for key, value in zip(pubs[::2], pubs[1::2], strict=True):
                try:
                    state.publishers[_text(key)] = decode_publisher(value)
                except CodecError as exc:  # a newer release's record, or damage: skip it
                    log.warning("undecodable publisher record: %s", exc, extra={"room": name})
            for key, value in zip(subs[::2], subs[1::2], strict=True):
                try:
                    state.subscribers[_text(key)] = decode_subscriber(value)
                except CodecError as exc:
                    log.warning("undecodable subscriber record: %s", exc, extra={"room": name})
            if not state.empty:
                states.append(state)
        return states

    # -- health and lifetime ----------------------------------------------------------------

    async def ready(self) -> bool:
        """Redis answers a PING within ~1 s (``/readyz``)."""
        try:
            await self._call(self._redis.ping, timeout=READY_TIMEOUT)
        except (BackendUnavailable, rexc.RedisError):
            return False
        return True

    async def close(self) -> None:
        """Stop ``run`` and say goodbye: other pods sweep whatever we still host at once.

        Deleting our heartbeat (rather than our members) lets a live pod remove them *and*
        announce their departure, exactly as if we had crashed, only sooner.
        """
        if self._run_scope is not None:
            self._run_scope.cancel()
            # A heartbeat already on the wire must not land after the goodbye.
            with trio.move_on_after(2.0):
                await self._run_done.wait()
        try:
            await self._call(
                self._redis.delete, f"{self.prefix}:node:{self.node_id}:alive", timeout=1.0
            )
        except (BackendUnavailable, rexc.RedisError):
            pass
        try:
            await self._call(self._redis.aclose, timeout=1.0)
        except (BackendUnavailable, rexc.RedisError):
            pass

    async def run(
        self,
        local: LocalTruth,
        on_dead_node: DeadNodeHandler,
        *,
        on_revived: RevivedHandler | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Heartbeat, TTL refresh, re-assert and sweep, until cancelled (or ``close()``).

        ``on_dead_node`` is also called with this node's own id when a re-assert removed
        members Redis still listed but we no longer host (a removal that failed while Redis
        was unreachable), so their departure is announced once as well.
        ``on_revived`` is called after every re-assert: other pods may have swept us meanwhile
        (a partition longer than the heartbeat TTL) and announced our publishers' departure,
        or joined while Redis had forgotten them (restarted empty), so the SFU announces them
        again (a repeated PubJoin is harmless).
        Started once the first heartbeat was tried, whether or not Redis answered.
        """
        if self._run_scope is not None:
            raise RuntimeError("RedisStateStore.run is already running")
        self._on_dead_node = on_dead_node
        self._run_done = done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._run_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._maintain_loop, local, on_revived)
                    await nursery.start(self._heartbeat_loop)
                    nursery.start_soon(self._sweep_loop)
                    task_status.started()
        finally:
            self._nursery = None
            self._on_dead_node = None
            self._run_scope = None
            done.set()

    # -- background -------------------------------------------------------------------------

    @property
    def _log_extra(self) -> dict[str, object]:
        return {"node": self.node_id}

    def _failed(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.warning("redis unreachable: %s", exc, extra=self._log_extra)

    def _answered(self) -> None:
        if self._outage:
            self._outage = False
            log.info("redis reachable again", extra=self._log_extra)

    async def _heartbeat_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Only the heartbeat: nothing slow may delay it, or other pods would sweep us.

        Every ``_sweep_every`` beats the same script also lists the dead nodes (cheap: one
        EXISTS per known node); sweeping them is the sweep loop's work.
        """
        beat = 0
        while True:
            find = self._sweep_every > 0 and beat % self._sweep_every == 0
            beat += 1
            try:
                has_session, swept, dead = await self._script("heartbeat", "1" if find else "0")
                self._answered()
                if dead:
                    self._dead_found = [_text(d) for d in dead]
                    self._sweep_now.set()
                if swept:
                    self._revive_pending = True
                    log.warning("other pods had swept this node", extra=self._log_extra)
                if not has_session:
                    self._dirty = True
            except BackendUnavailable as exc:
                self._dirty = True
                self._failed(exc)
            except Exception:
                self._dirty = True
                log.exception("redis heartbeat failed", extra=self._log_extra)
            else:
                # Woken only with work to do: a wake-up per heartbeat is a Trio pass per second.
                if self._dirty or self._revive_pending or self._refresh_due():
                    self._wake.set()
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(self.heartbeat_interval)

    def _refresh_due(self) -> bool:
        return trio.current_time() >= self._next_refresh

    async def _maintain_loop(self, local: LocalTruth, on_revived: RevivedHandler | None) -> None:
        """After an answered heartbeat: re-assert if needed, refresh TTLs when due."""
        self._next_refresh = 0.0
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                if self._dirty or self._revive_pending:
                    await self._reconcile(local)
                    self._next_refresh = 0.0
                    self._revive_pending = False
                    # After any re-assert, not only after a sweep: a pod that joined while Redis
                    # had forgotten our publishers (restarted empty) never heard of them, and a
                    # repeated PubJoin is harmless to those who had.
                    if on_revived is not None and self._nursery is not None:
                        self._nursery.start_soon(self._notify, on_revived)
                if self._refresh_due():
                    await self._script("refresh", timeout=RECONCILE_TIMEOUT)
                    self._next_refresh = trio.current_time() + self.refresh_interval
            except BackendUnavailable as exc:
                self._failed(exc)
            except Exception:
                # A bug (ours, a Redis surprise, the local truth raising) must not end the
                # loop: the pod would stop re-asserting while it serves.
                log.exception("redis state maintenance failed", extra=self._log_extra)

    async def _reconcile(self, local: LocalTruth) -> None:
        """Make Redis hold exactly what this node hosts (the issue's "re-assert")."""
        async with self._gate.exclusive():
            self._dirty = False
            try:
                publishers, subscribers = local()
                flat: list[str | bytes] = []
                member_ids: set[str] = set()
                for room, pub in publishers:
                    flat += [room, "pub", pub.publisher_id, encode_publisher(pub)]
                    member_ids.add(pub.publisher_id)
                for room, sub in subscribers:
                    flat += [room, "sub", sub.subscriber_id, encode_subscriber(sub)]
                    member_ids.add(sub.subscriber_id)
                claims = sorted(self._claims - member_ids)
                removed, conflicts = await self._script(
                    "reconcile",
                    secrets.token_hex(8),
                    len(flat) // 4,
                    *flat,
                    len(claims),
                    *claims,
                    timeout=RECONCILE_TIMEOUT,
                )
            except BaseException:
                self._dirty = True
                raise
        for conflict in conflicts:
            # We were swept while cut off and another pod took the id over: its entry wins.
            self._claims.discard(_text(conflict))
            log.warning(
                "id taken over by another pod", extra={**self._log_extra, "peer": _text(conflict)}
            )
        log.info(
            "re-asserted local state",
            extra={
                **self._log_extra,
                "publishers": len(publishers),
                "subscribers": len(subscribers),
                "removed": len(removed),
            },
        )
        if removed and self._nursery is not None:
            self._dead_node_found(self._nursery, self.node_id, removed)

    async def _sweep_loop(self) -> None:
        """Sweep the dead nodes the heartbeat found, or look for them here every
        ``sweep_interval`` when that is shorter than the heartbeat's."""
        while True:
            try:
                if self._sweep_every:
                    await self._sweep_now.wait()
                    self._sweep_now = trio.Event()
                    found, self._dead_found = self._dead_found, []
                else:
                    found = [_text(d) for d in await self._script("find_dead")]
                for node in found:
                    removed = await self._script("sweep", node, timeout=RECONCILE_TIMEOUT)
                    if removed is not None:
                        assert self._nursery is not None
                        self._dead_node_found(self._nursery, node, removed)
            except BackendUnavailable as exc:
                self._failed(exc)  # the heartbeat loop logs recovery
            except Exception:
                log.exception("redis sweep failed", extra=self._log_extra)
            if not self._sweep_every:
                await trio.sleep(self.sweep_interval)

    def _dead_node_found(self, nursery: trio.Nursery, node: str, tokens: list[Any]) -> None:
        removed = [split_token(_text(t)) for t in tokens]
        log.info(
            "swept members of a dead node",
            extra={**self._log_extra, "dead_node": node, "removed": len(removed)},
        )
        handler = self._on_dead_node
        if handler is not None:
            # Its own task: announcing goes through NATS, which may be slow or down, and
            # must hold back neither the sweep nor a claim that found the dead node.
            nursery.start_soon(self._notify, handler, node, removed)

    async def _notify(self, handler: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await handler(*args)
        except Exception:
            log.exception("state store handler failed", extra=self._log_extra)
