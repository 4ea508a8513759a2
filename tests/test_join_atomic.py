"""A join is all or nothing (issue 14 item 1, issue 9 item 4): whatever stops it — a cancel at
any await point, a state store or bus that fails — leaves no room, peer, route, member or store
entry behind, and a room is registered only once its listener runs (and keeps one)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import pytest
import trio

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client.sfu import PublisherClient, SubscriberClient
from trio_sfu.sfu.bus import LocalBus
from trio_sfu.sfu.errors import BackendUnavailable, TooMany, Unavailable
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.model import Command, SubscriberInfo
from trio_sfu.sfu.service import Sfu
from trio_sfu.sfu.state import MemoryStateStore

#: A join that has not finished after this many scheduling steps of its task never will.
MAX_STEPS = 400


class CancelAtStep(trio.abc.Instrument):
    """Cancel ``scope`` right after ``task``'s ``step``-th step: the cancel lands on the await
    that ends that step, i.e. each value of ``step`` hits the next await point of the join."""

    def __init__(self, scope: trio.CancelScope, step: int) -> None:
        self.scope = scope
        self.step = step
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.step:
                self.scope.cancel()


@contextmanager
def instrumented(instrument: trio.abc.Instrument) -> Iterator[None]:
    trio.lowlevel.add_instrument(instrument)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(instrument)


def offer_for(role: str, peer_id: str) -> str:
    client = PublisherClient(peer_id) if role == "pub" else SubscriberClient(peer_id)
    offer = client.pc.create_offer()
    client.pc.close("unused")
    return offer


async def join(sfu: Sfu, role: str, room: str, peer_id: str, offer: str) -> str:
    if role == "pub":
        return await sfu.publish(room, peer_id, offer)
    return await sfu.subscribe(room, peer_id, offer)


def leftovers(env: SfuEnv, state: MemoryStateStore) -> dict[str, object]:
    """Everything a join may have left behind, by kind (empty: nothing)."""
    found: dict[str, object] = {
        "rooms": sorted(env.sfu.rooms),
        "opening": sorted(env.sfu._opening),
        "routes": env.server.endpoint.demux_entries(),
        "ids": sorted(state._ids),
        "store rooms": sorted(state._rooms),
        "listeners": sorted(r for r in env.sfu.bus._listeners if r != LocalBus.NODE)  # type: ignore[attr-defined]
        if isinstance(env.sfu.bus, LocalBus)
        else [],
    }
    return {k: v for k, v in found.items() if v}


async def settled(env: SfuEnv, state: MemoryStateStore, expected: dict[str, object]) -> None:
    """Wait (bounded) for the outbox and the listeners' cleanup, then compare."""
    with trio.move_on_after(5):
        while leftovers(env, state) != expected:
            await trio.sleep(0.01)
    assert leftovers(env, state) == expected


async def cancel_every_await(env: SfuEnv, role: str, room: str) -> int:
    """Cancel one join per await point it passes, then let one complete; return how many
    points were hit."""
    state = env.sfu.state
    assert isinstance(state, MemoryStateStore)
    before = leftovers(env, state)
    for step in range(1, MAX_STEPS):
        peer_id = f"{role}-{step}"
        offer = offer_for(role, peer_id)
        answer: str | None = None
        scope = trio.CancelScope()
        instrument = CancelAtStep(scope, step)

        async def attempt(
            scope: trio.CancelScope = scope,
            instrument: CancelAtStep = instrument,
            peer_id: str = peer_id,
            offer: str = offer,
        ) -> None:
            nonlocal answer
            instrument.task = trio.lowlevel.current_task()
            with scope:
                answer = await join(env.sfu, role, room, peer_id, offer)

        with instrumented(instrument):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt)
        if answer is not None:
            # Not cancelled: the join went through every await point; it is a member now.
            assert not scope.cancelled_caught
            member = env.sfu.member(role, room, peer_id)  # type: ignore[arg-type]
            await env.sfu.stop(role, room, peer_id)  # type: ignore[arg-type]
            assert member.removed
            await settled(env, state, before)
            return step - 1
        assert scope.cancelled_caught
        await settled(env, state, before)
    raise AssertionError(f"a join took more than {MAX_STEPS} steps")


@pytest.mark.parametrize("role", ["pub", "sub"])
async def test_cancel_at_every_await_point_of_a_join_to_a_new_room(
    nursery: trio.Nursery, role: str
) -> None:
    env = await start_sfu(nursery)
    points = await cancel_every_await(env, role, "fresh")
    print(f"{role} join to a new room: {points} await points cancelled, nothing left")
    assert points >= 2  # opening the room and starting the peer, at least


@pytest.mark.parametrize("role", ["pub", "sub"])
async def test_cancel_at_every_await_point_of_a_join_to_an_existing_room(
    nursery: trio.Nursery, role: str
) -> None:
    env = await start_sfu(nursery)
    bob = await env.subscriber("busy", "bob-1")
    points = await cancel_every_await(env, role, "busy")
    print(f"{role} join to an existing room: {points} await points cancelled")
    assert points >= 1
    # The room and its member are untouched, and the member still hears the room.
    assert set(env.sfu.rooms["busy"].subscribers) == {"bob-1"}
    alice = await env.publisher("busy", "alice-1")
    assert await bob.expect("PUB_JOIN") == "PUB_JOIN alice-1"
    assert alice.pc.connected


class FailingState(MemoryStateStore):
    """A state store that fails the step after ``create_peer`` (Redis gone mid-join)."""

    fail = True

    async def add_subscriber(self, room: str, info: SubscriberInfo) -> None:
        if self.fail:
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable("injected: Redis unreachable")
        await super().add_subscriber(room, info)


async def test_state_store_failure_after_create_peer_leaves_nothing(
    nursery: trio.Nursery,
) -> None:
    env = await start_sfu(nursery)
    state = FailingState()
    env.sfu.state = state
    for i in range(5):
        with pytest.raises(Unavailable) as raised:
            await env.sfu.subscribe("r", f"bob-{i}", offer_for("sub", f"bob-{i}"))
        assert raised.value.retry_after is not None
        await settled(env, state, {})
    state.fail = False
    bob = await env.subscriber("r", "bob-9")
    await env.publisher("r", "alice-1")
    assert await bob.expect("PUB_JOIN") == "PUB_JOIN alice-1"


class FlakyBus(LocalBus):
    """A bus whose subscriptions fail while ``down`` (NATS unreachable)."""

    down = False

    def listen(self, room: str) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Command]]:
        if self.down and room != self.NODE:
            raise BackendUnavailable("injected: NATS unreachable")
        return super().listen(room)


async def test_join_while_the_bus_is_down_registers_no_deaf_room(nursery: trio.Nursery) -> None:
    env = await start_sfu(nursery)
    bus = FlakyBus()
    env.sfu.bus = bus
    state = env.sfu.state
    assert isinstance(state, MemoryStateStore)
    bus.down = True
    for i in range(3):
        with pytest.raises(Unavailable, match="unavailable"):
            await env.sfu.subscribe("r", f"bob-{i}", offer_for("sub", f"bob-{i}"))
    await settled(env, state, {})
    bus.down = False
    # The room opens for real now: its members hear it.
    bob = await env.subscriber("r", "bob-9")
    await env.publisher("r", "alice-1")
    assert await bob.expect("PUB_JOIN") == "PUB_JOIN alice-1"


async def test_a_listener_that_dies_is_restarted(nursery: trio.Nursery) -> None:
    env = await start_sfu(nursery)
    bus = env.sfu.bus
    assert isinstance(bus, LocalBus)
    bob = await env.subscriber("r", "bob-1")
    # The bus cuts the room's listener off (what it does to one that falls behind).
    for send in list(bus._listeners["r"]):
        send.close()
    bus._listeners["r"].clear()
    await wait_for(lambda: bool(bus._listeners.get("r")), timeout=5)
    carol = await env.subscriber("r", "carol-1")
    await env.publisher("r", "alice-1")
    assert await carol.expect("PUB_JOIN") == "PUB_JOIN alice-1"
    assert await bob.expect("PUB_JOIN") == "PUB_JOIN alice-1"


async def test_room_and_node_limits(nursery: trio.Nursery) -> None:
    env = await start_sfu(nursery)
    env.sfu.limits = SfuLimits(max_members_per_room=2, max_rooms=2)
    state = env.sfu.state
    assert isinstance(state, MemoryStateStore)
    await env.subscriber("a", "bob-1")
    await env.subscriber("a", "bob-2")
    with pytest.raises(TooMany, match="full") as full:
        await env.sfu.subscribe("a", "bob-3", offer_for("sub", "bob-3"))
    assert full.value.status == 429 and full.value.retry_after
    await env.subscriber("b", "carol-1")
    with pytest.raises(Unavailable, match="maximum of 2 rooms") as rooms:
        await env.sfu.subscribe("c", "dave-1", offer_for("sub", "dave-1"))
    assert rooms.value.status == 503 and rooms.value.retry_after
    # Refusals left nothing: the ids are free, rooms a and b hold what they held.
    assert sorted(state._ids) == ["bob-1", "bob-2", "carol-1"]
    assert sorted(env.sfu.rooms) == ["a", "b"]



async def test_half_open_sessions_are_limited_per_source_and_freed(
    nursery: trio.Nursery,
) -> None:
    """Sessions that never connect count against their address until the connect timeout
    ends them; then the address may join again (and the node is none the worse)."""
    env = await start_sfu(nursery)
    env.server.connect_timeout = 0.5
    env.sfu.limits = SfuLimits(max_half_open_per_source=3, max_half_open=4)
    for i in range(3):
        await env.sfu.subscribe("r", f"a-{i}", offer_for("sub", f"a-{i}"), source="10.0.0.1")
    with pytest.raises(TooMany, match="still connecting") as refused:
        await env.sfu.subscribe("r", "a-9", offer_for("sub", "a-9"), source="10.0.0.1")
    assert refused.value.retry_after
    await env.sfu.subscribe("r", "b-0", offer_for("sub", "b-0"), source="10.0.0.2")
    with pytest.raises(Unavailable, match="still connecting on this node"):
        await env.sfu.subscribe("r", "c-0", offer_for("sub", "c-0"), source="10.0.0.3")
    assert env.sfu.half_open == 4
    # The connect timeout ends them all; nothing is left and the address may join again.
    await wait_for(lambda: not env.sfu.rooms, timeout=5)
    assert env.sfu.half_open == 0
    assert env.server.endpoint.demux_entries() == 0
    # A session that connects stops counting as half-open.
    env.server.connect_timeout = 30
    bob = SubscriberClient("bob-1", **env.client_options)
    signal = functools.partial(env.sfu.subscribe, "r", "bob-1", source="10.0.0.1")
    await nursery.start(bob.connect, signal)
    await bob.wait_open()
    await wait_for(lambda: env.sfu.half_open == 0, timeout=5)
    assert bob.pc.connected
