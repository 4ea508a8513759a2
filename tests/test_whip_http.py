"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep-03) over HTTP: every status code and header
of issue 5 items 2 and 3, against a fake SFU implementing the contract of /work/notes/whip.md,
with and without tokens; and nothing a client sends to these routes is a 500.

At the end, the real SFU with our Python client: a WHIP publisher seen by a seed-API subscriber
as PUB_JOIN, a WHEP viewer receiving its media, DELETE ending it (PUB_LEFT). ICE restarts
through PATCH with the real SFU are in tests/test_ice_restart.py.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.rtc_helpers import Received, client_certificate, new_client
from tests.test_http import (
    RAW_GARBAGE,
    FakeSfu,
    assert_never_500,
    http_server,
    preflight_headers,
    random_requests,
    raw_exchange,
)
from trio_sfu.auth import TokenVerifier, create_token
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.config import parse_ice_server
from trio_sfu.http import create_app
from trio_sfu.http.sessions import Sessions, etag_for
from trio_sfu.proto.errors import SdpError
from trio_sfu.proto.rtp import RtpPacket, parse_rtp
from trio_sfu.proto.sdp import parse as parse_sdp
from trio_sfu.proto.sdp.frag import parse_frag
from trio_sfu.rtc.server import RtcServer
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound, Unavailable
from trio_sfu.sfu.service import Sfu

SDP = "application/sdp"
FRAG = "application/trickle-ice-sdpfrag"
KEY, SECRET = "k1", "whip-secret-" + "z" * 32
CLIENT_UFRAG, CLIENT_PWD = "EsAw", "bP+XJMM09aR8AiX1jdukzR6Y"
FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)


def offer(
    *sections: tuple[str, str | None, str | None],
    ufrag: str = CLIENT_UFRAG,
    pwd: str = CLIENT_PWD,
    ssrc_msid: list[str] | None = None,
) -> str:
    """A browser-like offer; each section is (kind, direction or None, msid stream or None)."""
    mids = [str(i) for i in range(len(sections))]
    lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
             "a=group:BUNDLE " + " ".join(mids), "a=msid-semantic: WMS"]
    for mid, (kind, direction, stream) in zip(mids, sections, strict=True):
        pt, codec = ("111", "opus/48000/2") if kind == "audio" else ("96", "VP8/90000")
        lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", "c=IN IP4 0.0.0.0",
                  f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"a=fingerprint:{FINGERPRINT}",
                  "a=setup:actpass", f"a=mid:{mid}"]
        if direction is not None:
            lines.append(f"a={direction}")
        if stream is not None:
            lines.append(f"a=msid:{stream} track-{mid}")
        lines += ["a=rtcp-mux", f"a=rtpmap:{pt} {codec}", f"a=ssrc:{1000 + int(mid)} cname:x"]
        if ssrc_msid is not None:
            lines.append(f"a=ssrc:{1000 + int(mid)} msid:{ssrc_msid[int(mid)]} track-{mid}")
    return "\r\n".join(lines) + "\r\n"


WHIP_OFFER = offer(("audio", "sendonly", "s1"), ("video", "sendonly", "s1"))
WHEP_OFFER = offer(("audio", "recvonly", None), ("video", "recvonly", None))
CANDIDATE = "1 1 udp 2130706431 198.51.100.1 7882 typ host"


def answer(ufrag: str, pwd: str, direction: str) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite",
             "a=group:BUNDLE 0 1"]
    for mid, kind in (("0", "audio"), ("1", "video")):
        pt, codec = ("111", "opus/48000/2") if kind == "audio" else ("96", "VP8/90000")
        lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", "c=IN IP4 0.0.0.0",
                  f"a=candidate:{CANDIDATE}", "a=end-of-candidates", f"a=ice-ufrag:{ufrag}",
                  f"a=ice-pwd:{pwd}", f"a=fingerprint:{FINGERPRINT}", "a=setup:passive",
                  f"a=mid:{mid}", f"a={direction}", "a=rtcp-mux", "a=rtcp-mux-only",
                  f"a=rtpmap:{pt} {codec}"]
    return "\r\n".join(lines) + "\r\n"


class FakeWhipSfu(FakeSfu):
    """The SFU side of the WHIP/WHEP contract, scripted."""

    def __init__(self) -> None:
        super().__init__()
        self.creds: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.generation = 0
        self.draining = False
        self.whep_fail: Exception | None = None
        self.restart_fail: Exception | None = None

    def _new_creds(self, key: tuple[str, str, str]) -> tuple[str, str]:
        self.generation += 1
        creds = (f"srv{self.generation:04d}", f"pwd{self.generation:04d}" + "q" * 20)
        self.creds[key] = creds
        return creds

    async def publish(
        self, room: str, peer_id: str, offer_sdp: str, *, source: str | None = None
    ) -> str:
        self.calls.append(("publish", room, peer_id, offer_sdp))
        self._maybe_fail()
        return answer(*self._new_creds(("pub", room, peer_id)), "recvonly")

    async def whep(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        publisher_id: str | None = None,
        source: str | None = None,
    ) -> str:
        self.calls.append(("whep", room, peer_id, publisher_id))
        if self.whep_fail is not None:
            raise self.whep_fail
        return answer(*self._new_creds(("whep", room, peer_id)), "sendonly")

    async def stop(self, role: str, room: str, peer_id: str) -> None:
        self.calls.append(("stop", role, room, peer_id))
        if self.creds.pop((role, room, peer_id), None) is None:
            raise NotFound(f"no connection {peer_id}")

    def ice_credentials(self, role: str, room: str, peer_id: str) -> tuple[str, str]:
        creds = self.creds.get((role, room, peer_id))
        if creds is None:
            raise NotFound(f"no connection {peer_id}")
        return creds

    def restart_ice(
        self, role: str, room: str, peer_id: str, remote_ufrag: str, remote_pwd: str
    ) -> tuple[str, str]:
        self.calls.append(("restart_ice", role, room, peer_id, remote_ufrag, remote_pwd))
        self.ice_credentials(role, room, peer_id)
        if self.restart_fail is not None:
            raise self.restart_fail
        return self._new_creds((role, room, peer_id))


ICE_SERVERS = [
    parse_ice_server("stun:stun.example.net"),
    parse_ice_server("turn:user:my%22Password@turn.example.net?transport=udp"),
]


@pytest.fixture
def fake() -> FakeWhipSfu:
    return FakeWhipSfu()


@pytest.fixture
def sessions() -> Sessions:
    return Sessions()


@pytest.fixture
async def http(
    fake: FakeWhipSfu, sessions: Sessions, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(fake, site_dir=tmp_path, ice_servers=ICE_SERVERS, sessions=sessions)
    async with http_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def post(http: httpx.AsyncClient, path: str, body: str, **headers: str) -> httpx.Response:
    return await http.post(path, content=body.encode(), headers={"Content-Type": SDP, **headers})


async def patch(
    http: httpx.AsyncClient, url: str, body: str, if_match: str | None, **headers: str
) -> httpx.Response:
    h = {"Content-Type": FRAG, **headers}
    if if_match is not None:
        h["If-Match"] = if_match
    return await http.patch(url, content=body.encode(), headers=h)


def restart_frag(ufrag: str = "ysXw", pwd: str = "vw5LmwG4y/e6dPP/zAP9Gp5k") -> str:
    return f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"


def trickle_frag(ufrag: str = CLIENT_UFRAG, pwd: str = CLIENT_PWD) -> str:
    return (f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
            "a=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host "
            f"generation 0 ufrag {ufrag} network-id 1\r\na=end-of-candidates\r\n")


# -- WHIP: POST ---------------------------------------------------------------------------------


async def test_whip_post_201(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    r = await post(http, "/whip/r1", WHIP_OFFER)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == SDP
    assert r.text == answer("srv0001", "pwd0001" + "q" * 20, "recvonly")
    # An unguessable session URL (192 random bits), and a strong ETag naming the ICE session.
    location = r.headers["location"]
    assert re.fullmatch(r"/sessions/[A-Za-z0-9_-]{32}", location), location
    assert r.headers["etag"] == etag_for("srv0001", "pwd0001" + "q" * 20)
    assert re.fullmatch(r'"[0-9a-f]{32}"', r.headers["etag"])
    # RFC 9725 §4.6: one Link per ICE server, TURN with its credentials.
    assert r.headers.get_list("link") == [
        '<stun:stun.example.net>; rel="ice-server"',
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; '
        'credential="my\\"Password"; credential-type="password"',
    ]
    # A WHIP publisher is an ordinary publisher with a seed-style id.
    (call,) = fake.calls
    assert call[:2] == ("publish", "r1") and call[3] == WHIP_OFFER
    assert re.fullmatch(r"whip-[0-9a-f]{8}", call[2])
    again = await post(http, "/whip/r1", WHIP_OFFER)
    assert again.headers["location"] != location and fake.calls[1][2] != call[2]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (offer(("audio", "recvonly", "s1"), ("video", "sendonly", "s1")), "recvonly"),
        (offer(("video", "inactive", "s1")), "inactive"),
        (offer(("audio", "sendonly", "s1"), ("audio", "sendonly", "s1")),
         "at most one audio m-section"),
        (offer(("video", "sendonly", "s1"), ("video", "sendonly", "s1")),
         "at most one video m-section"),
        (offer(("audio", "sendonly", "s1"), ("video", "sendonly", "s2")), "one MediaStream"),
        (offer(("audio", "sendonly", None), ("video", "sendonly", None), ssrc_msid=["a", "b"]),
         "one MediaStream"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "needs an audio or a video"),
    ],
)
async def test_whip_offers_refused_422(
    http: httpx.AsyncClient, fake: FakeWhipSfu, body: str, reason: str
) -> None:
    r = await post(http, "/whip/r1", body)
    assert r.status_code == 422, r.text
    assert reason in r.text
    assert fake.calls == []


async def test_whip_offers_accepted(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    for body in [
        offer(("audio", "sendrecv", "s1"), ("video", "sendonly", "s1")),  # sendrecv is fine
        offer(("video", "sendonly", "-")),  # no stream at all
        offer(("audio", None, None)),  # the default direction is sendrecv
        offer(("audio", "sendonly", None), ("video", "sendonly", None), ssrc_msid=["s", "s"]),
        offer(("audio", "sendonly", "s"), ("video", "sendonly", "s"), ssrc_msid=["s", "s"]),
    ]:
        r = await post(http, "/whip/r1", body)
        assert r.status_code == 201, (body, r.text)


async def test_whip_post_errors(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    r = await http.post("/whip/r1", content=WHIP_OFFER.encode(),
                        headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/sdp" in r.text
    r = await post(http, "/whip/r1", "v=0\r\nbogus\r\n")
    assert r.status_code == 400 and r.text.startswith("malformed SDP")
    r = await post(http, "/whip/r1", "")
    assert r.status_code == 400 and "empty body" in r.text
    r = await post(http, "/whip/r%201", WHIP_OFFER)
    assert r.status_code == 400 and "[A-Za-z0-9_.-]{1,64}" in r.text
    fake.fail = BadRequest("a publisher offer needs audio or video we can receive")
    r = await post(http, "/whip/r1", WHIP_OFFER)
    assert r.status_code == 400 and "we can receive" in r.text
    fake.fail = SdpError("no usable codec")
    assert (await post(http, "/whip/r1", WHIP_OFFER)).status_code == 400
    # RFC 9725: GET, HEAD and PUT on the endpoint are reserved (405).
    for method in ("GET", "HEAD", "PUT", "PATCH", "DELETE"):
        r = await http.request(method, "/whip/r1")
        assert r.status_code == 405, method


async def test_draining_and_overload_are_503_with_retry_after(
    http: httpx.AsyncClient, fake: FakeWhipSfu
) -> None:
    fake.draining = True
    for path, body in (("/whip/r1", WHIP_OFFER), ("/whep/r1", WHEP_OFFER)):
        r = await post(http, path, body)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert "draining" in r.text
    assert fake.calls == []  # refused before the SFU
    fake.draining = False
    fake.fail = Unavailable("too many peers", retry_after=7)
    r = await post(http, "/whip/r1", WHIP_OFFER)
    assert r.status_code == 503 and r.headers["retry-after"] == "7"


async def test_options(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    for path in ("/whip/r1", "/whep/r1", "/whep/r1/alice-1"):
        r = await http.options(path)
        assert r.status_code == 200
        assert r.headers["accept-post"] == SDP
        assert "POST" in r.headers["allow"]
        assert "link" not in r.headers  # TURN credentials only go to authorized POSTs
    r = await post(http, "/whip/r1", WHIP_OFFER)
    r = await http.options(r.headers["location"])
    assert r.status_code == 200 and r.headers["accept-patch"] == FRAG
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"OPTIONS", "PATCH", "DELETE"}


# -- sessions: DELETE and PATCH -------------------------------------------------------------


async def created(http: httpx.AsyncClient, path: str = "/whip/r1", **headers: str) -> Any:
    body = WHIP_OFFER if path.startswith("/whip") else WHEP_OFFER
    r = await post(http, path, body, **headers)
    assert r.status_code == 201, r.text
    return r.headers["location"], r.headers["etag"]


async def test_delete(http: httpx.AsyncClient, fake: FakeWhipSfu, sessions: Sessions) -> None:
    url, _ = await created(http)
    peer = fake.calls[-1][2]
    # If-Match is ignored on DELETE.
    r = await http.delete(url, headers={"If-Match": '"not-the-etag"'})
    assert (r.status_code, r.content) == (200, b"")
    assert fake.calls[-1] == ("stop", "pub", "r1", peer)
    assert len(sessions) == 0
    for method, kwargs in (("DELETE", {}), ("PATCH", {"content": restart_frag().encode(),
                                                      "headers": {"Content-Type": FRAG,
                                                                  "If-Match": "*"}})):
        r = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 404, method
    assert (await http.delete("/sessions/nope")).status_code == 404
    # The connection already ended on its own: DELETE still removes the resource.
    url, _ = await created(http)
    fake.creds.clear()
    assert (await http.delete(url)).status_code == 200
    assert (await http.delete(url)).status_code == 404
    # Session URLs take no GET, POST or PUT (RFC 9725: reserved).
    url, _ = await created(http)
    for method in ("GET", "POST", "PUT"):
        assert (await http.request(method, url)).status_code == 405, method


async def test_patch_preconditions(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    url, etag = await created(http)
    r = await http.patch(url, content=trickle_frag().encode(),
                         headers={"Content-Type": SDP, "If-Match": etag})
    assert r.status_code == 415 and r.headers["accept-patch"] == FRAG
    r = await http.patch(url, content=b"x", headers={"If-Match": etag})
    assert r.status_code == 415 and r.headers["accept-patch"] == FRAG
    r = await patch(http, url, trickle_frag(), None)
    assert r.status_code == 428 and "If-Match" in r.text
    for wrong in ('"0123"', etag.strip('"'), f"W/{etag}", '"a", "b"', "garbage"):
        r = await patch(http, url, trickle_frag(), wrong)
        assert r.status_code == 412, wrong
    assert not any(c[0] == "restart_ice" for c in fake.calls)


async def test_trickle_is_204_without_body_or_etag(
    http: httpx.AsyncClient, fake: FakeWhipSfu
) -> None:
    url, etag = await created(http)
    for if_match in (etag, "*", f'"other", {etag}'):
        r = await patch(http, url, trickle_frag(), if_match)
        assert (r.status_code, r.content) == (204, b""), r.text
        assert "etag" not in r.headers
    # whip-whep's own trickle shape, and an end-of-candidates only fragment.
    r = await patch(http, url, f"a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:{CLIENT_PWD}\r\n"
                    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n", etag)
    assert r.status_code == 204
    r = await patch(http, url, "a=end-of-candidates\r\n", etag)
    assert r.status_code == 204
    assert not any(c[0] == "restart_ice" for c in fake.calls)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("v=0\r\n", "do not belong"),
        ("a=ice-ufrag:x\r\n", "ice-chars"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n", "no a=mid"),
        ("a=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n", "before any m= line"),
        ("m=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:garbage\r\n", "candidate"),
        ("a=ice-ufrag:ysXw\r\n", "needs the new ice-pwd"),
        (f"a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:{'x' * 22}\r\n", "new ice-ufrag"),
        ("\xff", "malformed SDP"),
    ],
)
async def test_bad_fragments_are_400(
    http: httpx.AsyncClient, fake: FakeWhipSfu, body: str, reason: str
) -> None:
    url, _ = await created(http)
    r = await http.patch(url, content=body.encode("utf-8", "surrogateescape")
                         if body != "\xff" else b"\xff",
                         headers={"Content-Type": FRAG, "If-Match": "*"})
    assert r.status_code == 400, r.text
    assert reason in r.text
    assert not any(c[0] == "restart_ice" for c in fake.calls)


async def test_ice_restart(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    url, etag = await created(http)
    peer = fake.calls[-1][2]
    r = await patch(http, url, restart_frag(), "*")  # whip-whep's restart: credentials only
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == FRAG
    new_etag = r.headers["etag"]
    assert new_etag == etag_for("srv0002", "pwd0002" + "q" * 20) != etag
    assert fake.calls[-1] == ("restart_ice", "pub", "r1", peer, "ysXw",
                              "vw5LmwG4y/e6dPP/zAP9Gp5k")
    # The server's new fragment: lite, new credentials, its candidate, CRLF lines (clients
    # match them with regular expressions ending in \r\n).
    frag = parse_frag(r.text)
    assert frag.ice_lite and (frag.ice_ufrag, frag.ice_pwd) == ("srv0002", "pwd0002" + "q" * 20)
    assert [(mid, c.to_sdp()) for mid, c in frag.candidates] == [("0", CANDIDATE)]
    assert frag.groups[0].mids == ["0", "1"] and frag.complete
    assert "a=ice-ufrag:srv0002\r\n" in r.text and f"a=candidate:{CANDIDATE}\r\n" in r.text
    # The old ETag no longer matches; the new one does, with the new client ufrag.
    new_trickle = trickle_frag("ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k")
    assert (await patch(http, url, new_trickle, etag)).status_code == 412
    assert (await patch(http, url, new_trickle, new_etag)).status_code == 204
    # A restart may also name the current ETag instead of *.
    r = await patch(http, url, restart_frag("abcd", "y" * 22), new_etag)
    assert r.status_code == 200 and r.headers["etag"] != new_etag


async def test_failed_restart_keeps_the_old_session(
    http: httpx.AsyncClient, fake: FakeWhipSfu
) -> None:
    url, etag = await created(http)
    fake.restart_fail = BadRequest("cannot restart now")
    r = await patch(http, url, restart_frag(), "*")
    assert r.status_code == 400 and "cannot restart now" in r.text
    assert "etag" not in r.headers
    # Nothing changed: the old ETag and the old client credentials still hold.
    assert (await patch(http, url, trickle_frag(), etag)).status_code == 204
    fake.restart_fail = None
    assert (await patch(http, url, restart_frag(), "*")).status_code == 200
    # The connection is gone behind our back: 404, and the session with it.
    fake.creds.clear()
    assert (await patch(http, url, restart_frag("zzzz", "q" * 22), "*")).status_code == 404
    assert (await http.delete(url)).status_code == 404


# -- WHEP -----------------------------------------------------------------------------------------


async def test_whep(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    r = await post(http, "/whep/r1", WHEP_OFFER)
    assert r.status_code == 201, r.text
    assert "a=sendonly" in r.text and r.headers["location"].startswith("/sessions/")
    assert len(r.headers.get_list("link")) == 2 and r.headers["etag"]
    call = fake.calls[-1]
    assert call[:2] == ("whep", "r1") and call[3] is None
    assert re.fullmatch(r"whep-[0-9a-f]{8}", call[2])
    r = await post(http, "/whep/r1/alice-k3", offer(("video", "sendrecv", None)))
    assert r.status_code == 201 and fake.calls[-1][3] == "alice-k3"
    url = r.headers["location"]
    peer = fake.calls[-1][2]
    r = await patch(http, url, restart_frag(), "*")
    assert r.status_code == 200 and fake.calls[-1][:4] == ("restart_ice", "whep", "r1", peer)
    assert (await http.delete(url)).status_code == 200
    assert fake.calls[-1] == ("stop", "whep", "r1", peer)


async def test_whep_refusals(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    r = await post(http, "/whep/r1", offer(("video", "sendonly", None)))
    assert r.status_code == 422 and "receives" in r.text
    r = await post(http, "/whep/r1", offer(("audio", "inactive", None)))
    assert r.status_code == 422
    r = await post(http, "/whep/r1/bad%20name", WHEP_OFFER)
    assert r.status_code == 400 and "publisher" in r.text
    fake.whep_fail = Conflict("room r1 has no live publisher yet", retry_after=3)
    r = await post(http, "/whep/r1", WHEP_OFFER)
    assert r.status_code == 409 and r.headers["retry-after"] == "3"
    assert "no live publisher" in r.text
    fake.whep_fail = Conflict("room r1 has no live publisher yet")
    r = await post(http, "/whep/r1", WHEP_OFFER)
    assert r.status_code == 409 and r.headers["retry-after"] == "2"  # a default when unsaid
    fake.whep_fail = NotFound("no live publisher alice-1 in room r1")
    r = await post(http, "/whep/r1/alice-1", WHEP_OFFER)
    assert r.status_code == 404


# -- CORS ---------------------------------------------------------------------------------------


async def test_cors(fake: FakeWhipSfu) -> None:
    app = create_app(fake, cors_origins=["https://player.example"],
                     tokens=TokenVerifier(KEY, SECRET), ice_servers=ICE_SERVERS)
    async with http_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        origin = "https://player.example"
        for path in ("/whip/r1", "/whep/r1", "/sessions/anything"):
            # Preflights never need a token.
            r = await http.options(path, headers={**preflight_headers(origin),
                                                  "Access-Control-Request-Method": "PATCH"})
            assert r.status_code == 204
            assert "PATCH" in r.headers["access-control-allow-methods"]
            allowed = r.headers["access-control-allow-headers"].lower()
            assert {"authorization", "if-match", "content-type"} <= {
                h.strip() for h in allowed.split(",")}
        value = create_token(KEY, SECRET, identity="cam", room="r1", publish=True)
        r = await post(http, "/whip/r1", WHIP_OFFER, Origin=origin,
                       Authorization=f"Bearer {value}")
        assert r.status_code == 201
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"location", "etag", "link"} <= exposed
        assert r.headers["access-control-allow-origin"] == origin


# -- tokens ---------------------------------------------------------------------------------------


def tok(identity: str = "cam", room: str = "r1", **grants: Any) -> str:
    now = grants.pop("now", None)
    return "Bearer " + create_token(KEY, SECRET, identity=identity, room=room, now=now,
                                    **grants)


@pytest.fixture
async def guarded(fake: FakeWhipSfu) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(fake, tokens=TokenVerifier(KEY, SECRET), ice_servers=ICE_SERVERS)
    async with http_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


async def test_tokens_on_whip_and_whep(guarded: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    http = guarded
    r = await post(http, "/whip/r1", WHIP_OFFER)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="trio-sfu"'
    assert "link" not in r.headers
    r = await post(http, "/whip/r1", WHIP_OFFER,
                   Authorization=tok(publish=True, now=time.time() - 7200))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "expired" in r.text
    for path, body, value, reason in [
        ("/whip/r1", WHIP_OFFER, tok(subscribe=True), "does not grant publish"),
        ("/whip/r2", WHIP_OFFER, tok(publish=True), "not 'r2'"),
        ("/whep/r1", WHEP_OFFER, tok(publish=True), "does not grant subscribe"),
        ("/whep/r1/alice-1", WHEP_OFFER, tok(room="r9", subscribe=True), "not 'r1'"),
    ]:
        r = await post(http, path, body, Authorization=value)
        assert r.status_code == 403, (path, r.text)
        assert reason in r.text and "insufficient_scope" in r.headers["www-authenticate"]
    assert fake.calls == []
    # Allowed: the peer id carries the token's identity.
    r = await post(http, "/whip/r1", WHIP_OFFER, Authorization=tok(publish=True))
    assert r.status_code == 201 and re.fullmatch(r"cam-[0-9a-f]{8}", fake.calls[-1][2])
    assert len(r.headers.get_list("link")) == 2
    r = await post(http, "/whep/r1", WHEP_OFFER, Authorization=tok("viewer", "*", subscribe=True))
    assert r.status_code == 201 and fake.calls[-1][2].startswith("viewer-")
    # OPTIONS needs no token.
    assert (await http.options("/whip/r1")).status_code == 200


async def test_tokens_on_sessions(guarded: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    http = guarded
    url, etag = await created(http, Authorization=tok(publish=True))
    for value, status in [
        (None, 401),
        ("Bearer nonsense", 401),
        (tok("mallory", publish=True), 403),  # another identity
        (tok(room="r2", publish=True), 403),  # another room
        (tok(subscribe=True), 403),  # not the grant that created it
    ]:
        headers = {} if value is None else {"Authorization": value}
        r = await patch(http, url, trickle_frag(), etag, **headers)
        assert r.status_code == status, (value, r.text)
        r = await http.delete(url, headers=headers)
        assert r.status_code == status, (value, r.text)
    # An unknown session still says 401 first (nothing is revealed without a token).
    assert (await http.delete("/sessions/unknown")).status_code == 401
    assert (await http.delete("/sessions/unknown",
                              headers={"Authorization": tok(publish=True)})).status_code == 404
    assert (await patch(http, url, trickle_frag(), etag,
                        Authorization=tok(publish=True))).status_code == 204
    r = await patch(http, url, restart_frag(), "*", Authorization=tok(publish=True))
    assert r.status_code == 200
    # An admin token for the room may end anyone's session.
    r = await http.delete(url, headers={"Authorization": tok("ops", admin=True)})
    assert r.status_code == 200


# -- nothing a client sends is a 500 ------------------------------------------------------------


def whip_requests(seed: int, count: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Random requests aimed at the WHIP/WHEP routes: real and mangled offers, fragments,
    preconditions and credentials."""
    rng = random.Random(seed)
    names = ["r1", "a-1", "", "..", "%ff", "%00", "a" * 65, "é", "x y", "*", "sessions"]
    bodies = [WHIP_OFFER.encode(), WHEP_OFFER.encode(), restart_frag().encode(),
              trickle_frag().encode(), b"", b"v=0\r\n", b"a=ice-ufrag:\r\n", b"m=\r\n"]
    requests = []
    for _ in range(count):
        shape = rng.choice(["/whip/{}", "/whep/{}", "/whep/{}/{}", "/sessions/{}", "/whip/{}/{}",
                            "/sessions/{}/{}"])
        path = shape.format(*(rng.choice(names) for _ in range(shape.count("{}"))))
        body = rng.choice(bodies)
        mutation = rng.random()
        if mutation < 0.3 and body:
            data = bytearray(body)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            body = bytes(data)
        elif mutation < 0.45:
            body = body[: rng.randrange(len(body) + 1)]
        elif mutation < 0.55:
            body = rng.randbytes(rng.choice([1, 50, 3000]))
        headers = {"Content-Type": rng.choice([SDP, FRAG, "text/plain", "", "application/sdp; x",
                                               FRAG + "; charset=utf-8"])}
        if rng.random() < 0.5:
            headers["If-Match"] = rng.choice(["*", '"x"', "W/\"x\"", "", ",,,", '"', "\x7f"])
        if rng.random() < 0.3:
            headers["Authorization"] = rng.choice(
                ["Bearer x", "Bearer", "Basic a", "Bearer " + "a" * 5000, "bearer a.b.c"]
            )
        method = rng.choice(["POST", "PATCH", "DELETE", "OPTIONS", "GET", "PUT", "HEAD"])
        requests.append((method, path, headers, body))
    return requests


async def test_random_requests_never_500(
    http: httpx.AsyncClient, fake: FakeWhipSfu, sessions: Sessions
) -> None:
    base = str(http.base_url)
    # Live sessions for the random PATCH/DELETEs to hit, their ids among the names.
    urls = [(await created(http))[0] for _ in range(3)]
    urls.append((await created(http, "/whep/r1"))[0])
    requests = whip_requests(seed=5, count=500)
    rng = random.Random(6)
    frags = [restart_frag(), trickle_frag(), "a=end-of-candidates\r\n", "m=audio 9 x 0\r\n"]
    for i in range(0, len(requests), 3):  # a third aim PATCHes (mostly) at live sessions
        method, _, headers, body = requests[i]
        if rng.random() < 0.9:
            method = "PATCH"
            headers = {k: v for k, v in headers.items() if k != "If-Match"}
            headers["Content-Type"] = FRAG
            if_match = rng.choice(["*", "*", None, '"x"'])
            if if_match is not None:
                headers["If-Match"] = if_match
            if rng.random() < 0.6:
                data = bytearray(rng.choice(frags).encode())
                for _ in range(rng.randint(0, 3)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                body = bytes(data)
        requests[i] = (method, rng.choice(urls), headers, body)
    statuses = await patched_statuses(base, requests)
    # The PATCH path is reached in depth: trickles, restarts, bad fragments, preconditions.
    assert {200, 204, 400, 412, 428} <= statuses, statuses
    await assert_never_500(base, requests)
    await assert_never_500(base, random_requests(seed=8, count=200))


async def patched_statuses(
    base: str, requests: list[tuple[str, str, dict[str, str], bytes]]
) -> set[int]:
    """Send the PATCHes among ``requests``; the statuses they got (never 5xx)."""
    seen: set[int] = set()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for method, path, headers, body in requests:
            if method == "PATCH" and path.startswith("/sessions/"):
                r = await http.request(method, path, headers=headers, content=body)
                assert r.status_code < 500, (path, headers, body[:100], r.text)
                seen.add(r.status_code)
    return seen


WHIP_GARBAGE = [
    b"POST /whip/r1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n\r\n\xff\xfe\x00\x01\x02",
    b"POST /whep/%ff/%fe HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 3\r\n\r\nv=0",
    b"PATCH /sessions/%ff HTTP/1.1\r\nHost: x\r\nContent-Type: application/trickle-ice-sdpfrag\r\n"
    b"If-Match: *\r\nContent-Length: 3\r\n\r\na=x",
    b"PATCH /sessions/x HTTP/1.1\r\nHost: x\r\nIf-Match: \xff\xfe\r\n"
    b"Content-Type: application/trickle-ice-sdpfrag\r\nContent-Length: 0\r\n\r\n",
    b"DELETE /sessions/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n\r\n",
    b"POST /whip/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: \x00\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0",
    b"OPTIONS /whip/r1 HTTP/1.1\r\nHost: x\r\nOrigin: \xff\r\n"
    b"Access-Control-Request-Method: PATCH\r\n\r\n",
]


async def test_raw_garbage_never_500(http: httpx.AsyncClient, fake: FakeWhipSfu) -> None:
    base = str(http.base_url).rstrip("/")
    url, _ = await created(http)
    session_garbage = [
        f"PATCH {url} HTTP/1.1\r\nHost: x\r\nContent-Type: application/trickle-ice-sdpfrag\r\n"
        "If-Match: *\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        f"PATCH {url} HTTP/1.1\r\nHost: x\r\nContent-Type: application/trickle-ice-sdpfrag\r\n"
        "If-Match: *\r\nContent-Length: 99999999\r\n\r\na=".encode(),
    ]
    for data in [*WHIP_GARBAGE, *session_garbage, *RAW_GARBAGE]:
        status = await raw_exchange(base, data)
        assert status is None or status < 500, (data[:80], status)
    assert (await http.get("/healthz")).status_code == 200


# -- against the real SFU, with our Python client -------------------------------------------------


class WhipPeer:
    """Our client as a WHIP publisher or WHEP viewer: media only (no data channel), one stream,
    its session URL and ETag kept as a WHIP client keeps them."""

    def __init__(self, kind: str) -> None:
        self.pc = new_client(consent_interval=1.0)
        direction = "sendonly" if kind == "whip" else "recvonly"
        stream = "whip-stream"
        self.audio = self.pc.add_transceiver("audio", direction, stream_id=stream)
        self.video = self.pc.add_transceiver("video", direction, stream_id=stream)
        self.received = Received()
        self.pc.on_rtp = self.received
        self.url = ""
        self.etag = ""
        self._seq = 0

    async def post(self, http: httpx.AsyncClient, path: str, **headers: str) -> httpx.Response:
        r = await post(http, path, self.pc.create_offer(), **headers)
        if r.status_code == 201:
            self.pc.handle_answer(r.text)
            self.url, self.etag = r.headers["location"], r.headers["etag"]
        return r

    def send_frame(self, *, keyframe: bool = False) -> None:
        seq = self._seq
        self._seq += 1
        for t, payload in ((self.video, vp8_payload(keyframe)), (self.audio, bytes(80))):
            codec = t.media_codecs[0]
            self.pc.send_rtp(RtpPacket(
                payload_type=codec.payload_type, sequence_number=seq & 0xFFFF,
                timestamp=(seq * codec.clock_rate // 30) & 0xFFFFFFFF, ssrc=t.sender_ssrc,
                marker=True, payload=payload,
            ).serialize())


def vp8_payload(keyframe: bool) -> bytes:
    # RFC 7741 §4.2 descriptor (S=1) + a VP8 frame header (RFC 6386 §9.1 start code on keyframes)
    return b"\x10" + (b"\x00\x00\x00\x9d\x01\x2a" if keyframe else b"\x01") + bytes(600)


@pytest.fixture
async def real(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[str, Sfu]]:
    rtc = RtcServer.bind("127.0.0.1", 0, consent_timeout=30.0)
    nursery.start_soon(rtc.serve)
    sfu = Sfu(rtc)
    await nursery.start(sfu.run)
    app = create_app(sfu, site_dir=tmp_path, ice_servers=ICE_SERVERS,
                     tokens=TokenVerifier(KEY, SECRET))
    try:
        async with http_server(app) as url:
            yield url, sfu
    finally:
        rtc.close()


async def pump(publisher: WhipPeer, until: Any, *, timeout: float = 10) -> None:
    """Send a frame every 20 ms (a keyframe every 10) until ``until()`` holds (bounded)."""
    with trio.fail_after(timeout):
        while not until():
            publisher.send_frame(keyframe=publisher._seq % 10 == 0)
            await trio.sleep(0.02)


async def test_real_whip_publisher_seen_by_a_seed_subscriber_and_a_whep_viewer(
    real: tuple[str, Sfu], nursery: trio.Nursery
) -> None:
    url, sfu = real
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        # Nobody publishes yet: a WHEP viewer is told to come back later.
        early = WhipPeer("whep")
        r = await early.post(http, "/whep/r1", Authorization=tok("viewer", subscribe=True))
        assert r.status_code == 409 and int(r.headers["retry-after"]) > 0, r.text

        sub = SubscriberClient("bob-x9", certificate=client_certificate())
        await nursery.start(sub.connect, functools.partial(sfu.subscribe, "r1", "bob-x9"))
        await sub.wait_open()

        publisher = WhipPeer("whip")
        r = await publisher.post(http, "/whip/r1", Authorization=tok("cam", publish=True))
        assert r.status_code == 201, r.text
        # RFC 9725: every m-section of the answer recvonly and RTP/RTCP-multiplexed. (The
        # answer carries rtcp-mux; RFC 8858 §4.3 forbids rtcp-mux-only in an answer.)
        desc = parse_sdp(r.text)
        assert [(m.kind, desc.effective_direction(m)) for m in desc.media] == [
            ("audio", "recvonly"), ("video", "recvonly")]
        assert all(m.rtcp_mux for m in desc.media), r.text
        await nursery.start(publisher.pc.run)
        with trio.fail_after(10):
            await publisher.pc.wait_connected()
        # An ordinary publisher for the seed API: PUB_JOIN with the token's identity.
        line = await sub.expect("PUB_JOIN ")
        publisher_id = line.split()[1]
        assert re.fullmatch(r"cam-[0-9a-f]{8}", publisher_id), line
        await pump(publisher, lambda: sub.packets[publisher_id] >= 20)

        # A WHEP viewer of the room receives the publisher's video and audio.
        viewer = WhipPeer("whep")
        r = await viewer.post(http, "/whep/r1", Authorization=tok("viewer", subscribe=True))
        assert r.status_code == 201, r.text
        answer_desc = parse_sdp(r.text)
        assert {(m.kind, answer_desc.effective_direction(m)) for m in answer_desc.media} == {
            ("audio", "sendonly"), ("video", "sendonly")}
        await nursery.start(viewer.pc.run)
        with trio.fail_after(10):
            await viewer.pc.wait_connected()

        video_ssrcs = set(viewer.video.remote_ssrcs)

        def viewer_keyframes() -> int:
            # The publisher's VP8 keyframes, forwarded (the header is rewritten, not the data).
            return sum(
                1 for p in viewer.received.payloads
                if parse_rtp(p).ssrc in video_ssrcs and parse_rtp(p).payload[1:4] == bytes(3)
                and parse_rtp(p).payload[4:7] == b"\x9d\x01\x2a"
            )

        await pump(publisher, lambda: viewer_keyframes() >= 2 and len(viewer.received.packets)
                   > 40)
        kinds = {t.kind for t in viewer.pc.transceivers
                 for ssrc, _ in viewer.received.packets if ssrc in t.remote_ssrcs}
        assert kinds == {"audio", "video"}

        # DELETE the WHIP session: the publisher leaves the room for everyone.
        r = await http.delete(publisher.url, headers={"Authorization": tok("cam", publish=True)})
        assert r.status_code == 200
        assert await sub.expect(f"PUB_LEFT {publisher_id}")
        r = await http.delete(publisher.url, headers={"Authorization": tok("cam", publish=True)})
        assert r.status_code == 404
        r = await http.delete(viewer.url, headers={"Authorization": tok("viewer", subscribe=True)})
        assert r.status_code == 200
        with trio.fail_after(10):
            await viewer.pc.wait_closed()
            await publisher.pc.wait_closed()
        sub.stop()


async def test_real_whip_offers_refused(real: tuple[str, Sfu]) -> None:
    url, sfu = real
    auth = {"Authorization": tok("cam", publish=True)}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        two_video = WhipPeer("whip")
        two_video.pc.add_transceiver("video", "sendonly", stream_id="whip-stream")
        r = await post(http, "/whip/r1", two_video.pc.create_offer(), **auth)
        assert r.status_code == 422 and "at most one video" in r.text
        receiving = WhipPeer("whep")
        r = await post(http, "/whip/r1", receiving.pc.create_offer(), **auth)
        assert r.status_code == 422 and "recvonly" in r.text
        r = await post(http, "/whip/r1", "v=0\r\nx\r\n", **auth)
        assert r.status_code == 400
    assert sfu.rooms == {}
    for peer in (two_video, receiving):
        peer.pc.close()


async def test_random_requests_never_500_real(real: tuple[str, Sfu]) -> None:
    url, sfu = real
    await assert_never_500(url, whip_requests(seed=21, count=300))
    for data in WHIP_GARBAGE:
        status = await raw_exchange(url, data)
        assert status is None or status < 500, (data[:80], status)
    assert sfu.rooms == {}


async def test_sessions_of_ended_connections_are_pruned(
    http: httpx.AsyncClient, fake: FakeWhipSfu, sessions: Sessions
) -> None:
    """Connections end on their own (consent timeout, STOP): later POSTs forget their
    sessions a few at a time, so the table follows the SFU without a task of its own."""
    for _ in range(12):
        await created(http)
    live = [(await created(http, "/whep/r1"))[0] for _ in range(2)]
    assert len(sessions) == 14
    for key in [k for k in fake.creds if k[0] == "pub"]:
        del fake.creds[key]  # the 12 publishers are gone
    await created(http, "/whep/r1")
    assert len(sessions) <= 14 + 1 - 6  # 8 checked: at most 2 of them were alive
    await created(http, "/whep/r1")
    # Two POSTs checked every session: only live ones remain, none was dropped wrongly.
    assert len(sessions) == 4
    assert all((s.role, s.room, s.peer_id) in fake.creds for s in sessions)
    for url in live:
        assert (await http.delete(url)).status_code == 200
