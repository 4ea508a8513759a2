"""Issue 15 across pods with real stacks: a Chromium publisher on pod a changes its tracks on
one connection (audio-only → camera → screen → camera off → mute → camera again); a Chromium
subscriber on pod b and an aiortc subscriber on pod a decode each track while it exists and
hear TRACK_ADD / TRACK_REMOVE / MUTED (the scenario: tests/interop/test_publisher_tracks.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.cluster_helpers import Pod, run_pods
from tests.interop.test_publisher_tracks import tracks_scenario
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
    async with run_pods(["a", "b"], redis_url=redis.url, nats_url=nats.url) as p:
        yield p


@pytest.fixture
async def browser(pods: dict[str, Pod]) -> AsyncIterator[Browser]:
    require_chromium()
    async with open_browser() as b:
        yield b


async def test_chromium_publisher_on_a_changes_tracks_chromium_on_b_follows(
    pods: dict[str, Pod], browser: Browser
) -> None:
    summary = await tracks_scenario(
        browser, publisher=pods["a"].url, chromium=pods["b"].url, aiortc=pods["a"].url
    )
    print("across pods:", summary)
