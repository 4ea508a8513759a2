"""Bearer tokens (issue 5, item 1): the token format, the ``trio-sfu token`` command and the
settings behind it, the seed API and room lists with and without tokens, the start-up warning
of an open server, and the demo site joining with ``?token=``.

WHIP/WHEP with tokens are in tests/test_whip_http.py.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio

from tests.rtc_helpers import client_certificate
from tests.test_http import FakeSfu, http_server, preflight_headers
from trio_sfu.app import serve
from trio_sfu.auth import Claims, TokenError, TokenVerifier, create_token
from trio_sfu.cli import build_parser, config_from_args, main
from trio_sfu.client.sfu import PublisherClient, SignalingError, SubscriberClient
from trio_sfu.config import Config, ConfigError, IceServer, parse_ice_server
from trio_sfu.http import create_app

REPO = Path(__file__).resolve().parent.parent
KEY = "k1"
SECRET = "s3cret-" + "x" * 40
SDP = "application/sdp"
NOW = 1_700_000_000.0


def token(
    identity: str = "alice",
    room: str = "r1",
    *,
    key: str = KEY,
    secret: str = SECRET,
    ttl: float = 600,
    now: float | None = None,
    **grants: bool,
) -> str:
    return create_token(key, secret, identity=identity, room=room, ttl=ttl, now=now, **grants)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
         b64url(signature)]
    )


# -- the token format -------------------------------------------------------------------------


def test_round_trip_and_claims() -> None:
    text = token("alice", "r1", publish=True, now=NOW)
    header = jwt.get_unverified_header(text)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": KEY}
    payload = jwt.decode(text, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {
        "sub": "alice",
        "room": "r1",
        "grants": {"publish": True, "subscribe": False, "admin": False},
        "iss": KEY,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 600,
    }
    claims = TokenVerifier(KEY, SECRET).verify(text, now=NOW + 1)
    assert claims == Claims("alice", "r1", publish=True, expires_at=NOW + 600)
    assert claims.grants == ["publish"]


def test_allows_matrix() -> None:
    pub = Claims("a", "r1", publish=True)
    assert pub.allows("publish", "r1") and not pub.allows("subscribe", "r1")
    assert not pub.allows("publish", "r2") and not pub.allows("admin", "r1")
    anywhere = Claims("a", "*", subscribe=True)
    assert anywhere.allows("subscribe", "r2") and anywhere.covers("zz")
    admin = Claims("a", "r1", admin=True)
    assert all(admin.allows(g, "r1") for g in ("publish", "subscribe", "admin"))
    assert not admin.allows("publish", "r2")


@pytest.mark.parametrize(
    ("make", "message", "expired"),
    [
        (lambda: token(publish=True, now=NOW - 700), "expired", True),
        (lambda: token(publish=True, now=NOW - 606), "expired", True),  # past the 5 s leeway
        (lambda: token(publish=True, now=NOW + 60), "not valid yet", False),
        (lambda: token(publish=True, now=NOW, secret="another-secret-" + "y" * 30),
         "bad signature", False),
        (lambda: token(publish=True, now=NOW, key="k2"), "unknown key id", False),
        (lambda: "not.a.jwt", "not a JWT", False),
        (lambda: "", "not a JWT", False),
        (lambda: "x" * 5000, "too long", False),
        # alg=none and other algorithms are never accepted, whatever the payload says.
        (lambda: forged({"alg": "none", "kid": KEY},
                        {"sub": "a", "room": "r1", "grants": {}, "exp": NOW + 60}),
         "invalid token", False),
        (lambda: jwt.encode({"sub": "a", "room": "r1", "grants": {}, "exp": NOW + 60},
                            "k" * 64, algorithm="HS512", headers={"kid": KEY}),
         "invalid token", False),
        (lambda: jwt.encode({"sub": "a", "room": "r1", "grants": {}}, SECRET,
                            headers={"kid": KEY}), "exp", False),
        (lambda: jwt.encode({"room": "r1", "grants": {}, "exp": NOW + 60}, SECRET,
                            headers={"kid": KEY}), "sub", False),
        (lambda: jwt.encode({"sub": "a b", "room": "r1", "grants": {}, "exp": NOW + 60},
                            SECRET, headers={"kid": KEY}), "identity", False),
        (lambda: jwt.encode({"sub": "a" * 56, "room": "r1", "grants": {}, "exp": NOW + 60},
                            SECRET, headers={"kid": KEY}), "identity", False),
        (lambda: jwt.encode({"sub": "a", "room": "r/1", "grants": {}, "exp": NOW + 60},
                            SECRET, headers={"kid": KEY}), "room", False),
        (lambda: jwt.encode({"sub": "a", "room": "r1", "grants": ["publish"], "exp": NOW + 60},
                            SECRET, headers={"kid": KEY}), "grants", False),
        (lambda: jwt.encode({"sub": "a", "room": "r1", "grants": {"publish": 1},
                             "exp": NOW + 60}, SECRET, headers={"kid": KEY}), "grants", False),
        (lambda: jwt.encode({"sub": "a", "room": "r1", "grants": {}, "exp": True},
                            SECRET, headers={"kid": KEY}), "NumericDate", False),
    ],
)
def test_refused_tokens(make: Any, message: str, expired: bool) -> None:
    with pytest.raises(TokenError) as caught:
        TokenVerifier(KEY, SECRET).verify(make(), now=NOW)
    assert message in str(caught.value)
    assert caught.value.expired is expired


def test_leeway_accepts_small_clock_skew() -> None:
    verifier = TokenVerifier(KEY, SECRET)
    assert verifier.verify(token(publish=True, now=NOW - 603), now=NOW).identity == "alice"
    assert verifier.verify(token(publish=True, now=NOW + 3), now=NOW).identity == "alice"


def test_garbage_never_escapes_as_anything_but_token_error() -> None:
    verifier = TokenVerifier(KEY, SECRET)
    good = token(publish=True)
    samples = ["a.b.c", "....", "eyJ.eyJ.x", good[:-1], good + "x", good.replace(".", "..", 1),
               "é.é.é", "\x00", good.upper(), forged({"kid": 5}, {}), forged({"kid": KEY}, [])]
    for i in range(200):  # every prefix of a real token
        samples.append(good[: i * len(good) // 200])
    for sample in samples:
        with pytest.raises(TokenError):
            verifier.verify(sample)


def test_create_token_refuses_what_cannot_verify() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"identity": "a b"}, "identity"),
        ({"room": "r/1"}, "room"),
        ({"ttl": 0}, "positive"),
        ({"publish": False}, "at least one grant"),
        ({"secret": "short"}, "at least 32 bytes"),
        ({"key": "k 1"}, "API key"),
    ]
    for kwargs, message in cases:
        args: dict[str, Any] = {"identity": "a", "room": "r1", "publish": True, **kwargs}
        secret = args.pop("secret", SECRET)
        key = args.pop("key", KEY)
        with pytest.raises(ValueError, match=message):
            create_token(key, secret, **args)
    assert "secret" not in repr(TokenVerifier(KEY, SECRET)).lower().replace("api_key", "")
    assert SECRET not in repr(TokenVerifier(KEY, SECRET))


# -- the command line and the settings ---------------------------------------------------------


def test_token_command_prints_a_token_the_server_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["token", "--room", "r1", "--identity", "bob", "--subscribe", "--ttl", "2h",
            "--api-key", KEY, "--api-secret", SECRET]
    assert main(argv, {}) == 0
    printed = capsys.readouterr().out.strip()
    claims = TokenVerifier(KEY, SECRET).verify(printed)
    assert (claims.identity, claims.room, claims.grants) == ("bob", "r1", ["subscribe"])
    assert 7190 < claims.expires_at - time.time() <= 7200
    # From the environment, every grant, room '*'.
    env = {"TRIO_SFU_API_KEY": KEY, "TRIO_SFU_API_SECRET": SECRET}
    argv = ["token", "--room", "*", "--identity", "ops", "--publish", "--subscribe", "--admin",
            "--ttl", "90"]
    assert main(argv, env) == 0
    claims = TokenVerifier(KEY, SECRET).verify(capsys.readouterr().out.strip())
    assert claims.room == "*" and claims.grants == ["publish", "subscribe", "admin"]
    assert 80 < claims.expires_at - time.time() <= 90


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--room", "r1", "--identity", "a", "--publish"], {}, "--api-key (or TRIO_SFU_API_KEY)"),
        (["--room", "r1", "--identity", "a", "--publish", "--api-key", KEY], {},
         "--api-secret (or TRIO_SFU_API_SECRET) is required"),
        (["--room", "r1", "--identity", "a", "--api-key", KEY, "--api-secret", SECRET], {},
         "at least one grant"),
        (["--room", "r 1", "--identity", "a", "--publish", "--api-key", KEY,
          "--api-secret", SECRET], {}, "room"),
        (["--room", "r1", "--identity", "a", "--publish", "--ttl", "soon", "--api-key", KEY,
          "--api-secret", SECRET], {}, "not a duration"),
        (["--room", "r1", "--identity", "a", "--publish", "--ttl", "400d", "--api-key", KEY,
          "--api-secret", SECRET], {}, "366 days"),
        (["--room", "r1", "--identity", "a", "--publish", "--api-key", KEY],
         {"TRIO_SFU_API_SECRET": "tooshort-secret"}, "at least 32 bytes"),
        (["--identity", "a", "--publish"], {}, "--room"),
    ],
)
def test_token_command_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["token", *argv], env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "tooshort-secret" not in err  # a secret is never repeated back


def test_token_command_as_a_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_sfu", "token", "--room", "r1", "--identity", "a",
         "--publish"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"TRIO_SFU_API_KEY": KEY, "TRIO_SFU_API_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert TokenVerifier(KEY, SECRET).verify(out.stdout.strip()).identity == "a"


def parse_flags(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(argv), environ or {})


def test_auth_settings() -> None:
    config = parse_flags(["--api-key", KEY], {"TRIO_SFU_API_SECRET": SECRET})
    assert (config.api_key, config.api_secret, config.auth_enabled) == (KEY, SECRET, True)
    assert SECRET not in repr(config)
    assert not parse_flags([]).auth_enabled
    config = Config.from_env({"TRIO_SFU_API_KEY": KEY, "TRIO_SFU_API_SECRET": SECRET})
    assert config.auth_enabled
    with pytest.raises(ConfigError, match="--api-key and --api-secret go together"):
        Config.from_env({"TRIO_SFU_API_KEY": KEY})
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"TRIO_SFU_API_KEY": KEY, "TRIO_SFU_API_SECRET": "my-short-secret"})
    assert "at least 32 bytes" in str(caught.value) and "my-short-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--api-key", KEY], {}, "--api-key and --api-secret go together"),
        (["--api-secret", SECRET], {}, "--api-key and --api-secret go together"),
        (["--api-key", "k 1", "--api-secret", SECRET], {}, "does not match"),
        (["--api-key", KEY], {"TRIO_SFU_API_SECRET": "short-secret-value"},
         "TRIO_SFU_API_SECRET='***'"),
        (["--ice-server", "turn:turn.example.net"], {}, "needs credentials"),
        (["--ice-server", "http://x"], {}, "not a stun:"),
        ([], {"TRIO_SFU_ICE_SERVER": "turn:u:hunter22@x:99999"}, "TRIO_SFU_ICE_SERVER='***'"),
    ],
)
def test_auth_and_ice_server_flags_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv, env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "short-secret-value" not in err and "hunter22" not in err


def test_ice_server_urls_and_links() -> None:
    stun = parse_ice_server("stun:stun.example.net")
    assert stun == IceServer("stun:stun.example.net")
    assert stun.link() == '<stun:stun.example.net>; rel="ice-server"'
    turn = parse_ice_server("turn:user:my%22pass%2Cword@turn.example.net:3478?transport=udp")
    assert turn == IceServer("turn:turn.example.net:3478?transport=udp", "user", 'my"pass,word')
    assert turn.link() == (
        '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; username="user"; '
        'credential="my\\"pass,word"; credential-type="password"'
    )
    assert "pass" not in repr(turn)
    assert parse_ice_server("TURNS:u:p@[2001:db8::1]:5349?transport=tcp").url == (
        "turns:[2001:db8::1]:5349?transport=tcp"
    )
    for bad in ("stun:u:p@x", "stun:x?transport=udp", "turn:u:p@x?transport=sctp", "turn:u@x",
                "turn::p@x", "turn:u:p@", "turn:u:p%0d%0aX:1@x", "turn:u:p@x:0", "stun:a b"):
        with pytest.raises(ValueError):
            parse_ice_server(bad)
    config = Config.from_env({"TRIO_SFU_ICE_SERVER": "stun:a.example, turn:u:p@b.example"})
    assert [s.url for s in config.ice_servers] == ["stun:a.example", "turn:b.example"]


# -- the seed API and room lists with tokens -----------------------------------------------------


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeSfu]]:
    fake = FakeSfu()
    fake.rooms = {
        "r1": {"room": "r1", "publishers": [], "subscribers": []},
        "r2": {"room": "r2", "publishers": [], "subscribers": []},
    }
    app = create_app(fake, site_dir=tmp_path, tokens=TokenVerifier(KEY, SECRET),
                     cors_origins=["https://app.example"])
    (tmp_path / "index.html").write_text("demo")
    async with http_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http, fake


def challenge(r: httpx.Response) -> str:
    return str(r.headers.get("www-authenticate", ""))


async def test_missing_and_bad_tokens_are_401(
    guarded: tuple[httpx.AsyncClient, FakeSfu],
) -> None:
    http, fake = guarded
    offer = {"content": b"v=0\r\n", "headers": {"Content-Type": SDP}}
    r = await http.post("/pub/r1/alice-1", **offer)  # type: ignore[arg-type]
    assert r.status_code == 401
    # RFC 6750 §3.1: no credentials, no error code.
    assert challenge(r) == 'Bearer realm="trio-sfu"'
    assert "Bearer token is required" in r.text
    for headers, reason in [
        ({"Authorization": "Basic YTpi"}, None),
        ({"Authorization": "Bearer"}, "malformed"),
        ({"Authorization": "Bearer a b"}, "malformed"),
        ({"Authorization": "Bearer not.a.jwt"}, "not a JWT"),
        (bearer(token(publish=True, now=time.time() - 7200)), "expired"),
        (bearer(token(publish=True, secret="z" * 40)), "bad signature"),
        (bearer(token(publish=True, key="other")), "unknown key id"),
    ]:
        r = await http.post(
            "/pub/r1/alice-1", content=b"v=0\r\n", headers={"Content-Type": SDP, **headers}
        )
        assert r.status_code == 401, (headers, r.text)
        if reason is None:
            assert challenge(r) == 'Bearer realm="trio-sfu"'
        else:
            assert 'error="invalid_token"' in challenge(r), challenge(r)
            assert reason in challenge(r) and reason in r.text
    # Room lists answer JSON, with the challenge.
    r = await http.get("/rooms")
    assert r.status_code == 401 and r.json()["status"] == 401 and challenge(r)
    r = await http.get("/rooms/r1", headers={"Authorization": "Bearer x.y.z"})
    assert r.status_code == 401 and 'error="invalid_token"' in challenge(r)
    assert fake.calls == []


async def test_grants_rooms_and_ids_decide_403(
    guarded: tuple[httpx.AsyncClient, FakeSfu],
) -> None:
    http, fake = guarded

    async def post(path: str, value: str) -> httpx.Response:
        return await http.post(
            path, content=b"v=0\r\n", headers={"Content-Type": SDP, **bearer(value)}
        )

    pub = token("alice", "r1", publish=True)
    assert (await post("/pub/r1/alice-k3", pub)).status_code == 201
    assert (await http.delete("/pub/r1/alice-k3", headers=bearer(pub))).status_code == 204
    for path, value, reason in [
        ("/sub/r1/alice-k4", pub, "does not grant subscribe"),
        ("/pub/r2/alice-k3", pub, "for room 'r1', not 'r2'"),
        ("/pub/r1/bob-k3", pub, "the id must be alice-<suffix>"),
        ("/pub/r1/alice-x-k3", pub, "the id must be alice-<suffix>"),
        ("/pub/r1/alice-k3", token("alice", "r1", subscribe=True), "does not grant publish"),
    ]:
        r = await post(path, value)
        assert r.status_code == 403, (path, r.text)
        assert reason in r.text
        assert 'error="insufficient_scope"' in challenge(r)
        r = await http.delete(path, headers=bearer(value))
        assert r.status_code == 403, (path, r.text)
    # A '*' token works in any room; admin may act on other identities' ids.
    assert (await post("/sub/r2/alice-9", token("alice", "*", subscribe=True))).status_code == 201
    admin = token("ops", "r1", admin=True)
    assert (await post("/pub/r1/bob-k3", admin)).status_code == 201
    assert (await http.delete("/sub/r1/bob-k9", headers=bearer(admin))).status_code == 204
    assert (await post("/pub/r2/bob-k3", admin)).status_code == 403  # still one room
    assert [c[:3] for c in fake.calls] == [
        ("publish", "r1", "alice-k3"),
        ("stop", "pub", "r1"),
        ("subscribe", "r2", "alice-9"),
        ("publish", "r1", "bob-k3"),
        ("stop", "sub", "r1"),
    ]


async def test_bad_names_after_401_before_403(
    guarded: tuple[httpx.AsyncClient, FakeSfu],
) -> None:
    http, _ = guarded
    r = await http.post("/pub/r%201/alice-1", content=b"v=0", headers={"Content-Type": SDP})
    assert r.status_code == 401
    r = await http.post("/pub/r%201/alice-1", content=b"v=0",
                        headers={"Content-Type": SDP, **bearer(token("bob", publish=True))})
    assert r.status_code == 400


async def test_room_lists_policy(guarded: tuple[httpx.AsyncClient, FakeSfu]) -> None:
    http, _ = guarded
    r = await http.get("/rooms", headers=bearer(token("a", "*", publish=True, subscribe=True)))
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = await http.get("/rooms", headers=bearer(token("ops", "*", admin=True)))
    assert [x["room"] for x in r.json()["rooms"]] == ["r1", "r2"]
    r = await http.get("/rooms", headers=bearer(token("ops", "r2", admin=True)))
    assert [x["room"] for x in r.json()["rooms"]] == ["r2"]
    r = await http.get("/rooms/r1", headers=bearer(token("a", "r1", subscribe=True)))
    assert r.status_code == 200 and r.json()["room"] == "r1"
    r = await http.get("/rooms/r2", headers=bearer(token("a", "r1", subscribe=True)))
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"


async def test_preflight_health_and_site_need_no_token(
    guarded: tuple[httpx.AsyncClient, FakeSfu],
) -> None:
    http, fake = guarded
    r = await http.options("/pub/r1/alice-1", headers=preflight_headers("https://app.example"))
    assert r.status_code == 204
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/")).text == "demo"
    # A refusal still carries CORS headers, so a page can read why.
    r = await http.post("/pub/r1/alice-1", content=b"v=0",
                        headers={"Content-Type": SDP, "Origin": "https://app.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert fake.calls == []


# -- the whole server: start-up warning, and our clients with tokens ---------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("demo")
    return root


def local_config(site: Path, **overrides: Any) -> Config:
    return Config(http_host="127.0.0.1", http_port=0, udp_host="127.0.0.1", udp_port=0,
                  site_dir=site, **overrides)


async def test_open_server_warns_at_start_up(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for config, warned in [
        (local_config(site), True),
        (local_config(site, api_key=KEY, api_secret=SECRET), False),
    ]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="trio_sfu.app"):
            async with trio.open_nursery() as nursery:
                running = await nursery.start(
                    functools.partial(serve, config, handle_signals=False)
                )
                async with httpx.AsyncClient() as http:
                    r = await http.get(f"http://127.0.0.1:{running.http_port}/rooms")
                assert r.status_code == (200 if warned else 401)
                nursery.cancel_scope.cancel()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("authentication is off" in w for w in warnings) is warned, warnings


def token_signal(url: str, role: str, room: str, peer_id: str, value: str) -> Any:
    async def signal(offer: str) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{url}/{role}/{room}/{peer_id}", content=offer.encode(),
                                headers={"Content-Type": SDP, **bearer(value)})
        if r.status_code != 201:
            raise SignalingError(r.status_code, r.text)
        return r.text

    return signal


async def test_real_server_with_tokens(site: Path, nursery: trio.Nursery) -> None:
    config = local_config(site, api_key=KEY, api_secret=SECRET)
    running = await nursery.start(functools.partial(serve, config, handle_signals=False))
    url = f"http://127.0.0.1:{running.http_port}"
    options: dict[str, Any] = {"certificate": client_certificate()}
    sub = SubscriberClient("bob-x9", **options)
    await nursery.start(sub.connect, token_signal(url, "sub", "r1", "bob-x9",
                                                  token("bob", subscribe=True)))
    await sub.wait_open()
    # A publisher token for another room, and no token at all, are refused before any peer.
    with pytest.raises(SignalingError) as caught:
        await token_signal(url, "pub", "r1", "alice-k3",
                           token("alice", "r2", publish=True))("v=0\r\n")
    assert caught.value.status == 403
    pub = PublisherClient("alice-k3", **options)
    await nursery.start(pub.connect, token_signal(url, "pub", "r1", "alice-k3",
                                                  token("alice", publish=True)))
    await pub.wait_open()
    await sub.expect("PUB_JOIN alice-k3")
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/rooms/r1", headers=bearer(token("bob", subscribe=True)))
        assert [p["id"] for p in r.json()["publishers"]] == ["alice-k3"]
        r = await http.delete("/pub/r1/alice-k3", headers=bearer(token("bob", publish=True)))
        assert r.status_code == 403  # bob cannot stop alice's connection
        r = await http.delete("/pub/r1/alice-k3", headers=bearer(token("alice", publish=True)))
        assert r.status_code == 204
    await sub.expect("PUB_LEFT alice-k3")
    running.shutdown()


# -- the demo site with ?token= ----------------------------------------------------------------


@pytest.mark.browser
async def test_demo_site_joins_with_a_token_in_its_url() -> None:
    """Two users join the demo page of a server that requires tokens, each with a token in
    the page URL, and decode each other; a page without one is refused with the 401."""
    from tests.peers.browser_client import open_browser
    from tests.peers.harness import require_chromium

    require_chromium()
    site_dir = REPO / "site"
    config = Config(http_host="127.0.0.1", http_port=0, udp_port=0, site_dir=site_dir,
                    api_key=KEY, api_secret=SECRET)
    tokens = {name: token(name, "tok-room", publish=True, subscribe=True, ttl=3600)
              for name in ("alice", "bob")}
    form = "() => ({user: document.querySelector('#user').value, " \
           "room: document.querySelector('#room').value, " \
           "fixed: document.querySelector('#user').disabled " \
           "&& document.querySelector('#room').disabled})"
    snap = "() => window.sfuDemo.snapshot()"

    def decoding(other: str) -> Any:
        def ok(s: dict[str, Any]) -> bool:
            tiles = [t for t in s["tiles"] if not t["local"] and t["user"] == other]
            return bool(tiles) and (tiles[0]["stats"] or {}).get("framesDecoded", 0) >= 10
        return ok

    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, handle_signals=False))
        base = f"http://127.0.0.1:{running.http_port}"
        async with open_browser() as b:
            for name in tokens:
                # The URL's user and room lose to the token's identity and room.
                await b.open(name, f"{base}/?room=elsewhere&user=mallory&token={tokens[name]}")
                await b.wait_for(name, "() => window.sfuDemo !== undefined", bool)
                assert await b.eval(name, form) == {"user": name, "room": "tok-room",
                                                    "fixed": True}
                await b.eval(name, "() => { document.querySelector('#resolution').value = "
                             "'240p'; document.querySelector('#join').click(); }")
            for name in tokens:
                other = "bob" if name == "alice" else "alice"
                state = await b.wait_for(name, snap, decoding(other), timeout=45)
                assert state["ids"]["camera"].startswith(f"{name}-")
                assert state["ids"]["subscriber"].startswith(f"{name}-")
            # Without a token the same page is refused (401), and says so.
            await b.open("eve", f"{base}/?room=tok-room&user=eve")
            await b.wait_for("eve", "() => window.sfuDemo !== undefined", bool)
            await b.eval("eve", "() => { document.querySelector('#camera').checked = false; "
                         "document.querySelector('#mic').checked = false; "
                         "document.querySelector('#join').click(); }")
            state = await b.wait_for(
                "eve", snap, lambda s: any("401" in e["message"] for e in s["log"]), timeout=20
            )
            await b.wait_for("eve", snap, lambda s: s["phase"] == "idle", timeout=10)
        nursery.cancel_scope.cancel()
