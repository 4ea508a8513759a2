"""Simulcast layer order from an offer (trio_sfu.proto.jsep.simulcast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_sfu.proto.jsep.simulcast import simulcast_layers
from trio_sfu.proto.sdp import parse

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"


@pytest.mark.parametrize(
    "name", ["chromium-publisher-simulcast-offer.sdp", "firefox-publisher-simulcast-offer.sdp"]
)
def test_browser_offers(name: str) -> None:
    sdp = parse((FIXTURES / name).read_text())
    video = [m for m in sdp.media if m.kind == "video"]
    assert [simulcast_layers(m) for m in video] == [["q", "h", "f"]]
    assert all(simulcast_layers(m) == [] for m in sdp.media if m.kind == "audio")


def section(rid_lines: str, simulcast: str) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtpmap:96 VP8/90000\r\n" + rid_lines + f"a=simulcast:{simulcast}\r\n"
    )


def layers(rid_lines: str, simulcast: str) -> list[str]:
    return simulcast_layers(parse(section(rid_lines, simulcast)).media[0])


def test_restrictions_order_the_layers() -> None:
    rids = "".join(
        f"a=rid:{r} send max-width={w}\r\n" for r, w in (("a", 1280), ("b", 320), ("c", 640))
    )
    assert layers(rids, "send a;b;c") == ["b", "c", "a"]


def test_known_names_and_offer_order() -> None:
    assert layers("a=rid:f send\r\na=rid:q send\r\na=rid:h send\r\n", "send f;q;h") == [
        "q",
        "h",
        "f",
    ]
    assert layers("a=rid:high send\r\na=rid:low send\r\n", "send high;low") == ["low", "high"]
    assert layers("a=rid:x send\r\na=rid:y send\r\n", "send y;x") == ["y", "x"]
    # undeclared or recv-only rids are not layers; a paused (~) stream still is one
    assert layers("a=rid:q send\r\na=rid:h recv\r\n", "send q;h;~z") == ["q"]
    assert layers("a=rid:q send\r\na=rid:h send\r\n", "send ~h;q") == ["q", "h"]
