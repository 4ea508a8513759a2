"""node-datachannel (npm: libdatachannel in C++, its prebuilt binary) in every scenario of the
interop matrix.

libdatachannel chooses plain DTLS or DTLS-SRTP once, from the first negotiation, so its
subscriber offers one recvonly video section beside the data channel (see ``ndc_peer.mjs``).
"""

from __future__ import annotations

import pytest

from tests.interop.conftest import InteropApp
from tests.interop.driver import publisher_scenario, require, subscriber_scenario, whep_scenario
from tests.interop.node_specs import NODE_DATACHANNEL
from tests.peers.browser_client import Browser

pytestmark = pytest.mark.slow


async def test_node_datachannel_subscriber(interop_app: InteropApp) -> None:
    require(NODE_DATACHANNEL)
    summary = await subscriber_scenario(NODE_DATACHANNEL, interop_app.base_url)
    print("node-datachannel subscriber:", summary)


async def test_node_datachannel_publisher(
    interop_app: InteropApp, interop_browser: Browser
) -> None:
    require(NODE_DATACHANNEL)
    await publisher_scenario(NODE_DATACHANNEL, interop_app.base_url, interop_browser)


async def test_node_datachannel_whep(interop_app: InteropApp) -> None:
    require(NODE_DATACHANNEL)
    await whep_scenario(NODE_DATACHANNEL, interop_app.base_url)

