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


async def test_unannounced_ssrcs_reach_a_whep_viewer(interop_app: InteropApp) -> None:
    """Issue 8, item 5 with a real stack: an aiortc WHIP publisher whose offer has no a=ssrc
    and no MID extension (as GStreamer 1.22 can send) is decoded by an aiortc WHEP viewer:
    the server binds each stream by its payload type (RFC 8843 §9.2)."""
    await whep_scenario(AIORTC, interop_app.base_url, publisher_args=("--unannounced",))
