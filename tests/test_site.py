"""The demo site and its JS client module (issue 3, item 6), proven against the real server.

Three layers:
- ``node --test tests/site/``: the module's pure parts (commands, ids, stats, SDP helpers) and
  its connection logic against fakes;
- static checks: the site needs no build step and nothing from outside the server (closed
  network, no CDN);
- headless Chromium (Debian's, through Playwright, as in tests/peers/) against a real trio-sfu
  started in-process on ephemeral ports: the demo page driven by clicks, and the module driven
  the way another page would use it (2 publishers, 2 subscribers, manual mode, leave and
  rejoin);
- headless Firefox (Debian's firefox-esr, when installed) with Chromium, both ways.

Playwright's sync API runs in a worker thread while the server runs in this test's Trio loop.
Every wait is bounded; failures carry the pages' console output.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS
from tests.peers.firefox import headless_firefox, require_firefox
from tests.peers.harness import require_chromium
from trio_sfu.app import serve
from trio_sfu.config import Config

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
NODE_TESTS = ROOT / "tests" / "site"
HARNESS_JS = NODE_TESTS / "browser_harness.js"

NODE_MIN_MAJOR = 18  # node:test and --test
SCENARIO_TIMEOUT = 150.0  # seconds for one whole browser scenario (its own waits are shorter)


# ------------------------------------------------------------------------------------ node


def find_node() -> tuple[str | None, str]:
    """A Node.js >= 18 binary (PATH first, then the one Playwright ships), or a reason."""
    candidates: list[str] = []
    for name in ("node", "nodejs"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    try:
        from playwright._impl._driver import compute_driver_executable

        driver = compute_driver_executable()
        candidates.append(driver[0] if isinstance(driver, tuple) else driver)
    except ImportError:
        pass
    seen: list[str] = []
    for path in candidates:
        if not os.path.exists(path):
            continue
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        seen.append(f"{path} {out}")
        match = re.match(r"v(\d+)\.", out)
        if match and int(match.group(1)) >= NODE_MIN_MAJOR:
            return path, out
    why = f"node (Node.js >= {NODE_MIN_MAJOR}) not found"
    return None, why + (f"; found {', '.join(seen)}" if seen else " on PATH nor in playwright")


def test_module_unit_tests_under_node() -> None:
    node, version = find_node()
    if node is None:
        pytest.skip(version)
    files = sorted(str(p) for p in NODE_TESTS.glob("*.test.mjs"))
    assert len(files) >= 4, files
    proc = subprocess.run(
        [node, "--test", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"node --test failed ({version}):\n{output[-6000:]}"
    # Guard against a runner that found nothing to run and called that a success.
    counts = dict(re.findall(r"^(?:#|ℹ) (tests|pass|fail) (\d+)$", output, re.M))
    assert int(counts.get("tests", 0)) >= 40 and counts.get("fail") == "0", output[-3000:]


# ------------------------------------------------------------------------------------ static


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append((tag, name, value))


def test_site_needs_no_build_and_nothing_from_outside() -> None:
    for name in ("index.html", "app.js", "style.css", "README.md",
                 "sfu-client.js", "sfu-protocol.js", "sfu-stats.js"):
        assert (SITE / name).is_file(), name
    parser = _Refs()
    parser.feed((SITE / "index.html").read_text())
    local = []
    for tag, attr, value in parser.refs:
        assert not re.match(r"^(https?:)?//", value), f"<{tag} {attr}={value}> leaves the server"
        if not value.startswith("data:"):
            local.append(value)
    for value in local:
        assert (SITE / value.removeprefix("./")).is_file(), f"index.html refers to missing {value}"
    assert {"style.css", "app.js"} <= {v.removeprefix("./") for v in local}

    # The module needs nothing but its two siblings; pages import sfu-client.js only.
    deps = re.compile(r"^\s*(?:import|export)\s[^;]*?from\s+'([^']+)'|^\s*import\s+'([^']+)'",
                      re.M | re.S)

    def deps_of(name: str) -> set[str]:
        text = (SITE / name).read_text()
        assert "import(" not in text, name
        return {a or b for a, b in deps.findall(text)}

    assert deps_of("app.js") == {"./sfu-client.js"}
    assert deps_of("sfu-client.js") == {"./sfu-protocol.js", "./sfu-stats.js"}
    assert deps_of("sfu-protocol.js") == set()
    assert deps_of("sfu-stats.js") == set()
    css = (SITE / "style.css").read_text()
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", css)


# ------------------------------------------------------------------------------------ browser


@asynccontextmanager
async def sfu_server(site_dir: Path | None = None, **options: Any) -> AsyncIterator[str]:
    """A real trio-sfu (embedded state and bus) on ephemeral ports; yields its base URL.
    ``options``: more Config fields (e.g. api_key/api_secret: tokens required)."""
    config = Config(
        http_host="127.0.0.1", http_port=0, udp_port=0, site_dir=site_dir or SITE, **options
    )
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, handle_signals=False))
        try:
            yield f"http://127.0.0.1:{running.http_port}"
        finally:
            nursery.cancel_scope.cancel()


async def in_browser(
    scenario: Callable[[Any, str], None], base_url: str, extra_args: Sequence[str] = ()
) -> None:
    """Run ``scenario(browser, base_url)`` with Playwright in a worker thread (bounded)."""

    def run() -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, *extra_args],
                headless=True,
                timeout=30_000,
            )
            try:
                scenario(browser, base_url)
            finally:
                browser.close()

    with trio.fail_after(SCENARIO_TIMEOUT):
        await trio.to_thread.run_sync(run, abandon_on_cancel=True)


class Page:
    """One browser context + page, with its console kept for assertions and failure messages."""

    def __init__(self, browser: Any, name: str) -> None:
        self.name = name
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.console: list[str] = []
        self.problems: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("crash", lambda _p: self.problems.append("page crashed"))

    def _on_console(self, msg: Any) -> None:
        line = f"console.{msg.type}: {msg.text}"
        if msg.text.startswith("Failed to load resource"):
            # Chromium names the resource only in the message's location: which request
            # failed is what a failure report needs.
            line += f" [{(msg.location or {}).get('url', '?')}]"
        self.console.append(line)
        if msg.type in ("error", "warning"):
            self.problems.append(line)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def log(self) -> str:
        return f"--- {self.name} console ---\n" + "\n".join(self.console[-80:])


class HasLog(Protocol):
    def log(self) -> str: ...


def wait_until(
    what: str, probe: Callable[[], Any], ok: Callable[[Any], bool], timeout: float,
    *sources: HasLog,
) -> Any:
    """Poll ``probe()`` until ``ok(value)``; on timeout fail with the last value and logs."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not ok(value):
        if time.monotonic() > deadline:
            logs = "\n".join(s.log() for s in sources)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"last value: {value!r}\n{logs}")
        time.sleep(0.25)
        value = probe()
    return value


def snapshot(p: Page) -> dict[str, Any]:
    result: dict[str, Any] = p.js("() => window.sfuDemo.snapshot()")
    return result


def remote_tiles(snap: dict[str, Any], user: str) -> list[dict[str, Any]]:
    return [t for t in snap["tiles"] if not t["local"] and t["user"] == user]


def phase_of(p: Page) -> str:
    return str(snapshot(p)["phase"])


def remote_of(p: Page, user: str) -> list[dict[str, Any]]:
    return remote_tiles(snapshot(p), user)


def chat_of(p: Page) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = snapshot(p)["chat"]
    return chat


def decoding(frames: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda tiles: bool(tiles) and all(
        (t["stats"] or {}).get("framesDecoded", 0) >= frames for t in tiles
    )


@pytest.mark.browser
async def test_index_loads_cleanly_and_exposes_the_module() -> None:
    require_chromium()

    def scenario(browser: Any, base: str) -> None:
        p = Page(browser, "index")
        p.page.goto(f"{base}/?room=team.42&user=zoë%20x")
        p.page.wait_for_function("() => window.sfuDemo !== undefined")
        assert p.page.title() == "trio-sfu demo"
        # Query parameters fill the form, made valid (the server would 400 'zoë x').
        assert p.page.input_value("#room") == "team.42"
        assert p.page.input_value("#user") == "zo__x"
        assert p.page.is_enabled("#join") and not p.page.is_enabled("#leave")
        assert snapshot(p)["phase"] == "idle"
        exports = p.js("async () => Object.keys(await import('/sfu-client.js')).sort()")
        for name in ("connectPublisher", "connectSubscriber", "streamStats", "parseServerCommand",
                     "makeConnectionId", "clientCommands"):
            assert name in exports, exports
        parsed = p.js("async () => (await import('/sfu-client.js')).parseServerCommand("
                      "'CHAT a-1 hello world')")
        assert parsed == {"type": "CHAT", "from": "a-1", "user": "a", "text": "hello world"}
        p.page.wait_for_timeout(300)  # late console errors (failed loads) arrive asynchronously
        assert not p.problems, "\n".join(p.problems)

    async with sfu_server() as base:
        await in_browser(scenario, base)


@pytest.mark.browser
async def test_demo_page_two_users_publish_watch_chat_share_and_leave() -> None:
    """The demo itself, driven by clicks: alice and bob each publish and watch the other."""
    require_chromium()

    def scenario(browser: Any, base: str) -> None:
        room = "demo-room"
        alice, bob = Page(browser, "alice"), Page(browser, "bob")
        for p in (alice, bob):
            p.page.goto(f"{base}/?room={room}&user={p.name}")
            p.page.wait_for_function("() => window.sfuDemo !== undefined")
            p.page.select_option("#resolution", "240p")
            p.page.select_option("#fps", "15")
            p.page.click("#join")
        for p in (alice, bob):
            wait_until(f"{p.name} joined", functools.partial(phase_of, p),
                       lambda ph: ph == "joined", 20, alice, bob)

        def watching(viewer: Page, other: Page) -> None:
            # viewer sees other's camera decoding, with audio, and never its own media.
            tiles = wait_until(
                f"{viewer.name} decoding {other.name}'s video",
                functools.partial(remote_of, viewer, other.name),
                decoding(30), 45, alice, bob,
            )
            assert len(tiles) == 1 and tiles[0]["kinds"] == ["audio", "video"], tiles
            first = tiles[0]["stats"]
            later = wait_until(
                f"{viewer.name}: {other.name}'s frames and audio packets growing",
                lambda: remote_of(viewer, other.name)[0]["stats"],
                lambda s: s["framesDecoded"] > first["framesDecoded"]
                and s["audioPackets"] > first["audioPackets"],
                10, alice, bob,
            )
            assert later["pair"] is not None
            assert remote_of(viewer, viewer.name) == [], "a user must not receive itself"
            # The page shows the candidate pair, bitrate and frame rate for the stream.
            publisher = tiles[0]["publisher"]
            tile = viewer.page.locator(f'.tile[data-publisher="{publisher}"]')
            shown = wait_until(
                f"{viewer.name}'s stats text for {publisher}",
                lambda: {k: tile.locator(f'[data-stat="{k}"]').inner_text()
                         for k in ("pair", "bitrate", "fps")},
                lambda s: "—" not in s.values(), 10, alice, bob,
            )
            assert re.fullmatch(r"udp \w+ [\d.:\[\]a-f]+:\d+ ⇄ host [\d.:\[\]a-f]+:\d+",
                                shown["pair"]), shown
            assert re.fullmatch(r"\d+(\.\d+)? (bit|kbit|Mbit)/s", shown["bitrate"]), shown
            assert re.match(r"\d+ \(\d+×\d+\)$", shown["fps"]), shown
            # Autoplay worked after the Join click (no "click to play" fallback shown).
            assert tile.locator("button.play").is_hidden()
            # The local preview has sender-side stats too.
            local = viewer.page.locator('.tile[data-key="local:camera"] [data-stat="fps"]')
            wait_until(f"{viewer.name}'s own fps", local.inner_text, lambda t: t != "—", 10,
                       viewer)

        watching(alice, bob)
        watching(bob, alice)

        # Chat crosses, UTF-8 and inner spaces intact; the sender sees its own line as an echo.
        line = "hello from alice — ünïcødé 🎉  two spaces"
        alice.page.fill("#chat-input", line)
        alice.page.press("#chat-input", "Enter")
        for p, own in ((bob, False), (alice, True)):
            chat = wait_until(f"{p.name} receiving the chat line", functools.partial(chat_of, p),
                              lambda c: len(c) >= 1, 10, alice, bob)
            assert [(c["user"], c["text"], c["own"]) for c in chat] == [("alice", line, own)]
            assert p.page.locator("#chat-log li .text").all_inner_texts() == [line]
        assert alice.page.input_value("#chat-input") == ""

        # Screen share: a track of alice's one publisher connection (issue 15), in a tile of
        # its own at bob, labelled by its APP_ID.
        alice.page.click("#share")
        ids = wait_until("alice's screen track", lambda: snapshot(alice)["ids"],
                         lambda i: i["screen"] is not None, 20, alice)
        assert ids["screen"] == ids["camera"] and ids["screen"].startswith("alice-")
        wait_until(
            "bob decoding alice's camera and screen",
            lambda: remote_tiles(snapshot(bob), "alice"),
            lambda ts: len(ts) == 2 and decoding(10)(ts), 45, alice, bob,
        )
        screen_tile = next(t for t in remote_tiles(snapshot(bob), "alice")
                           if t["appIds"] == ["screen"])
        assert screen_tile["kinds"] == ["video"] and screen_tile["publisher"] == ids["camera"]
        assert screen_tile["label"] == "alice · screen"
        assert bob.page.locator(
            f'.tile[data-key="{screen_tile["key"]}"] .name').inner_text() == "alice · screen"
        alice.page.click("#share")  # stop sharing: the track is removed, the connection stays
        wait_until("the screen tile gone at bob", lambda: remote_tiles(snapshot(bob), "alice"),
                   lambda ts: [t["key"] for t in ts] == [ids["camera"]], 10, alice, bob)
        assert snapshot(alice)["ids"]["camera"] == ids["camera"]

        # The server's room list agrees with what the pages show.
        bob_ids = snapshot(bob)["ids"]
        listing = alice.page.request.get(f"{base}/rooms/{room}").json()
        assert sorted(p["id"] for p in listing["publishers"]) == sorted(
            [ids["camera"], bob_ids["camera"]])
        assert sorted(s["id"] for s in listing["subscribers"]) == sorted(
            [ids["subscriber"], bob_ids["subscriber"]])

        # Leave: alice's page resets, and alice disappears from bob's grid and from the room.
        alice.page.click("#leave")
        wait_until("alice idle", lambda: snapshot(alice)["phase"], lambda ph: ph == "idle", 10,
                   alice)
        assert snapshot(alice)["tiles"] == []
        assert alice.page.is_enabled("#join") and not alice.page.is_enabled("#chat-input")
        wait_until("alice gone from bob's grid", lambda: remote_tiles(snapshot(bob), "alice"),
                   lambda ts: ts == [], 5, alice, bob)
        assert bob.page.locator(f'.tile[data-publisher="{ids["camera"]}"]').count() == 0
        wait_until(
            "alice gone from the room list",
            lambda: alice.page.request.get(f"{base}/rooms/{room}").json(),
            lambda r: [p["id"] for p in r["publishers"]] == [bob_ids["camera"]]
            and [s["id"] for s in r["subscribers"]] == [bob_ids["subscriber"]],
            5, alice, bob,
        )
        # A tab that closes without Leave says goodbye on pagehide (STOP + keepalive DELETE), so
        # it is gone long before the server's consent timeout would notice.
        # carol first joins with the microphone only (an audio-only publisher), then turns the
        # camera on: a track added to the same connection (issue 15), not a new publisher.
        carol = Page(browser, "carol")
        carol.page.goto(f"{base}/?room={room}&user=carol")
        carol.page.wait_for_function("() => window.sfuDemo !== undefined")
        carol.page.select_option("#resolution", "240p")
        carol.page.uncheck("#camera")
        carol.page.click("#join")
        audio_only = wait_until(
            "bob receiving carol's audio-only publisher",
            functools.partial(remote_of, bob, "carol"),
            lambda ts: len(ts) == 1 and ts[0]["kinds"] == ["audio"]
            and (ts[0]["stats"] or {}).get("audioPackets", 0) > 0,
            30, bob, carol,
        )[0]
        badge = bob.page.locator(f'.tile[data-publisher="{audio_only["publisher"]}"] .badge')
        assert badge.inner_text() == "audio only"
        carol.page.check("#camera")
        wait_until(
            "bob decoding carol's added camera", functools.partial(remote_of, bob, "carol"),
            lambda ts: len(ts) == 1 and ts[0]["publisher"] == audio_only["publisher"]
            and ts[0]["kinds"] == ["audio", "video"] and decoding(5)(ts),
            45, bob, carol,
        )
        # Unchecking while live mutes the published track (MUTE): bob's tile says so.
        camera_id = snapshot(carol)["ids"]["camera"]
        assert camera_id == audio_only["publisher"]
        carol.page.uncheck("#mic")
        own_badge = carol.page.locator('.tile[data-key="local:camera"] .badge')
        assert own_badge.inner_text() == "audio off"
        assert snapshot(carol)["ids"]["camera"] == camera_id
        wait_until("bob seeing carol's mic muted", functools.partial(remote_of, bob, "carol"),
                   lambda ts: len(ts) == 1 and len(ts[0]["muted"]) == 1, 10, bob, carol)
        remote_badge = bob.page.locator(f'.tile[data-key="{camera_id}"] .badge')
        assert remote_badge.inner_text() == "mic muted"
        carol.page.check("#mic")
        wait_until("bob seeing carol's mic back", functools.partial(remote_of, bob, "carol"),
                   lambda ts: len(ts) == 1 and ts[0]["muted"] == [], 10, bob, carol)
        assert not carol.problems, "\n".join(carol.problems)
        carol.page.close()
        wait_until("carol gone after closing her tab", functools.partial(remote_of, bob, "carol"),
                   lambda ts: ts == [], 5, bob)
        wait_until(
            "carol gone from the room list",
            lambda: alice.page.request.get(f"{base}/rooms/{room}").json(),
            lambda r: all(not p["id"].startswith("carol-") for p in r["publishers"])
            and all(not s["id"].startswith("carol-") for s in r["subscribers"]),
            5, bob,
        )

        bob.page.click("#leave")
        wait_until("bob idle", lambda: snapshot(bob)["phase"], lambda ph: ph == "idle", 10, bob)
        for p in (alice, bob):
            assert not p.problems, f"{p.name}:\n" + "\n".join(p.problems)
            errors = [e for e in snapshot(p)["log"] if e["level"] == "error"]
            assert errors == [], errors

    async with sfu_server() as base:
        await in_browser(scenario, base)


@pytest.mark.browser
async def test_module_two_publishers_two_subscribers_leave_and_rejoin() -> None:
    """The issue's Chromium proof through the JS module, as another page would use it.

    alice and bob publish (fake camera + mic); carol and dave subscribe (auto mode). Each
    subscriber decodes >= 60 frames from each publisher and its audio packets grow; erin
    (manual mode) gets MEDIA, receives only what she SUBs and loses it on UNSUB; alice stops ->
    PUB_LEFT and her tile is gone within 2 s; she rejoins under a new id and is seen again;
    chat crosses between subscribers.
    """
    require_chromium()
    harness = HARNESS_JS.read_text()

    def scenario(browser: Any, base: str) -> None:
        room = "module-room"
        page_a, page_b = Page(browser, "page-a"), Page(browser, "page-b")
        for p in (page_a, page_b):
            p.page.goto(f"{base}/?room={room}")
            p.page.add_script_tag(content=harness, type="module")
            p.page.wait_for_function("() => window.harness !== undefined")
        pub_ids = {
            "alice": page_a.js("o => harness.publish('alice', o)", {"room": room, "user": "alice"}),
            "bob": page_b.js("o => harness.publish('bob', o)", {"room": room, "user": "bob"}),
        }
        page_a.js("o => harness.subscribe('carol', o)", {"room": room, "user": "carol"})
        page_b.js("o => harness.subscribe('dave', o)", {"room": room, "user": "dave"})
        viewers = ((page_a, "carol"), (page_b, "dave"))

        def status(p: Page, name: str) -> dict[str, Any]:
            result: dict[str, Any] = p.js("n => harness.status(n)", name)
            return result

        def active_count(st: dict[str, Any]) -> int:
            return sum(d in ("recvonly", "sendrecv") for d in st["transceivers"])

        def all_decoding(ids: list[str], frames: int) -> Callable[[dict[str, Any]], bool]:
            return lambda st: all(
                i in st["tiles"] and st["tiles"][i]["framesDecoded"] >= frames
                and st["tiles"][i]["audioPackets"] > 0 for i in ids
            )

        firsts = {}
        for p, name in viewers:
            firsts[name] = wait_until(
                f"{name} decoding 60 frames from alice and bob",
                functools.partial(status, p, name),
                all_decoding(list(pub_ids.values()), 60), 60, page_a, page_b,
            )
            assert sorted(firsts[name]["tiles"]) == sorted(pub_ids.values())
            for tile in firsts[name]["tiles"].values():
                assert tile["kinds"] == ["audio", "video"], firsts[name]
        def audio_growing(p: Page, name: str) -> None:
            first = firsts[name]
            wait_until(
                f"{name}'s audio packets growing", functools.partial(status, p, name),
                lambda st: all(
                    st["tiles"][i]["audioPackets"] > first["tiles"][i]["audioPackets"]
                    for i in pub_ids.values()),
                10, page_a, page_b,
            )
            joins = [e[1] for e in first["events"] if e[0] == "join"]
            assert sorted(joins) == sorted(pub_ids.values()), first["events"]

        for p, name in viewers:
            audio_growing(p, name)

        # Manual mode: erin receives nothing until she names a publisher with SUB.
        page_b.js("o => harness.subscribe('erin', o)",
                  {"room": room, "user": "erin", "mode": "manual"})
        erin = functools.partial(status, page_b, "erin")
        st = wait_until(
            "erin's MEDIA listing alice and bob, and no active track", erin,
            lambda s: s["media"] is not None
            and sorted(p["id"] for p in s["media"]["publishers"]) == sorted(pub_ids.values())
            and active_count(s) == 0,
            20, page_a, page_b,
        )
        for entry in st["media"]["publishers"]:
            assert (entry["audio"], entry["video"]) == (1, 1), entry
            assert sorted(t["kind"] for t in entry["tracks"]) == ["audio", "video"], entry
        page_b.js("id => harness.sub('erin', id)", pub_ids["bob"])
        st = wait_until("erin decoding bob only", erin,
                        lambda s: all_decoding([pub_ids["bob"]], 20)(s) and active_count(s) == 2,
                        30, page_a, page_b)
        assert st["tiles"].get(pub_ids["alice"], {}).get("kinds", []) == [], st["tiles"]
        page_b.js("id => harness.unsub('erin', id)", pub_ids["bob"])
        st = wait_until("erin's tracks of bob ended", erin, lambda s: active_count(s) == 0, 10,
                        page_a, page_b)
        assert ["ended", pub_ids["bob"], "video"] in st["events"], st["events"]
        assert st["state"] == "open"

        # alice stops: both subscribers get PUB_LEFT and drop her tile within 2 s.
        stopped_at = page_a.js("() => harness.unpublish('alice')")
        gone = {}
        for p, name in viewers:
            gone[name] = wait_until(
                f"{name} seeing alice leave", functools.partial(status, p, name),
                lambda st: pub_ids["alice"] in st["removedAt"], 5, page_a, page_b,
            )
        for name, st in gone.items():
            took = st["removedAt"][pub_ids["alice"]] - stopped_at
            assert took <= 2000, f"{name}: alice's tile went {took} ms after she stopped"
            assert ["left", pub_ids["alice"]] in st["events"]
            assert pub_ids["alice"] not in st["tiles"]
            # bob keeps flowing.
            assert pub_ids["bob"] in st["tiles"]

        # alice rejoins under a new id (same user) and is seen again.
        new_alice = page_a.js("o => harness.publish('alice2', o)", {"room": room, "user": "alice"})
        assert new_alice != pub_ids["alice"] and new_alice.startswith("alice-")
        for p, name in viewers:
            st = wait_until(
                f"{name} decoding alice's new connection",
                functools.partial(status, p, name),
                all_decoding([new_alice, pub_ids["bob"]], 30), 45, page_a, page_b,
            )
            assert ["join", new_alice] in st["events"]
            # The stopped m-sections were recycled or stay stopped: exactly alice's and bob's
            # tracks are active.
            assert active_count(st) == 4, st["transceivers"]

        # Chat from a subscriber reaches the other subscriber, and comes back as an echo.
        page_a.js("() => harness.chat('carol', 'hi dave')")
        for p, name in viewers:
            st = wait_until(f"{name} receiving carol's chat", functools.partial(status, p, name),
                            lambda s: len(s["chat"]) >= 1, 10, page_a, page_b)
            assert [c[1] for c in st["chat"]] == ["hi dave"]
            assert st["chat"][0][0].startswith("carol-")

        page_a.js("() => harness.stopAll()")
        page_b.js("() => harness.stopAll()")
        for p in (page_a, page_b):
            assert p.js("() => harness.errors") == []
            assert not p.problems, f"{p.name}:\n" + "\n".join(p.problems)

    async with sfu_server() as base:
        await in_browser(scenario, base)


# ------------------------------------------------------------------------------------ firefox

def site_with_page(root: Path, page: str) -> Path:
    """A copy of the site under ``root`` with a self-driving test page (tests/site) and the
    harness it imports beside it, same-origin: Firefox runs without an automation protocol,
    so its pages cannot be injected, only served."""
    site = root / "site"
    shutil.copytree(SITE, site)
    for name in ("browser_harness.js", page):
        shutil.copy(NODE_TESTS / name, site / name)
    return site


class Collector:
    """Where the Firefox page reports (POSTed JSON) and asks for its next step (GET /cmd).

    Firefox runs without an automation protocol (Playwright drives only its own patched
    builds), so the page drives itself and talks to the test over plain HTTP.
    """

    def __init__(self, firefox_log: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self.command = ""
        self.firefox_log = firefox_log
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    collector.events.append(json.loads(body))
                except ValueError:
                    collector.events.append({"type": "garbage", "body": body[:300].decode()})
                self._reply(b"")

            def do_GET(self) -> None:
                self._reply(collector.command.encode())

            def _reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def last(self, kind: str) -> dict[str, Any] | None:
        for event in reversed(self.events):
            if event.get("type") == kind:
                found: dict[str, Any] = event
                return found
        return None

    def problems(self) -> list[str]:
        return [e["text"] for e in self.events if e.get("type") == "problem"]

    def log(self) -> str:
        try:
            tail = self.firefox_log.read_text(errors="replace")[-3000:]
        except OSError:
            tail = ""
        last = self.last("status")
        return (f"--- firefox page problems ---\n{self.problems()}\n"
                f"--- firefox last status ---\n{json.dumps(last)[:3000]}\n"
                f"--- firefox stdout/stderr ---\n{tail}")


@pytest.mark.browser
async def test_firefox_module_and_demo(tmp_path: Path) -> None:
    """Firefox (Debian's firefox-esr) against the same server as Chromium, both ways.

    Firefox publishes and subscribes through the module and runs the demo page (in an iframe);
    Chromium does the same through the module. Each decodes the other's video and audio, the
    Firefox demo shows the candidate pair, bitrate and fps, and Firefox leaving reaches
    Chromium as PUB_LEFT.
    """
    require_chromium()
    firefox = require_firefox()
    site = site_with_page(tmp_path, "firefox_check.html")
    firefox_log = tmp_path / "firefox.log"
    collector = Collector(firefox_log)
    harness = HARNESS_JS.read_text()
    room = "fox-room"

    def scenario(browser: Any, base: str) -> None:
        chromium = Page(browser, "chromium")
        chromium.page.goto(f"{base}/?room={room}")
        chromium.page.add_script_tag(content=harness, type="module")
        chromium.page.wait_for_function("() => window.harness !== undefined")
        chrome_pub = chromium.js("o => harness.publish('c', o)", {"room": room, "user": "chrome"})
        chromium.js("o => harness.subscribe('cs', o)", {"room": room, "user": "chromesub"})

        url = f"{base}/firefox_check.html?room={room}&collect={collector.url}"
        with firefox_log.open("wb") as out, headless_firefox(firefox, url, tmp_path, out):
            ids = wait_until("Firefox connected", lambda: collector.last("ids"),
                             lambda e: e is not None, 60, chromium, collector)
            assert ids is not None and "Firefox/" in ids["userAgent"], ids
            fox_pub = ids["pubId"]

            def fox_status() -> dict[str, Any] | None:
                return collector.last("status")

            def fox_sees_chrome(st: dict[str, Any] | None) -> bool:
                if st is None:
                    return False
                tile = st["sub"]["tiles"].get(chrome_pub)
                demo = [t for t in st["demo"]["tiles"] if t["publisher"] == chrome_pub]
                return (tile is not None and tile["framesDecoded"] >= 60
                        and tile["audioPackets"] > 0 and bool(demo)
                        and "—" not in demo[0]["shown"].values())

            st = wait_until("Firefox decoding Chromium (module and demo)", fox_status,
                            fox_sees_chrome, 60, chromium, collector)
            assert st is not None
            shown = next(t for t in st["demo"]["tiles"] if t["publisher"] == chrome_pub)["shown"]
            assert re.fullmatch(r"udp \w+ \S+:\d+ ⇄ \w+ \S+:\d+", shown["pair"]), shown
            assert re.fullmatch(r"\d+(\.\d+)? (bit|kbit|Mbit)/s", shown["bitrate"]), shown
            assert re.match(r"\d+", shown["fps"]), shown

            def chrome_sees_fox(st: dict[str, Any]) -> bool:
                fox_tiles = [t for i, t in st["tiles"].items()
                             if i.startswith(("fox-", "foxdemo-"))]
                return len(fox_tiles) == 2 and all(
                    t["framesDecoded"] >= 60 and t["audioPackets"] > 0 for t in fox_tiles)

            wait_until("Chromium decoding Firefox's publisher and demo",
                       lambda: chromium.js("() => harness.status('cs')"), chrome_sees_fox, 60,
                       chromium, collector)

            collector.command = "unpublish"
            done = wait_until("Firefox unpublished", lambda: collector.last("unpublished"),
                              lambda e: e is not None, 15, chromium, collector)
            assert done is not None
            gone = wait_until("Chromium seeing Firefox's publisher leave",
                              lambda: chromium.js("() => harness.status('cs')"),
                              lambda s: fox_pub in s["removedAt"], 5, chromium, collector)
            assert gone["removedAt"][fox_pub] - done["at"] <= 2000, (gone, done)

            collector.command = "finish"
            final = wait_until("Firefox finished", lambda: collector.last("done"),
                               lambda e: e is not None, 20, chromium, collector)
            assert final is not None
            assert final["demo"]["phase"] == "idle", final["demo"]
            assert [e for e in final["demo"]["log"] if e["level"] == "error"] == []
            assert final["errors"] == [] and final["problems"] == [], final
            chromium.js("() => harness.stopAll()")
            assert chromium.js("() => harness.errors") == []
            assert not chromium.problems, "\n".join(chromium.problems)

    try:
        async with sfu_server(site) as base:
            await in_browser(scenario, base)
    finally:
        collector.server.shutdown()
