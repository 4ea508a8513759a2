"""The demo site's simulcast and layer controls (issue 11 item 7), in Chromium against the server.

alice publishes her (fake, 1280x720) camera through the demo page with its default settings,
which send it as three simulcast streams (q/h/f). bob joins the room to watch (camera and mic
off); his one tile fills the stage, so its SIZE lets ``auto`` use the top stream. Then bob's
tile menu: ``low`` → he decodes the 320 px stream and the tile says low; ``off`` → his decoder
stops (while alice keeps encoding) and the tile says paused; ``auto`` → the top stream again;
a narrower window shrinks the tile, its new SIZE brings ``auto`` down to the 640 px stream;
alice picking 240p re-adds her camera as one stream (libwebrtc sends only ``q`` of a 320x240
camera), which bob decodes.

Proof of media is the receiver's own getStats (frameWidth, framesDecoded); the server's state
confirms the layers it parsed and the SIZE it was told. Every wait is bounded polling; nothing
asserts on elapsed time.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.peers.harness import require_chromium
from tests.test_site import SITE, Page, in_browser, phase_of, snapshot, wait_until
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Chromium ramps its encoder (and its uplink estimate) up to the 1280 px stream in seconds;
#: the bound is generous for a loaded 2-core machine.
TOP_TIMEOUT = 60
#: a LAYER switch lands at the target stream's next keyframe (requested at once)
SWITCH_TIMEOUT = 30


@asynccontextmanager
async def sfu_running() -> AsyncIterator[Running]:
    """A real trio-sfu on ephemeral ports serving the site; yields what ``serve`` reports, so
    the test can read the server's room state."""
    config = Config(http_host="127.0.0.1", http_port=0, udp_port=0, site_dir=SITE)
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            functools.partial(serve, config, handle_signals=False)
        )
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def tile_of(p: Page, key: str) -> dict[str, Any]:
    tiles = [t for t in snapshot(p)["tiles"] if t["key"] == key]
    return tiles[0] if tiles else {}


def decoded(t: dict[str, Any]) -> int:
    return int((t.get("stats") or {}).get("framesDecoded") or 0)


def width(t: dict[str, Any]) -> int:
    return int((t.get("stats") or {}).get("width") or 0)


async def test_demo_simulcast_tile_layer_menu_and_size() -> None:
    require_chromium()
    room = "layers"
    async with sfu_running() as running:
        sfu: Any = running.sfu
        base = f"http://127.0.0.1:{running.http_port}"

        def scenario(browser: Any, url: str) -> None:
            alice, bob = Page(browser, "alice"), Page(browser, "bob")
            logs = (alice, bob)
            alice.page.goto(f"{url}/?room={room}&user=alice")
            alice.page.wait_for_function("() => window.sfuDemo !== undefined")
            # The defaults: 720p, simulcast on.
            assert alice.page.input_value("#resolution") == "720p"
            assert alice.page.is_checked("#simulcast")
            alice.page.click("#join")
            wait_until("alice joined", functools.partial(phase_of, alice),
                       lambda ph: ph == "joined", 20, *logs)
            pid = snapshot(alice)["ids"]["camera"]
            assert pid and pid.startswith("alice-"), snapshot(alice)["ids"]
            wait_until("alice's camera at 1280x720", lambda: snapshot(alice)["actual"],
                       lambda a: a is not None and a["width"] == 1280, 10, *logs)
            local = alice.page.locator('.tile[data-key="local:camera"] [data-stat="layer"]')
            wait_until("alice's tile says simulcast", local.inner_text,
                       lambda t: t == "sending simulcast q/h/f", 10, *logs)

            bob.page.goto(f"{url}/?room={room}&user=bob")
            bob.page.wait_for_function("() => window.sfuDemo !== undefined")
            bob.page.uncheck("#camera")
            bob.page.uncheck("#mic")
            bob.page.click("#join")
            wait_until("bob joined", functools.partial(phase_of, bob),
                       lambda ph: ph == "joined", 20, *logs)
            # The server parsed alice's camera as three streams, lowest first.
            video = wait_until(
                "alice's camera track on the server",
                lambda: [t for t in sfu.rooms[room].publishers[pid].tracks if t.kind == "video"],
                lambda ts: len(ts) == 1, 10, *logs)[0]
            assert list(video.layers) == ["q", "h", "f"], video.layers

            top = wait_until(
                "bob decoding alice's top stream",
                functools.partial(tile_of, bob, pid),
                lambda t: width(t) >= 960 and decoded(t) >= 30, TOP_TIMEOUT, *logs)
            assert top["quality"] == "auto" and top["layer"] == "high", top
            track = top["videoTrack"]
            assert track, top
            tile = bob.page.locator(f'.tile[data-key="{pid}"]')
            assert tile.locator(".quality").is_visible()
            assert tile.locator('[data-stat="layer"]').inner_text().startswith("high · ")

            # SIZE: the tile's rendered size (device pixels), sent by the page and kept by the
            # server for this track. One tile alone fills the stage: wider than the mid stream.
            box = tile.locator("video").bounding_box()
            assert box is not None
            scale = bob.js("() => window.devicePixelRatio")
            size = (round(box["width"] * scale), round(box["height"] * scale))
            assert size[0] > 640, size
            sub_id = snapshot(bob)["ids"]["subscriber"]
            wait_until(
                "the server knowing bob's tile size",
                lambda: sfu.rooms[room].subscribers[sub_id].sizes.get((pid, track)),
                lambda s: s == size, 10, *logs)
            sizes = [h for h in snapshot(bob)["hints"] if h.startswith("SIZE ")]
            assert sizes and sizes[-1] == f"SIZE {pid} {track} {size[0]}x{size[1]}", sizes

            def switch(value: str, fits: Any, label: Any) -> dict[str, Any]:
                before = decoded(tile_of(bob, pid))
                tile.locator(".quality").select_option(value)
                assert snapshot(bob)["hints"][-1] == f"LAYER {pid} {track} {value}"
                now = wait_until(
                    f"bob decoding after {value}",
                    functools.partial(tile_of, bob, pid),
                    lambda t: fits(width(t)) and decoded(t) >= before + 30 and label(t["layer"]),
                    SWITCH_TIMEOUT if value != "auto" else TOP_TIMEOUT, *logs)
                print(f"{value}: {width(now)}x{(now['stats'] or {}).get('height')} "
                      f"layer {now['layer']} shown {now['shown'].get('layer')!r}")
                return now

            low = switch("low", lambda w: 0 < w <= 400, lambda layer: layer == "low")
            assert low["shown"]["layer"].startswith("low · "), low["shown"]

            # off: the tile says paused at once; the decoder stops while alice keeps encoding.
            tile.locator(".quality").select_option("off")
            assert snapshot(bob)["hints"][-1] == f"LAYER {pid} {track} off"
            wait_until("the tile saying paused", lambda: tile_of(bob, pid),
                       lambda t: t["layer"] == "paused" and t["shown"]["layer"] == "paused"
                       and "video paused" in tile.locator(".badge").inner_text(), 5, *logs)

            def settled() -> tuple[int, int]:
                # frames decoded at two consecutive stats refreshes (about a second apart)
                first = tile_of(bob, pid)
                later = wait_until("a stats refresh", functools.partial(tile_of, bob, pid),
                                   lambda t: t["refreshes"] > first["refreshes"], 10, *logs)
                return decoded(first), decoded(later)

            stopped = wait_until("bob's decoder to stop", settled, lambda d: d[0] == d[1],
                                 15, *logs)[1]
            sent = tile_of(alice, "local:camera")["stats"]["frames"]
            refreshes = tile_of(bob, pid)["refreshes"]
            wait_until("three more stats refreshes at bob",
                       functools.partial(tile_of, bob, pid),
                       lambda t: t["refreshes"] >= refreshes + 3, 15, *logs)
            assert decoded(tile_of(bob, pid)) == stopped, "frames decoded while paused"
            wait_until("alice still encoding", lambda: tile_of(alice, "local:camera")["stats"],
                       lambda s: s["frames"] > sent + 30, 10, *logs)

            switch("auto", lambda w: w >= 960, lambda layer: layer == "high")

            # A narrower window: the tile shrinks, a new SIZE goes out (the ResizeObserver) and
            # auto comes down to the smallest stream at least as wide as the tile (640 px).
            bob.page.set_viewport_size({"width": 560, "height": 800})
            narrow = wait_until(
                "a SIZE narrower than the mid stream",
                lambda: [h for h in snapshot(bob)["hints"] if h.startswith(f"SIZE {pid} ")][-1],
                lambda h: 320 < int(h.rsplit(" ", 1)[1].split("x")[0]) <= 640, 10, *logs)
            before = decoded(tile_of(bob, pid))
            now = wait_until(
                "bob decoding the mid stream under auto",
                functools.partial(tile_of, bob, pid),
                lambda t: 400 < width(t) <= 720 and decoded(t) >= before + 30
                and t["layer"] == "mid", SWITCH_TIMEOUT, *logs)
            print(f"{narrow}: auto decodes {width(now)} px, layer {now['layer']}")
            assert sfu.rooms[room].subscribers[sub_id].sizes[(pid, track)][0] <= 640

            # alice picks 240p while publishing: libwebrtc would send only the q stream of a
            # 320x240 camera, so the page re-adds the camera as one stream; bob's tile takes
            # the new track and decodes it whole.
            alice.page.select_option("#resolution", "240p")
            wait_until("alice's tile says one stream", local.inner_text,
                       lambda t: t == "sending one stream", 20, *logs)
            single = wait_until(
                "bob decoding alice's new single-stream camera",
                functools.partial(tile_of, bob, pid),
                lambda t: t["videoTrack"] not in (None, track) and width(t) == 320
                and decoded(t) >= 30, SWITCH_TIMEOUT, *logs)
            videos = [t for t in sfu.rooms[room].publishers[pid].tracks if t.kind == "video"]
            assert [list(t.layers) for t in videos] == [[]], [t.layers for t in videos]
            assert single["appIds"] == ["camera", "mic"], single  # the old track is gone
            for p in logs:
                assert not p.problems, "\n".join(p.problems) + p.log()

        await in_browser(scenario, base)
