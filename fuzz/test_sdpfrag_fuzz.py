"""The trickle-ice-sdpfrag parser (RFC 8840) against hostile input: only SdpError escapes,
whatever parses round-trips (parse(serialize(x)) == x, the serialization a fixed point), and
what build_frag writes parses back to the same credentials and candidates."""

from __future__ import annotations

import functools

from aioice import Candidate
from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated_text
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.sdp.frag import SdpFrag, build_frag, parse_frag

# Real fragments: RFC 9725's trickle and restart examples, whip-whep's shapes, ours.
SAMPLES = [
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw "
    "network-id 1\r\na=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active "
    "generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n",
    "a=ice-ufrag:ysXw\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n",
    "a=ice-lite\r\na=ice-ufrag:289b31b754eaa438\r\n"
    "a=ice-pwd:0b66f472495ef0ccac7bda653ab6be49ea13114472a5d10a\r\n",
    "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:EsAw\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=candidate:1 1 UDP 2130706431 198.51.100.1 39132 "
    "typ srflx raddr 10.0.0.1 rport 9\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=end-of-candidates\r\n",
    "a=ice-options:trickle ice2\r\na=end-of-candidates\r\n",
    build_frag("srv1", "p" * 24, candidates=[Candidate(
        foundation="1", component=1, transport="udp", priority=2130706431, host="127.0.0.1",
        port=7882, type="host")], bundle=["0", "1"], ice_lite=True).serialize(),
]
TOKENS = ["", " ", ":", "=", "/", "+", "a=", "m=", "v=0", "0", "9", "65536", "99999999999999999",
          "typ", "host", "raddr", "rport", "generation", "mid", "ice-ufrag", "ice-pwd", "\x00",
          "\u0661", "é", "\ud800", "\r", "\n", "\t", "candidate", "end-of-candidates"]


def _check(text: str | bytes) -> SdpFrag | None:
    try:
        frag = parse_frag(text)
    except SdpError:
        return None
    out = frag.serialize()
    again = parse_frag(out)
    assert again == frag
    assert again.serialize() == out
    return frag


mutated = functools.partial(mutated_text, SAMPLES, TOKENS, line_rounds=4)


def test_samples_parse() -> None:
    for sample in SAMPLES:
        assert _check(sample) is not None, sample


@given(mutated())
def test_mutated_fragments(text: str) -> None:
    _check(text)


@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    _check(text)


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@given(st.lists(st.sampled_from(["a=ice-ufrag:abcd", "a=ice-pwd:" + "x" * 22, "m=audio 9 x 0",
                                 "a=mid:0", "a=mid:1", "a=end-of-candidates", "a=ice-lite",
                                 "a=candidate:1 1 udp 1 1.2.3.4 5 typ host", "a=group:BUNDLE 0",
                                 "a=ice-ufrag:efgh", "a=x:y", "a=ice-options:trickle"]),
                max_size=12))
def test_line_shuffles(lines: list[str]) -> None:
    _check("\r\n".join(lines))


ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


@given(
    st.text(ICE_CHARS, min_size=4, max_size=256),
    st.text(ICE_CHARS, min_size=22, max_size=256),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.ip_addresses().map(str),
                       st.integers(1, 65535)), max_size=4),
    st.booleans(),
)
def test_build_then_parse(
    ufrag: str, pwd: str, candidates: list[tuple[int, str, int]], lite: bool
) -> None:
    built = build_frag(ufrag, pwd, ice_lite=lite, candidates=[
        Candidate(foundation=str(i), component=1, transport="udp", priority=priority, host=host,
                  port=port, type="host")
        for i, (priority, host, port) in enumerate(candidates)
    ])
    parsed = _check(built.serialize())
    assert parsed is not None
    assert (parsed.ice_ufrag, parsed.ice_pwd, parsed.ice_lite) == (ufrag, pwd, lite)
    assert [(c.host, c.port, c.priority) for _, c in parsed.candidates] == [
        (host, port, priority) for priority, host, port in candidates]
    assert parsed.complete
