"""An answer never echoes non-ASCII text from an offer (issue 14 item 5): m-line media, proto
and formats and ``a=mid`` must be tokens (RFC 8866 §9, RFC 5888 §4), so a rejected section —
which the answer repeats — cannot carry anything else."""

from __future__ import annotations

import pytest
import trio

from tests.sfu_helpers import start_sfu
from trio_sfu.client.sfu import PublisherClient
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.sdp import parse

BAD_LINES = [
    ("m=vidéo 9 UDP/TLS/RTP/SAVPF 96", "media must be a token"),
    ("m=video 9 ÜDP/TLS/RTP/SAVPF 96", "proto must be tokens"),
    ("m=text 9 TCP/ßproto ü", "proto must be tokens"),
    ("m=text 9 TCP ü", "fmt must be a token"),
    ("m=application 9 UDP/DTLS/SCTP webrtc\u2013datachannel", "fmt must be a token"),
]


async def test_non_token_m_lines_and_mids_are_refused_and_never_echoed(
    nursery: trio.Nursery,
) -> None:
    env = await start_sfu(nursery)
    client = PublisherClient("a-1")
    offer = client.pc.create_offer()
    client.pc.close("unused")
    for line, message in BAD_LINES:
        bad = offer + line + "\r\na=mid:zz\r\n"
        with pytest.raises(SdpError, match=message):
            parse(bad)
        with pytest.raises(SdpError, match=message):
            await env.sfu.publish("r", "a-1", bad)
    with pytest.raises(SdpError, match="mid must be a token"):
        parse(offer + "m=text 9 TCP x\r\na=mid:m\u00edd\r\n")
    # A rejected section with token text is still answered, echoing only that text.
    answer = await env.sfu.publish("r", "a-1", offer + "m=text 9 TCP/x-proto x\r\na=mid:zz\r\n")
    assert answer.isascii()
    assert "m=text 0 TCP/x-proto x" in answer
    assert not env.sfu.rooms or "a-1" in env.sfu.rooms["r"].publishers
