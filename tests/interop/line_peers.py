"""Drive the non-browser interop peers: werift, node-datachannel (npm) and GStreamer's webrtcbin.

Each runs in its own process and speaks JSON lines (``tests/peers/node_peers/common.mjs``,
``tests/peers/gst_sub.py``): ``posted``, ``open``, ``message`` (PUB_JOIN, PUB_LEFT, ERROR, ...),
``offer``/``answered`` for every seed ``SDP_OFFER``, ``progress`` and a final ``result``.
:class:`LinePeer` records every line as it comes (the harness's ``receive`` skips lines of other
types, and a scenario must see all of them) and waits on conditions over the record.

werift and node-datachannel have no codecs: their subscribers write the VP8 RTP they receive
to a UDP port of this process, where :class:`RtpSink` depacketizes it (RFC 7741) and decodes
it with PyAV, one decoder per SSRC. A frame counts only if it decodes.

The scenarios (issue 8, "Proof") are here once; ``test_werift.py``, ``test_node_datachannel.py``
and ``test_gstreamer.py`` run them per stack.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.netns import open_lines
from tests.peers.harness import PEERS_DIR, REQUIRE_BROWSER_ENV, PeerProcess
from tests.test_third_party_clients import Vp8Frames, aiortc_argv, finish

NODE_DIR = os.path.join(PEERS_DIR, "node_peers")
DEBIAN_PYTHON = "/usr/bin/python3"
# The scenarios' numbers (issue 8 "Proof"): frames decoded from the first and the last
# publisher, and how many publishers come and go between them on the same connection.
FRAMES = 60
CHURN = 5
FRAMES_CHURN = 10  # each publisher in between: decoded too, so the recycled sections carry media


# --------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=4)
def node_package_missing(package: str) -> str | None:
    """None if ``node`` can load the npm ``package`` from tests/peers/node_peers, else why not."""
    node = shutil.which("node")
    if node is None:
        return "node not found (Debian package nodejs; scripts/setup-system)"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", package)):
        return f"npm package {package} not installed: run scripts/setup-node"
    probe = (
        f"import('{package}').then(() => process.exit(0), "
        "(e) => { console.error(e); process.exit(1); })"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", probe], cwd=NODE_DIR, capture_output=True,
        text=True, timeout=60,
    )
    if done.returncode != 0:
        return f"npm package {package} does not load: {done.stderr.strip()[-300:]}"
    if not os.path.exists(DEBIAN_PYTHON):
        return f"{DEBIAN_PYTHON} not found (GStreamer feeds the publisher; scripts/setup-system)"
    return None


def require_node_package(package: str) -> None:
    missing = node_package_missing(package)
    if missing is None:
        return
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{missing} ({REQUIRE_BROWSER_ENV}=1 forbids skipping)")
    pytest.skip(missing)


# --------------------------------------------------------------------------- decoding


class RtpSink:
    """A UDP socket on 127.0.0.1 that decodes the VP8 RTP a peer forwards to it, per SSRC."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.streams: dict[int, Vp8Frames] = {}
        self.port = 0

    async def bind(self) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    async def run(self) -> None:
        while True:
            packet = await self.sock.recv(65536)
            if len(packet) < 12:
                continue
            ssrc = int.from_bytes(packet[8:12], "big")
            stream = self.streams.get(ssrc)
            if stream is None:
                stream = self.streams[ssrc] = Vp8Frames()
            stream.feed(packet)

    @property
    def decoded(self) -> int:
        return sum(s.decoded for s in self.streams.values())

    def summary(self) -> dict[str, Any]:
        return {f"{ssrc:08x}": s.summary() for ssrc, s in self.streams.items()}


@asynccontextmanager
async def rtp_sink() -> AsyncIterator[RtpSink]:
    sink = RtpSink()
    await sink.bind()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run)
            yield sink
            nursery.cancel_scope.cancel()
    finally:
        sink.sock.close()


async def wait_decoded(sink: RtpSink, count: int, timeout: float, what: str) -> int:
    """Wait until ``count`` more frames than now are decoded; returns the new total."""
    goal = sink.decoded + count
    with trio.move_on_after(timeout):
        while sink.decoded < goal:
            await trio.sleep(0.05)
        return sink.decoded
    raise AssertionError(
        f"{what}: decoded {sink.decoded - goal + count}/{count} new frames in {timeout:.0f} s; "
        f"streams {sink.summary()}"
    )


# --------------------------------------------------------------------------- peers


class LinePeer:
    """A peer process whose every stdout line is recorded, with waits on the record."""

    def __init__(self, process: PeerProcess) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self._changed = trio.Event()
        self.failure: str | None = None

    async def read(self) -> None:
        try:
            while True:
                line = await self.process.receive_any()
                self.lines.append(line)
                if line.get("type") == "result":
                    self.result = line
                self._changed.set()
                self._changed = trio.Event()
                if self.result is not None:
                    return
        except Exception as error:  # the process died or wrote garbage: waits report it
            self.failure = str(error)
            self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("type") == kind]

    def texts(self, prefix: str = "") -> list[str]:
        return [m["text"] for m in self.of("message") if m["text"].startswith(prefix)]

    def offers(self) -> int:
        return len(self.of("offer"))

    def answered(self) -> list[dict[str, Any]]:
        return self.of("answered")

    def refused(self) -> list[str]:
        """What went wrong in renegotiation: the stack's own errors and the server's ERRORs."""
        bad = [f"stack: {a.get('error')}" for a in self.answered() if not a.get("ok")]
        return bad + [f"server: {t}" for t in self.texts("ERROR")]

    async def wait(
        self, predicate: Callable[[], Any], timeout: float, what: str
    ) -> Any:
        with trio.move_on_after(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self.failure is not None or self.result is not None:
                    break
                await self._changed.wait()
        raise AssertionError(
            f"{what}: not within {timeout:.0f} s; peer failure {self.failure}; "
            f"result {self.result}; last lines {self._tail()}\n--- peer stderr ---\n"
            f"{self.process.stderr_tail()}"
        )

    async def wait_message(self, text: str, timeout: float = 20) -> None:
        await self.wait(lambda: text in self.texts(), timeout, f"data-channel line {text!r}")

    async def wait_answered_beyond(self, offers_before: int, timeout: float, what: str) -> None:
        """Wait for an SDP_OFFER after the first ``offers_before`` and for every offer so far
        to be answered; fail at once if one was refused (by the stack or by the server)."""

        def done() -> bool:
            if self.refused():
                raise AssertionError(f"{what}: renegotiation refused: {self.refused()}")
            return self.offers() > offers_before and len(self.answered()) == self.offers()

        await self.wait(done, timeout, what)

    async def stop(self, timeout: float = 30) -> dict[str, Any]:
        await self.process.send({"type": "stop"})
        await self.wait(lambda: self.result, timeout, "the peer's result")
        assert self.result is not None
        if not self.result.get("ok"):
            self.result["stderrTail"] = self.process.stderr_tail()
        return self.result

    def _tail(self) -> list[dict[str, Any]]:
        return [
            {k: (v[:120] + "…" if isinstance(v, str) and len(v) > 120 else v)
             for k, v in line.items()}
            for line in self.lines[-6:]
        ]


@asynccontextmanager
async def open_line_peer(argv: list[str], name: str) -> AsyncIterator[LinePeer]:
    async with open_lines(argv, name=name) as process, trio.open_nursery() as nursery:
        peer = LinePeer(process)
        nursery.start_soon(peer.read)
        yield peer
        nursery.cancel_scope.cancel()


def node_argv(script: str, role: str, url: str, *extra: str) -> list[str]:
    node = shutil.which("node") or "node"
    return [node, os.path.join(NODE_DIR, script), "--role", role, "--url", url, *extra]


# --------------------------------------------------------------------------- scenarios


def aiortc_publisher(url: str, host: str, mark: int) -> Any:
    """A real VP8 publisher on the seed API (aiortc in its own process)."""
    return open_lines(
        aiortc_argv("aiortc_whip.py", url, "--ice-address", host, "--mark", str(mark),
                    "--no-audio", "--timeout", "120"),
        name="aiortc_pub",
    )


async def subscriber_scenario(
    peer: LinePeer, sink: RtpSink | None, base: str, room: str, host: str,
    decoded: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Issue 8's seed-API subscriber proof on one connection: a publisher joins (≥ 60 frames
    decoded), leaves (PUB_LEFT, the re-offer accepted), CHURN publishers join and leave in
    turn, and a last one is decoded again; every SDP_OFFER answered, none refused.

    ``decoded`` counts frames for peers that decode themselves (GStreamer); otherwise ``sink``.
    """

    def frames() -> int:
        if decoded is not None:
            return decoded()
        assert sink is not None
        return sink.decoded

    async def frames_after(count: int, timeout: float, what: str) -> None:
        if sink is not None and decoded is None:
            await wait_decoded(sink, count, timeout, what)
            return
        goal = frames() + count
        await peer.wait(lambda: frames() >= goal, timeout, f"{what}: {count} decoded frames")

    await peer.wait(lambda: peer.of("posted"), 30, "POST /sub answered")
    posted = peer.of("posted")[0]
    assert posted["status"] == 201, posted
    await peer.wait(lambda: peer.of("open"), 30, "the data channel open")
    log: dict[str, Any] = {"publishers": []}
    total = CHURN + 2
    for index in range(total):
        publisher = f"pub{index}-{room}"
        need = FRAMES if index in (0, total - 1) else FRAMES_CHURN
        offers_before = peer.offers()
        async with aiortc_publisher(f"{base}/pub/{room}/{publisher}", host, 60 + index) as pub:
            await pub.receive("published", 30)
            await peer.wait_message(f"PUB_JOIN {publisher}")
            await peer.wait_answered_beyond(offers_before, 30, f"offer for {publisher}")
            await frames_after(need, 45, f"publisher {index} ({publisher})")
            offers_before = peer.offers()
            left = await finish(pub)
            assert left["ok"], left
        await peer.wait_message(f"PUB_LEFT {publisher}")
        await peer.wait_answered_beyond(offers_before, 30, f"re-offer after {publisher} left")
        log["publishers"].append({"id": publisher, "frames": frames()})
    assert not peer.refused(), peer.refused()
    assert len(peer.of("posted")) == 1
    log["offers"] = peer.offers()
    log["frames"] = frames()
    return log


async def publisher_scenario(
    start_peer: Callable[[str], Any], base: str, room: str, publisher: str
) -> dict[str, Any]:
    """The stack publishes on the seed API (``start_peer(url)`` opens it) and a Chromium
    subscriber on the site's module decodes ≥ 60 frames of it."""
    from tests.browser_helpers import decoding, open_page
    from tests.peers.browser_client import open_browser
    from tests.peers.harness import require_chromium

    require_chromium()
    async with open_browser() as browser:
        await open_page(browser, base, "viewer")
        await browser.eval("viewer", f"window.T.subscribe({room!r}, 'viewer')")
        async with start_peer(f"{base}/pub/{room}/{publisher}") as peer:
            await peer.wait(lambda: peer.of("posted"), 30, "POST /pub answered")
            assert peer.of("posted")[0]["status"] == 201, peer.of("posted")
            received = await decoding(browser, "viewer", publisher, FRAMES)
            result = await peer.stop()
    assert result["ok"], result
    assert result["rtpOut"] > 0 and result["delete"]["status"] == 204, result
    return {"chromium": received, "peer": result}


def streaming(peer: LinePeer) -> bool:
    """A publisher peer is connected and has sent a second of video."""
    progress = peer.of("progress")
    return bool(progress) and progress[-1]["state"] == "connected" and progress[-1]["rtpOut"] > 30


async def whep_scenario(
    start_peer: Callable[[str], Any], base: str, room: str,
    decoded: Callable[[LinePeer], int], host: str = "127.0.0.1", live_first: bool = False,
) -> dict[str, Any]:
    """A WHEP viewer POSTed 0 ms after a WHIP publisher's POST was answered, while that
    publisher is certainly still connecting, gets ``201`` and decodes ≥ 60 frames once the
    publisher's media flows (issue 8, must-have 6).

    Deterministic, not a race: the viewer's offer is made beforehand (``--wait-post``), and the
    publisher (werift, fed VP8 and Opus by GStreamer) holds the server's answer
    (``--hold-answer``), so no ICE check of it reaches the server before the viewer's POST is
    answered.

    ``live_first`` validates the viewer itself (the harness tests): the publisher connects and
    streams before the viewer POSTs, which works without issue 8's fix.
    """
    whip = node_argv("werift_peer.mjs", "whip", f"{base}/whip/{room}", "--hold-answer",
                     "--ice-address", host, "--audio", "--timeout", "120")
    async with start_peer(f"{base}/whep/{room}") as viewer:
        await viewer.wait(lambda: viewer.of("ready"), 30, "the WHEP viewer's offer")
        async with open_line_peer(whip, "werift_whip") as publisher:
            await publisher.wait(lambda: publisher.of("posted"), 30, "POST /whip answered")
            assert publisher.of("posted")[0]["status"] == 201, publisher.of("posted")
            if live_first:
                await publisher.process.send({"type": "apply"})
                await publisher.wait(lambda: streaming(publisher), 30, "the WHIP publisher live")
            await viewer.process.send({"type": "post"})
            await viewer.wait(lambda: viewer.of("posted"), 30, "POST /whep answered")
            posted = viewer.of("posted")[0]
            if not live_first:
                await publisher.process.send({"type": "apply"})
            assert posted["status"] == 201, posted
            await viewer.wait(lambda: decoded(viewer) >= FRAMES, 45,
                              f"WHEP viewer: {FRAMES} decoded frames")
            result = await viewer.stop()
            left = await publisher.stop()
    assert result["ok"], result
    assert result["delete"]["status"] == 200, result
    assert left["ok"] and left["delete"]["status"] == 200, left
    return {"viewer": result, "decoded": decoded(viewer)}
