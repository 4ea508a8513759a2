#!/usr/bin/env python3
"""aiortc as a peer of the interop matrix (tests/interop/README.md): subscriber, publisher, WHEP.

Speaks the matrix's line protocol: ``--role subscriber|publisher|whep --base-url URL --room R
--id ID --timeout S``; JSON lines on stdout (``posted``, ``connected``, ``command``,
``answered``, ``frames``, ``closed``, ``result``), ``stop``/``post`` on stdin. Frames count only
when aiortc's decoder produced them (``track.recv()`` of a video track). As a subscriber it
answers every ``SDP_OFFER`` with aiortc's own setRemoteDescription/createAnswer, one at a time.
Imports nothing from trio_sfu.
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
    from .aiortc_whip import marked_track_class, patch_aioice
    from .gst_whip import http
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from aiortc_whip import marked_track_class, patch_aioice
    from gst_whip import http

FRAMES_EVERY = 0.5


def msid_of_mid(sdp: str, mid: str | None, *, with_track: bool = False) -> str | None:
    """The stream id (the publisher id, for trio-sfu) of the section with ``a=mid:mid``; with
    ``with_track``, ``"<stream> <track>"`` (one publisher's tracks apart, issue 15)."""
    current: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = None
        elif line.startswith("a=mid:"):
            current = line[6:].strip()
        elif line.startswith("a=msid:") and current == mid:
            parts = line[7:].split()
            return " ".join(parts[:2]) if with_track else parts[0]
    return None


def mids_of(sdp: str) -> list[str]:
    return [line[6:].strip() for line in sdp.splitlines() if line.startswith("a=mid:")]


class Peer:
    def __init__(self, args: argparse.Namespace, stdin: common.StdinLines) -> None:
        self.args = args
        self.stdin = stdin
        self.start = time.monotonic()
        self.deadline = self.start + args.timeout
        self.errors: list[str] = []
        self.decoded: dict[str, int] = {}
        self.reported: dict[str, int] = {}
        self.stopping = False
        self.closed_reason: str | None = None
        self.offers: asyncio.Queue[str] = asyncio.Queue()
        self.channel: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        #: the offer being applied: aiortc fires "track" before remoteDescription is updated
        self.applying = ""

    def error(self, message: str) -> None:
        common.log("ERROR", message)
        self.errors.append(message)

    async def post(self, path: str, sdp: str) -> tuple[int, str]:
        url = f"{self.args.base_url}{path}"
        loop = asyncio.get_running_loop()
        status, _, _, body = await loop.run_in_executor(None, lambda: http(
            "POST", url, body=sdp.encode(), headers={"Content-Type": "application/sdp"}))
        common.emit({"type": "posted", "status": status})
        if status // 100 != 2:
            self.error(f"POST {path} answered {status}: {body.strip()[:300]}")
        return status, body

    async def consume(self, track: Any, key: str | None) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                await track.recv()
            except MediaStreamError:
                common.log("remote", track.kind, "track of", key, "ended")
                return
            if track.kind == "video" and key is not None:
                self.decoded[key] = self.decoded.get(key, 0) + 1

    async def negotiator(self, pc: Any) -> None:
        """Answer the server's offers one at a time, as an application would."""
        from aiortc import RTCSessionDescription

        while True:
            sdp = await self.offers.get()
            self.applying = sdp
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                self.channel.send("SDP_ANSWER " + pc.localDescription.sdp)
            except Exception as exc:
                common.log("could not apply SDP_OFFER:", repr(exc), "\n" + sdp)
                common.emit({"type": "answered", "ok": False,
                             "error": f"{type(exc).__name__}: {exc}"})
                continue
            common.emit({"type": "answered", "ok": True})

    def on_command(self, message: Any) -> None:
        if not isinstance(message, str):
            self.error("binary message on the control channel")
            return
        name, _, arg = message.partition(" ")
        if name == "SDP_OFFER":
            common.emit({"type": "command", "name": name, "mids": mids_of(arg)})
            self.offers.put_nowait(arg)
        else:
            common.emit({"type": "command", "name": name, "arg": arg})

    async def run(self) -> dict[str, Any]:
        from aiortc import (
            AudioStreamTrack,
            RTCBundlePolicy,
            RTCConfiguration,
            RTCPeerConnection,
            RTCRtpSender,
            RTCSessionDescription,
        )

        args = self.args
        patch_aioice("127.0.0.1")
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            common.log("connectionState", pc.connectionState)
            if pc.connectionState == "connected" and args.role != "subscriber":
                common.emit({"type": "connected", "id": args.id})
            elif pc.connectionState in ("failed", "closed") and not self.stopping:
                self.closed_reason = f"connectionState {pc.connectionState}"
                common.emit({"type": "closed", "reason": self.closed_reason})

        @pc.on("track")
        def _on_track(track: Any) -> None:
            key: str | None = "whep"
            if args.role == "subscriber":
                mid = next((t.mid for t in pc.getTransceivers()
                            if t.receiver.track is track), None)
                key = msid_of_mid(self.applying, mid, with_track=args.per_track)
            common.log("track", track.kind, "from", key)
            self.tasks.append(asyncio.ensure_future(self.consume(track, key)))

        # Media before the data channel: with the channel created first, aiortc 1.x (max-bundle)
        # wrote an offer without candidates and never started ICE.
        if args.role == "publisher":
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            video = pc.addTransceiver(marked_track_class()(320, 240, 100), direction="sendonly")
            caps = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")])
        elif args.role == "whep":
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        if args.role in ("subscriber", "publisher"):
            self.channel = pc.createDataChannel("control")

            @self.channel.on("open")
            def _on_open() -> None:
                if args.role == "subscriber":
                    common.emit({"type": "connected", "id": args.id})

            @self.channel.on("message")
            def _on_message(message: Any) -> None:
                self.on_command(message)

        await pc.setLocalDescription(await pc.createOffer())  # gathers: a complete offer

        if args.role == "whep":
            common.emit({"type": "ready"})
            go = await common.async_wait_for(self.stdin, "post", self.deadline)
            if go is None:
                self.error("no post line before --timeout")
            path = f"/whep/{args.room}"
        else:
            go = {}
            path = f"/{'sub' if args.role == 'subscriber' else 'pub'}/{args.room}/{args.id}"
        location = None
        if go is not None:
            offer = pc.localDescription.sdp
            if args.dtls_passive:
                # RFC 8842 §5.2 lets an offer say passive: the SFU must then be the DTLS
                # client (aiortc takes the server role from the answer's a=setup:active).
                offer = offer.replace("a=setup:actpass", "a=setup:passive")
            status, body = await self.post(path, offer)
            if status // 100 == 2 and args.dtls_passive and "a=setup:active" not in body:
                self.error("--dtls-passive: the answer does not make the SFU the DTLS client")
            if status // 100 == 2:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
                common.log("answer applied; signalingState", pc.signalingState)
                self.tasks.append(asyncio.ensure_future(self.negotiator(pc)))
                location = path
        if location is not None:
            await self.serve()
        self.stopping = True
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send("STOP")
            await asyncio.sleep(0.2)
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(pc.close(), 10)
        self.report_frames(force=True)
        return {"type": "result", "ok": not self.errors and self.closed_reason is None,
                "errors": self.errors, "decoded": self.decoded, "closed": self.closed_reason}

    def report_frames(self, force: bool = False) -> None:
        if self.decoded != self.reported or force:
            self.reported = dict(self.decoded)
            common.emit({"type": "frames", "decoded": self.reported})

    async def serve(self) -> None:
        while True:
            self.report_frames()
            try:
                message = self.stdin.get(0)
            except common.StdinClosed:
                return
            if message is not None and message.get("type") == "stop":
                return
            if time.monotonic() >= self.deadline:
                self.error("--timeout passed before the stop line")
                return
            await asyncio.sleep(FRAMES_EVERY)


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--role", choices=("subscriber", "publisher", "whep"), required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--per-track", action="store_true",
                   help="count decoded frames per '<publisher> <track>' (msid), not per publisher")
    p.add_argument("--dtls-passive", action="store_true",
                   help="offer a=setup:passive, so the SFU is the DTLS client")
    args = p.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr)

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason]}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE + 10, "stdin closed and it did not stop"))
    try:
        result = asyncio.run(Peer(args, stdin).run())
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
