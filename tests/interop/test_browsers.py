"""Chromium and Firefox ESR, each through the site's own module (tests/interop/page/), in the
interop matrix (README.md here). Each browser runs in its own process (interop_browser.py)."""

from __future__ import annotations

import pytest

from tests.interop.conftest import InteropApp
from tests.interop.driver import (
    PeerSpec,
    publisher_scenario,
    python_peer,
    require,
    subscriber_scenario,
    whep_scenario,
)
from tests.peers.browser_client import Browser
from tests.peers.firefox import find_firefox
from tests.peers.harness import chromium_available

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_browser = python_peer("interop_browser.py")


def _firefox_missing() -> str | None:
    return None if find_firefox() else "firefox-esr not installed (Debian package firefox-esr)"


CHROMIUM = PeerSpec("chromium", ("subscriber", "publisher", "whep"),
                    argv=lambda args: _browser(["--browser", "chromium", *args]),
                    missing=chromium_available)
FIREFOX = PeerSpec("firefox", ("subscriber", "publisher", "whep"),
                   argv=lambda args: _browser(["--browser", "firefox", *args]),
                   missing=_firefox_missing)


async def test_chromium_subscriber(interop_app: InteropApp) -> None:
    require(CHROMIUM)
    await subscriber_scenario(CHROMIUM, interop_app.base_url)


async def test_chromium_publisher(interop_app: InteropApp, interop_browser: Browser) -> None:
    require(CHROMIUM)
    await publisher_scenario(CHROMIUM, interop_app.base_url, interop_browser)


async def test_chromium_whep(interop_app: InteropApp) -> None:
    require(CHROMIUM)
    await whep_scenario(CHROMIUM, interop_app.base_url)


async def test_firefox_subscriber(interop_app: InteropApp) -> None:
    require(FIREFOX)
    await subscriber_scenario(FIREFOX, interop_app.base_url)


async def test_firefox_publisher(interop_app: InteropApp, interop_browser: Browser) -> None:
    require(FIREFOX)
    await publisher_scenario(FIREFOX, interop_app.base_url, interop_browser)


async def test_firefox_whep(interop_app: InteropApp) -> None:
    require(FIREFOX)
    await whep_scenario(FIREFOX, interop_app.base_url)
