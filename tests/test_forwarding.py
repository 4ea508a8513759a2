"""Issue 9, item 1, in one process: requests about a session held by another node are answered
by that node (``http/forwarding.py`` replaying them into its app, through the wire format of
``cluster/forward.py``), with its status codes, headers and bodies; tokens are checked as on the
owner; a node that is gone is a 404 that says so. The same over NATS with pods as processes is
``tests/test_cluster_any_pod.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.test_http import http_server
from tests.test_whip_http import (
    FRAG,
    KEY,
    SDP,
    SECRET,
    WHIP_OFFER,
    FakeWhipSfu,
    patch,
    restart_frag,
    trickle_frag,
)
from trio_sfu.auth import TokenVerifier, create_token
from trio_sfu.cluster.forward import (
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from trio_sfu.http import create_app
from trio_sfu.http.forwarding import ForwardedRequest, ForwardedResponse, replay
from trio_sfu.http.sessions import Sessions
from trio_sfu.sfu.errors import NotFound


class InProcessForwarder:
    """Nodes by name, each an app in this process; the request crosses the wire format."""

    def __init__(self, node_id: str, apps: dict[str, object]) -> None:
        self.node_id = node_id
        self.apps = apps
        self.forwarded = 0

    async def owner_of(self, connection_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return None

    async def other_live_node(self) -> str | None:
        await trio.lowlevel.checkpoint()
        return next((n for n in self.apps if n != self.node_id), None)

    async def forward(self, node: str, forwarded: ForwardedRequest) -> ForwardedResponse:
        app = self.apps.get(node)
        if app is None:
            raise NotFound(f"the session is not on a live pod (pod {node} is gone)")
        self.forwarded += 1
        answer = await replay(app, decode_request(encode_request(forwarded)))  # type: ignore[arg-type]
        return decode_response(encode_response(answer))


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[str, tuple[str, FakeWhipSfu]]]:
    apps: dict[str, object] = {}
    out: dict[str, tuple[str, FakeWhipSfu]] = {}
    async with trio.open_nursery() as nursery:
        for name in ("n1", "n2"):
            sfu = FakeWhipSfu()
            app = create_app(
                sfu,
                site_dir=tmp_path,
                tokens=TokenVerifier(KEY, SECRET),
                forwarder=InProcessForwarder(name, apps),
            )
            apps[name] = app
            send, recv = trio.open_memory_channel[str](1)

            async def serve(app: object = app, send: trio.MemorySendChannel[str] = send) -> None:
                async with http_server(app) as url:
                    await send.send(url)
                    await trio.sleep_forever()

            nursery.start_soon(serve)
            out[name] = (await recv.receive(), sfu)
        yield out
        nursery.cancel_scope.cancel()


def bearer(identity: str = "cam", **grants: bool) -> dict[str, str]:
    return {"Authorization": "Bearer " + create_token(KEY, SECRET, identity=identity, room="r1",
                                                      **grants)}


async def test_session_requests_on_another_node_get_the_owners_answers(
    nodes: dict[str, tuple[str, FakeWhipSfu]],
) -> None:
    (url1, sfu1), (url2, sfu2) = nodes["n1"], nodes["n2"]
    auth = bearer(publish=True)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url1 + "/whip/r1", content=WHIP_OFFER,
                            headers={"Content-Type": SDP, **auth})
        assert r.status_code == 201, r.text
        path, etag = r.headers["Location"], r.headers["ETag"]
        assert Sessions.node_of(path.rsplit("/", 1)[1]) == "n1"
        # Trickle, restart, stale ETag, wrong type, DELETE: all through n2, answered by n1.
        r = await patch(http, url2 + path, trickle_frag(), etag, **auth)
        assert (r.status_code, r.content) == (204, b"")
        r = await patch(http, url2 + path, restart_frag(), "*", **auth)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(FRAG)
        assert r.headers["ETag"] != etag
        assert sfu1.calls[-1][0] == "restart_ice" and not sfu2.calls
        r2 = await patch(http, url2 + path, trickle_frag(), etag, **auth)
        r1 = await patch(http, url1 + path, trickle_frag(), etag, **auth)
        assert (r2.status_code, r2.text) == (r1.status_code, r1.text)
        assert r2.status_code == 412
        # Tokens: none is 401 here already; another identity is the owner's 403.
        r = await patch(http, url2 + path, trickle_frag(), "*")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        r = await patch(http, url2 + path, trickle_frag(), "*", **bearer("mallory", publish=True))
        r1 = await patch(http, url1 + path, trickle_frag(), "*", **bearer("mallory", publish=True))
        assert r.status_code == r1.status_code == 403
        assert r.text == r1.text and r.headers["WWW-Authenticate"] == r1.headers["WWW-Authenticate"]
        r = await http.delete(url2 + path, headers=auth)
        assert r.status_code == 200
        assert sfu1.calls[-1][0] == "stop"
        r = await http.delete(url2 + path, headers=auth)
        assert r.status_code == 404 and "no such session" in r.text
        # A session of a node that is gone: 404 saying so.
        r = await http.delete(url2 + "/sessions/abc.n9", headers=auth)
        assert r.status_code == 404 and "not on a live pod" in r.text


async def test_a_draining_node_hands_new_sessions_to_a_live_one(
    nodes: dict[str, tuple[str, FakeWhipSfu]],
) -> None:
    (url1, sfu1), (_, sfu2) = nodes["n1"], nodes["n2"]
    sfu1.draining = True
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url1 + "/whip/r1", content=WHIP_OFFER,
                            headers={"Content-Type": SDP, **bearer(publish=True)})
    assert r.status_code == 201, r.text
    assert Sessions.node_of(r.headers["Location"].rsplit("/", 1)[1]) == "n2"
    assert sfu2.calls[0][0] == "publish" and not sfu1.calls
    # The node that took it does not forward again, even if it drains too: 503 stands.
    sfu2.draining = True
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url1 + "/whip/r1", content=WHIP_OFFER,
                            headers={"Content-Type": SDP, **bearer(publish=True)})
    assert r.status_code == 503 and "Retry-After" in r.headers
