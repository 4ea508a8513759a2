#!/usr/bin/env python3
"""aiortc as an independent WebRTC peer, speaking the JSON line protocol.

A second, non-browser implementation catches what Chromium tolerates but the standards do
not (and vice versa). This process is the aiortc peer: it offers the same two data channels
and, with ``--video``, a VP8 video track from a generated moving pattern; it counts frames
decoded from the echoed track (``track.recv()``). aioice is patched to gather 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common  # imported by the tests as tests.peers.<module>
else:
    import common  # run as a script: tests/peers is sys.path[0]

PROGRESS_EVERY = 1.0


def pattern_track_class() -> type:
    """A VideoStreamTrack of moving diagonal stripes (a static frame would compress to nothing
    and hide packetization bugs); built lazily so importing this module needs no aiortc."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class PatternTrack(VideoStreamTrack):
        def __init__(self, width: int, height: int) -> None:
            super().__init__()
            self.width = width
            self.height = height
            self.count = 0
            # One long ramp; each row is a window into it, shifted per row and per frame.
            self._ramp = bytes((x * 3) & 0xFF for x in range(2 * width + 2 * height + 256))

        async def recv(self) -> Any:
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
            y, u, v = frame.planes
            shift = (self.count * 4) % 256
            ramp = self._ramp
            pad = b"\x00" * (y.line_size - self.width)
            y.update(b"".join(ramp[shift + r : shift + r + self.width] + pad
                              for r in range(self.height)))
            u.update(bytes([(self.count * 2) & 0xFF]) * u.buffer_size)
            v.update(bytes([(255 - self.count) & 0xFF]) * v.buffer_size)
            frame.pts = pts
            frame.time_base = time_base
            self.count += 1
            return frame

    return PatternTrack


def selected_pair(pc: Any) -> dict[str, Any] | None:
    """The nominated pair, read from aioice (aiortc has no getStats for candidates)."""
    transports = []
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    transports += [t.sender.transport for t in pc.getTransceivers() if t.sender.transport]
    for dtls in transports:
        conn = getattr(dtls.transport, "_connection", None)
        nominated = getattr(conn, "_nominated", None) or {}
        pair = nominated.get(1)
        if pair is None:
            continue
        loc, rem = pair.local_candidate, pair.remote_candidate
        return {
            "local": {"address": loc.host, "port": loc.port, "protocol": loc.transport,
                      "candidateType": loc.type},
            "remote": {"address": rem.host, "port": rem.port, "protocol": rem.transport,
                       "candidateType": rem.type},
            "state": "succeeded",
            "nominated": True,
            "dtlsState": dtls.state,
        }
    return None


class Peer:
    def __init__(self, args: Any, stdin: common.StdinLines) -> None:
        self.args = args
        self.stdin = stdin
        self.deadline = time.monotonic() + args.timeout
        self.errors: list[str] = []
        self.tallies: dict[str, common.EchoTally] = {}
        self.channels: dict[str, Any] = {}
        self.frames = 0
        self.frame_size: tuple[int, int] | None = None
        self.remote_track: Any = None
        self.data_done = not args.datachannel
        self.video_done = not args.video
        self.phase = "init"
        self.finished = False

    def error(self, msg: str) -> None:
        common.log("ERROR", msg)
        if msg not in self.errors:
            self.errors.append(msg)

    def status(self) -> dict[str, Any]:
        return {
            "type": "progress",
            "phase": self.phase,
            "datachannel": {
                "sent": sum(t.sent for t in self.tallies.values()),
                "echoed": sum(t.echoed for t in self.tallies.values()),
                "mismatches": sum(t.mismatches for t in self.tallies.values()),
            },
            "framesDecoded": self.frames,
        }

    async def wait_until(self, predicate: Any, what: str) -> None:
        while not predicate():
            if time.monotonic() >= self.deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ data channels

    def add_channels(self, pc: Any) -> None:
        for name in common.CHANNELS:
            ch = pc.createDataChannel(name, ordered=name == "ordered")
            ch.bufferedAmountLowThreshold = common.BUFFER_LOW
            tally = common.EchoTally(name, ordered=name == "ordered")
            self.channels[name] = ch
            self.tallies[name] = tally

            def on_close(name: str = name) -> None:
                common.log("channel closed", name)
                if not self.data_done and not self.finished:
                    self.error(f"channel {name} closed before the check finished")

            ch.on("open", lambda name=name: common.log("channel open", name))
            ch.on("message", tally.on_echo)
            ch.on("close", on_close)

    async def send_channel(self, name: str, indices: list[int]) -> None:
        ch = self.channels[name]
        tally = self.tallies[name]
        low = asyncio.Event()
        ch.on("bufferedamountlow", low.set)
        for i in indices:
            while ch.bufferedAmount > common.BUFFER_HIGH:
                if ch.readyState != "open":
                    raise RuntimeError(f"channel {name} {ch.readyState} while sending")
                if time.monotonic() >= self.deadline:
                    raise TimeoutError(f"timed out sending on {name} (send buffer full)")
                low.clear()
                with contextlib.suppress(TimeoutError):  # the poll covers a missed event
                    await asyncio.wait_for(low.wait(), 0.1)
            if ch.readyState != "open":
                raise RuntimeError(f"channel {name} {ch.readyState} while sending")
            msg = common.make_message(self.args.seed, i, self.args.max_size)
            tally.on_sent(msg)
            ch.send(msg)
            await asyncio.sleep(0)  # let the SCTP transport and the echoes run

    async def run_data(self) -> None:
        await self.wait_until(
            lambda: all(c.readyState == "open" for c in self.channels.values()),
            "both data channels to open",
        )
        self.phase = "datachannel"
        common.log("data channels open; sending", self.args.messages, "messages")
        plan = common.message_plan(self.args.messages)
        await asyncio.gather(*(self.send_channel(n, plan[n]) for n in common.CHANNELS))
        await self.wait_until(
            lambda: all(t.complete for t in self.tallies.values()), "all echoes"
        )
        self.data_done = True
        common.log("data channel check done")

    # ------------------------------------------------------------ video

    async def consume(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                common.log("remote video track ended")
                return
            self.frames += 1
            self.frame_size = (frame.width, frame.height)
            if self.frames >= self.args.min_frames and not self.video_done:
                self.video_done = True
                common.log("video check done, frames decoded", self.frames)

    async def run_video(self) -> None:
        await self.wait_until(lambda: self.remote_track is not None, "the echoed video track")
        await self.wait_until(lambda: self.video_done, "decoded frames")

    # ------------------------------------------------------------ main flow

    async def run(self) -> dict[str, Any]:
        from aiortc import (
            RTCConfiguration,
            RTCPeerConnection,
            RTCRtpSender,
            RTCSessionDescription,
        )

        common.patch_aioice()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tasks: list[asyncio.Task[Any]] = []

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            common.log("connectionState", pc.connectionState)
            if pc.connectionState == "failed":
                self.error("peer connection failed")

        @pc.on("track")
        def _on_track(track: Any) -> None:
            common.log("remote track", track.kind)
            if track.kind == "video" and self.remote_track is None:
                self.remote_track = track
                tasks.append(asyncio.ensure_future(self.consume(track)))

        if self.args.datachannel:
            self.add_channels(pc)
            common.cap_sctp_receive_window(pc)
        if self.args.video:
            track = pattern_track_class()(self.args.width, self.args.height)
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
            )

        reason: str | None = None
        try:
            # aiortc gathers every candidate inside setLocalDescription (non-trickle).
            await pc.setLocalDescription(await pc.createOffer())
            offer = common.filter_candidates(pc.localDescription.sdp, self.args.all_candidates)
            common.emit({"type": "offer", "sdp": offer})
            self.phase = "offered"
            answer = await common.async_wait_for(self.stdin, "answer", self.deadline)
            if answer is None:
                reason = "timed out waiting for the answer on stdin"
            else:
                await pc.setRemoteDescription(
                    RTCSessionDescription(sdp=answer["sdp"], type="answer")
                )
                self.phase = "running"
                reason = await self.run_checks()
        except common.StdinClosed:
            reason = "stdin closed before the answer arrived"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        self.finished = True
        result = self.result(pc, reason)
        for t in tasks:
            t.cancel()
        try:
            await asyncio.wait_for(pc.close(), 10)
        except Exception as exc:
            common.log("close failed:", repr(exc))
        return result

    async def run_checks(self) -> str | None:
        """Run both checks concurrently; returns why they stopped early, or None."""
        async def guard(coro: Any, what: str) -> None:
            try:
                await coro
            except Exception as exc:
                self.error(f"{what}: {exc}")

        checks = []
        if self.args.datachannel:
            checks.append(asyncio.ensure_future(guard(self.run_data(), "datachannel")))
        if self.args.video:
            checks.append(asyncio.ensure_future(guard(self.run_video(), "video")))
        last = 0.0
        reason: str | None = None
        while True:
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                common.emit(self.status())
                last = now
            if (self.data_done and self.video_done) or self.errors:
                break
            if self.stdin.closed.is_set():
                reason = "stdin closed before the checks finished"
                break
            if now >= self.deadline:
                reason = "timeout"
                break
            await asyncio.sleep(0.1)
        for c in checks:
            c.cancel()
        return reason

    def result(self, pc: Any, reason: str | None) -> dict[str, Any]:
        missing: list[str] = []
        datachannel = None
        if self.args.datachannel:
            datachannel = common.datachannel_summary(self.tallies, self.args.messages)
            sent, echoed = datachannel["sent"], datachannel["echoed"]
            if sent < self.args.messages:
                missing.append(f"sent {sent}/{self.args.messages} messages")
            if echoed < sent:
                missing.append(f"echoed {echoed}/{sent} messages")
            if datachannel["mismatches"]:
                missing.append(f"{datachannel['mismatches']} mismatched echoes")
        if self.args.video:
            if self.remote_track is None:
                missing.append("no remote video track")
            if self.frames < self.args.min_frames:
                missing.append(f"framesDecoded {self.frames}/{self.args.min_frames}")
        pair = selected_pair(pc)
        if pair is None:
            missing.append("no selected candidate pair")
        errors = list(self.errors)
        if reason:
            errors.append(reason + (f"; missing: {', '.join(missing)}" if missing else ""))
        ok = not errors and not missing and self.data_done and self.video_done
        return common.result_line(
            ok=ok,
            datachannel=datachannel,
            frames_decoded=self.frames,
            selected_pair=pair,
            errors=errors,
            missing=missing,
            connectionState=pc.connectionState,
            video={"frameSize": self.frame_size} if self.args.video else None,
        )


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    args = common.parse_args(__doc__.splitlines()[0], argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr
    )
    stdin = common.StdinLines()
    peer = Peer(args, stdin)

    def fallback(reason: str) -> dict[str, Any]:
        return common.result_line(
            ok=False, datachannel=peer.status()["datachannel"], frames_decoded=peer.frames,
            selected_pair=None, errors=[reason], phase=peer.phase,
        )

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin.on_close(lambda: final.arm(common.EOF_GRACE, "stdin closed and the peer did not stop"))
    try:
        result = asyncio.run(peer.run())
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
