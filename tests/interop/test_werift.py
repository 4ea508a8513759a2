"""werift (npm, a WebRTC stack in TypeScript) in every scenario of the interop matrix."""

from __future__ import annotations

import pytest

from tests.interop.conftest import InteropApp
from tests.interop.driver import publisher_scenario, require, subscriber_scenario, whep_scenario
from tests.interop.node_specs import WERIFT
from tests.peers.browser_client import Browser

pytestmark = pytest.mark.slow


async def test_werift_subscriber(interop_app: InteropApp) -> None:
    require(WERIFT)
    print("werift subscriber:", await subscriber_scenario(WERIFT, interop_app.base_url))


async def test_werift_publisher(interop_app: InteropApp, interop_browser: Browser) -> None:
    require(WERIFT)
    await publisher_scenario(WERIFT, interop_app.base_url, interop_browser)


async def test_werift_whep(interop_app: InteropApp) -> None:
    require(WERIFT)
    await whep_scenario(WERIFT, interop_app.base_url)

