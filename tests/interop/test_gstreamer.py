"""GStreamer's webrtcbin in every scenario of the interop matrix.

webrtcbin (libnice) ignores loopback, so each scenario runs inside a network namespace with a
veth pair (``tests/interop/gst_scenarios.py``, ``tests/netns.py``). GStreamer decodes what it
receives itself (``rtpvp8depay ! vp8dec``): proof of media is pictures out of its decoder.
"""

from __future__ import annotations

import pytest

from tests.interop.gst_scenarios import run_scenario
from tests.netns import require_netns
from tests.peers.harness import require_chromium
from tests.test_third_party_clients import require_gst

pytestmark = pytest.mark.slow

# webrtcbin 1.22 cannot take a recycled m-line ("transceiver direction changes are not
# implemented"): the GStreamer subscriber sends SDP_RECYCLE off, so every publisher gets new
# m-sections (tests/interop/test_offers.py shows both behaviours offline).


async def test_gstreamer_subscriber() -> None:
    require_netns()
    require_gst()
    print("gstreamer subscriber:", (await run_scenario("subscriber"))["summary"])


async def test_gstreamer_publisher() -> None:
    require_netns()
    require_gst()
    require_chromium()
    await run_scenario("publisher")


async def test_gstreamer_whep() -> None:
    require_netns()
    require_gst()
    await run_scenario("whep")
