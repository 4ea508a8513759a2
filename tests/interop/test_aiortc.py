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


async def test_aiortc_subscriber_with_the_sfu_as_dtls_client(interop_app: InteropApp) -> None:
    """An offer with a=setup:passive makes the SFU the DTLS client (the SFU is the server in
    every other test): the record layer that takes over from OpenSSL after the handshake
    (proto/dtls_record.py) carries the data channel's commands and renegotiations both ways
    through the whole scenario, against aiortc's own DTLS server."""
    spec = PeerSpec("aiortc-dtls-client", ("subscriber",),
                    lambda args: AIORTC.argv([*args, "--dtls-passive"]))
    summary = await subscriber_scenario(spec, interop_app.base_url)
    print("aiortc subscriber, SFU as DTLS client:", summary)


async def test_aiortc_publisher(interop_app: InteropApp, interop_browser: Browser) -> None:
    await publisher_scenario(AIORTC, interop_app.base_url, interop_browser)


async def test_aiortc_whep(interop_app: InteropApp) -> None:
    await whep_scenario(AIORTC, interop_app.base_url)


async def test_unannounced_ssrcs_reach_a_whep_viewer(interop_app: InteropApp) -> None:
    """Issue 8, item 5 with a real stack: an aiortc WHIP publisher whose offer has no a=ssrc
    and no MID extension (as GStreamer 1.22 can send) is decoded by an aiortc WHEP viewer:
    the server binds each stream by its payload type (RFC 8843 §9.2)."""
    await whep_scenario(AIORTC, interop_app.base_url, publisher_args=("--unannounced",))
