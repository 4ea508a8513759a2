"""The SFU with real browsers: Chromium publishes through trio-sfu to Chromium subscribers.

The pages load the site's own protocol module (`/sfu-client.js`) from the server under test,
so this also proves the module. Media flow is proven by the subscriber's getStats()
framesDecoded; bandwidth estimation by the publisher's availableOutgoingBitrate, which only
climbs when our transport-cc feedback reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.browser_helpers import decoding, open_page
from tests.peers.browser_client import Browser, open_browser
from tests.peers.harness import require_chromium
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[Running]:
    config = Config(
        http_host="127.0.0.1",
        http_port=0,
        udp_host="127.0.0.1",
        udp_port=0,
        public_ips=("127.0.0.1",),
    )
    running: Running = await nursery.start(serve, config)
    yield running
    running.shutdown()


@pytest.fixture
async def browser(app: Running) -> AsyncIterator[Browser]:
    require_chromium()
    async with open_browser() as b:
        yield b


async def test_chromium_to_chromium_through_the_sfu_with_bandwidth_ramp(
    app: Running, browser: Browser
) -> None:
    bob = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "bob")
    alice = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "alice")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    pid = await browser.eval(
        alice, "window.T.publish('room1', 'alice', {width: 1280, height: 720})"
    )
    received = await decoding(browser, bob, pid)
    assert received["codec"] == "video/VP8"
    # transport-cc feedback from the SFU lets Chromium's estimate climb past 1 Mbit/s.
    sending = await browser.wait_for(
        alice, f"window.T.sending({pid!r})", lambda s: s["bitrate"] >= 1_000_000, timeout=15
    )
    assert sending["bitrate"] >= 1_000_000
    rooms = await browser.eval(bob, "fetch('/rooms/room1').then((r) => r.json())")
    assert rooms["publishers"] == [{"id": pid, "user": "alice", "audio": 1, "video": 1}]


@pytest.mark.parametrize("codec", ["video/H264", "video/VP9", "video/AV1"])
async def test_negotiated_codecs_are_forwarded(app: Running, browser: Browser, codec: str) -> None:
    bob = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "bob")
    alice = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "alice")
    # Not a skip: a Chromium that cannot encode the codec would hide a forwarding regression
    # (Debian's chromium encodes all three; CI installs it, scripts/setup-system).
    assert await browser.eval(alice, f"window.T.hasCodec({codec!r})"), (
        f"this Chromium build cannot send {codec}"
    )
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    pid = await browser.eval(alice, f"window.T.publish('room1', 'alice', {{codec: {codec!r}}})")
    received = await decoding(browser, bob, pid)
    assert received["codec"] == codec


async def test_publisher_rejoin_recycles_the_subscriber_sections(
    app: Running, browser: Browser
) -> None:
    bob = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "bob")
    alice = await open_page(browser, f"http://127.0.0.1:{app.http_port}", "alice")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    sections = []
    for _ in range(3):
        pid = await browser.eval(alice, "window.T.publish('room1', 'alice')")
        await decoding(browser, bob, pid)
        sections.append(await browser.eval(bob, "window.T.sections()"))
        await browser.eval(alice, f"window.T.stopPublisher({pid!r})")
        await browser.wait_for(bob, "window.T.sub.publishers.size", lambda n: n == 0)
    # data + audio + video, the stopped sections recycled each time (RFC 8829 §5.2.2).
    assert sections == [3, 3, 3]
