"""Cluster mode with Chromium: a room across pods, and a draining pod's clients moving on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.browser_helpers import decoding, open_page
from tests.cluster_helpers import Pod, run_pods, serve_load_balancer
from tests.peers.browser_client import Browser, open_browser
from tests.peers.harness import require_chromium
from tests.services import NatsServer, RedisServer, nats_server, redis_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def backends() -> Iterator[tuple[RedisServer, NatsServer]]:
    with redis_server() as redis, nats_server() as nats:
        yield redis, nats


@pytest.fixture
async def pods(backends: tuple[RedisServer, NatsServer]) -> AsyncIterator[dict[str, Pod]]:
    redis, nats = backends
    async with run_pods(["a", "b", "c"], redis_url=redis.url, nats_url=nats.url) as p:
        yield p


@pytest.fixture
async def browser(pods: dict[str, Pod]) -> AsyncIterator[Browser]:
    require_chromium()
    async with open_browser() as b:
        yield b


async def test_chromium_publisher_on_a_subscribers_on_b_and_c(
    pods: dict[str, Pod], browser: Browser
) -> None:
    bob = await open_page(browser, pods["b"].url, "bob")
    carol = await open_page(browser, pods["c"].url, "carol")
    alice = await open_page(browser, pods["a"].url, "alice")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    await browser.eval(carol, "window.T.subscribe('room1', 'carol')")
    pid = await browser.eval(alice, "window.T.publish('room1', 'alice')")
    for page in (bob, carol):
        received = await decoding(browser, page, pid)
        assert received["codec"] == "video/VP8"


async def test_draining_pod_moves_its_chromium_subscriber(
    pods: dict[str, Pod], browser: Browser
) -> None:
    async with serve_load_balancer(pods) as (base, balancer):
        alice = await open_page(browser, pods["a"].url, "alice")
        pid = await browser.eval(alice, "window.T.publish('room1', 'alice')")
        balancer.prefer = "b"  # bob lands on pod B through the load balancer
        bob = await open_page(browser, base, "bob")
        first = await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
        await decoding(browser, bob, pid)
        assert balancer.routed[-1] == "b"
        pods["b"].terminate()  # SIGTERM: drain
        moved = await browser.wait_for(
            bob, "window.T.reconnects", lambda r: len(r) >= 1, timeout=20
        )
        assert moved[0][1] == first and moved[0][0] != first
        assert balancer.routed[-1] in ("a", "c")  # B answered 503 while draining
        await decoding(browser, bob, pid)  # frames decoded again, through another pod
        with trio.fail_after(30):
            await pods["b"].proc.wait()
        assert pods["b"].proc.returncode == 0
