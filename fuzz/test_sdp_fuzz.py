"""SDP parser and JSEP against hostile input: only SdpError may escape, and whatever parses
round-trips (parse(serialize(x)) == x, and the serialization is a fixed point)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

from aioice import Candidate
from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated_text
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.jsep import JsepSession, LocalTransport
from trio_sfu.proto.sdp import SessionDescription, parse


def session_state(session: JsepSession) -> str:
    """Every attribute of a (slotted) session, to compare before and after a refused call."""
    return str({name: getattr(session, name, None) for name in JsepSession.__slots__})


FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "sdp"
TEXTS = {p.stem: p.read_bytes().decode() for p in sorted(FIXTURES.glob("*.sdp"))}
OFFERS = [text for name, text in TEXTS.items() if "offer" in name]
LINES = sorted({line for text in TEXTS.values() for line in text.split("\r\n") if line})

# Fragments that tend to hit the edges of the grammar.
TOKENS = [
    "", " ", "  ", "\t", "\r", "\n", "\r\n", ":", "=", "/", ";", ",", "~", "*", "-", "0", "1",
    "9", "96", "127", "128", "255", "256", "4096", "65535", "65536", "4294967295",
    "4294967296", "99999999999999999999999", "\u0661", "\u00b2", "+1", "-1", "1_0", "0x10",
    "a=", "m=", "v=0", "o=", "c=", "b=", "t=", "typ", "raddr", "rport", "generation", "send",
    "recv", "sendonly", "actpass", "rid=", "apt=", "pt=", "BUNDLE", "FID", "\x00", "\x85",
    "\u2028", "\ufeff", "é", "{", "}", "\ud800",
]


def _check_round_trip(desc: SessionDescription) -> None:
    text = desc.serialize()
    again = parse(text, max_length=1 << 22)
    assert again == desc
    assert again.serialize() == text


def _parse_or_sdp_error(text: str | bytes) -> SessionDescription | None:
    try:
        desc = parse(text)
    except SdpError:
        return None
    _check_round_trip(desc)
    return desc


mutated_fixture = functools.partial(
    mutated_text, sorted(TEXTS.values()), TOKENS, truncate=True
)


@st.composite
def line_soup(draw: st.DrawFn) -> str:
    """A valid-looking header followed by real lines from every fixture in random order,
    mixed with made-up lines."""
    made_up = st.builds(
        lambda t, a, b: f"{t}={a}{b}",
        st.sampled_from([*"vosticbkarzmu", "ab", ""]),
        st.sampled_from(TOKENS),
        st.text(max_size=20),
    )
    body = draw(st.lists(st.one_of(st.sampled_from(LINES), made_up), max_size=60))
    header = draw(st.sampled_from(["v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0", "v=0", ""]))
    return "\r\n".join([header, *body])


@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    _parse_or_sdp_error(text)
    _parse_or_sdp_error("v=0\r\no=- 1 1 IN IP4 a\r\n" + text)


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _parse_or_sdp_error(data)
    _parse_or_sdp_error(b"v=0\r\no=- 1 1 IN IP4 a\r\nm=video 9 RTP/AVP 96\r\n" + data)


@given(mutated_fixture())
def test_mutated_fixtures(text: str) -> None:
    _parse_or_sdp_error(text)


@given(line_soup())
def test_line_soup(text: str) -> None:
    _parse_or_sdp_error(text)


@given(st.lists(st.sampled_from(LINES), min_size=1, max_size=80), st.randoms())
def test_attribute_soup_in_one_section(lines: list[str], r: random.Random) -> None:
    """Every real attribute thrown into one m-section of every kind."""
    kind = r.choice(["m=audio 9 UDP/TLS/RTP/SAVPF 111 96 97 0",
                     "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                     "m=video 0 RTP/AVP 96"])
    header = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    _parse_or_sdp_error(header + kind + "\r\n" + "\r\n".join(lines))


# -- JSEP: any remote description yields SdpError or a valid, round-tripping answer ------------


def _session() -> JsepSession:
    transport = LocalTransport(
        "srvufrag", "srvpassword0123456789abc", [("sha-256", ":".join(["5A"] * 32))],
        [Candidate("1", 1, "udp", 2130706431, "203.0.113.5", 40000, "host")], ice_lite=True)
    return JsepSession(transport, random_bytes=random.Random(0).randbytes)


@given(st.one_of(mutated_fixture(), st.sampled_from(OFFERS)))
def test_jsep_answers_mutated_offers(text: str) -> None:
    session = _session()
    before = session_state(session)
    try:
        session.set_remote_description(text, "offer")
    except SdpError:
        assert session_state(session) == before  # refused without a trace
        return
    answer = session.create_answer()
    _check_round_trip(answer)
    offer = session.current_remote_description
    assert offer is not None and len(answer.media) == len(offer.media)
    for ours, theirs in zip(answer.media, offer.media, strict=True):
        assert ours.mid == theirs.mid and ours.kind == theirs.kind
    assert session.signaling_state == "stable"
    # and it can offer afterwards
    _check_round_trip(session.create_offer())


def _subscriber_with_pending_offer(browser: str) -> JsepSession:
    session = _session()
    session.transport.setup_when_answering = "active"
    session.set_remote_description(TEXTS[f"{browser}-subscriber-offer"], "offer")
    session.create_answer()
    for _ in range(2):
        session.add_transceiver("audio", "sendonly")
        session.add_transceiver("video", "sendonly")
    session.create_offer()
    return session


@st.composite
def mutated_answer(draw: st.DrawFn) -> tuple[str, str]:
    browser = draw(st.sampled_from(["chromium", "firefox"]))
    text = TEXTS[f"{browser}-subscriber-renegotiation-answer"]
    lines = text.split("\r\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        if draw(st.booleans()):
            del lines[i]
        else:
            parts = lines[i].split(" ")
            parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(TOKENS))
            lines[i] = " ".join(parts)
    return browser, "\r\n".join(lines)


@given(mutated_answer())
def test_jsep_mutated_answers(case: tuple[str, str]) -> None:
    browser, text = case
    session = _subscriber_with_pending_offer(browser)
    before = session_state(session)
    try:
        session.set_remote_description(text, "answer")
    except SdpError:
        assert session_state(session) == before
        assert session.signaling_state == "have-local-offer"
        return
    assert session.signaling_state == "stable"
    _check_round_trip(session.create_offer())
