"""The HTTP API through a real Hypercorn server: first against a fake SFU (every status and
header the HTTP layer owns), then against the real SFU with our Python client doing real POSTs.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypercorn.trio import serve as hypercorn_serve

from tests.conftest import live_tasks
from tests.rtc_helpers import client_certificate
from trio_sfu.app import hypercorn_config
from trio_sfu.client.peer import ClientPeerConnection
from trio_sfu.client.sfu import PublisherClient, SignalingError, SubscriberClient, http_signal
from trio_sfu.config import Config
from trio_sfu.http import create_app
from trio_sfu.http.limits import MAX_BODY
from trio_sfu.proto.errors import SdpError
from trio_sfu.rtc.server import RtcServer
from trio_sfu.sfu.errors import BadRequest, Conflict, NotFound, SfuError, Unavailable
from trio_sfu.sfu.service import Sfu

SDP = "application/sdp"
ROOM = {
    "room": "r1",
    "publishers": [{"id": "alice-k3j2", "user": "alice", "audio": 1, "video": 1}],
    "subscribers": [{"id": "bob-x9", "user": "bob"}],
}


class FakeSfu:
    """The interface http/ codes against; scripted failures, and a log of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.app_ids: list[str] = []
        self.fail: Exception | None = None
        self.rooms = {"r1": ROOM}

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def publish(
        self,
        room: str,
        peer_id: str,
        offer_sdp: str,
        *,
        source: str | None = None,
        app_ids: Sequence[str] = (),
    ) -> str:
        self.calls.append(("publish", room, peer_id, offer_sdp))
        self.app_ids = list(app_ids)
        self._maybe_fail()
        return f"v=0\r\ns=answer to {peer_id}\r\n"

    async def subscribe(
        self, room: str, peer_id: str, offer_sdp: str, *, source: str | None = None
    ) -> str:
        self.calls.append(("subscribe", room, peer_id, offer_sdp))
        self._maybe_fail()
        return f"v=0\r\ns=answer to {peer_id}\r\n"

    async def stop(self, role: str, room: str, peer_id: str) -> None:
        self.calls.append(("stop", role, room, peer_id))
        self._maybe_fail()
        if peer_id.startswith("ghost"):
            raise NotFound(f"no connection {peer_id}")

    async def list_rooms(self) -> list[dict[str, Any]]:
        self.calls.append(("list_rooms",))
        return list(self.rooms.values())

    async def room_info(self, room: str) -> dict[str, Any]:
        self.calls.append(("room_info", room))
        if room not in self.rooms:
            raise NotFound(f"no room {room}")
        return self.rooms[room]


@asynccontextmanager
async def http_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with the production Hypercorn settings on an ephemeral loopback port."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        config = hypercorn_config(Config(http_host="127.0.0.1", http_port=0))
        binds = await nursery.start(
            functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        )
        try:
            yield binds[0]
        finally:
            stop.set()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "lib").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>demo</title>")
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "style.css").write_text("body {}\n")
    (root / "lib" / "index.html").write_text("lib index")
    (root / ".env").write_text("SECRET=1")
    (tmp_path / "outside.txt").write_text("outside the site")
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    return root


@pytest.fixture
def fake() -> FakeSfu:
    return FakeSfu()


@pytest.fixture
async def base(fake: FakeSfu, site: Path) -> AsyncIterator[str]:
    async with http_server(create_app(fake, site_dir=site)) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


# -- signaling against the fake ---------------------------------------------------------------


@pytest.mark.parametrize(("role", "method"), [("pub", "publish"), ("sub", "subscribe")])
async def test_offer_gets_201_answer(
    http: httpx.AsyncClient, fake: FakeSfu, role: str, method: str
) -> None:
    r = await http.post(f"/{role}/r1/alice-k3j2", content=b"v=0\r\n", headers={"Content-Type": SDP})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == SDP
    assert r.text == "v=0\r\ns=answer to alice-k3j2\r\n"
    assert r.headers["location"] == f"/{role}/r1/alice-k3j2"
    assert fake.calls == [(method, "r1", "alice-k3j2", "v=0\r\n")]


async def test_publisher_app_ids_reach_the_sfu_in_order(
    http: httpx.AsyncClient, fake: FakeSfu
) -> None:
    r = await http.post(
        "/pub/r1/alice-k3j2?app_ids=mic,screen", content=b"v=0\r\n",
        headers={"Content-Type": SDP},
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/pub/r1/alice-k3j2"  # the resource has no query
    assert fake.app_ids == ["mic", "screen"]


async def test_content_type_parameters_and_case_are_accepted(
    http: httpx.AsyncClient, fake: FakeSfu
) -> None:
    r = await http.post(
        "/pub/r1/a-1",
        content=b"v=0\r\n",
        headers={"Content-Type": "Application/SDP; charset=utf-8"},
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/json", "application/sdpx"]
)
async def test_wrong_content_type_is_415(
    http: httpx.AsyncClient, fake: FakeSfu, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = await http.post("/sub/r1/bob-1", content=b"v=0\r\n", headers=headers)
    assert r.status_code == 415
    assert "application/sdp" in r.text
    assert fake.calls == []


@pytest.mark.parametrize(
    ("room", "peer_id"),
    [
        ("r%201", "bob-1"),  # space
        ("r1", "b" * 65),
        ("r" * 65, "bob-1"),
        ("r%C3%A9", "bob-1"),  # é
        ("r1", "bob%2B1"),  # +
        ("r1", "bob%00"),
    ],
)
async def test_bad_names_are_400_before_the_sfu(
    http: httpx.AsyncClient, fake: FakeSfu, room: str, peer_id: str
) -> None:
    for method in ("POST", "DELETE"):
        r = await http.request(
            method, f"/pub/{room}/{peer_id}", content=b"v=0\r\n", headers={"Content-Type": SDP}
        )
        assert r.status_code == 400, (method, r.text)
        assert "[A-Za-z0-9_.-]{1,64}" in r.text
    if room != "r1":
        r = await http.get(f"/rooms/{room}")
        assert r.status_code == 400
        assert r.json()["status"] == 400
    assert fake.calls == []


async def test_longest_valid_names_pass(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    room, peer = "R_." + "9" * 61, "u-" + "z" * 62
    r = await http.post(f"/sub/{room}/{peer}", content=b"v=0", headers={"Content-Type": SDP})
    assert r.status_code == 201
    assert fake.calls[0][1:3] == (room, peer)


async def test_body_limit_by_content_length(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    ok = b"v=0\r\n" + b"a" * (MAX_BODY - 5)
    assert len(ok) == MAX_BODY
    r = await http.post("/pub/r1/a-1", content=ok, headers={"Content-Type": SDP})
    assert r.status_code == 201
    r = await http.post("/pub/r1/a-2", content=ok + b"x", headers={"Content-Type": SDP})
    assert r.status_code == 413
    assert [c[2] for c in fake.calls] == ["a-1"]


async def test_body_limit_on_chunked_upload(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 1 MiB in 16 KiB chunks, no Content-Length
            sent += 16384
            yield b"a" * 16384

    r = await http.post("/pub/r1/a-1", content=chunks(), headers={"Content-Type": SDP})
    assert r.status_code == 413
    assert fake.calls == []

    async def small() -> AsyncIterator[bytes]:
        yield b"v=0\r\n"
        yield b"s=-\r\n"

    r = await http.post("/pub/r1/a-2", content=small(), headers={"Content-Type": SDP})
    assert r.status_code == 201
    assert fake.calls == [("publish", "r1", "a-2", "v=0\r\ns=-\r\n")]


async def test_endless_upload_gets_413_and_close(base: str, fake: FakeSfu) -> None:
    """A client streaming forever still reads a 413, and the server hangs up (bounded)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    await trio.testing.wait_all_tasks_blocked()
    before = len(live_tasks())
    stream = await trio.open_tcp_stream(host, int(port))
    received = bytearray()
    async with stream, trio.open_nursery() as nursery:

        async def upload() -> None:
            await stream.send_all(
                b"POST /pub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            with contextlib.suppress(trio.BrokenResourceError):
                for _ in range(4096):  # 64 MiB if nobody stops us
                    await stream.send_all(b"4000\r\n" + b"a" * 16384 + b"\r\n")

        with trio.fail_after(20):
            nursery.start_soon(upload)
            while chunk := await stream.receive_some(65536):
                received += chunk
            nursery.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 413")
    assert fake.calls == []
    # Hypercorn's connection task ends too (nothing left blocked on the closed connection).
    with trio.fail_after(10):
        while len(live_tasks()) > before:
            await trio.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "reason"), [(b"", "empty"), (b"  \r\n", "empty"), (b"v=0\r\ns=\xff\xfe\r\n", "UTF-8")]
)
async def test_unusable_bodies_are_400(
    http: httpx.AsyncClient, fake: FakeSfu, body: bytes, reason: str
) -> None:
    r = await http.post("/sub/r1/bob-1", content=body, headers={"Content-Type": SDP})
    assert r.status_code == 400
    assert reason in r.text
    assert fake.calls == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (SdpError("missing o= line", 2, "s=x"), 400),
        (BadRequest("a subscriber offer needs a data channel (m=application)"), 400),
        (Conflict("a connection with id bob-1 is already live"), 409),
        (NotFound("no room r1"), 404),
        (Unavailable("draining", retry_after=7), 503),
        (SfuError("generic refusal"), 400),
    ],
)
async def test_sfu_errors_map_to_statuses(
    http: httpx.AsyncClient, fake: FakeSfu, error: Exception, status: int
) -> None:
    fake.fail = error
    r = await http.post("/sub/r1/bob-1", content=b"v=0\r\n", headers={"Content-Type": SDP})
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/plain")
    assert str(error) in r.text
    if isinstance(error, SdpError):
        assert r.text.startswith("malformed SDP: line 2")
    if isinstance(error, Unavailable):
        assert r.headers["retry-after"] == "7"
    else:
        assert "retry-after" not in r.headers


@pytest.mark.parametrize("role", ["pub", "sub"])
async def test_delete(http: httpx.AsyncClient, fake: FakeSfu, role: str) -> None:
    r = await http.delete(f"/{role}/r1/bob-1")
    assert r.status_code == 204
    assert r.content == b""
    r = await http.delete(f"/{role}/r1/ghost-1")
    assert r.status_code == 404
    assert "ghost-1" in r.text
    assert fake.calls == [("stop", role, "r1", "bob-1"), ("stop", role, "r1", "ghost-1")]


async def test_room_lists(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    r = await http.get("/rooms")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"rooms": [ROOM]}
    r = await http.get("/rooms/r1")
    assert r.json() == ROOM
    r = await http.get("/rooms/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "no room nope", "status": 404}


async def test_unknown_routes_and_wrong_methods(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    for path in ("/nope", "/pub", "/pub/r1", "/pub/r1/a-1/extra", "/rooms/r1/x", "/sub//a-1"):
        for method in ("GET", "POST", "DELETE", "PUT"):
            r = await http.request(method, path, content=b"v=0", headers={"Content-Type": SDP})
            assert r.status_code == 404, (method, path)
            if not path.startswith("/rooms"):
                assert r.text == "404 Not Found\n"
    for method, path in (
        ("GET", "/pub/r1/a-1"),
        ("PUT", "/sub/r1/a-1"),
        ("PATCH", "/pub/r1/a-1"),
        ("POST", "/rooms"),
        ("DELETE", "/rooms/r1"),
        ("POST", "/healthz"),
    ):
        r = await http.request(method, path)
        assert r.status_code == 405, (method, path, r.status_code)
        assert "Method Not Allowed" in r.text
        assert r.headers["allow"]
    allow = (await http.get("/pub/r1/a-1")).headers["allow"]
    assert sorted(allow.replace(" ", "").split(",")) == ["DELETE", "OPTIONS", "POST"]
    assert fake.calls == []


async def test_healthz(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert (r.status_code, r.text) == (200, "ok\n")


# -- CORS -------------------------------------------------------------------------------------


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }


async def test_cors_listed_origin(fake: FakeSfu, site: Path) -> None:
    app = create_app(fake, cors_origins=["https://app.example"], site_dir=site)
    async with http_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.options("/pub/r1/a-1", headers=preflight_headers("https://app.example"))
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "DELETE" in r.headers["access-control-allow-methods"]
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        assert "origin" in r.headers["vary"].lower()
        assert fake.calls == []  # preflight never reaches the SFU

        r = await http.options("/pub/r1/a-1", headers=preflight_headers("https://evil.example"))
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-methods" not in r.headers

        r = await http.post(
            "/pub/r1/a-1",
            content=b"v=0",
            headers={"Content-Type": SDP, "Origin": "https://app.example"},
        )
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert exposed == {"location", "etag", "link"}
        # Errors carry CORS headers too, or a browser page could not read them.
        r = await http.get("/rooms/none", headers={"Origin": "https://app.example"})
        assert r.status_code == 404
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await http.get("/rooms", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_cors_any_origin(fake: FakeSfu) -> None:
    app = create_app(fake, cors_origins=["*"])
    async with http_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.options("/sub/r1/a-1", headers=preflight_headers("https://x.example"))
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "*"
        r = await http.get("/rooms", headers={"Origin": "https://y.example"})
        assert r.headers["access-control-allow-origin"] == "*"
    assert fake.calls == [("list_rooms",)]


async def test_no_cors_by_default(http: httpx.AsyncClient, fake: FakeSfu) -> None:
    r = await http.options("/pub/r1/a-1", headers=preflight_headers("https://x.example"))
    assert r.status_code < 300
    assert "access-control-allow-origin" not in r.headers
    r = await http.get("/rooms", headers={"Origin": "https://x.example"})
    assert "access-control-allow-origin" not in r.headers
    assert fake.calls == [("list_rooms",)]


# -- the demo site ----------------------------------------------------------------------------


async def test_site_files_and_types(http: httpx.AsyncClient) -> None:
    expected = {
        "/": ("text/html", "<!doctype html><title>demo</title>"),
        "/index.html": ("text/html", "<!doctype html><title>demo</title>"),
        "/app.js": ("text/javascript", "export const x = 1;\n"),
        "/style.css": ("text/css", "body {}\n"),
        "/lib/": ("text/html", "lib index"),
    }
    for path, (ctype, body) in expected.items():
        r = await http.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].split(";")[0] == ctype, path
        assert r.text == body
    r = await http.head("/app.js")
    assert (r.status_code, r.content) == (200, b"")
    etag = (await http.get("/app.js")).headers["etag"]
    r = await http.get("/app.js", headers={"If-None-Match": etag})
    assert r.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/lib/..%2f..%2foutside.txt",
        "/..%2Foutside.txt",
        "/escape.txt",  # a symlink pointing outside
        "/.env",
        "/lib/.%2e/.env",
        "/%00",
        "/index.html%00.js",
        "/nope.js",
        "/" + "a" * 5000,
    ],
)
async def test_site_refuses_traversal_and_hidden(http: httpx.AsyncClient, path: str) -> None:
    r = await http.get(path)
    assert r.status_code == 404, path
    assert "outside the site" not in r.text
    assert "SECRET" not in r.text


async def test_no_site_dir(fake: FakeSfu) -> None:
    app = create_app(fake, site_dir=None)
    async with http_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/")
        assert r.status_code == 404
        assert "--site-dir" in r.text
        assert (await http.get("/rooms")).status_code == 200


# -- nothing a client sends is a 500 ----------------------------------------------------------


async def raw_exchange(url: str, data: bytes, timeout: float = 5) -> int | None:
    """Send raw bytes, half-close, return the status of the first response (None: closed)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        with trio.move_on_after(timeout):
            try:
                await stream.send_all(data)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass
            while b"\r\n" not in received and len(received) < 65536:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    if not received:
        return None
    if data.startswith(b"PRI * HTTP/2.0") and not received.startswith(b"HTTP/"):
        return 0  # HTTP/2 with prior knowledge: the server answered with h2 frames
    first = received.split(b"\r\n", 1)[0].split()
    assert first[0].startswith(b"HTTP/1."), received[:200]
    return int(first[1])


RAW_GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(40),  # h2 preface without h2
    b"GET /rooms/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",  # raw non-UTF-8 in the path
    b"GET /rooms/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /%ff/%c0%af HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /pub/%ff/%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /pub/%ff/%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /pub/r%ff/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 3\r\n\r\nv=0",
    b"GET /" + b"a/" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: -5\r\n\r\nv=0",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: abc\r\n\r\nv=0",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 99999999999999999999\r\n\r\nv=0",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nv=0\r\n0\r\n\r\n",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nv=0\r\n",
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 10\r\n\r\nv=0",  # body shorter than declared, then EOF
    b"POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: \xff\xfe/\x00\r\n"
    b"Content-Length: 3\r\n\r\nv=0",
    b'POST /sub/r1/a-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp; charset="\r\n'
    b"Content-Length: 3\r\n\r\nv=0",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\nRange: bytes=999-1,zz\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\nRange: bytes=99999-\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: yesterday\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: \xff\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS /pub/r1/a-1 HTTP/1.1\r\nHost: x\r\nOrigin: \xff\r\n"
    b"Access-Control-Request-Method: \x00\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/rooms HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET rooms HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /rooms HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /rooms\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET /rooms?%ff=%fe&a HTTP/1.1\r\nHost: x\r\nCookie: \xff=\xfe\r\n\r\n",
    b"GET /rooms HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /rooms HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: !!\r\n\r\n",
]


async def test_raw_garbage_never_500(base: str, fake: FakeSfu) -> None:
    fake.fail = SdpError("not SDP")  # the real SFU's answer to the bodies above
    seen = []
    for data in RAW_GARBAGE:
        status = await raw_exchange(base, data)
        assert status is None or status < 500, (data[:80], status)
        seen.append(status)
    assert any(s is not None and 400 <= s < 500 for s in seen)
    # The server is still fine afterwards.
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).status_code == 200


def random_requests(seed: int, count: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    rng = random.Random(seed)
    names = [
        "r1",
        "a-1",
        "",
        "..",
        ".",
        "%2e%2e",
        "%ff",
        "%00",
        "a" * 64,
        "a" * 65,
        "é",
        "%C3%A9",
        "a%2Fb",
        "x y",
        "-",
        "a-",
        "\u202e",
        "~",
        "*",
    ]
    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "X-FOO"]
    ctypes = [
        SDP,
        "application/sdp; charset=utf-8",
        "text/plain",
        "",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/sdp; x",
        "*/*",
        "application/json",
    ]
    requests = []
    for _ in range(count):
        shape = rng.choice(
            [
                "/pub/{}/{}",
                "/sub/{}/{}",
                "/rooms/{}",
                "/rooms",
                "/{}",
                "/{}/{}/{}",
                "/",
                "/healthz",
                "/app.js",
                "/lib/{}",
            ]
        )
        path = shape.format(*(rng.choice(names) for _ in range(shape.count("{}"))))
        size = rng.choice([0, 1, 10, 100, 5000, MAX_BODY + 1])
        kind = rng.random()
        if kind < 0.3:
            body = rng.randbytes(size)
        elif kind < 0.6:
            text = "v=0\r\n" + "".join(rng.choice("am=\r\n :0123456789xyz/") for _ in range(size))
            body = text.encode()
        else:
            body = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        headers = {"Content-Type": rng.choice(ctypes)}
        if rng.random() < 0.3:
            headers["Origin"] = rng.choice(["https://a.example", "null", "x"])
            headers["Access-Control-Request-Method"] = rng.choice(methods)
        if rng.random() < 0.1:
            headers["Range"] = rng.choice(["bytes=0-1", "bytes=5-1", "bytes=x", "bytes=0-0,1-1"])
        requests.append((rng.choice(methods), path, headers, body))
    return requests


async def assert_never_500(
    base: str, requests: list[tuple[str, str, dict[str, str], bytes]]
) -> None:
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for method, path, headers, body in requests:
            r = await http.request(method, path, headers=headers, content=body)
            assert r.status_code < 500, (method, path, headers, body[:100], r.text)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert len(statuses) >= 4, statuses  # the generator reaches many different outcomes


async def test_random_requests_never_500_fake(base: str, fake: FakeSfu) -> None:
    fake.fail = SdpError("not SDP")
    await assert_never_500(base, random_requests(seed=3, count=400))


# -- against the real SFU, with our client doing real POSTs -----------------------------------


@pytest.fixture
async def real(nursery: trio.Nursery, site: Path) -> AsyncIterator[tuple[str, Sfu]]:
    rtc = RtcServer.bind("127.0.0.1", 0, consent_timeout=30.0)
    nursery.start_soon(rtc.serve)
    sfu = Sfu(rtc)
    await nursery.start(sfu.run)
    try:
        async with http_server(create_app(sfu, site_dir=site)) as url:
            yield url, sfu
    finally:
        rtc.close()


async def test_real_sfu_publish_subscribe_list_delete(
    real: tuple[str, Sfu], nursery: trio.Nursery
) -> None:
    url, _ = real
    sub = SubscriberClient("bob-x9", certificate=client_certificate())
    await nursery.start(sub.connect, http_signal(url, "sub", "r1", "bob-x9"))
    await sub.wait_open()
    pub = PublisherClient("alice-k3j2", certificate=client_certificate())
    await nursery.start(pub.connect, http_signal(url, "pub", "r1", "alice-k3j2"))
    await pub.wait_open()
    await sub.expect("PUB_JOIN alice-k3j2")

    async with httpx.AsyncClient(base_url=url) as http:
        rooms = (await http.get("/rooms")).json()["rooms"]
        assert [r["room"] for r in rooms] == ["r1"]
        room = (await http.get("/rooms/r1")).json()
        assert room["publishers"] == [{"id": "alice-k3j2", "user": "alice", "audio": 1, "video": 1}]
        assert room["subscribers"] == [{"id": "bob-x9", "user": "bob"}]

        # The same id again while live: 409, and the live connection is untouched.
        with pytest.raises(SignalingError) as caught:
            await http_signal(url, "pub", "r1", "alice-k3j2")(pub.pc.create_offer())
        assert caught.value.status == 409

        r = await http.delete("/pub/r1/alice-k3j2")
        assert r.status_code == 204
        await sub.expect("PUB_LEFT alice-k3j2")
        assert (await http.delete("/pub/r1/alice-k3j2")).status_code == 404
        r = await http.delete("/sub/r1/bob-x9")
        assert r.status_code == 204
        with trio.fail_after(10):
            await sub.pc.wait_closed()
        assert (await http.get("/rooms/r1")).status_code == 404
        assert (await http.get("/rooms")).json() == {"rooms": []}


async def test_real_sfu_refusals(real: tuple[str, Sfu]) -> None:
    url, _ = real
    media_only = ClientPeerConnection(certificate=client_certificate())
    media_only.add_transceiver("video", "recvonly")
    channel_only = ClientPeerConnection(certificate=client_certificate())
    channel_only.create_data_channel("control")
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/sub/r1/bob-1", content=media_only.create_offer(), headers={"Content-Type": SDP}
        )
        assert r.status_code == 400
        assert "data channel" in r.text
        r = await http.post(
            "/pub/r1/alice-1", content=channel_only.create_offer(), headers={"Content-Type": SDP}
        )
        assert r.status_code == 400
        r = await http.post(
            "/pub/r1/alice-1", content=b"v=0\r\nbogus\r\n", headers={"Content-Type": SDP}
        )
        assert r.status_code == 400
        assert r.text.startswith("malformed SDP")
        assert (await http.get("/rooms")).json() == {"rooms": []}
    media_only.close()
    channel_only.close()


async def test_random_requests_never_500_real(real: tuple[str, Sfu]) -> None:
    url, sfu = real
    await assert_never_500(url, random_requests(seed=11, count=300))
    for data in RAW_GARBAGE:
        status = await raw_exchange(url, data)
        assert status is None or status < 500, (data[:80], status)
    assert sfu.rooms == {}
