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

# With i8a's stopped sections, webrtcbin accepts the re-offer after PUB_LEFT; the next publisher
# then gets the stopped section's m-line back under a new mid (RFC 8829 §5.2.2 recycling), and
# GStreamer 1.22 refuses its own answer: "transceiver direction changes are not implemented"
# (webrtcbin keeps one transceiver per m-line, negotiated inactive, and cannot make it recvonly
# again). Tried by hand: stopped sections written sendonly instead of inactive get one
# publisher further, then webrtcbin fails on "Fingerprint in media 1 differs from previous
# fingerprint"; with recycling turned off (new publishers always on new m-lines) the whole
# scenario passes (14 offers answered, 70 and 72 frames decoded). So the server must offer a
# new publisher a fresh m-line for such a stack.
NEEDS_NO_RECYCLING = pytest.mark.xfail(
    strict=True,
    reason="needs i8a: webrtcbin 1.22 refuses a recycled m-line ('transceiver direction "
    "changes are not implemented. Media 1') on the second publisher's SDP_OFFER",
)


@NEEDS_NO_RECYCLING
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
