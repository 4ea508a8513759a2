"""The demo page's last details (issue 13 item 8), in Chromium against a real server.

- A server that requires tokens answers the page's first join with 401: the page shows a
  token field; with a token pasted there the next join gets in and the other user decodes.
- Device pickers list the cameras and microphones (Chromium's fake devices: three cameras
  here), and picking another camera while publishing replaces the track on the same section
  (``RTCRtpSender.replaceTrack``): the other user decodes the new camera in the same tile.
- Next to the resolution selector the page shows what the camera really delivers
  (``getSettings()``), which is not always what was asked for.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from tests.peers.harness import require_chromium
from tests.test_site import Page, decoding, in_browser, phase_of, remote_of, sfu_server, snapshot
from tests.test_site import wait_until as wait
from trio_sfu.auth import create_token

pytestmark = [pytest.mark.browser]

API_KEY = "demo-key"
API_SECRET = "demo-secret-0123456789abcdef0123456789abcdef"
ROOM = "devroom"
#: Chromium's fake capture with three cameras (the later switch wins over CHROMIUM_ARGS' one);
#: the second, fake_device_1, is a Y16 depth camera that WebRTC cannot encode: the test picks
#: the third (MJPEG)
CAMERAS = ("--use-fake-device-for-media-stream=device-count=3",)


def token(identity: str) -> str:
    return create_token(
        API_KEY, API_SECRET, identity=identity, room=ROOM, publish=True, subscribe=True
    )


def track_settings(p: Page) -> dict[str, Any]:
    """The published camera track's own getSettings(), read apart from the page's display."""
    result: dict[str, Any] = p.js(
        "() => { const v = document.querySelector('.tile[data-key=\"local:camera\"] video');"
        " const t = v?.srcObject?.getVideoTracks()[0];"
        " return t ? t.getSettings() : {}; }"
    )
    return result


async def test_token_field_device_pickers_and_the_real_camera_resolution() -> None:
    require_chromium()

    def scenario(browser: Any, base: str) -> None:
        alice, bob = Page(browser, "alice"), Page(browser, "bob")
        # bob comes with a token in the URL (as before); alice without one.
        bob.page.goto(f"{base}/?room={ROOM}&user=bob&token={token('bob')}")
        alice.page.goto(f"{base}/?room={ROOM}&user=alice")
        for p in (alice, bob):
            p.page.wait_for_function("() => window.sfuDemo !== undefined")
        assert alice.page.is_hidden("#token-row")

        # 401: the page asks for a token instead of failing for good.
        alice.page.click("#join")
        wait(
            "alice asked for a token",
            functools.partial(snapshot, alice),
            lambda s: s["tokenAsked"] and s["phase"] == "idle",
            30,
            alice,
        )
        assert alice.page.is_visible("#token")
        log = [line["message"] for line in snapshot(alice)["log"]]
        assert any("needs a token" in line for line in log), log
        alice.page.fill("#token", token("alice"))
        alice.page.click("#join")
        bob.page.click("#join")
        for p in (alice, bob):
            wait(
                f"{p.name} joined",
                functools.partial(phase_of, p),
                lambda ph: ph == "joined",
                30,
                alice,
                bob,
            )
        wait(
            "bob decoding alice",
            functools.partial(remote_of, bob, "alice"),
            decoding(30),
            45,
            alice,
            bob,
        )

        # Device pickers: the fake cameras and microphone, listed with labels.
        devices = wait(
            "alice's devices listed",
            lambda: snapshot(alice)["devices"],
            lambda d: sum(x["kind"] == "videoinput" for x in d) >= 3,
            20,
            alice,
        )
        cameras = [d for d in devices if d["kind"] == "videoinput"]
        assert any(d["kind"] == "audioinput" for d in devices), devices
        assert all(d["label"] for d in devices), devices
        options = alice.page.eval_on_selector_all(
            "#camera-device option", "els => els.map((e) => e.value)"
        )
        assert [c["deviceId"] for c in cameras] == [o for o in options if o], options

        # The real resolution: what the page shows is the track's own getSettings().
        shown = wait(
            "alice's real resolution shown",
            lambda: snapshot(alice),
            lambda s: s["actual"] is not None and s["actualText"],
            10,
            alice,
        )
        settings = track_settings(alice)
        assert (shown["actual"]["width"], shown["actual"]["height"]) == (
            settings["width"],
            settings["height"],
        ), (shown["actual"], settings)
        assert f"{settings['width']}×{settings['height']}" in shown["actualText"], shown
        alice.page.select_option("#resolution", "240p")
        later = wait(
            "the 240p settings shown",
            lambda: snapshot(alice),
            lambda s: s["actual"] and s["actual"]["width"] == 320,
            10,
            alice,
        )
        assert "320×240" in later["actualText"], later
        print("camera shown as:", shown["actualText"], "then", later["actualText"])

        # Another camera while publishing: replaced on the same section (no renegotiation),
        # bob decodes the new camera in the same tile, as the same track.
        other = next(c["deviceId"] for c in cameras if c["label"] == "fake_device_2")
        connection = snapshot(alice)["ids"]["camera"]
        alice.page.select_option("#camera-device", other)
        wait(
            "alice's camera switched",
            lambda: track_settings(alice).get("deviceId"),
            lambda d: d == other,
            15,
            alice,
        )
        gained = {"frames": 0, "last": None}

        def progress() -> int:
            # frames bob decodes from now on, whatever track they come from (the new track's
            # count starts again at 0)
            tiles = remote_of(bob, "alice")
            n = (tiles[0]["stats"] or {}).get("framesDecoded", 0) if tiles else 0
            last = gained["last"]
            if last is not None and n > last:
                gained["frames"] += n - last
            gained["last"] = n
            return gained["frames"]

        progress()
        wait("bob decoding alice's other camera", progress, lambda n: n >= 60, 30, alice, bob)
        assert snapshot(alice)["ids"]["camera"] == connection  # the same connection
        tiles = remote_of(bob, "alice")
        assert len(tiles) == 1 and "video" in tiles[0]["kinds"], tiles
        assert tiles[0]["appIds"] == ["camera", "mic"], tiles  # no track added or removed
        noise = ("401", "sfu-demo")  # the refused first join, and the page's own notes
        problems = [p for p in alice.problems + bob.problems if not any(n in p for n in noise)]
        assert not problems, problems

    async with sfu_server(api_key=API_KEY, api_secret=API_SECRET) as base:
        await in_browser(scenario, base, CAMERAS)
