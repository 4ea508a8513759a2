"""The demo site highlights the room's active speaker (issue 11 items 6 and 7), for real.

Two aiortc publishers (tests/peers/aiortc_tone.py, own processes) send tones whose RFC 6464
levels aiortc writes; the demo page in headless Chromium joins the room as a viewer (camera
and mic off). The louder publisher's tile gets the ``speaking`` class and no other tile has it;
after the loudness is swapped (from the browser thread, through Trio) the ring moves.
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
