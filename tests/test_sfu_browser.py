"""The SFU with real browsers: Chromium publishes through trio-sfu to Chromium subscribers.

The pages load the site's own protocol module (`/sfu-client.js`) from the server under test,
so this also proves the module. Media flow is proven by the subscriber's getStats()
framesDecoded; bandwidth estimation by the publisher's availableOutgoingBitrate, which only
climbs when our transport-cc feedback reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.peers.browser_client import Browser, open_browser
from tests.peers.harness import require_chromium
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A tiny test API on top of the site's module. The RTCPeerConnection subclass only puts the
# wanted video codec first (setCodecPreferences), as an application would.
HELPERS = """async () => {
  const m = await import('/sfu-client.js');
  const codecFirst = (mime) => class extends RTCPeerConnection {
    addTransceiver(track, init) {
      const t = super.addTransceiver(track, init);
      if (mime && track.kind === 'video') {
        const all = RTCRtpSender.getCapabilities('video').codecs;
        const wanted = all.filter((c) => c.mimeType === mime &&
            (mime !== 'video/H264' || (c.sdpFmtpLine || '').includes('packetization-mode=1')));
        t.setCodecPreferences([...wanted, ...all.filter((c) => !wanted.includes(c))]);
      }
      return t;
    }
  };
  window.T = {
    m, pubs: {}, sub: null, tracks: {},
    hasCodec: (mime) =>
      RTCRtpSender.getCapabilities('video').codecs.some((c) => c.mimeType === mime),
    async publish(room, user, { width = 640, height = 480, codec = null } = {}) {
      const stream = await navigator.mediaDevices.getUserMedia(
          { audio: true, video: { width, height, frameRate: 30 } });
      const conn = await m.connectPublisher(
          { room, user, stream, RTCPeerConnection: codecFirst(codec) });
      window.T.pubs[conn.id] = conn;
      return conn.id;
    },
    async subscribe(room, user) {
      window.T.sub = await m.connectSubscriber({ room, user,
        onTrack: (pid, track, stream) => {
          (window.T.tracks[pid] ||= {})[track.kind] = track;
          const v = document.createElement('video');
          v.muted = true; v.autoplay = true; v.srcObject = stream;
          document.body.appendChild(v);
        } });
      return window.T.sub.id;
    },
    async received(pid) {
      const track = window.T.tracks[pid]?.video;
      if (!track) return { decoded: 0, codec: null };
      const report = await window.T.sub.pc.getStats(track);
      let decoded = 0, codecId = null;
      for (const r of report.values()) if (r.type === 'inbound-rtp') {
        decoded = r.framesDecoded || 0; codecId = r.codecId; }
      const codec = codecId && report.get(codecId) ? report.get(codecId).mimeType : null;
      return { decoded, codec };
    },
    async sending(pid) {
      const out = { bitrate: 0, target: 0 };
      for (const r of (await window.T.pubs[pid].pc.getStats()).values()) {
        if (r.type === 'candidate-pair' && r.nominated && r.availableOutgoingBitrate)
          out.bitrate = r.availableOutgoingBitrate;
        if (r.type === 'outbound-rtp' && r.kind === 'video') out.target = r.targetBitrate || 0;
      }
      return out;
    },
    sections: () => (window.T.sub.pc.remoteDescription?.sdp.match(/^m=/gm) || []).length,
    async stopPublisher(pid) { await window.T.pubs[pid].stop(); delete window.T.pubs[pid]; },
  };
  return true;
}"""


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[Running]:
    config = Config(
        http_host="127.0.0.1",
        http_port=0,
        udp_host="127.0.0.1",
        udp_port=0,
        public_ips=("127.0.0.1",),
    )
    running: Running = await nursery.start(serve, config)
    yield running
    running.shutdown()


@pytest.fixture
async def browser(app: Running) -> AsyncIterator[Browser]:
    require_chromium()
    async with open_browser() as b:
        yield b


async def _page(browser: Browser, app: Running, name: str) -> str:
    await browser.open(name, f"http://127.0.0.1:{app.http_port}/")
    assert await browser.eval(name, HELPERS) is True
    return name


async def _decoding(browser: Browser, page: str, pid: str, frames: int = 30) -> dict[str, Any]:
    result: dict[str, Any] = await browser.wait_for(
        page,
        f"window.T.received({pid!r})",
        lambda r: r["decoded"] >= frames,
        timeout=30,
    )
    return result


async def test_chromium_to_chromium_through_the_sfu_with_bandwidth_ramp(
    app: Running, browser: Browser
) -> None:
    bob = await _page(browser, app, "bob")
    alice = await _page(browser, app, "alice")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    pid = await browser.eval(
        alice, "window.T.publish('room1', 'alice', {width: 1280, height: 720})"
    )
    received = await _decoding(browser, bob, pid)
    assert received["codec"] == "video/VP8"
    # transport-cc feedback from the SFU lets Chromium's estimate climb past 1 Mbit/s.
    sending = await browser.wait_for(
        alice, f"window.T.sending({pid!r})", lambda s: s["bitrate"] >= 1_000_000, timeout=15
    )
    assert sending["bitrate"] >= 1_000_000
    rooms = await browser.eval(bob, "fetch('/rooms/room1').then((r) => r.json())")
    assert rooms["publishers"] == [{"id": pid, "user": "alice", "audio": 1, "video": 1}]


@pytest.mark.parametrize("codec", ["video/H264", "video/VP9", "video/AV1"])
async def test_negotiated_codecs_are_forwarded(app: Running, browser: Browser, codec: str) -> None:
    bob = await _page(browser, app, "bob")
    alice = await _page(browser, app, "alice")
    if not await browser.eval(alice, f"window.T.hasCodec({codec!r})"):
        pytest.skip(f"this Chromium build cannot send {codec}")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    pid = await browser.eval(alice, f"window.T.publish('room1', 'alice', {{codec: {codec!r}}})")
    received = await _decoding(browser, bob, pid)
    assert received["codec"] == codec


async def test_publisher_rejoin_recycles_the_subscriber_sections(
    app: Running, browser: Browser
) -> None:
    bob = await _page(browser, app, "bob")
    alice = await _page(browser, app, "alice")
    await browser.eval(bob, "window.T.subscribe('room1', 'bob')")
    sections = []
    for _ in range(3):
        pid = await browser.eval(alice, "window.T.publish('room1', 'alice')")
        await _decoding(browser, bob, pid)
        sections.append(await browser.eval(bob, "window.T.sections()"))
        await browser.eval(alice, f"window.T.stopPublisher({pid!r})")
        await browser.wait_for(bob, "window.T.sub.publishers.size", lambda n: n == 0)
    # data + audio + video, the stopped sections recycled each time (RFC 8829 §5.2.2).
    assert sections == [3, 3, 3]
