"""A join that fails after ``create_peer`` with the real Redis state store (issue 9 item 4's
proof): the store's write reached Redis but the reply did not, the join answers 503, and
nothing is left — no route, no member, no Redis entry, no claimed id — and ``local_truth``
(what the store re-asserts after a Redis loss) holds no ghost."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import trio

from tests.aio.test_redis_state import PREFIX, Inspector
from tests.services import RedisServer, redis_server
from tests.sfu_helpers import start_sfu
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.cluster.aio import BackendUnavailable, open_asyncio
from trio_sfu.cluster.redis_state import RedisStateStore
from trio_sfu.sfu.errors import Unavailable
from trio_sfu.sfu.model import SubscriberInfo


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


class LostReply(RedisStateStore):
    """Writes the subscriber, then fails as if the reply had been lost."""

    fail = True

    async def add_subscriber(self, room: str, info: SubscriberInfo) -> None:
        await super().add_subscriber(room, info)
        if self.fail:
            raise BackendUnavailable("injected: Redis reply lost")


async def test_a_join_failing_after_create_peer_leaves_nothing_in_redis(
    server: RedisServer, nursery: trio.Nursery
) -> None:
    inspect = Inspector(server)
    async with open_asyncio(), trio.open_nursery() as inner:
        env = await start_sfu(inner)
        store = LostReply(server.url, "pod-a", prefix=PREFIX)
        env.sfu.state = store
        env.sfu.node_id = "pod-a"
        await inner.start(store.run, env.sfu.local_truth, env.sfu.on_dead_node)
        try:
            for i in range(3):
                probe = SubscriberClient(f"bob-{i}")
                offer = probe.pc.create_offer()
                probe.pc.close("unused")
                with pytest.raises(Unavailable):
                    await env.sfu.subscribe("r", f"bob-{i}", offer)
            # The outbox undoes the write; nothing of the room or the ids stays in Redis.
            with trio.fail_after(10):
                while await store.room("r") is not None or store._claims:
                    await trio.sleep(0.05)
            keys = await inspect.keys()
            assert not [k for k in keys if ":r" in k or "bob-" in k], keys
            assert env.sfu.local_truth() == ([], [])
            assert not env.sfu.rooms
            assert env.server.endpoint.demux_entries() == 0
            # With the store healthy again, the same id joins.
            store.fail = False
            bob = SubscriberClient("bob-0", **env.client_options)
            await inner.start(bob.connect, functools.partial(env.sfu.subscribe, "r", "bob-0"))
            await bob.wait_open()
            state = await store.room("r")
            assert state is not None and set(state.subscribers) == {"bob-0"}
        finally:
            inner.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await store.close()
