"""The stack against independent peers: headless Chromium and aiortc, each in its own process.

Each peer opens an ordered and an unordered data channel and a sendrecv VP8 video transceiver;
our echo endpoint (tests/echo_endpoint.py) answers, echoes every message byte-exact on its
channel and sends the video back on the same connection. The peer reports what it verified:
1,000 messages of 1 B..64 KiB both ways with no mismatch, and the echoed video decoded
(Chromium: getStats() framesDecoded; aiortc: frames decoded from the received track).
"""

from __future__ import annotations

import pytest
import trio

from tests.echo_endpoint import EchoEndpoint
from tests.peers.harness import require_chromium, run_peer
from trio_sfu.rtc.server import RtcServer

pytestmark = pytest.mark.slow

PEER_ARGS = ("--messages", "1000", "--max-size", "65536", "--video", "--min-frames", "30")


def _assert_proof(result: dict[str, object], endpoint: EchoEndpoint) -> None:
    assert result["ok"] is True, result
    dc = result["datachannel"]
    assert isinstance(dc, dict)
    assert dc["sent"] == dc["echoed"] == 1000 and dc["mismatches"] == 0
    channels = dc["channels"]
    assert isinstance(channels, dict)
    assert channels["ordered"]["echoed"] == 500 and channels["unordered"]["echoed"] == 500
    frames = result["framesDecoded"]
    assert isinstance(frames, int) and frames >= 30
    assert endpoint.echoed_messages >= 1000
    assert endpoint.echoed_rtp > 0


@pytest.mark.browser
async def test_chromium_datachannel_and_video_echo(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    require_chromium()
    endpoint = EchoEndpoint(rtc_server, nursery)
    result = await run_peer(
        "chromium_peer.py", *PEER_ARGS, "--seed", "11", on_offer=endpoint.answer, timeout=180
    )
    _assert_proof(result, endpoint)
    pair = result["selectedPair"]
    assert isinstance(pair, dict)
    assert pair["srtpCipher"] == "SRTP_AEAD_AES_128_GCM"  # GCM preferred when offered
    video = result["video"]
    assert isinstance(video, dict) and video["codec"] == "video/VP8"


async def test_aiortc_datachannel_and_video_echo(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    endpoint = EchoEndpoint(rtc_server, nursery)
    result = await run_peer(
        "aiortc_peer.py", *PEER_ARGS, "--seed", "12", on_offer=endpoint.answer, timeout=180
    )
    _assert_proof(result, endpoint)
