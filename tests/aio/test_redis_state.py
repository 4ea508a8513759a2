"""RedisStateStore against a real, disposable redis-server (tests/services.py).

What issue 4 asks of the room state, each proved on a server the test can stop, freeze, kill
and restart: the same answers as the in-memory store, nothing lost when two pods write one room
at once, ids unique across pods, every key expiring unless its owner lives, a killed pod swept
within 15 s, Redis restarted empty re-filled within 10 s, and Redis down answered with
``BackendUnavailable`` within 2 s while the background loop survives.
"""

from __future__ import annotations

import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
import trio

from tests.services import RedisServer, redis_server
from trio_sfu.cluster.aio import BackendUnavailable, open_asyncio
from trio_sfu.cluster.codec import encode_publisher
from trio_sfu.cluster.redis_state import RedisStateStore
from trio_sfu.sfu.model import CodecInfo, PublisherInfo, SubscriberInfo, TrackInfo
from trio_sfu.sfu.state import MemoryStateStore, RoomState, StateStore

PREFIX = "t-sfu"
#: Short intervals for tests that only need the mechanism, not the production timing.
FAST = {"heartbeat_interval": 0.1, "heartbeat_ttl": 0.6, "sweep_interval": 0.2}

VP8 = CodecInfo("VP8", 90000, None, None, 96, ("nack", "nack pli", "ccm fir", "goog-remb"))
RTX = CodecInfo("rtx", 90000, None, "apt=96", 97)
OPUS = CodecInfo("opus", 48000, 2, "minptime=10;useinbandfec=1", 111, ("transport-cc",))


def pub(pid: str, node: str, *, audio: int = 1, video: int = 1) -> PublisherInfo:
    tracks = [TrackInfo(f"{pid}-a{i}", "audio", (OPUS,)) for i in range(audio)]
    tracks += [TrackInfo(f"{pid}-v{i}", "video", (VP8, RTX)) for i in range(video)]
    return PublisherInfo(pid, pid.split("-")[0], node, tuple(tracks))


def sub(sid: str, node: str) -> SubscriberInfo:
    return SubscriberInfo(sid, sid.split("-")[0], node)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


class Inspector:
    """A plain blocking client, for looking at what the stores wrote (in a worker thread)."""

    def __init__(self, server: RedisServer) -> None:
        self.client = redis.Redis.from_url(server.url, socket_timeout=5)

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(self.client, *args))

    async def keys(self) -> dict[str, int]:
        """Every key of the test prefix → its PTTL in ms."""

        def scan(c: redis.Redis) -> dict[str, int]:
            return {k.decode(): c.pttl(k) for k in c.scan_iter(f"{PREFIX}:*", count=1000)}

        return dict(await self(scan))

    async def smembers(self, key: str) -> set[str]:
        return {m.decode() for m in await self(lambda c: c.smembers(key))}


class Node:
    """One pod's view: its store, the truth it hosts, and what it was told about dead nodes."""

    def __init__(self, url: str, node_id: str, **options: float) -> None:
        self.id = node_id
        self.store = RedisStateStore(url, node_id, prefix=PREFIX, **options)
        self.pubs: dict[str, tuple[str, PublisherInfo]] = {}
        self.subs: dict[str, tuple[str, SubscriberInfo]] = {}
        self.dead: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.revived = 0
        self.scope = trio.CancelScope()
        self.running = False

    def truth(self) -> tuple[list[tuple[str, PublisherInfo]], list[tuple[str, SubscriberInfo]]]:
        return list(self.pubs.values()), list(self.subs.values())

    async def on_dead(self, node: str, removed: list[tuple[str, str, str]]) -> None:
        self.dead.append((node, sorted(removed)))

    async def on_revived(self) -> None:
        self.revived += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.scope = trio.CancelScope()
        self.running = True
        try:
            with self.scope:
                await self.store.run(
                    self.truth, self.on_dead, on_revived=self.on_revived, task_status=task_status
                )
        finally:
            self.running = False

    def kill(self) -> None:
        """The pod stops dead: no goodbye, nothing cleaned (what SIGKILL leaves behind)."""
        self.scope.cancel()

    async def add_pub(self, room: str, pid: str, **kw: int) -> PublisherInfo:
        info = pub(pid, self.id, **kw)
        self.pubs[pid] = (room, info)
        await self.store.add_publisher(room, info)
        return info

    async def remove_pub(self, pid: str) -> None:
        room, _ = self.pubs.pop(pid)
        await self.store.remove_publisher(room, pid)

    async def add_sub(self, room: str, sid: str) -> SubscriberInfo:
        info = sub(sid, self.id)
        self.subs[sid] = (room, info)
        await self.store.add_subscriber(room, info)
        return info

    async def remove_sub(self, sid: str) -> None:
        room, _ = self.subs.pop(sid)
        await self.store.remove_subscriber(room, sid)

    def expected(self, room: str) -> RoomState:
        return expected_room(room, self)


def expected_room(room: str, *nodes: Node) -> RoomState:
    state = RoomState(room)
    for node in nodes:
        state.publishers.update({p: i for p, (r, i) in node.pubs.items() if r == room})
        state.subscribers.update({s: i for s, (r, i) in node.subs.items() if r == room})
    return state


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll until ``check`` holds; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.05)


@asynccontextmanager
async def cluster(*nodes: Node) -> AsyncIterator[trio.Nursery]:
    """Run the nodes' stores in one asyncio-enabled nursery; cancel and close them after."""
    async with open_asyncio(), trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for node in nodes:
                    await node.store.close()


# -- the same answers as the in-memory store ------------------------------------------------


async def scenario(store: StateStore, node: str) -> list[object]:
    """A pod's life in one room and another, observed after every step that can be seen."""
    seen: list[object] = []

    async def look() -> None:
        rooms = await store.rooms()
        seen.append([(s.room, s.publishers, s.subscribers) for s in rooms])
        seen.append([s.as_json() for s in rooms])
        for name in ("main", "side.room-2", "nowhere"):
            state = await store.room(name)
            seen.append(None if state is None else (state.as_json(), state.publishers))

    for cid in ("alice-1", "bob-1", "carol-1", "dave-1", "erin-1"):
        seen.append(await store.claim_id(cid, node))
    seen.append(await store.claim_id("alice-1", node))  # a second claim is refused (409)
    await look()
    await store.add_publisher("main", pub("alice-1", node))
    await store.add_subscriber("main", sub("bob-1", node))
    await store.add_subscriber("main", sub("carol-1", node))
    await store.add_publisher("side.room-2", pub("dave-1", node, audio=0, video=2))
    await store.add_subscriber("side.room-2", sub("erin-1", node))
    await look()
    # a track change re-adds the publisher with new tracks
    await store.add_publisher("main", pub("alice-1", node, audio=1, video=0))
    await store.remove_subscriber("main", "bob-1")
    await store.remove_subscriber("main", "nobody-1")  # unknown: nothing happens
    await store.remove_publisher("main", "dave-1")  # wrong room: nothing happens
    await store.remove_publisher("nowhere", "alice-1")
    await look()
    await store.release_id("bob-1")
    seen.append(await store.claim_id("bob-1", node))  # released ids can be claimed again
    await store.release_id("zed-1")  # never claimed: nothing happens
    await store.remove_publisher("side.room-2", "dave-1")
    await store.remove_subscriber("side.room-2", "erin-1")
    await look()  # side.room-2 is empty: gone from the list
    await store.remove_publisher("main", "alice-1")
    await store.remove_subscriber("main", "carol-1")
    await look()
    return seen


async def test_same_answers_as_memory_store(server: RedisServer) -> None:
    memory = await scenario(MemoryStateStore(), "pod-a")
    a = Node(server.url, "pod-a")
    async with cluster(a):
        from_redis = await scenario(a.store, "pod-a")
    assert from_redis == memory
    # the scenario saw something at every step (a test of nothing would also be "equal")
    assert any(isinstance(x, list) and x and isinstance(x[0], dict) for x in memory)


async def test_every_pod_reads_the_same_room(server: RedisServer) -> None:
    a, b = Node(server.url, "pod-a", **FAST), Node(server.url, "pod-b", **FAST)
    async with cluster(a, b):
        await a.add_pub("main", "alice-1")
        await b.add_pub("main", "bob-1", audio=2, video=0)
        await b.add_sub("main", "carol-1")
        views = [await n.store.room("main") for n in (a, b)]
        expected = expected_room("main", a, b)
        assert views == [expected, expected]
        assert [s.as_json() for s in await a.store.rooms()] == [expected.as_json()]
        assert await b.store.rooms() == await a.store.rooms()
        assert expected.as_json()["publishers"] == [
            {"id": "alice-1", "user": "alice", "audio": 1, "video": 1},
            {"id": "bob-1", "user": "bob", "audio": 2, "video": 0},
        ]


async def test_names_are_checked() -> None:
    with pytest.raises(ValueError):
        RedisStateStore("redis://127.0.0.1:1/0", "bad:node")
    with pytest.raises(ValueError):
        RedisStateStore("redis://127.0.0.1:1/0", "n", heartbeat_interval=5, heartbeat_ttl=5)
    store = RedisStateStore("redis://127.0.0.1:1/0", "n")
    with pytest.raises(ValueError):
        await store.add_publisher("a:b", pub("alice-1", "n"))
    with pytest.raises(ValueError):
        await store.claim_id("x\0y", "n")
    with pytest.raises(ValueError):
        await store.claim_id("alice-1", "another-node")


# -- two pods at once -----------------------------------------------------------------------


async def test_two_pods_change_one_room_concurrently(server: RedisServer) -> None:
    """The issue's proof: 100 random operations per pod, interleaved; Redis equals the truth."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    a, b = Node(server.url, "pod-a", **FAST), Node(server.url, "pod-b", **FAST)
    lanes = 4  # concurrent operations per pod, each lane on its own ids

    async def lane(node: Node, lane_no: int, ops: int) -> None:
        ids = [f"{node.id}-{lane_no}-{i}" for i in range(5)]
        for _ in range(ops):
            cid = rng.choice(ids)
            if cid in node.pubs:
                await (node.remove_pub(cid) if rng.random() < 0.6 else node.add_pub("main", cid))
            elif cid in node.subs:
                await node.remove_sub(cid)
            elif rng.random() < 0.5:
                await node.add_pub("main", cid, video=rng.randrange(3))
            else:
                await node.add_sub("main", cid)
            await trio.sleep(rng.random() * 0.002)

    async with cluster(a, b):
        async with trio.open_nursery() as nursery:
            for node in (a, b):
                for n in range(lanes):
                    nursery.start_soon(lane, node, n, 100 // lanes)
        state = await a.store.room("main")
        expected = expected_room("main", a, b)
        assert (state or RoomState("main")) == expected, f"seed {seed}"
        inspect = Inspector(server)
        for node in (a, b):
            tokens = await inspect.smembers(f"{PREFIX}:node:{node.id}:members")
            assert tokens == {f"main\0pub\0{p}" for p in node.pubs} | {
                f"main\0sub\0{s}" for s in node.subs
            }, f"seed {seed}"
        assert await inspect.smembers(f"{PREFIX}:rooms") == (
            set() if expected.empty else {"main"}
        ), f"seed {seed}"


# -- ids across pods ------------------------------------------------------------------------


async def test_claim_id_across_pods(server: RedisServer) -> None:
    a, b = Node(server.url, "pod-a", **FAST), Node(server.url, "pod-b", **FAST)
    inspect = Inspector(server)
    async with cluster(a, b):
        assert await a.store.claim_id("alice-1", "pod-a")
        assert not await b.store.claim_id("alice-1", "pod-b")
        assert not await a.store.claim_id("alice-1", "pod-a")  # ours already: still refused
        await b.store.release_id("alice-1")  # not B's: a no-op
        assert await inspect(lambda c: c.get(f"{PREFIX}:id:alice-1")) == b"pod-a"
        assert not await b.store.claim_id("alice-1", "pod-b")
        await trio.sleep(FAST["heartbeat_ttl"] * 2)  # A lives on: its claim is kept
        assert not await b.store.claim_id("alice-1", "pod-b")
        await a.store.release_id("alice-1")
        assert await b.store.claim_id("alice-1", "pod-b")
        assert not await a.store.claim_id("alice-1", "pod-a")
        assert a.dead == b.dead == []


async def test_claim_takes_over_the_id_of_a_dead_pod(server: RedisServer) -> None:
    """A client reconnecting with its id after its pod was killed is not refused (409)."""
    a = Node(server.url, "pod-a", **FAST)
    # B sweeps rarely, so only the claim can have found A dead.
    b = Node(server.url, "pod-b", heartbeat_interval=0.1, heartbeat_ttl=0.6, sweep_interval=600)
    inspect = Inspector(server)
    async with cluster(a, b):
        assert await a.store.claim_id("alice-1", "pod-a")
        await a.add_pub("main", "alice-1")
        a.kill()
        await eventually(
            lambda: inspect(lambda c: c.exists(f"{PREFIX}:node:pod-a:alive") == 0), timeout=5
        )
        assert await b.store.claim_id("alice-1", "pod-b")
        await eventually(lambda: _true(b.dead), timeout=5)
        assert b.dead == [("pod-a", [("main", "pub", "alice-1")])]
        assert await b.store.room("main") is None
        assert await inspect(lambda c: c.get(f"{PREFIX}:id:alice-1")) == b"pod-b"


async def _true(value: object) -> bool:
    return bool(value)


# -- expiry, heartbeat and sweeping ---------------------------------------------------------


async def test_every_key_has_a_ttl_refreshed_while_its_owner_lives(server: RedisServer) -> None:
    a = Node(server.url, "pod-a", room_ttl=2.0, **FAST)
    b = Node(server.url, "pod-b", room_ttl=2.0, **FAST)
    inspect = Inspector(server)
    async with cluster(a, b):
        await a.store.claim_id("alice-1", "pod-a")
        await a.add_pub("main", "alice-1")
        await b.store.claim_id("bob-1", "pod-b")
        await b.add_sub("main", "bob-1")
        await a.store.claim_id("carol-1", "pod-a")  # claimed, not (yet) a member
        await a.add_sub("side", "dave-1")
        expected_keys = {
            f"{PREFIX}:{k}"
            for k in (
                "rooms", "nodes", "room:main:pubs", "room:main:subs", "room:side:subs",
                "id:alice-1", "id:bob-1", "id:carol-1",
                *(f"node:{n}:{w}" for n in ("pod-a", "pod-b")
                  for w in ("alive", "members", "ids", "session")),
            )
        }  # fmt: skip
        # Three room TTLs: without refreshing, every room key would have expired twice over.
        for _ in range(15):
            keys = await inspect.keys()
            assert set(keys) == expected_keys
            for key, ttl in keys.items():
                limit = 600 if key.endswith(":alive") else 2000
                assert 0 < ttl <= limit, (key, ttl)
            await trio.sleep(0.4)
        assert await a.store.room("main") == expected_room("main", a, b)
        assert a.dead == b.dead == []


async def sweep_scenario(server: RedisServer, timeout: float, **options: float) -> None:
    """A is killed while hosting members in two rooms; B sweeps it and announces them."""
    a, b = Node(server.url, "pod-a", **options), Node(server.url, "pod-b", **options)
    inspect = Inspector(server)
    async with cluster(a, b):
        for cid in ("alice-1", "bob-1", "carol-1", "idle-1"):
            assert await a.store.claim_id(cid, "pod-a")
        await a.add_pub("main", "alice-1")
        await a.add_sub("main", "bob-1")
        await a.add_pub("only-a", "carol-1", audio=1, video=0)
        assert await b.store.claim_id("dave-1", "pod-b")
        await b.add_sub("main", "dave-1")
        await trio.sleep(options.get("sweep_interval", 2.0) * 2)
        assert b.dead == []  # nobody is swept while alive

        a.kill()
        await eventually(lambda: _true(b.dead), timeout=timeout)
        assert b.dead == [
            ("pod-a", [("main", "pub", "alice-1"), ("main", "sub", "bob-1"),
                       ("only-a", "pub", "carol-1")]),
        ]  # fmt: skip
        keys = await inspect.keys()
        assert not [k for k in keys if "pod-a" in k], keys
        owners = [await inspect(lambda c, k=k: c.get(k)) for k in keys if ":id:" in k]
        assert owners == [b"pod-b"]
        assert await inspect.smembers(f"{PREFIX}:nodes") == {"pod-b"}
        assert await b.store.rooms() == [expected_room("main", b)]
        assert await b.store.claim_id("alice-1", "pod-b")  # A's ids are free again
        await trio.sleep(options.get("sweep_interval", 2.0) * 2)
        assert len(b.dead) == 1  # announced once


async def test_killed_pod_is_swept(server: RedisServer) -> None:
    await sweep_scenario(server, timeout=5, **FAST)


@pytest.mark.slow
async def test_killed_pod_is_swept_within_15_s_with_default_timing(server: RedisServer) -> None:
    await sweep_scenario(server, timeout=15)


async def test_close_lets_other_pods_sweep_at_once(server: RedisServer) -> None:
    # A's heartbeat would last 60 s: only its goodbye can explain a sweep within 10 s.
    a = Node(server.url, "pod-a", heartbeat_interval=1, heartbeat_ttl=60, sweep_interval=0.2)
    b = Node(server.url, "pod-b", **FAST)
    async with cluster(a, b):
        await a.store.claim_id("alice-1", "pod-a")
        await a.add_pub("main", "alice-1")
        a.kill()
        await a.store.close()
        await eventually(lambda: _true(b.dead), timeout=10)
        assert b.dead == [("pod-a", [("main", "pub", "alice-1")])]


async def test_pod_swept_during_a_partition_reasserts_and_is_told(server: RedisServer) -> None:
    """A pod cut off longer than its heartbeat TTL was announced gone; it comes back whole."""
    a, b = Node(server.url, "pod-a", **FAST), Node(server.url, "pod-b", **FAST)
    async with cluster(a, b) as nursery:
        await a.store.claim_id("alice-1", "pod-a")
        await a.add_pub("main", "alice-1")
        a.kill()  # the partition: A stops talking to Redis but keeps its connections
        await eventually(lambda: _true(b.dead), timeout=5)
        assert await b.store.room("main") is None
        await nursery.start(a.run)  # the partition heals
        await eventually(lambda: _true(a.revived), timeout=5)
        assert await b.store.room("main") == a.expected("main")
        assert not await b.store.claim_id("alice-1", "pod-b")
        assert a.revived >= 1  # told after the re-assert that follows the sweep


async def test_a_restarted_process_reusing_its_node_id_leaves_no_ghost(
    server: RedisServer,
) -> None:
    """A container restarted under the same node id within the heartbeat TTL: the new process
    re-asserts its (empty) truth at start, so the old process's members are removed and
    announced, instead of living on under the new process's TTL refreshes."""
    old = Node(server.url, "pod-a", **FAST)
    watcher = Node(server.url, "pod-b", **FAST)
    async with cluster(old, watcher) as nursery:
        await old.store.claim_id("alice-1", "pod-a")
        await old.add_pub("main", "alice-1")
        old.kill()  # gone without a goodbye; its heartbeat is still alive
        new = Node(server.url, "pod-a", **FAST)
        await nursery.start(new.run)
        await eventually(lambda: _true(new.dead), timeout=5)
        assert new.dead == [("pod-a", [("main", "pub", "alice-1")])]
        assert await watcher.store.room("main") is None
        assert await watcher.store.claim_id("alice-1", "pod-b")  # the id is free again


# -- Redis failures -------------------------------------------------------------------------


async def test_redis_restarted_empty_is_refilled_within_10_s(server: RedisServer) -> None:
    a, b = Node(server.url, "pod-a"), Node(server.url, "pod-b")  # default timing
    inspect = Inspector(server)
    async with cluster(a, b):
        for cid in ("alice-1", "bob-1", "carol-1"):
            assert await a.store.claim_id(cid, "pod-a")
        await a.add_pub("main", "alice-1")
        await a.add_sub("main", "bob-1")
        assert await b.store.claim_id("dave-1", "pod-b")
        await b.add_pub("main", "dave-1")
        before = set(await inspect.keys())

        await trio.to_thread.run_sync(server.restart)
        assert await inspect.keys() == {}

        async def refilled() -> bool:
            try:
                return await a.store.room("main") == expected_room("main", a, b)
            except BackendUnavailable:
                return False

        await eventually(refilled, timeout=10)
        assert not await b.store.claim_id("carol-1", "pod-b")  # claims came back too
        await eventually(lambda: _same_keys(inspect, before), timeout=10)
        assert all(ttl > 0 for ttl in (await inspect.keys()).values())
        assert a.dead == b.dead == []  # nobody was announced gone
        # Both re-asserted, and both were told so: whoever joined while Redis had forgotten
        # them must hear of their publishers again.
        assert a.revived >= 1 and b.revived >= 1


async def _same_keys(inspect: Inspector, keys: set[str]) -> bool:
    return set(await inspect.keys()) == keys


async def test_redis_down_fails_fast_and_recovers(server: RedisServer) -> None:
    a = Node(server.url, "pod-a", **FAST)
    async with cluster(a):
        for cid in ("alice-1", "bob-1"):
            assert await a.store.claim_id(cid, "pod-a")
        await a.add_pub("main", "alice-1")
        await a.add_sub("main", "bob-1")
        assert await a.store.ready()

        await trio.to_thread.run_sync(server.stop)
        with trio.fail_after(1.5):
            assert not await a.store.ready()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: a.store.claim_id("carol-1", "pod-a"),
            lambda: a.store.release_id("carol-1"),
            lambda: a.add_pub("main", "carol-1"),  # joins the truth, as if the SFU kept it
            lambda: a.remove_sub("bob-1"),  # leaves the truth: the SFU forgot it
            lambda: a.store.add_subscriber("main", sub("erin-1", "pod-a")),
            lambda: a.store.remove_publisher("main", "alice-1"),
            lambda: a.store.room("main"),
            a.store.rooms,
        ]
        for call in calls:
            with trio.fail_after(2.0), pytest.raises(BackendUnavailable):
                await call()
        await trio.sleep(FAST["heartbeat_interval"] * 5)
        assert a.running  # the background loop survived

        await trio.to_thread.run_sync(server.start)  # back, and empty

        async def recovered() -> bool:
            try:
                return await a.store.room("main") == a.expected("main")
            except BackendUnavailable:
                return False

        await eventually(recovered, timeout=10)
        assert await a.store.ready()
        assert a.running


async def test_writes_lost_in_a_frozen_redis_are_reconciled(server: RedisServer) -> None:
    """Redis hangs (its data kept): writes time out, some land late; the local truth wins."""
    a = Node(server.url, "pod-a", heartbeat_interval=0.1, heartbeat_ttl=30, sweep_interval=0.2)
    inspect = Inspector(server)
    assert server.proc is not None
    async with cluster(a):
        await a.add_pub("main", "alice-1")
        await a.add_sub("main", "bob-1")
        # A join the SFU rolled back after a timeout, whose write reached Redis anyway (which
        # late writes land is up to the client library's connection handling, so the test
        # plants one exactly as the add script writes it).
        ghost = encode_publisher(pub("ghost-1", "pod-a"))

        def plant(c: redis.Redis) -> None:
            c.hset(f"{PREFIX}:room:main:pubs", "ghost-1", ghost)
            c.sadd(f"{PREFIX}:node:pod-a:members", "main\0pub\0ghost-1")

        await inspect(plant)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(1.5):
                assert not await a.store.ready()
            with trio.fail_after(2.0), pytest.raises(BackendUnavailable):
                await a.remove_sub("bob-1")  # the SFU forgets bob whatever Redis says
        finally:
            server.proc.send_signal(signal.SIGCONT)

        async def healed() -> bool:
            return await a.store.room("main") == a.expected("main")

        await eventually(healed, timeout=10)
        await eventually(lambda: _true(a.dead), timeout=5)
        # What Redis held beyond the truth is announced gone, as any departure would be:
        # the ghost, and bob unless his removal landed late.
        [(node, removed)] = a.dead
        assert node == "pod-a"
        assert ("main", "pub", "ghost-1") in removed
        assert set(removed) <= {("main", "pub", "ghost-1"), ("main", "sub", "bob-1")}
        assert await inspect.smembers(f"{PREFIX}:node:pod-a:members") == {"main\0pub\0alice-1"}


async def test_swept_stays_bounded(server: RedisServer) -> None:
    """Issue 9: every ended pod lands in ``swept``; it must not grow without bound."""
    b = Node(server.url, "pod-b", **FAST)
    inspect = Inspector(server)
    dead = [f"gone-{i}" for i in range(300)]
    await inspect(lambda c: c.sadd(f"{PREFIX}:nodes", *dead))
    async with cluster(b):
        await eventually(lambda: _true(len(b.dead) >= 300), timeout=30)
        assert await inspect(lambda c: c.scard(f"{PREFIX}:swept")) == 256
        assert await inspect.smembers(f"{PREFIX}:nodes") == {"pod-b"}


async def test_owner_of_and_live_nodes(server: RedisServer) -> None:
    """What forwarding reads (issue 9): who holds an id, and which pods are alive."""
    a, b = Node(server.url, "pod-a", **FAST), Node(server.url, "pod-b", **FAST)
    async with cluster(a, b):
        assert await a.store.claim_id("alice-1", "pod-a")
        assert await b.store.owner_of("alice-1") == "pod-a"
        assert await a.store.owner_of("alice-1") == "pod-a"
        assert await b.store.owner_of("nobody-1") is None
        assert await b.store.live_nodes() == ["pod-a", "pod-b"]
        a.kill()
        await eventually(lambda: _true(b.dead), timeout=10)
        assert await b.store.live_nodes() == ["pod-b"]
        assert await b.store.owner_of("alice-1") is None


async def test_a_command_arms_no_asyncio_timer(server: RedisServer) -> None:
    """Issue 10: a Redis command's only deadline is the Trio one (``aio.call``). redis-py's
    socket timeout armed two asyncio timers per command, each waking trio-asyncio's loop once
    more when it fell due, long after the command was answered."""
    import asyncio

    node = Node(server.url, "pod-a", heartbeat_interval=600, heartbeat_ttl=1200)
    async with open_asyncio():
        loop = asyncio.get_event_loop()
        armed: list[float] = []
        call_at, call_later = loop.call_at, loop.call_later

        def at(when: float, *args: Any, **kw: Any) -> Any:
            armed.append(when)
            return call_at(when, *args, **kw)

        def later(delay: float, *args: Any, **kw: Any) -> Any:
            armed.append(delay)
            return call_later(delay, *args, **kw)

        loop.call_at, loop.call_later = at, later  # type: ignore[method-assign]
        try:
            assert await node.store.ready()  # connects (its connect timeout may arm a timer)
            armed.clear()
            for _ in range(3):
                assert await node.store.ready()
                await node.add_pub("main", "alice-1")
                assert await node.store.room("main") == node.expected("main")
            assert armed == []
        finally:
            await node.store.close()


def _record_scripts(node: Node) -> list[str]:
    """The names of the scripts ``node``'s store runs from now on, as each is answered."""
    names: list[str] = []
    run = node.store._script

    async def script(name: str, *args: Any, **kw: Any) -> Any:
        result = await run(name, *args, **kw)
        names.append(name)
        return result

    node.store._script = script  # type: ignore[method-assign]
    return names


async def test_the_heartbeat_looks_for_dead_nodes_in_its_own_round_trip(
    server: RedisServer,
) -> None:
    """Issue 10: with sweeps every other heartbeat, finding dead nodes costs no Redis command
    of its own; a dead pod is still swept and announced."""
    a = Node(server.url, "pod-a", heartbeat_interval=0.05, heartbeat_ttl=0.3, sweep_interval=0.1)
    b = Node(server.url, "pod-b", heartbeat_interval=0.05, heartbeat_ttl=0.3, sweep_interval=0.1)
    names = _record_scripts(b)
    async with cluster(a, b):
        await a.add_pub("main", "alice-1")
        a.kill()
        await eventually(lambda: _true(b.dead), timeout=10)
    assert b.dead == [("pod-a", [("main", "pub", "alice-1")])]
    assert "heartbeat" in names
    assert "find_dead" not in names
    # once, or again if a later beat listed the node before the first sweep ended (a no-op)
    assert names.count("sweep") >= 1


async def test_sweeps_more_often_than_heartbeats_look_on_their_own(server: RedisServer) -> None:
    a = Node(server.url, "pod-a", heartbeat_interval=0.05, heartbeat_ttl=0.3)
    b = Node(server.url, "pod-b", heartbeat_interval=1, heartbeat_ttl=5, sweep_interval=0.05)
    names = _record_scripts(b)
    async with cluster(a, b):
        await a.add_pub("main", "alice-1")
        a.kill()
        await eventually(lambda: _true(b.dead), timeout=10)
    assert b.dead == [("pod-a", [("main", "pub", "alice-1")])]
    assert names.count("find_dead") > names.count("heartbeat")


async def test_maintenance_is_woken_only_with_work(server: RedisServer) -> None:
    """Issue 10: once re-asserted and refreshed, the maintenance task sleeps through the
    heartbeats (each wake-up was one more pass of the pod's event loop a second)."""
    steps: list[str] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("_maintain_loop"):
                steps.append(task.name)

    a = Node(server.url, "pod-a", heartbeat_interval=0.05, heartbeat_ttl=0.3, sweep_interval=0.1)
    names = _record_scripts(a)
    async with cluster(a):
        await eventually(lambda: _true("refresh" in names), timeout=5)
        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        try:
            beats = names.count("heartbeat")
            await eventually(lambda: _true(names.count("heartbeat") >= beats + 10), timeout=10)
            assert steps == []
            start = len(names)
            a.store._dirty = True  # a write failed: the next heartbeat wakes it to re-assert
            await eventually(lambda: _true("reconcile" in names[start:]), timeout=5)
            assert steps
        finally:
            trio.lowlevel.remove_instrument(instrument)
