"""werift (npm, TypeScript WebRTC) against trio-sfu: issue 8's interop matrix row.

werift runs in its own node process (``tests/peers/node_peers/werift_peer.mjs``); it has no
codecs, so GStreamer feeds its publisher VP8 RTP and the VP8 its subscriber receives is decoded
here with PyAV (``tests/interop/line_peers.py``). Proof of media is decoded frames.
"""

from __future__ import annotations

import pytest

from tests.interop.line_peers import (
    LinePeer,
    node_argv,
    open_line_peer,
    publisher_scenario,
    require_node_package,
    rtp_sink,
    subscriber_scenario,
    whep_scenario,
)
from tests.test_third_party_clients import loopback_server

NEEDS_I8A_WHEP = pytest.mark.xfail(
    strict=True,
    reason="needs i8a: WHEP before the publisher is live (issue 8 must-have 6; today 409)",
)

SCRIPT = "werift_peer.mjs"

pytestmark = pytest.mark.slow


async def test_werift_seed_subscriber_through_publishers_coming_and_going() -> None:
    require_node_package("werift")
    async with loopback_server() as (_, base, _clients), rtp_sink() as sink:
        argv = node_argv(SCRIPT, "sub", f"{base}/sub/wsub/werift-sub1",
                         "--rtp-out", str(sink.port), "--timeout", "240")
        async with open_line_peer(argv, "werift") as peer:
            log = await subscriber_scenario(peer, sink, base, "wsub", "127.0.0.1")
            result = await peer.stop()
        assert result["ok"], result
        assert result["delete"]["status"] == 204, result
        print("werift subscriber:", log)


async def test_werift_publisher_decoded_by_chromium() -> None:
    require_node_package("werift")
    async with loopback_server() as (_, base, _clients):

        def start(url: str) -> object:
            return open_line_peer(node_argv(SCRIPT, "pub", url, "--timeout", "120"), "werift")

        await publisher_scenario(start, base, "wpub", "werift-pub1")


@NEEDS_I8A_WHEP
async def test_werift_whep_viewer_of_a_whip_publisher_posted_just_before() -> None:
    require_node_package("werift")
    async with loopback_server() as (_, base, _clients), rtp_sink() as sink:

        def start(url: str) -> object:
            return open_line_peer(
                node_argv(SCRIPT, "whep", url, "--rtp-out", str(sink.port), "--wait-post",
                          "--timeout", "120"),
                "werift",
            )

        def decoded(_peer: LinePeer) -> int:
            return sink.decoded

        await whep_scenario(start, base, "wwhep", decoded)


async def test_harness_werift_whep_viewer_of_a_live_whip_publisher() -> None:
    """Validates the WHEP viewer where today's server already works (publisher live first)."""
    require_node_package("werift")
    async with loopback_server() as (_, base, _clients), rtp_sink() as sink:

        def start(url: str) -> object:
            return open_line_peer(
                node_argv(SCRIPT, "whep", url, "--rtp-out", str(sink.port), "--wait-post",
                          "--timeout", "120"),
                "werift",
            )

        def decoded(_peer: LinePeer) -> int:
            return sink.decoded

        await whep_scenario(start, base, "wwhep", decoded, live_first=True)
