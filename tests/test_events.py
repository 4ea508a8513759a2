"""Room events over WebSocket (issue 13, item 4; issue 14 item 5's WebSocket 500): the stream
against a real server, tokens, slow consumers, ``trio-sfu watch``, and every other upgrade
answered 404/426. The two-pod proof is in tests/test_cluster_events.py."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.rtc_helpers import client_certificate
from trio_sfu.app import Running, serve
from trio_sfu.auth import create_token
from trio_sfu.client.events import EventStreamClosed, EventStreamRefused, room_events
from trio_sfu.client.sfu import PublisherClient, SubscriberClient, http_signal
from trio_sfu.config import Config
from trio_sfu.http.events import CLOSE_DRAINING, CLOSE_TOO_SLOW
from trio_sfu.sfu.model import Chat

KEY, SECRET = "k1", "s" * 32


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[Running]:
    config = Config(http_host="127.0.0.1", http_port=0, udp_host="127.0.0.1", udp_port=0,
                    **overrides)
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            functools.partial(serve, config, handle_signals=False))
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def base(running: Running) -> str:
    return f"http://127.0.0.1:{running.http_port}"


def token(room: str = "r", **grants: Any) -> str:
    return create_token(KEY, SECRET, identity="watcher", room=room, **grants)


async def next_of(events: AsyncIterator[dict[str, Any]], kind: str,
                  timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        async for event in events:
            if event["type"] == kind:
                return event
    raise AssertionError(f"stream ended before {kind}")


async def test_room_events_joins_leaves_and_chat(nursery: trio.Nursery) -> None:
    async with running_server() as running:
        url = base(running)
        async with room_events(url, "r", chat=True) as events:
            snapshot = await next_of(events, "room")
            assert snapshot == {**snapshot, "room": "r", "publishers": [], "subscribers": []}
            options = {"certificate": client_certificate()}
            bob = SubscriberClient("bob-1", **options)
            await nursery.start(bob.connect, http_signal(url, "sub", "r", "bob-1"))
            joined = await next_of(events, "subscriber_joined")
            assert (joined["room"], joined["peer"], joined["user"], joined["node"]) == (
                "r", "bob-1", "bob", "local")
            alice = PublisherClient("alice-1", **options)
            await nursery.start(alice.connect, http_signal(url, "pub", "r", "alice-1"))
            published = await next_of(events, "publisher_joined")
            assert published["peer"] == "alice-1"
            assert sorted(t["kind"] for t in published["tracks"]) == ["audio", "video"]
            await running.sfu.bus.publish("r", Chat("r", "bob-1", "hello"))  # type: ignore[attr-defined]
            chat = await next_of(events, "chat")
            assert (chat["from"], chat["text"]) == ("bob-1", "hello")
            await running.sfu.stop("pub", "r", "alice-1")
            assert (await next_of(events, "publisher_left"))["peer"] == "alice-1"
            await running.sfu.stop("sub", "r", "bob-1")
            assert (await next_of(events, "subscriber_left"))["peer"] == "bob-1"
        # A watcher that joins late sees who is there in its first message.
        carol = SubscriberClient("carol-1", certificate=client_certificate())
        await nursery.start(carol.connect, http_signal(url, "sub", "r", "carol-1"))
        async with room_events(url, "r") as events:
            snapshot = await next_of(events, "room")
            assert [s["id"] for s in snapshot["subscribers"]] == ["carol-1"]


async def test_chat_is_opt_in(nursery: trio.Nursery) -> None:
    async with running_server() as running, room_events(base(running), "r") as events:
        await next_of(events, "room")
        bus = running.sfu.bus  # type: ignore[attr-defined]
        await bus.publish("r", Chat("r", "x-1", "not for you"))
        options = {"certificate": client_certificate()}
        bob = SubscriberClient("bob-1", **options)
        await nursery.start(bob.connect, http_signal(base(running), "sub", "r", "bob-1"))
        # The next event after the chat is the join: the chat was not sent.
        with trio.fail_after(10):
            event = await events.__anext__()
        assert event["type"] == "subscriber_joined", event


async def test_tokens_apply() -> None:
    async with running_server(api_key=KEY, api_secret=SECRET) as running:
        url = base(running)
        with pytest.raises(EventStreamRefused) as refused:
            async with room_events(url, "r"):
                pass
        assert refused.value.status == 401
        with pytest.raises(EventStreamRefused) as refused:
            async with room_events(url, "r", token=token("other", subscribe=True)):
                pass
        assert refused.value.status == 403
        async with room_events(url, "r", token=token(subscribe=True)) as events:
            assert (await next_of(events, "room"))["room"] == "r"
        # Browsers cannot set headers on a WebSocket: the query parameter works too.
        ws_url = f"ws://127.0.0.1:{running.http_port}/rooms/r/events?access_token=" + token(
            subscribe=True)
        async with open_websocket_url(ws_url) as ws:
            assert '"type": "room"' in await ws.get_message()
        # Every room: an admin token for all rooms only.
        with pytest.raises(EventStreamRefused) as refused:
            async with room_events(url, None, token=token("*", subscribe=True)):
                pass
        assert refused.value.status == 403
        async with room_events(url, None, token=token("*", admin=True)):
            pass


@pytest.mark.parametrize("tokens", [False, True])
async def test_other_websocket_upgrades_are_4xx_never_500(tokens: bool) -> None:
    overrides = {"api_key": KEY, "api_secret": SECRET} if tokens else {}
    async with running_server(**overrides) as running:
        port = running.http_port
        for path in ("/healthz", "/", "/nothing", "/rooms/r", "/pub/r/a-1", "/metrics",
                     "/rooms/r/events/x", "/app.js"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(f"ws://127.0.0.1:{port}{path}"):
                    pass
            assert rejected.value.status_code == 404, (path, rejected.value)
        # The event path asked over plain HTTP: 426 Upgrade Required.
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/rooms/r/events")
        assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
        # A bad room name in the upgrade: 400, not 500.
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"ws://127.0.0.1:{port}/rooms/b%20ad/events"):
                pass
        assert rejected.value.status_code in (400, 401)


async def test_a_slow_consumer_is_dropped_with_a_close_code() -> None:
    async with running_server() as running:
        ws_url = f"ws://127.0.0.1:{running.http_port}/rooms/r/events?chat=1"
        async with open_websocket_url(ws_url, message_queue_size=1) as ws:
            assert '"type": "room"' in await ws.get_message()
            # The watcher stops reading while the room chats: 64 KiB lines fill the socket
            # buffers, then the watcher's bounded queue.
            bus = running.sfu.bus  # type: ignore[attr-defined]
            line = "x" * 65536
            for _ in range(2000):
                await bus.publish("r", Chat("r", "a-1", line))
                if bus._listeners.get("r") in (None, set()):
                    break  # the server let go of this watcher
            received = 0
            with trio.fail_after(30):
                try:
                    while True:
                        await ws.get_message()
                        received += 1
                except Exception as error:  # ConnectionClosed
                    reason = getattr(error, "reason", None)
            assert reason is not None and reason.code == CLOSE_TOO_SLOW, (reason, received)
            assert received < 2000


async def test_draining_tells_watchers_and_closes_with_1012() -> None:
    async with running_server() as running, room_events(base(running), "r") as events:
        await next_of(events, "room")
        running.sfu.drain()  # type: ignore[attr-defined]
        drained = await next_of(events, "node_drained")
        assert drained["node"] == "local"
        with pytest.raises(EventStreamClosed) as closed:
            await next_of(events, "never")
        assert closed.value.code == CLOSE_DRAINING


async def test_trio_sfu_watch_prints_a_join_within_a_second(nursery: trio.Nursery) -> None:
    async with running_server() as running:
        url = base(running)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_sfu", "watch", "r", "--url", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        buffer = b""
        try:
            with trio.fail_after(30):  # the interpreter starting, then the snapshot line
                while b"publishers: none" not in buffer:
                    buffer += await proc.stdout.receive_some(4096)
            bob = SubscriberClient("bob-1", certificate=client_certificate())
            joined_at = time.monotonic()  # from the POST: signaling + event
            await nursery.start(bob.connect, http_signal(url, "sub", "r", "bob-1"))
            with trio.fail_after(1.0):
                while b"bob-1 subscribes" not in buffer:
                    buffer += await proc.stdout.receive_some(4096)
            print(f"watch printed the join {time.monotonic() - joined_at:.3f} s after the POST")
        finally:
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
