"""TURN for clients (issue 12): short-lived TURN REST credentials handed out by the API, and
Chromium reaching the SFU only through Debian's coturn (``iceTransportPolicy: "relay"``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time

import httpx
import pytest

from tests.netns import require_netns
from tests.peers.harness import require_chromium
from tests.test_http import FakeSfu, http_server
from tests.test_ice_tcp import run_scenario
from trio_sfu.auth import TokenVerifier, create_token
from trio_sfu.config import Config, ConfigError, parse_ice_server
from trio_sfu.http import create_app
from trio_sfu.http.ice_servers import IceServerList, turn_rest_credentials

SECRET = "turn-shared-secret-0123456789"
KEY, API_SECRET = "k1", "api-secret-" + "q" * 32
TURNSERVER = "/usr/bin/turnserver"


def test_credentials_follow_coturns_use_auth_secret_scheme() -> None:
    username, credential = turn_rest_credentials(SECRET, "alice", 600, now=1_700_000_000.7)
    assert username == "1700000600:alice"
    expected = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected and len(credential) == 28


def servers(clock: float = 1_700_000_000.0) -> IceServerList:
    return IceServerList(
        [parse_ice_server("stun:stun.example.net")],
        turn_urls=["turn:turn.example.net:3478?transport=udp", "turns:turn.example.net:443"],
        turn_secret=SECRET,
        ttl=900,
        clock=lambda: clock,
    )


def test_the_list_gives_static_servers_and_fresh_turn_credentials() -> None:
    body = servers().as_json("bob")
    assert body["ttl"] == 900
    stun, turn_udp, turns = body["iceServers"]
    assert stun == {"urls": ["stun:stun.example.net"]}
    assert turn_udp["urls"] == ["turn:turn.example.net:3478?transport=udp"]
    assert turns["urls"] == ["turns:turn.example.net:443"]
    assert turn_udp["username"] == turns["username"] == "1700000900:bob"
    assert turn_udp["credential"] == turn_rest_credentials(SECRET, "bob", 900, 1_700_000_000)[1]
    assert servers().as_json(None)["iceServers"][1]["username"].endswith(":anonymous")
    assert SECRET not in repr(servers())
    with pytest.raises(ValueError, match="--turn-secret"):
        IceServerList(turn_urls=["turn:x.example"])


def test_turn_settings() -> None:
    config = Config.from_env({
        "TRIO_SFU_TURN_URL": "turn:turn.example.net:3478?transport=tcp,turns:t.example:443",
        "TRIO_SFU_TURN_SECRET": SECRET,
        "TRIO_SFU_TURN_TTL": "600",
    })
    config.check()
    assert config.turn_urls == ("turn:turn.example.net:3478?transport=tcp", "turns:t.example:443")
    assert config.turn_ttl == 600
    for env, message in (
        ({"TRIO_SFU_TURN_URL": "turn:u:p@t.example"}, "without credentials"),
        ({"TRIO_SFU_TURN_URL": "stun:t.example"}, "not a turn"),
        ({"TRIO_SFU_TURN_SECRET": "short"}, "at least 16"),
        ({"TRIO_SFU_TURN_TTL": "5"}, "between 60"),
    ):
        with pytest.raises(ConfigError, match=message):
            Config.from_env(env)
    for half in ({"TRIO_SFU_TURN_URL": "turn:t.example"}, {"TRIO_SFU_TURN_SECRET": SECRET}):
        with pytest.raises(ConfigError, match="go together"):
            Config.from_env(half).check()


async def test_ice_servers_route_and_link_headers_on_the_seed_api() -> None:
    app = create_app(FakeSfu(), ice_servers=servers(time.time()))
    async with http_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.get("/ice-servers")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        entries = r.json()["iceServers"]
        assert [e["urls"][0].split(":")[0] for e in entries] == ["stun", "turn", "turns"]
        expiry = int(entries[1]["username"].split(":")[0])
        assert time.time() + 800 < expiry <= time.time() + 901
        # The seed API's answer carries the same list as Link headers (RFC 9725 §4.6 style),
        # TURN credentials for the connection's user.
        r = await http.post("/pub/r1/alice-x1", content="v=0\r\n",
                            headers={"Content-Type": "application/sdp"})
        assert r.status_code == 201
        links = r.headers.get_list("link")
        assert len(links) == 3 and links[0] == '<stun:stun.example.net>; rel="ice-server"'
        assert re.search(r'username="\d+:alice"; credential="[A-Za-z0-9+/=]{28}"', links[1])
        assert 'credential-type="password"' in links[1]


async def test_ice_servers_need_a_token_when_tokens_are_on() -> None:
    app = create_app(FakeSfu(), tokens=TokenVerifier(KEY, API_SECRET), ice_servers=servers())
    async with http_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.get("/ice-servers")
        assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
        token = create_token(KEY, API_SECRET, identity="carol", room="r1", subscribe=True)
        r = await http.get("/ice-servers", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.json()["iceServers"][1]["username"].endswith(":carol")


@pytest.mark.browser
async def test_chromium_through_coturn_only() -> None:
    """The issue's proof: Debian's coturn on loopback inside a namespace, credentials from
    GET /ice-servers (the JS module's fetchIceServers), iceTransportPolicy "relay": the
    subscriber decodes >= 60 frames, chat crosses, and both selected pairs are relayed."""
    require_netns()
    require_chromium()
    if not os.access(TURNSERVER, os.X_OK):
        if os.environ.get("TRIO_SFU_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{TURNSERVER} not found (Debian package coturn)")
        pytest.skip(f"{TURNSERVER} not found (Debian package coturn)")
    result = await run_scenario("turn")
    assert result["framesDecoded"] >= 60, result
    assert any(text == "hello over turn" for _, text in result["chat"]), result
    for name in ("alice", "bob"):
        pair = result["pairs"][name]
        assert pair["local"]["candidateType"] == "relay", pair
        assert pair["local"]["relayProtocol"] == "tcp", pair  # turn:...?transport=tcp
    username = result["iceServers"]["iceServers"][0]["username"]
    assert re.fullmatch(r"\d+:anonymous", username)
    assert int(username.split(":")[0]) > time.time()  # an expiry time, in the future
