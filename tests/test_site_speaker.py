"""The demo site highlights the room's active speaker (issue 11 items 6 and 7), for real.

Two publishers send tones whose RFC 6464 levels their own stacks write: aiortc processes
(tests/peers/aiortc_tone.py), and Chromium pages whose microphone is a WebAudio oscillator
(libwebrtc measures the level). The demo page in headless Chromium joins the room as a viewer
(camera and mic off). The louder publisher's tile gets the ``speaking`` class and no other
tile has it; after the loudness is swapped the ring moves.
"""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from tests.interop.driver import PeerLog, fresh
from tests.peers.harness import require_chromium
from tests.test_site import Page, in_browser, phase_of, sfu_server, wait_until
from tests.test_speaker_media import LOUD, QUIET, set_level, tone

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def speaking(p: Page) -> list[str]:
    keys: list[str] = p.js(
        "() => [...document.querySelectorAll('.tile.speaking')].map((e) => e.dataset.key)")
    return keys


async def test_demo_tile_highlight_follows_speaker() -> None:
    require_chromium()
    room = fresh("talk")
    amy, ben = f"{fresh('amy')}-1", f"{fresh('ben')}-1"
    async with sfu_server() as base, AsyncExitStack() as stack:
        pubs: dict[str, PeerLog] = {}
        for peer_id in (amy, ben):
            pubs[peer_id] = await stack.enter_async_context(tone(base, room, peer_id))
        token = trio.lowlevel.current_trio_token()

        def loudest(first: str, second: str) -> None:
            async def apply() -> None:
                await set_level(pubs[first], LOUD)
                await set_level(pubs[second], QUIET)
            trio.from_thread.run(apply, trio_token=token)

        def scenario(browser: Any, url: str) -> None:
            viewer = Page(browser, "viewer")
            viewer.page.goto(f"{url}/?room={room}&user=viewer")
            viewer.page.wait_for_function("() => window.sfuDemo !== undefined")
            viewer.page.uncheck("#camera")
            viewer.page.uncheck("#mic")
            viewer.page.click("#join")
            wait_until("viewer joined", functools.partial(phase_of, viewer),
                       lambda ph: ph == "joined", 20, viewer)
            wait_until("both publishers' tiles", lambda: viewer.js(
                "() => window.sfuDemo.snapshot().tiles.map((t) => t.key).sort()"),
                lambda keys: keys == sorted([amy, ben]), 30, viewer)
            assert speaking(viewer) == []  # both silent so far: nobody is highlighted
            loudest(amy, ben)
            wait_until(f"{amy}'s tile highlighted", functools.partial(speaking, viewer),
                       lambda keys: keys == [amy], 30, viewer)
            loudest(ben, amy)
            wait_until(f"the highlight moving to {ben}", functools.partial(speaking, viewer),
                       lambda keys: keys == [ben], 30, viewer)
            assert viewer.js("() => window.sfuDemo.snapshot().speaker") == ben
            assert not viewer.problems, "\n".join(viewer.problems)

        await in_browser(scenario, base)


#: A Chromium publisher whose microphone is a WebAudio oscillator behind a gain the test sets:
#: Chromium (libwebrtc) measures each frame's level itself and writes the RFC 6464 extension.
OSCILLATOR_PUBLISHER = """async ([room, user]) => {
  const m = await import('/sfu-client.js');
  const ctx = new AudioContext();
  await ctx.resume();
  const osc = ctx.createOscillator();
  osc.frequency.value = 440;
  const gain = ctx.createGain();
  gain.gain.value = 0;
  const dest = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  const conn = await m.connectPublisher({ room, user, tracks: dest.stream.getAudioTracks() });
  window.P = { conn, gain, ctx };
  return conn.id;
}"""
#: sine peak amplitudes: RMS ≈ -23 dBov and ≈ -49 dBov
LOUD_GAIN, QUIET_GAIN = 0.1, 0.005


async def test_chromium_publishers_tile_highlight_follows_speaker() -> None:
    """The same with Chromium publishers: libwebrtc's own audio levels drive SPEAKER."""
    require_chromium()
    room = fresh("talk")

    def run(url: str) -> None:
        from playwright.sync_api import sync_playwright

        from tests.peers.chromium_peer import CHROMIUM, CHROMIUM_ARGS

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, timeout=30_000,
                args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"])
            try:
                scenario(browser, url)
            finally:
                browser.close()

    def scenario(browser: Any, url: str) -> None:
        pages = {name: Page(browser, name) for name in ("amy", "ben", "viewer")}
        ids = {}
        for name in ("amy", "ben"):
            p = pages[name]
            p.page.goto(f"{url}/")
            ids[name] = p.js(OSCILLATOR_PUBLISHER, [room, name])
        viewer = pages["viewer"]
        viewer.page.goto(f"{url}/?room={room}&user=viewer")
        viewer.page.wait_for_function("() => window.sfuDemo !== undefined")
        viewer.page.uncheck("#camera")
        viewer.page.uncheck("#mic")
        viewer.page.click("#join")
        logs = tuple(pages.values())
        wait_until("both publishers' tiles", lambda: viewer.js(
            "() => window.sfuDemo.snapshot().tiles.map((t) => t.key).sort()"),
            lambda keys: keys == sorted(ids.values()), 30, *logs)
        assert speaking(viewer) == []

        def loudest(first: str, second: str) -> None:
            pages[first].js(f"() => {{ window.P.gain.gain.value = {LOUD_GAIN}; }}")
            pages[second].js(f"() => {{ window.P.gain.gain.value = {QUIET_GAIN}; }}")

        loudest("amy", "ben")
        wait_until("amy's tile highlighted", functools.partial(speaking, viewer),
                   lambda keys: keys == [ids["amy"]], 30, *logs)
        loudest("ben", "amy")
        wait_until("the highlight moving to ben", functools.partial(speaking, viewer),
                   lambda keys: keys == [ids["ben"]], 30, *logs)
        for p in logs:
            assert not p.problems, p.log()

    async with sfu_server() as base:
        with trio.fail_after(150):
            await trio.to_thread.run_sync(run, base, abandon_on_cancel=True)
