#!/usr/bin/env python3
"""aiortc as an independent WHIP publisher (RFC 9725), speaking JSON lines.

It POSTs one complete sendonly offer (VP8 video of a moving pattern, Opus audio), applies the
``201``'s answer, publishes until told to stop, and DELETEs the session URL. The video's chroma
is a constant ``--mark`` so a viewer can tell which publisher a decoded frame came from (the
publisher-replacement test needs that). Imports nothing from trio_sfu.

Lines on stdout: ``{"type": "published", "status", "location", "etag", "links"}``,
``{"type": "connected"}`` (with ``--hold``, only after a ``{"type": "go"}`` line),
``{"type": "firstFrame", "t": <time.monotonic()>}`` when the first video frame (a keyframe:
the encoder's first) goes to the encoder, ``{"type": "progress"}`` about once a second, and
``{"type": "result", "ok", "post", "delete", "framesSent", "errors"}``. It stops after
``--duration`` seconds connected (0: never), on a ``{"type": "stop"}`` line or on stdin EOF.
``time.monotonic()`` is CLOCK_MONOTONIC, the same clock in every process of the machine, so
the tests can compare these times across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common  # imported by the tests as tests.peers.<module>
    from .gst_whip import http
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from gst_whip import http  # the stdlib-only WHIP HTTP helper, shared with GStreamer

PROGRESS_EVERY = 1.0


def patch_aioice(address: str) -> None:
    """Gather exactly ``address`` (loopback by default, a veth end inside a namespace).

    aioice skips 127.0.0.1 on its own and would offer every routable address of the host;
    it looks ``get_host_addresses`` up at gathering time, so replacing it is enough.
    """
    import aioice.ice
    import aioice.turn

    def only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        v6 = ":" in address
        return [address] if (use_ipv6 if v6 else use_ipv4) else []

    aioice.ice.get_host_addresses = only
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = common.UDP_RECEIVE_BUFFER


def add_args(p: argparse.ArgumentParser) -> None:
    """Options both aiortc WHIP/WHEP scripts take."""
    p.add_argument("--url", required=True, help="the WHIP/WHEP endpoint URL")
    p.add_argument("--token", help="sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--timeout", type=float, default=60.0, help="overall bound in seconds")
    p.add_argument("--ice-address", default="127.0.0.1",
                   help="the one local address to gather (default loopback)")
    p.add_argument("--verbose", action="store_true", help="aiortc/aioice debug logging")


def auth_headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def post_offer(url: str, sdp: str, token: str | None) -> dict[str, Any]:
    """POST the offer (RFC 9725 §4.2); the reply's status, headers, links and body."""
    loop = asyncio.get_running_loop()
    headers = auth_headers(token, "application/sdp")
    status, found, links, body = await loop.run_in_executor(
        None, lambda: http("POST", url, body=sdp.encode(), headers=headers)
    )
    location = found.get("location")
    return {
        "status": status,
        "location": urllib.parse.urljoin(url, location) if location else None,
        "etag": found.get("etag"),
        "links": links,
        "contentType": found.get("content-type"),
        "body": body,
    }


async def delete_session(location: str, token: str | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    try:
        status, _, _, body = await loop.run_in_executor(
            None, lambda: http("DELETE", location, headers=auth_headers(token))
        )
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"status": status, "body": body[:500]}


def unannounced(sdp: str) -> str:
    """The offer without a=ssrc/ssrc-group lines and without the MID header extension, as
    GStreamer 1.22 can publish: the answer then lacks the extension, so aiortc sends no MID,
    and the server must bind the streams by payload type (RFC 8843 §9.2)."""
    lines = [line for line in sdp.split("\r\n")
             if not line.startswith("a=ssrc") and "urn:ietf:params:rtp-hdrext:sdes:mid" not in line]
    return "\r\n".join(lines)


def marked_track_class() -> type:
    """A VideoStreamTrack: moving luma stripes, constant chroma ``mark`` (built lazily)."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class MarkedTrack(VideoStreamTrack):
        def __init__(self, width: int, height: int, mark: int) -> None:
            super().__init__()
            self.width, self.height, self.mark = width, height, mark
            self.count = 0
            self.first_frame_at: float | None = None
            self._ramp = bytes((x * 3) & 0xFF for x in range(2 * width + 2 * height + 256))

        async def recv(self) -> Any:
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
            y, u, v = frame.planes
            shift = (self.count * 4) % 256
            pad = b"\x00" * (y.line_size - self.width)
            y.update(b"".join(self._ramp[shift + r : shift + r + self.width] + pad
                              for r in range(self.height)))
            u.update(bytes([self.mark]) * u.buffer_size)
            v.update(bytes([128]) * v.buffer_size)
            frame.pts, frame.time_base = pts, time_base
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()
                common.emit({"type": "firstFrame", "t": self.first_frame_at})
            self.count += 1
            return frame

    return MarkedTrack


async def run(args: argparse.Namespace, stdin: common.StdinLines) -> dict[str, Any]:
    from aiortc import (
        AudioStreamTrack,
        RTCBundlePolicy,
        RTCConfiguration,
        RTCPeerConnection,
        RTCRtpSender,
        RTCSessionDescription,
    )

    patch_aioice(args.ice_address)
    start = time.monotonic()
    deadline = start + args.timeout
    errors: list[str] = []
    pc = RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )
    connected_at: float | None = None
    states: list[str] = []

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        nonlocal connected_at
        common.log("connectionState", pc.connectionState)
        states.append(pc.connectionState)
        if pc.connectionState == "connected" and connected_at is None:
            connected_at = time.monotonic()
            common.emit({"type": "connected", "after": round(connected_at - start, 3)})
        elif pc.connectionState == "failed":
            errors.append("peer connection failed")

    video = marked_track_class()(args.width, args.height, args.mark)
    # A publisher only sends (RFC 9725 §4.2); one MediaStream for both tracks.
    if args.audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    transceiver = pc.addTransceiver(video, direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences(
        [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    )
    await pc.setLocalDescription(await pc.createOffer())  # gathers: a complete offer
    offer = pc.localDescription.sdp
    if args.unannounced:
        offer = unannounced(offer)
    post = await post_offer(args.url, offer, args.token)
    delete: dict[str, Any] | None = None
    reason: str | None = None
    if post["status"] != 201:
        errors.append(f"POST answered {post['status']}: {post['body'].strip()[:300]}")
    elif not post["location"]:
        errors.append("201 without a Location header")
    else:
        common.emit({"type": "published", **{k: v for k, v in post.items() if k != "body"}})
        if args.hold:  # stay "connecting" on the server until told to go on
            go = await common.async_wait_for(stdin, "go", deadline)
            if go is None:
                errors.append("no go line before --timeout")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=post["body"], type="answer"))
        last = 0.0
        while not errors:
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                common.emit({"type": "progress", "connectionState": pc.connectionState,
                             "framesSent": video.count})
            try:
                message = stdin.get(0)
            except common.StdinClosed:
                reason = "stdin closed"
                break
            if message is not None and message.get("type") == "stop":
                break
            if now >= deadline:
                reason = "timeout"
                break
            if connected_at is None and now - start > args.connect_timeout:
                errors.append(f"not connected within {args.connect_timeout:.0f} s")
                break
            if args.duration and connected_at is not None and now - connected_at > args.duration:
                break
            await asyncio.sleep(0.05)
        delete = await delete_session(post["location"], args.token)
        common.log("DELETE", post["location"], "->", delete)
    if reason == "timeout":
        errors.append("--timeout passed before the stop line or --duration")
    await asyncio.wait_for(pc.close(), 10)
    missing = []
    if connected_at is None:
        missing.append("never connected")
    if video.count == 0:
        missing.append("no video frame sent")
    if delete is not None and delete.get("status", 0) // 100 != 2:
        missing.append(f"DELETE not answered 2xx: {delete}")
    summary = {k: v for k, v in post.items() if k != "body"}
    if post["status"] != 201:
        summary["body"] = post["body"][:2000]
    return {
        "type": "result",
        "ok": not errors and not missing,
        "errors": errors,
        "missing": missing,
        "post": summary,
        "offer": offer,
        "delete": delete,
        "framesSent": video.count,
        "firstFrameAt": video.first_frame_at,
        "connectionStates": states,
        "stopReason": reason,
    }


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_args(p)
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to publish once connected (0: until stop/EOF)")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--mark", type=int, default=64, help="the video's constant chroma (0-255)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--unannounced", action="store_true",
                   help="POST the offer without a=ssrc lines and without the MID extension")
    p.add_argument("--hold", action="store_true",
                   help="after the 201, wait for a {\"type\": \"go\"} line before applying "
                        "the answer (so ICE/DTLS cannot start: the server sees a publisher "
                        "that is still connecting)")
    args = p.parse_args(argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr
    )

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason]}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE + 10, "stdin closed and it did not stop"))
    try:
        result = asyncio.run(run(args, stdin))
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
