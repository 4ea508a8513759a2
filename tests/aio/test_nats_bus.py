"""NatsBus against a real nats-server: commands between pods, node commands, order, outages.

Each test starts its own nats-server (tests/services.py) on a free port, so it can stop and
restart it; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.services import NatsServer, nats_server
from trio_sfu.cluster.aio import BackendUnavailable, open_asyncio
from trio_sfu.cluster.nats_bus import NatsBus, until_cancelled_for_sure
from trio_sfu.sfu.bus import Bus
from trio_sfu.sfu.model import (
    Chat,
    Command,
    KeyframeRequest,
    Nack,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SubJoin,
    SubLeft,
    SubscriberInfo,
    TrackInfo,
)

#: The issue's bounds: a request needing NATS fails within 2 s; NATS back → working in 10 s.
FAIL_FAST = 2.0
RESUME = 10.0


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@asynccontextmanager
async def pods(
    url: str,
    *names: str,
    prefix: str = "test",
    setup: Callable[[NatsBus], None] | None = None,
) -> AsyncIterator[list[NatsBus]]:
    """One NatsBus per name, running, inside one trio-asyncio loop (as in one process)."""
    async with open_asyncio(), trio.open_nursery() as nursery:
        buses = [NatsBus(url, name, prefix=prefix) for name in names]
        for bus in buses:
            if setup is not None:
                setup(bus)
            await nursery.start(bus.run)
        yield buses
        nursery.cancel_scope.cancel()


async def receive(channel: trio.MemoryReceiveChannel[Command], timeout: float = 5.0) -> Command:
    with trio.fail_after(timeout):
        return await channel.receive()


async def nothing_arrives(channel: trio.MemoryReceiveChannel[Command], within: float) -> None:
    with trio.move_on_after(within):
        command = await channel.receive()
        pytest.fail(f"unexpected {command}")


def publisher(pid: str, node: str) -> PublisherInfo:
    return PublisherInfo(pid, pid.split("-")[0], node, (TrackInfo("t1", "video"),))


ONE_OF_EACH: list[Command] = [
    PubJoin("r1", publisher("alice-1", "a")),
    SubJoin("r1", SubscriberInfo("bob-1", "bob", "b")),
    Chat("r1", "bob-1", "hi alice"),
    KeyframeRequest("r1", "alice-1", "t1"),
    Nack("r1", "alice-1", "t1", (10, 11, 12)),
    SubLeft("r1", "bob-1"),
    PubLeft("r1", "alice-1"),
]


def test_nats_bus_is_a_bus() -> None:
    bus: Bus = NatsBus("nats://127.0.0.1:1", "a")
    assert bus is not None


async def test_every_member_hears_every_command_its_own_included(nats: NatsServer) -> None:
    async with pods(nats.url, "a", "b") as (a, b):
        assert await a.ready() and await b.ready()
        async with a.listen("r1") as at_a, b.listen("r1") as at_b:
            for command in ONE_OF_EACH:
                await a.publish("r1", command)
            for command in ONE_OF_EACH:
                assert await receive(at_a) == command
                assert await receive(at_b) == command


async def test_rooms_are_separate_even_with_dots_in_names(nats: NatsServer) -> None:
    # Raw, "a..b" is an invalid subject and "a.b" would be two tokens; hex keeps them apart.
    async with (
        pods(nats.url, "a", "b") as (a, b),
        b.listen("a.b") as dotted,
        b.listen("a..b") as double,
        b.listen("a") as plain,
    ):
        await a.publish("a..b", Chat("a..b", "x", "double"))
        await a.publish("a.b", Chat("a.b", "x", "dotted"))
        await a.publish("a", Chat("a", "x", "plain"))
        assert await receive(dotted) == Chat("a.b", "x", "dotted")
        assert await receive(double) == Chat("a..b", "x", "double")
        assert await receive(plain) == Chat("a", "x", "plain")
        await nothing_arrives(plain, 0.2)
        await nothing_arrives(dotted, 0.0)


async def test_prefixes_separate_clusters(nats: NatsServer) -> None:
    async with (
        pods(nats.url, "a", prefix="one") as (one,),
        pods(nats.url, "a", prefix="two") as (two,),
        two.listen("r") as at_two,
        one.listen("r") as at_one,
    ):
        await one.publish("r", Chat("r", "x", "for cluster one"))
        assert await receive(at_one) == Chat("r", "x", "for cluster one")
        await nothing_arrives(at_two, 0.3)


async def test_commands_arrive_in_publication_order(nats: NatsServer) -> None:
    async with pods(nats.url, "a", "b", "c") as (a, b, c), c.listen("r") as at_c:
        count = 300

        async def talk(bus: NatsBus) -> None:
            for i in range(count):
                await bus.publish("r", Chat("r", bus.node_id, str(i)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, a)
            nursery.start_soon(talk, b)
        seen: dict[str, list[int]] = {"a": [], "b": []}
        for _ in range(2 * count):
            command = await receive(at_c)
            assert isinstance(command, Chat)
            seen[command.from_id].append(int(command.text))
        # Interleaved between pods, but each pod's commands in the order it sent them.
        assert seen == {"a": list(range(count)), "b": list(range(count))}
        await nothing_arrives(at_c, 0.2)


async def test_node_commands_reach_only_that_node(nats: NatsServer) -> None:
    async with (
        pods(nats.url, "pod-a", "pod-b") as (a, b),
        a.listen_node() as at_a,
        b.listen_node() as at_b,
    ):
        request = KeyframeRequest("r", "alice-1", "t1")
        await a.send_to_node("pod-b", request)
        assert await receive(at_b) == request
        await b.send_to_node("pod-a", Nack("r", "bob-1", "t2", (5,)))
        assert await receive(at_a) == Nack("r", "bob-1", "t2", (5,))
        await nothing_arrives(at_a, 0.2)
        await nothing_arrives(at_b, 0.0)


async def test_leaving_a_listen_block_unsubscribes(nats: NatsServer) -> None:
    async with pods(nats.url, "a", "b") as (a, b):
        base = b.subscriptions
        async with b.listen("r") as first:
            assert b.subscriptions == base + 1
            await a.publish("r", Chat("r", "x", "1"))
            assert await receive(first) == Chat("r", "x", "1")
        assert b.subscriptions == base
        # The channel ends (as LocalBus's does) and nothing more is delivered into it.
        with trio.fail_after(1):
            assert [c async for c in first] == []
        async with b.listen("r") as second:
            await a.publish("r", Chat("r", "x", "2"))
            assert await receive(second) == Chat("r", "x", "2")


async def test_garbage_on_a_room_subject_is_skipped(nats: NatsServer) -> None:
    async with pods(nats.url, "a", "b") as (a, b), b.listen("r") as at_b:
        await a.publish_raw(a.subject("room", "r"), b"\x63not a command")
        await a.publish_raw(a.subject("room", "r"), b"")
        await a.publish("r", Chat("r", "x", "after the garbage"))
        assert await receive(at_b) == Chat("r", "x", "after the garbage")


async def test_nats_down_requests_fail_fast(nats: NatsServer) -> None:
    async with pods(nats.url, "a") as (a,), a.listen("r") as commands:
        await a.publish("r", Chat("r", "x", "up"))
        assert await receive(commands) == Chat("r", "x", "up")
        await trio.to_thread.run_sync(nats.stop)
        # The client sees the connection drop; from then on every call fails at once.
        with trio.fail_after(FAIL_FAST):
            while await a.ready():
                await trio.sleep(0.05)
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            await a.publish("r", Chat("r", "x", "down"))
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            await a.send_to_node("b", Chat("r", "x", "down"))
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            async with a.listen("other"):
                pass
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            async with a.relay.subscribe("b", "p", "t", lambda packet, now: None):
                pass
        assert not await a.ready()


def all_threads_stopped(pid: int) -> bool:
    """SIGSTOP is asynchronous: true once every thread of the process is in state T."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as stat:
            states.append(stat.read().rsplit(")", 1)[1].split()[0])
    return all(state in ("T", "t") for state in states)


async def test_a_frozen_server_never_hangs_a_call(nats: NatsServer) -> None:
    assert nats.proc is not None
    pid = nats.proc.pid
    async with pods(nats.url, "a", "b") as (a, b), b.listen("r") as at_b:
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(FAIL_FAST):
                while not all_threads_stopped(pid):
                    await trio.sleep(0.01)
            with trio.fail_after(FAIL_FAST):
                assert not await a.ready()  # no PONG in time
            with trio.fail_after(FAIL_FAST):
                assert not await b.ready()
            with trio.fail_after(FAIL_FAST):
                try:
                    await a.publish("r", Chat("r", "x", "into the void"))
                except BackendUnavailable:
                    pass
        finally:
            os.kill(pid, signal.SIGCONT)
        with trio.fail_after(RESUME):
            while not (await a.ready() and await b.ready()):
                await trio.sleep(0.1)
        # The PONGs nobody waited for any more arrived and broke nothing: the same connections
        # (no reconnect) still carry commands. (nats-py's flush(timeout) would have killed the
        # read loop here, leaving a client that looks connected and hears nothing.)
        await a.publish("r", Chat("r", "x", "after the thaw"))
        with trio.fail_after(5):
            while (await at_b.receive()) != Chat("r", "x", "after the thaw"):
                pass
        assert a.reconnects == 0
        assert b.reconnects == 0


async def test_ready_again_after_a_freeze_long_enough_to_reconnect(nats: NatsServer) -> None:
    assert nats.proc is not None
    pid = nats.proc.pid

    def quick_pings(bus: NatsBus) -> None:
        bus.ping_interval = 0.3  # stale after three unanswered pings, ≈ 1 s

    async with pods(nats.url, "a", setup=quick_pings) as (a,):
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(FAIL_FAST):
                while not all_threads_stopped(pid):
                    await trio.sleep(0.01)
            with trio.fail_after(FAIL_FAST):
                assert not await a.ready()  # leaves its PING outstanding
            with trio.fail_after(RESUME):
                while a.connected:  # the client gives the silent server up
                    await trio.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)
        # The reconnect dropped the old PING's future; ready() must not wait on it.
        with trio.fail_after(RESUME):
            while not await a.ready():
                await trio.sleep(0.1)
        assert a.reconnects >= 1
        async with a.listen("r") as commands:
            await a.publish("r", Chat("r", "x", "back"))
            assert await receive(commands) == Chat("r", "x", "back")


async def until_delivered(
    sender: NatsBus, room: str, channel: trio.MemoryReceiveChannel[Command]
) -> int:
    """Publish pings until one arrives (NATS may still be coming back); returns attempts."""
    attempts = 0
    with trio.fail_after(RESUME):
        while True:
            attempts += 1
            try:
                await sender.publish(room, Chat(room, "probe", str(attempts)))
            except BackendUnavailable:
                await trio.sleep(0.1)
                continue
            with trio.move_on_after(0.2):
                while True:
                    command = await channel.receive()
                    if isinstance(command, Chat) and command.from_id == "probe":
                        return attempts


async def test_listeners_survive_a_nats_restart(nats: NatsServer) -> None:
    async with (
        pods(nats.url, "a", "b") as (a, b),
        a.listen("r") as at_a,
        b.listen("r") as at_b,
        b.listen_node() as node_b,
    ):
        await a.publish("r", Chat("r", "x", "before"))
        assert await receive(at_b) == Chat("r", "x", "before")
        assert await receive(at_a) == Chat("r", "x", "before")
        await trio.to_thread.run_sync(nats.restart)  # same port, empty server
        # The same listeners, with no action from their owners, hear commands again.
        await until_delivered(a, "r", at_b)
        await until_delivered(b, "r", at_a)
        await a.send_to_node("b", Chat("r", "x", "node"))
        with trio.fail_after(5):
            while (await node_b.receive()) != Chat("r", "x", "node"):
                pass
        assert await a.ready() and await b.ready()


async def test_nats_absent_at_start_up(nats: NatsServer) -> None:
    url = nats.url
    await trio.to_thread.run_sync(nats.stop)
    async with open_asyncio(), trio.open_nursery() as nursery:
        bus = NatsBus(url, "late", prefix="test", start_timeout=0.5)
        with trio.fail_after(FAIL_FAST):
            await nursery.start(bus.run)  # does not wait for NATS forever
        assert not await bus.ready()
        with trio.fail_after(FAIL_FAST), pytest.raises(BackendUnavailable):
            await bus.publish("r", Chat("r", "x", "nobody"))
        await trio.to_thread.run_sync(nats.start)
        with trio.fail_after(RESUME):
            while not await bus.ready():
                await trio.sleep(0.1)
        async with bus.listen("r") as commands:
            await bus.publish("r", Chat("r", "x", "now"))
            assert await receive(commands) == Chat("r", "x", "now")
        nursery.cancel_scope.cancel()


async def test_a_cancelled_call_that_swallows_a_cancellation_still_ends() -> None:
    """``until_cancelled_for_sure``: a call that loses a cancellation (nats-py's connect()
    loop after Python 3.11's wait_for swallowed it) is cancelled again until it ends."""
    import asyncio

    from trio_sfu.cluster.aio import trio_asyncio

    swallowed = 0

    async def stubborn() -> str:
        nonlocal swallowed
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2.0  # without a second cancel: returns, and the test fails
        while loop.time() < give_up:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise
        return "returned"

    async with open_asyncio():
        with trio.move_on_after(0.1) as scope:
            await trio_asyncio.aio_as_trio(until_cancelled_for_sure)(stubborn())
    assert scope.cancelled_caught and swallowed == 3
