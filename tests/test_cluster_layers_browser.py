"""Simulcast across pods with real browsers (issue 11): a Chromium simulcast publisher (q/h/f)
on pod a, a Chromium subscriber on pod b.

The subscriber's layer choice travels as far as the publisher's encoder: on ``LAYER … low``
pod b subscribes to the relayed q stream and, once f is unneeded, lets it go; pod a then
relays q alone, and with nobody on any pod needing h or f it tells the publisher to encode
q alone (``LAYERS``), which the publisher's own ``getStats()`` shows (h's and f's bytes stand
still). ``LAYER high`` brings f back the same way, at 1280 px on pod b.
"""

from __future__ import annotations

import pytest
import trio

from tests.browser_helpers import open_page
from tests.cluster_helpers import Pod
from tests.peers.browser_client import Browser

# two pods (a, b) with a Redis and a NATS of their own, and a Chromium
from tests.test_cluster_tracks_browser import backends, browser, pods  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_a_layer_chosen_on_pod_b_reaches_the_publishers_encoder_on_pod_a(
    pods: dict[str, Pod],  # noqa: F811 (the imported fixture)
    browser: Browser,  # noqa: F811
) -> None:
    alice = await open_page(browser, pods["a"].url, "alice")
    bob = await open_page(browser, pods["b"].url, "bob")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    pid = await browser.eval(
        alice, "window.T.publish('room1', 'alice', {width: 1280, height: 720, simulcast: true})"
    )
    inbound = f"window.T.inbound({pid!r})"
    outbound = f"window.T.outbound({pid!r})"
    await browser.wait_for(bob, inbound, lambda r: r["width"] >= 960, timeout=60)
    track_id = await browser.eval(bob, f"window.T.tracks[{pid!r}].video.id")

    await browser.eval(bob, f"window.T.sub.channel.send('LAYER {pid} {track_id} low')")
    started = trio.current_time()
    await browser.wait_for(bob, inbound, lambda r: 0 < r["width"] <= 400, timeout=30)
    print(f"pod b: 320 px {trio.current_time() - started:.2f} s after LAYER low")
    told = await browser.wait_for(
        alice, outbound, lambda r: list(r["told"].values()) == [["q"]], timeout=40
    )
    print(f"pod a: LAYERS q {trio.current_time() - started:.2f} s after LAYER low on pod b")
    assert told["active"] == {"q": True, "h": False, "f": False}, told
    seen = await browser.eval(bob, inbound)
    await browser.wait_for(
        bob, inbound, lambda r: r["decoded"] >= seen["decoded"] + 30, timeout=20
    )
    paused = await browser.eval(alice, outbound)
    seen = await browser.eval(bob, inbound)
    await browser.wait_for(
        bob, inbound, lambda r: r["decoded"] >= seen["decoded"] + 60, timeout=20
    )
    still = await browser.eval(alice, outbound)
    assert still["bytes"]["f"] == paused["bytes"]["f"], (paused, still)
    assert still["bytes"]["h"] == paused["bytes"]["h"], (paused, still)
    assert still["bytes"]["q"] > paused["bytes"]["q"], (paused, still)

    await browser.eval(bob, f"window.T.sub.channel.send('LAYER {pid} {track_id} high')")
    started = trio.current_time()
    await browser.wait_for(bob, inbound, lambda r: r["width"] >= 960, timeout=30)
    print(f"pod b: 1280 px {trio.current_time() - started:.2f} s after LAYER high")
    resumed = await browser.eval(alice, outbound)
    assert resumed["active"]["f"] is True, resumed
