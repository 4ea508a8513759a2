#!/usr/bin/env python3
"""aiortc as an independent WHEP viewer (draft-ietf-wish-whep-03), speaking JSON lines.

It POSTs one complete recvonly offer (audio + video), applies the ``201``'s answer and counts
the video frames aiortc *decodes* (``track.recv()``), so a frame counts only if it made it
through depacketization and the decoder. Each frame's mean chroma tells which publisher it came
from (``aiortc_whip.py --mark``; GStreamer's ``videotestsrc`` is 128): the frames are grouped
into runs of one source, so a test can see a publisher replacement, and when the first frame
of each new run was decoded. It never renegotiates: exactly one POST per process.
Imports nothing from trio_sfu.

Lines on stdout: ``{"type": "viewing", "status", "location", "etag", "links"}``,
``{"type": "connected"}``, ``{"type": "source", "mark", "t", "framesDecoded"}`` whenever the
decoded source changes, ``{"type": "progress"}`` about once a second, and ``{"type":
"result", "ok", "framesDecoded", "runs", "posts", "delete", "errors", ...}``. Without
``--until-stopped`` it finishes once ``--min-frames`` frames are decoded; with it, it keeps
viewing until a ``{"type": "stop"}`` line or stdin EOF. Times are ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common
    from .aiortc_whip import add_args, delete_session, patch_aioice, post_offer
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from aiortc_whip import add_args, delete_session, patch_aioice, post_offer

PROGRESS_EVERY = 1.0
MARK_TOLERANCE = 12  # chroma drifts a little through VP8; marks in tests are far apart


def mean_chroma(frame: Any) -> int:
    """Mean of a sample of the U plane (rows of the middle half, padding skipped)."""
    plane = frame.planes[1]
    data = bytes(plane)
    width = plane.width
    height = plane.height
    total = count = 0
    for row in range(height // 4, 3 * height // 4, max(1, height // 16)):
        line = data[row * plane.line_size : row * plane.line_size + width]
        sample = line[width // 4 : 3 * width // 4 : 4]
        total += sum(sample)
        count += len(sample)
    return round(total / count) if count else -1


class Viewer:
    def __init__(self, args: argparse.Namespace, stdin: common.StdinLines) -> None:
        self.args = args
        self.stdin = stdin
        self.start = time.monotonic()
        self.deadline = self.start + args.timeout
        self.errors: list[str] = []
        self.frames = 0
        self.audio_frames = 0
        self.frame_size: tuple[int, int] | None = None
        self.runs: list[dict[str, Any]] = []  # {"mark", "first", "last", "frames"}
        self.connected_at: float | None = None
        self.states: list[str] = []
        self.posts = 0

    def error(self, message: str) -> None:
        common.log("ERROR", message)
        if message not in self.errors:
            self.errors.append(message)

    def on_frame(self, frame: Any) -> None:
        now = time.monotonic()
        self.frames += 1
        self.frame_size = (frame.width, frame.height)
        mark = mean_chroma(frame)
        run = self.runs[-1] if self.runs else None
        if run is None or abs(run["mark"] - mark) > MARK_TOLERANCE:
            run = {"mark": mark, "first": now, "last": now, "frames": 0,
                   "size": [frame.width, frame.height]}
            self.runs.append(run)
            common.emit({"type": "source", "mark": mark, "t": now, "framesDecoded": self.frames})
            common.log("decoding source with chroma", mark, "after", self.frames, "frames")
        run["last"] = now
        run["frames"] += 1

    async def consume(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                common.log("remote", track.kind, "track ended")
                return
            if track.kind == "video":
                self.on_frame(frame)
            else:
                self.audio_frames += 1

    def status(self) -> dict[str, Any]:
        return {
            "type": "progress",
            "connectionState": self.states[-1] if self.states else "new",
            "framesDecoded": self.frames,
            "audioFrames": self.audio_frames,
            "frameSize": self.frame_size,
            "mark": self.runs[-1]["mark"] if self.runs else None,
        }

    async def run(self) -> dict[str, Any]:
        from aiortc import (
            RTCBundlePolicy,
            RTCConfiguration,
            RTCPeerConnection,
            RTCSessionDescription,
        )

        args = self.args
        patch_aioice(args.ice_address)
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        tasks: list[asyncio.Task[None]] = []

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            common.log("connectionState", pc.connectionState)
            self.states.append(pc.connectionState)
            if pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()
                common.emit({"type": "connected",
                             "after": round(self.connected_at - self.start, 3)})
            elif pc.connectionState == "failed":
                self.error("peer connection failed")

        @pc.on("track")
        def _on_track(track: Any) -> None:
            common.log("remote track", track.kind)
            tasks.append(asyncio.ensure_future(self.consume(track)))

        # WHEP §4.2: the viewer offers to receive one audio and one video track.
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())  # gathers: a complete offer
        offer = pc.localDescription.sdp
        self.posts += 1
        post = await post_offer(args.url, offer, args.token)
        delete: dict[str, Any] | None = None
        reason: str | None = None
        if post["status"] != 201:
            self.error(f"POST answered {post['status']}: {post['body'].strip()[:300]}")
        elif not post["location"]:
            self.error("201 without a Location header")
        else:
            common.emit({"type": "viewing", **{k: v for k, v in post.items() if k != "body"}})
            await pc.setRemoteDescription(RTCSessionDescription(sdp=post["body"], type="answer"))
            reason = await self.watch()
            delete = await delete_session(post["location"], args.token)
            common.log("DELETE", post["location"], "->", delete)
        for task in tasks:
            task.cancel()
        await asyncio.wait_for(pc.close(), 10)
        return self.result(post, offer, delete, reason)

    async def watch(self) -> str | None:
        last = 0.0
        while not self.errors:
            now = time.monotonic()
            if now - last >= self.args.progress_every:
                last = now
                common.emit(self.status())
            try:
                message = self.stdin.get(0)
            except common.StdinClosed:
                return "stdin closed"
            if message is not None and message.get("type") == "stop":
                return "stop"
            if now >= self.deadline:
                return "timeout"
            if self.connected_at is None and now - self.start > self.args.connect_timeout:
                self.error(f"not connected within {self.args.connect_timeout:.0f} s")
                return None
            if not self.args.until_stopped and self.frames >= self.args.min_frames:
                return "enough frames"
            await asyncio.sleep(0.05)
        return None

    def result(
        self, post: dict[str, Any], offer: str, delete: dict[str, Any] | None, reason: str | None
    ) -> dict[str, Any]:
        missing = []
        if self.frames < self.args.min_frames:
            missing.append(f"framesDecoded {self.frames}/{self.args.min_frames}")
        if delete is not None and delete.get("status", 0) // 100 != 2:
            missing.append(f"DELETE not answered 2xx: {delete}")
        errors = list(self.errors)
        if reason == "timeout" and (missing or self.args.until_stopped):
            errors.append("--timeout passed" + (f"; missing: {', '.join(missing)}"
                                                if missing else " before the stop line"))
        summary = {k: v for k, v in post.items() if k != "body"}
        if post["status"] == 201:
            answer = post["body"]
        else:
            summary["body"] = post["body"][:2000]
            answer = None
        return {
            "type": "result",
            "ok": not errors and not missing and post["status"] == 201,
            "errors": errors,
            "missing": missing,
            "framesDecoded": self.frames,
            "audioFrames": self.audio_frames,
            "frameSize": self.frame_size,
            "runs": self.runs,
            "posts": self.posts,
            "post": summary,
            "offer": offer,
            "answer": answer,
            "delete": delete,
            "connectedAt": self.connected_at,
            "connectionStates": self.states,
            "stopReason": reason,
        }


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_args(p)
    p.add_argument("--min-frames", type=int, default=30, help="decoded frames required")
    p.add_argument("--until-stopped", action="store_true",
                   help="keep viewing after --min-frames until a stop line or stdin EOF")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--progress-every", type=float, default=PROGRESS_EVERY,
                   help="seconds between progress lines")
    args = p.parse_args(argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr
    )
    stdin = common.StdinLines()
    viewer = Viewer(args, stdin)

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason],
                "framesDecoded": viewer.frames, "runs": viewer.runs, "posts": viewer.posts}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin.on_close(lambda: final.arm(common.EOF_GRACE + 10, "stdin closed and it did not stop"))
    try:
        result = asyncio.run(viewer.run())
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
