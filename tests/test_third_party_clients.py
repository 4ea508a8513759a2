"""Third-party WHIP/WHEP clients against trio-sfu (issue 5, "Proof, in CI").

Independent stacks publish and play through the real server: GStreamer's webrtcbin (libnice,
so inside a network namespace with a veth pair: ``tests/netns.py``), the npm package
``whip-whep`` in headless Chromium (trickle and ICE restart through PATCH), and aiortc. A
seed-API subscriber (our Python client) proves it sees a WHIP publisher by *decoding* its VP8:
the RTP is depacketized here (RFC 7741) and decoded with PyAV, so a frame counts only if it is
complete and decodable.

The server always has ``/whip``/``/whep`` routes; a 404 fails the test. The ``test_harness_*``
tests validate the clients against the seed API's ``/pub`` (a WHIP-shaped endpoint: one POST
of an offer, ``201`` with the answer and a ``Location``, DELETE to leave), so a failing proof
test points at the server, not at the harness.

A test that needs the namespace runs this module as its *scenario runner* inside one:
``python -m tests.netns -- python -m tests.test_third_party_clients SCENARIO ...`` starts the
server in-process on the veth address, runs the peers, and prints one JSON result line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio

from tests.netns import ADDRESS_A, ADDRESS_B, inside, open_lines, open_netns, require_netns
from tests.peers.harness import PEERS_DIR, PeerProcess, require_chromium
from trio_sfu.app import Running, serve
from trio_sfu.config import Config

DEBIAN_PYTHON = "/usr/bin/python3"
PAGE_DIR = os.path.join(PEERS_DIR, "whip_whep_page")
GST_ELEMENTS = (
    "webrtcbin", "nicesrc", "dtlssrtpenc", "srtpenc", "videotestsrc", "vp8enc", "rtpvp8pay",
    "audiotestsrc", "opusenc", "rtpopuspay",
)

# --------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=1)
def gst_unavailable() -> str | None:
    """None if GStreamer's WHIP peer can run here, else what is missing (Debian packages)."""
    if not os.path.exists(DEBIAN_PYTHON):
        return f"{DEBIAN_PYTHON} not found (Debian package python3)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "gi.require_version('GstSdp', '1.0');"
        "from gi.repository import Gst, GstWebRTC, GstSdp; Gst.init(None);"
        f"print(' '.join(e for e in {GST_ELEMENTS!r} if Gst.ElementFactory.find(e) is None))"
    )
    try:
        done = subprocess.run(
            [DEBIAN_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run {DEBIAN_PYTHON}: {error}"
    packages = (
        "python3-gi python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-bad "
        "gstreamer1.0-plugins-good gstreamer1.0-plugins-base gstreamer1.0-nice "
        "(scripts/setup-system)"
    )
    if done.returncode != 0:
        return f"GStreamer Python bindings missing ({done.stderr.strip()[-200:]}); {packages}"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}; {packages}"
    return None


def require_gst() -> None:
    missing = gst_unavailable()
    if missing is None:
        return
    if os.environ.get("TRIO_SFU_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{missing} (TRIO_SFU_REQUIRE_BROWSER=1 forbids skipping)")
    pytest.skip(missing)


def require_page() -> None:
    require_chromium()
    if not os.path.exists(os.path.join(PAGE_DIR, "node_modules", "whip-whep", "whip.js")):
        message = "npm package whip-whep not installed: run scripts/setup-node"
        if os.environ.get("TRIO_SFU_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


async def assert_whip_routes(base: str) -> None:
    """The server always registers /whip and /whep (``http/app.py``): a 404 is a failure."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/whip/probe", "/whep/probe"):
            response = await client.options(base + path)
            assert response.status_code != 404, f"the server has no {path} route"


# --------------------------------------------------------------------------- VP8 decoding


class Vp8Frames:
    """Counts decodable VP8 frames in a stream of plaintext RTP packets.

    Depacketized here (RFC 3550 §5.1 header, RFC 7741 §4.2 payload descriptor) rather than with
    the server's own codec helpers, so a server bug cannot cancel out in the check; decoded with
    PyAV (libvpx), so a frame counts only if it is complete and decodes.
    """

    #: while waiting for a keyframe, one is asked for again every this many skipped frames
    #: (about a second of video), as a decoder's PLI would be repeated (RFC 4585 §6.3.1)
    ASK_EVERY = 30

    def __init__(self, ask_keyframe: Callable[[], None] | None = None) -> None:
        import av

        self._codec = av.CodecContext.create("vp8", "r")
        #: a receiver's keyframe request (a PLI), called when a loss left it without one
        self._ask_keyframe = ask_keyframe
        self.decoded = 0
        self.keyframes = 0
        self.errors = 0
        self.dropped = 0  # frames lost to a sequence gap
        self.packets = 0
        self.waiting = 0  # complete frames skipped while waiting for a keyframe
        self.size: tuple[int, int] | None = None
        self.chroma: int | None = None
        self._parts: list[bytes] = []
        self._timestamp: int | None = None
        self._next_seq: int | None = None
        self._need_keyframe = True

    def feed(self, packet: bytes) -> None:
        self.packets += 1
        parsed = rtp_payload(packet)
        if parsed is None:
            return
        seq, timestamp, marker, payload = parsed
        if not payload:  # padding (a probe) takes a sequence number, and is no gap
            self._next_seq = (seq + 1) & 0xFFFF
            return
        start, body = vp8_descriptor(payload)
        gap = seq != self._next_seq  # (the first packet too: a keyframe is needed anyway)
        if not start and self._parts and not gap and timestamp == self._timestamp:
            self._parts.append(body)
        else:
            if self._parts or gap:
                # a frame broken off (it never saw its marker), or a gap between frames: a
                # whole frame may be gone, and the frames after it refer to it
                self.dropped += bool(self._parts)
                self._need_keyframe = True
            self._parts = [body] if start else []
            self._timestamp = timestamp
        self._next_seq = (seq + 1) & 0xFFFF
        if marker and self._parts:
            frame = b"".join(self._parts)
            self._parts = []
            self._decode(frame)

    def _decode(self, frame: bytes) -> None:
        import av

        keyframe = bool(frame) and not frame[0] & 0x01  # RFC 6386 §9.1: P bit 0
        if self._need_keyframe and not keyframe:
            if self._ask_keyframe is not None and self.waiting % self.ASK_EVERY == 0:
                self._ask_keyframe()
            self.waiting += 1
            return
        try:
            out = self._codec.decode(av.Packet(frame))
        except av.error.FFmpegError:
            self.errors += 1
            self._need_keyframe = True
            return
        self._need_keyframe = False
        self.keyframes += keyframe
        for decoded in out:
            self.decoded += 1
            self.size = (decoded.width, decoded.height)
            plane = decoded.planes[1]
            middle = bytes(plane)[(plane.height // 2) * plane.line_size :][: plane.width]
            self.chroma = round(sum(middle) / len(middle)) if middle else None

    def summary(self) -> dict[str, Any]:
        return {
            "decoded": self.decoded, "keyframes": self.keyframes, "errors": self.errors,
            "dropped": self.dropped, "size": self.size, "chroma": self.chroma,
            "packets": self.packets, "waiting": self.waiting,
        }


def rtp_payload(packet: bytes) -> tuple[int, int, bool, bytes] | None:
    """(sequence number, timestamp, marker, payload) of an RTP packet (RFC 3550 §5.1, §5.3.1)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    pos = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(packet) < pos + 4:
            return None
        pos += 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
    if pos > end:
        return None
    seq = int.from_bytes(packet[2:4], "big")
    timestamp = int.from_bytes(packet[4:8], "big")
    return seq, timestamp, bool(packet[1] & 0x80), packet[pos:end]


def vp8_descriptor(payload: bytes) -> tuple[bool, bytes]:
    """(starts a frame, VP8 data) per the RFC 7741 §4.2 payload descriptor."""
    first = payload[0]
    pos = 1
    if first & 0x80 and len(payload) > 1:  # X: extension octet follows
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID, 7 or 15 bits
            pos += 2 if len(payload) > pos and payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    start = bool(first & 0x10) and (first & 0x07) == 0  # S=1 and PID=0
    return start, payload[pos:]


# --------------------------------------------------------------------------- server and clients


def server_config(host: str, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "http_host": host, "http_port": 0, "udp_host": host, "udp_port": 0,
        "public_ips": (host,),
    }
    values.update(overrides)
    return Config(**values)


@asynccontextmanager
async def running_server(host: str, **overrides: Any) -> AsyncIterator[Running]:
    """The whole server (UDP endpoint, SFU, HTTP) in this process, stopped at the end."""
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            functools.partial(serve, server_config(host, **overrides), handle_signals=False)
        )
        try:
            yield running
        finally:
            running.shutdown()


async def decoding_subscriber(
    nursery: trio.Nursery, base: str, room: str, host: str, peer_id: str = "seedsub-1"
) -> tuple[Any, Vp8Frames]:
    """A seed-API subscriber (our Python client) whose video RTP is decoded as it arrives."""
    from tests.rtc_helpers import client_certificate
    from trio_sfu.client.sfu import SubscriberClient, http_signal
    from trio_sfu.proto.rtcp.feedback import Pli

    sub = SubscriberClient(peer_id, host=host, certificate=client_certificate())
    video_ssrc = 0

    def ask_keyframe() -> None:
        # As a browser's decoder does after a loss it cannot repair: a packet lost to a
        # loaded machine's socket buffer would otherwise leave it waiting for a keyframe that
        # a libwebrtc publisher sends only when asked.
        sub.pc.send_rtcp(Pli(sender_ssrc=1, media_ssrc=video_ssrc).serialize())

    frames = Vp8Frames(ask_keyframe)
    count_packets = sub.pc.on_rtp

    def on_rtp(stream: Any, packet: bytes, now: float) -> None:
        nonlocal video_ssrc
        if count_packets is not None:
            count_packets(stream, packet, now)
        t = stream.transceiver
        if t.kind != "video" or stream.repairs is not None:
            return
        vp8 = {c.payload_type for c in t.media_codecs if c.name.upper() == "VP8"}
        if len(packet) > 1 and packet[1] & 0x7F in vp8:
            video_ssrc = int.from_bytes(packet[8:12], "big")
            frames.feed(packet)

    sub.pc.on_rtp = on_rtp
    await nursery.start(sub.connect, http_signal(base, "sub", room, peer_id))
    await sub.wait_open()
    return sub, frames


async def wait_frames(
    frames: Vp8Frames, count: int, timeout: float, what: str, sub: Any = None
) -> None:
    with trio.move_on_after(timeout):
        while frames.decoded < count:
            await trio.sleep(0.05)
        return
    seen = f"; RTP per publisher {dict(sub.packets)}" if sub is not None else ""
    raise AssertionError(f"{what}: decoded {frames.decoded}/{count} frames {frames.summary()}"
                         + seen)


async def finish(peer: PeerProcess, timeout: float = 30) -> dict[str, Any]:
    """Ask a publisher/viewer peer to stop (it DELETEs its session) and return its result."""
    await peer.send({"type": "stop"})
    result = await peer.receive("result", timeout)
    if not result.get("ok"):
        result["stderrTail"] = peer.stderr_tail()
    return result


def gst_argv(url: str, *extra: str) -> list[str]:
    return [DEBIAN_PYTHON, os.path.join(PEERS_DIR, "gst_whip.py"), "--url", url, *extra]


def aiortc_argv(script: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(PEERS_DIR, script), "--url", url, *extra]


# --------------------------------------------------------------------------- the scenarios


async def gst_scenario(
    endpoint: str, room: str, mtu: int = 0, stream: float = 0, consent_timeout: float = 30.0
) -> dict[str, Any]:
    """GStreamer publishes to ``/whip/{room}`` (or the seed ``/pub``); a seed-API subscriber
    and, for WHIP, an aiortc WHEP viewer decode its video. Runs inside the namespace.

    With ``stream`` seconds, the publisher then keeps streaming that long and the subscriber
    must keep decoding all along (``streamed``: frames per 5 s window), against a server whose
    ``--consent-timeout`` is ``consent_timeout``: libnice sends no consent checks after
    nomination, so only consent from its authenticated media keeps it (RFC 7675)."""
    addresses = inside()
    assert addresses is not None, "run through tests.netns"
    server_host, peer_host = addresses
    out: dict[str, Any] = {"type": "result"}
    async with running_server(server_host, consent_timeout=consent_timeout) as running, \
            trio.open_nursery() as nursery:
        base = f"http://{server_host}:{running.http_port}"
        if endpoint == "whip":
            await assert_whip_routes(base)
            url = f"{base}/whip/{room}"
        else:
            url = f"{base}/pub/{room}/gst-1"
        sub, frames = await decoding_subscriber(nursery, base, room, peer_host)
        argv = gst_argv(url, "--timeout", str(90 + stream),
                        *(("--mtu", str(mtu)) if mtu else ()))
        async with open_lines(argv, name="gst_whip") as gst:
            out["published"] = await gst.receive("published", 30)
            out["connected"] = await gst.receive("connected", 30)
            join = await sub.expect("PUB_JOIN ", timeout=20)
            out["pubJoin"] = join
            try:
                await wait_frames(frames, 60, 30, "seed-API subscriber", sub)
            except AssertionError as error:
                error.add_note(f"server side: {server_counters(running, room)}")
                raise
            out["subscriber"] = frames.summary()
            if stream:
                windows: list[int] = []
                with trio.move_on_after(stream):
                    while True:
                        before = frames.decoded
                        await trio.sleep(5)
                        windows.append(frames.decoded - before)
                out["streamed"] = windows
                out["closedDuringStream"] = [
                    line for line in sub.lines if line.startswith("PUB_LEFT ")
                ]
                if out["closedDuringStream"]:
                    out["error"] = (f"the publisher was closed while streaming: "
                                    f"{out['closedDuringStream']}, frames per 5 s {windows}")
                    sub.stop()
                    nursery.cancel_scope.cancel()
                    return out
            if endpoint == "whip":
                async with open_lines(
                    aiortc_argv("aiortc_whep.py", f"{base}/whep/{room}", "--ice-address",
                                peer_host, "--min-frames", "60", "--timeout", "45"),
                    name="aiortc_whep",
                ) as viewer:
                    out["whep"] = await viewer.receive("result", 60)
                    if not out["whep"].get("ok"):
                        out["whep"]["stderrTail"] = viewer.stderr_tail()
            out["gst"] = await finish(gst)
            out["pubLeft"] = await sub.expect("PUB_LEFT ", timeout=20)
        sub.stop()
        nursery.cancel_scope.cancel()
    return out


def server_counters(running: Running, room: str) -> dict[str, Any]:
    """Each room member's driver counters, for a failure message (best effort: internals)."""
    members = getattr(getattr(running.sfu, "rooms", {}).get(room), "__dict__", {})
    found: dict[str, Any] = {}
    for group in ("publishers", "subscribers"):
        for peer_id, member in members.get(group, {}).items():
            stats: Any = getattr(getattr(member, "pc", None), "stats", None)
            is_record = dataclasses.is_dataclass(stats) and not isinstance(stats, type)
            found[peer_id] = dataclasses.asdict(stats) if is_record else repr(stats)
    return found


def scenario_main(argv: list[str]) -> int:
    """Entry point inside the namespace: run one scenario, print its JSON result line."""
    parser = argparse.ArgumentParser(description="third-party client scenario runner")
    parser.add_argument("scenario", choices=("gst",))
    parser.add_argument("--endpoint", choices=("whip", "pub"), default="whip")
    parser.add_argument("--room", default="gstroom")
    parser.add_argument("--mtu", type=int, default=0, help="GStreamer's RTP MTU (0: default)")
    parser.add_argument("--stream", type=float, default=0, help="keep streaming this long (s)")
    parser.add_argument("--consent-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # the server prints its URL; only the result goes to stdout
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        result = trio.run(
            gst_scenario, args.endpoint, args.room, args.mtu, args.stream, args.consent_timeout
        )
    except BaseException as error:  # report, then fail: the parent reads one line either way
        import traceback

        traceback.print_exc()
        leaf: BaseException = error
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        notes = "".join(f"\n{note}" for note in getattr(leaf, "__notes__", ()))
        result = {"type": "result", "error": f"{type(leaf).__name__}: {leaf}{notes}"}
    protocol.write(json.dumps(result) + "\n")
    protocol.flush()
    return 0 if "error" not in result else 1


async def run_in_netns(*args: str, timeout: float = 150) -> dict[str, Any]:
    """Run a scenario of this module inside a fresh namespace; its result line."""
    argv = [sys.executable, "-m", "tests.test_third_party_clients", *args]
    async with open_netns(argv, name="scenario") as runner:
        with trio.fail_after(timeout):
            result = await runner.receive("result")
        tail = runner.stderr_tail()
    assert "error" not in result, f"{result['error']}\n--- scenario stderr ---\n{tail}"
    result["stderrTail"] = tail
    return result


# --------------------------------------------------------------------------- the page server


@contextmanager
def page_server() -> Iterator[str]:
    """Serve tests/peers/whip_whep_page on 127.0.0.1 (a secure context for getUserMedia)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=PAGE_DIR, **kwargs)

        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- tests: GStreamer


@pytest.mark.slow
async def test_harness_gstreamer_publishes_to_the_seed_api_in_a_namespace() -> None:
    """Validates gst_whip.py, the namespace and the VP8 decoder on the seed ``/pub`` route.

    With 1200-byte RTP packets: the proof test below uses GStreamer's default (1400 bytes),
    which also proves the server forwards packets that long.
    """
    require_netns()
    require_gst()
    result = await run_in_netns("gst", "--endpoint", "pub", "--room", "gstseed", "--mtu", "1200")
    gst = result["gst"]
    assert gst["ok"], gst
    assert gst["post"]["status"] == 201 and gst["delete"]["status"] == 204, gst
    assert result["pubJoin"] == "PUB_JOIN gst-1"
    assert result["pubLeft"] == "PUB_LEFT gst-1"
    sub = result["subscriber"]
    assert sub["decoded"] >= 60 and sub["keyframes"] >= 1 and sub["size"] == [320, 240], sub
    # Both ends of the veth pair, never loopback: libnice would not have connected otherwise.
    assert ADDRESS_A in gst["answer"] and ADDRESS_B in gst["offer"]


@pytest.mark.slow
async def test_gstreamer_publisher_streams_60_s_without_consent_checks() -> None:
    """Issue 8 item 3: libnice sends no consent checks after nomination, so a GStreamer
    publisher was closed by "consent timeout" while streaming. With consent from its
    authenticated media (RFC 7675) it streams 60 s — six times the server's 10 s consent
    timeout — and the subscriber decodes throughout; DELETE still ends it."""
    require_netns()
    require_gst()
    result = await run_in_netns(
        "gst", "--endpoint", "whip", "--room", "gstlong", "--stream", "60",
        "--consent-timeout", "10", timeout=240,
    )
    assert result["closedDuringStream"] == [], result
    windows = result["streamed"]
    assert len(windows) >= 11 and all(n >= 25 for n in windows), windows  # ~30 fps × 5 s
    assert result["gst"]["ok"], result["gst"]
    assert result["gst"]["delete"]["status"] == 200, result["gst"]["delete"]
    assert result["pubLeft"].startswith("PUB_LEFT ")


@pytest.mark.slow
async def test_gstreamer_whip_publisher_decoded_by_subscriber_and_whep_viewer() -> None:
    """Issue 5: webrtcbin publishes to /whip/{room}; a seed-API subscriber and an aiortc WHEP
    viewer both decode its video; DELETE ends it (PUB_LEFT). GStreamer keeps its defaults, so
    each keyframe starts with a 1400-byte RTP packet the server must forward whole."""
    require_netns()
    require_gst()
    result = await run_in_netns("gst", "--endpoint", "whip", "--room", "gstwhip")
    gst = result["gst"]
    assert gst["ok"], gst
    post = gst["post"]
    assert post["status"] == 201 and post["location"] and post["etag"], post
    assert post["contentType"].startswith("application/sdp"), post
    assert gst["delete"]["status"] == 200, gst["delete"]
    sections = media_sections(gst["answer"])
    assert len(sections) == 2, gst["answer"]
    for section in sections:
        # RFC 9725 §4.2 recvonly; RFC 8858 §4.3: rtcp-mux answers rtcp-mux-only (which an
        # answer never carries itself).
        assert "a=recvonly" in section and "a=rtcp-mux" in section, section
        assert "a=rtcp-mux-only" not in section, section
    publisher = result["pubJoin"].removeprefix("PUB_JOIN ")
    assert publisher.startswith("whip-"), result["pubJoin"]
    assert result["pubLeft"] == f"PUB_LEFT {publisher}"
    sub = result["subscriber"]
    assert sub["decoded"] >= 60 and sub["size"] == [320, 240], sub
    whep = result["whep"]
    assert whep["ok"], whep
    assert whep["framesDecoded"] >= 60 and whep["frameSize"] == [320, 240], whep
    assert whep["posts"] == 1 and whep["delete"]["status"] == 200, whep


# --------------------------------------------------------------------------- tests: aiortc


@asynccontextmanager
async def loopback_server(**overrides: Any) -> AsyncIterator[tuple[Running, str, trio.Nursery]]:
    """The server on 127.0.0.1 plus a nursery for our clients, cancelled before it stops."""
    async with (
        running_server("127.0.0.1", **overrides) as running,
        trio.open_nursery() as clients,
    ):
        yield running, f"http://127.0.0.1:{running.http_port}", clients
        clients.cancel_scope.cancel()


async def require_whip(base: str) -> None:
    await assert_whip_routes(base)


def whip_publisher(url: str, *extra: str) -> Any:
    return open_lines(aiortc_argv("aiortc_whip.py", url, "--timeout", "90", *extra),
                      name="aiortc_whip")


def whep_viewer(url: str, *extra: str) -> Any:
    return open_lines(aiortc_argv("aiortc_whep.py", url, *extra), name="aiortc_whep")


def media_sections(sdp: str) -> list[list[str]]:
    """The lines of each m-section of ``sdp``, the m= line first."""
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def near(value: int | None, mark: int) -> bool:
    return value is not None and abs(value - mark) <= 12


@pytest.mark.slow
async def test_harness_aiortc_publishes_to_the_seed_api() -> None:
    """Validates aiortc_whip.py (and the chroma mark) on the seed ``/pub`` route."""
    async with loopback_server() as (_, base, clients):
        sub, frames = await decoding_subscriber(clients, base, "airoom", "127.0.0.1")
        async with whip_publisher(f"{base}/pub/airoom/ai-1", "--mark", "60") as pub:
            published = await pub.receive("published", 30)
            assert published["status"] == 201
            await pub.receive("connected", 30)
            assert await sub.expect("PUB_JOIN ", timeout=20) == "PUB_JOIN ai-1"
            await wait_frames(frames, 60, 30, "seed-API subscriber", sub)
            assert near(frames.chroma, 60), frames.summary()
            result = await finish(pub)
        assert result["ok"], result
        assert result["delete"]["status"] == 204
        assert await sub.expect("PUB_LEFT ", timeout=20) == "PUB_LEFT ai-1"
        sub.stop()


@pytest.mark.slow
async def test_aiortc_whip_publisher_and_whep_viewer() -> None:
    """Issue 5: aiortc publishes through WHIP (a seed-API subscriber decodes it) and another
    aiortc plays it through WHEP."""
    async with loopback_server() as (_, base, clients):
        await require_whip(base)
        sub, frames = await decoding_subscriber(clients, base, "aiwhip", "127.0.0.1")
        async with whip_publisher(f"{base}/whip/aiwhip", "--mark", "60") as pub:
            published = await pub.receive("published", 30)
            assert published["status"] == 201 and published["etag"], published
            assert published["contentType"].startswith("application/sdp"), published
            await pub.receive("connected", 30)
            publisher = (await sub.expect("PUB_JOIN ", timeout=20)).removeprefix("PUB_JOIN ")
            assert publisher.startswith("whip-"), publisher
            await wait_frames(frames, 60, 30, "seed-API subscriber", sub)
            assert near(frames.chroma, 60), frames.summary()
            async with whep_viewer(f"{base}/whep/aiwhip", "--min-frames", "60",
                                   "--timeout", "45") as viewer:
                watched = await viewer.receive("result", 60)
            assert watched["ok"], {**watched, "stderr": viewer.stderr_tail()}
            assert watched["post"]["status"] == 201 and watched["post"]["etag"], watched["post"]
            assert watched["delete"]["status"] == 200, watched["delete"]
            assert near(watched["runs"][0]["mark"], 60), watched["runs"]
            result = await finish(pub)
        assert result["ok"], result
        assert result["delete"]["status"] == 200, result["delete"]
        assert await sub.expect("PUB_LEFT ", timeout=20) == f"PUB_LEFT {publisher}"
        sub.stop()


@pytest.mark.slow
async def test_whep_viewer_follows_a_replaced_publisher_without_a_new_post() -> None:
    """Issue 5: publisher A leaves, B starts within 2 s; the WHEP viewer on /whep/{room} never
    POSTs again and decodes B's frames within 3 s of B's first keyframe (B's first frame,
    which its encoder makes a keyframe)."""
    async with loopback_server() as (_, base, _clients):
        await require_whip(base)
        url = f"{base}/whip/swap"
        async with whip_publisher(url, "--mark", "60") as first:
            await first.receive("connected", 30)
            async with whep_viewer(f"{base}/whep/swap", "--until-stopped", "--min-frames", "30",
                                   "--timeout", "90") as viewer:
                await viewer.receive("viewing", 30)
                source = await viewer.receive("source", 30)
                assert near(source["mark"], 60), source
                with trio.fail_after(30):
                    while (await viewer.receive("progress", 30))["framesDecoded"] < 30:
                        pass
                left = await finish(first)
                assert left["ok"] and left["delete"]["status"] == 200, left
                async with whip_publisher(url, "--mark", "200") as second:
                    keyframe_at = (await second.receive("firstFrame", 30))["t"]
                    with trio.fail_after(20):
                        while not near(source["mark"], 200):
                            source = await viewer.receive("source", 20)
                    delay = source["t"] - keyframe_at
                    assert delay <= 3.0, f"B decoded {delay:.2f} s after its first keyframe"
                    before = source["framesDecoded"]
                    with trio.fail_after(30):
                        while (await viewer.receive("progress", 30))["framesDecoded"] < (
                            before + 30
                        ):
                            pass
                    watched = await finish(viewer)
                    await finish(second)
        assert watched["posts"] == 1, watched
        assert watched["connectionStates"].count("connected") == 1, watched["connectionStates"]
        runs = watched["runs"]
        assert near(runs[0]["mark"], 60) and near(runs[-1]["mark"], 200), runs
        assert runs[-1]["frames"] >= 30, runs


# --------------------------------------------------------------------------- tests: whip-whep


@asynccontextmanager
async def page_setup(
    **overrides: Any,
) -> AsyncIterator[tuple[Running, str, trio.Nursery, Any, str]]:
    """The server (CORS open to the page's origin), the page server and a Chromium."""
    from tests.peers.browser_client import open_browser

    require_page()
    with page_server() as page_url:
        async with (
            loopback_server(cors_origins=(page_url,), **overrides) as (running, base, clients),
            open_browser() as browser,
        ):
            yield running, base, clients, browser, page_url + "/index.html"


async def open_client_page(browser: Any, name: str, url: str) -> None:
    await browser.open(name, url)
    await browser.wait_for(name, "window.pageReady === true", bool, timeout=20)


async def report(browser: Any, page: str) -> dict[str, Any]:
    result: dict[str, Any] = await browser.eval(page, "window.report()")
    return result


def patches(page_report: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in page_report["http"] if h["method"] == "PATCH"]


async def restart_and_check(browser: Any, page: str, etag: str | None) -> dict[str, Any]:
    """The library's ICE restart on ``page``: one PATCH with If-Match: * answered 200 with the
    server's new ICE credentials and a new ETag (RFC 9725 §4.3.2)."""
    before = len(patches(await report(browser, page)))
    await browser.eval(page, "window.restart()")
    done = patches(await report(browser, page))[before:]
    restarts = [p for p in done if p["reqHeaders"].get("if-match") == "*"]
    assert len(restarts) == 1, done
    answer = restarts[0]
    assert answer["status"] == 200, answer
    assert answer["headers"]["content-type"].startswith("application/trickle-ice-sdpfrag"), answer
    assert "a=ice-ufrag:" in answer["body"] and "a=ice-pwd:" in answer["body"], answer
    assert answer["headers"].get("etag") and answer["headers"]["etag"] != etag, answer
    return answer


async def frames_after(browser: Any, page: str, count: int, timeout: float = 30) -> int:
    result = await browser.wait_for(
        page, "window.report()", lambda r: r["framesDecoded"] >= count, timeout=timeout
    )
    return int(result["framesDecoded"])


@pytest.mark.browser
@pytest.mark.slow
async def test_harness_whip_whep_page_publishes_to_the_seed_api() -> None:
    """Validates the whip-whep page, its HTTP log and CORS on the seed ``/pub`` route (which
    has no PATCH: the library tolerates the 405 and carries on)."""
    async with page_setup() as (_, base, clients, browser, page_url):
        sub, frames = await decoding_subscriber(clients, base, "pageroom", "127.0.0.1")
        await open_client_page(browser, "pub", page_url)
        published = await browser.eval(
            "pub", "(a) => window.publish(a)", {"url": f"{base}/pub/pageroom/page-1"}
        )
        assert published["location"] == f"{base}/pub/pageroom/page-1"
        assert await sub.expect("PUB_JOIN ", timeout=20) == "PUB_JOIN page-1"
        await wait_frames(frames, 60, 30, "seed-API subscriber", sub)
        pub = await report(browser, "pub")
        assert pub["http"][0]["method"] == "POST" and pub["http"][0]["status"] == 201, pub["http"]
        assert all(p["status"] == 405 for p in patches(pub)), patches(pub)
        await browser.eval("pub", "window.stop()")
        assert await sub.expect("PUB_LEFT ", timeout=20) == "PUB_LEFT page-1"
        sub.stop()


@pytest.mark.browser
@pytest.mark.slow
async def test_whip_whep_library_publishes_and_plays_with_trickle_and_ice_restart() -> None:
    """Issue 5: the whip-whep npm clients in Chromium. One page publishes with WHIP (trickling
    its candidates with PATCH), another plays with WHEP; framesDecoded >= 60; each page then
    restarts ICE through the library and the video keeps decoding.

    One server candidate (ICE-TCP off): whip-whep 1.2.0 applies a restart's answer fragment
    by joining its candidate lines with commas (``candidates.join()`` in whip.js/whep.js), so
    any fragment with more than one candidate (ICE-TCP's, or two --public-ip) makes Chromium
    refuse the SDP. A library bug, reported in the README's WHIP section."""
    async with page_setup(tcp_port="off") as (_, base, _clients, browser, page_url):
        await require_whip(base)
        await open_client_page(browser, "pub", page_url)
        await open_client_page(browser, "view", page_url)
        published = await browser.eval("pub", "(a) => window.publish(a)",
                                       {"url": f"{base}/whip/pageroom"})
        await browser.eval("view", "(a) => window.view(a)", {"url": f"{base}/whep/pageroom"})
        decoded = await frames_after(browser, "view", 60)

        pub = await report(browser, "pub")
        post = pub["http"][0]
        assert post["method"] == "POST" and post["status"] == 201, post
        # CORS exposes what the library reads (RFC 9725 §4.2: Location, ETag).
        assert post["headers"].get("location") and post["headers"].get("etag"), post
        trickles = [p for p in patches(pub) if p["reqHeaders"].get("if-match") != "*"]
        assert trickles, pub["http"]
        for patch in trickles:  # RFC 9725 §4.3.1: 204, no body, no ETag
            assert patch["reqHeaders"]["if-match"] == post["headers"]["etag"], patch
            assert patch["status"] == 204 and patch["body"] == "", patch
            assert "etag" not in patch["headers"], patch
            assert "a=candidate:" in patch["reqBody"] or "a=end-of-candidates" in patch["reqBody"]

        restarted = {"pub": await restart_and_check(browser, "pub", published["etag"])}
        decoded = await frames_after(browser, "view", decoded + 60)
        view_post = (await report(browser, "view"))["http"][0]
        restarted["view"] = await restart_and_check(browser, "view", view_post["headers"]["etag"])
        await frames_after(browser, "view", decoded + 60)

        for page in ("pub", "view"):
            state = await report(browser, page)
            assert state["connectionState"] == "connected", state
            # The media now flows on the restarted ICE session: the selected pair's remote
            # candidate carries the server's new ufrag from the 200 (RFC 8445 §9).
            ufrag = restarted[page]["body"].split("a=ice-ufrag:", 1)[1].split()[0]
            assert state["rtp"]["pair"]["remoteUfrag"] == ufrag, (state["rtp"]["pair"], ufrag)
        # whip-whep's WHEP client trickles without If-Match until its first restart (it only
        # learns an ETag from a restart); the server must refuse those with 428.
        view = await report(browser, "view")
        for patch in patches(view):
            if "if-match" not in patch["reqHeaders"]:
                assert patch["status"] == 428, patch
        await browser.eval("view", "window.stop()")
        await browser.eval("pub", "window.stop()")
        for page in ("view", "pub"):
            state = await report(browser, page)
            deletes = [h for h in state["http"] if h["method"] == "DELETE"]
            assert [d["status"] for d in deletes] == [200], deletes
        pub = await report(browser, "pub")
        assert not pub["errors"], pub["errors"]


if __name__ == "__main__":
    sys.exit(scenario_main(sys.argv[1:]))
