"""aiortc (PyPI, its own process) in every scenario of the interop matrix (README.md here)."""

from __future__ import annotations

import pytest

from tests.interop.conftest import InteropApp
from tests.interop.driver import (
    PeerSpec,
    publisher_scenario,
    python_peer,
    subscriber_scenario,
    whep_scenario,
)
from tests.peers.browser_client import Browser

pytestmark = pytest.mark.slow

AIORTC = PeerSpec("aiortc", ("subscriber", "publisher", "whep"), python_peer("interop_aiortc.py"))


async def test_aiortc_subscriber(interop_app: InteropApp) -> None:
    summary = await subscriber_scenario(AIORTC, interop_app.base_url)
    print("aiortc subscriber:", summary)


async def test_aiortc_publisher(interop_app: InteropApp, interop_browser: Browser) -> None:
    await publisher_scenario(AIORTC, interop_app.base_url, interop_browser)


async def test_aiortc_whep(interop_app: InteropApp) -> None:
    await whep_scenario(AIORTC, interop_app.base_url)
