#!/usr/bin/env python3
"""aiortc as an independent audio publisher whose loudness the test sets (issue 11).

It POSTs ``/pub/{room}/{id}`` with one sendonly Opus track and the control data channel. The
track is a 440 Hz sine whose RMS is ``--dbov`` dB below full scale; aiortc computes each
frame's level itself and sends it in the ``ssrc-audio-level`` header extension (RFC 6464),
which the SFU negotiated. A ``{"type": "level", "dbov": N}`` line on stdin changes the
loudness; ``{"type": "stop"}`` (or stdin EOF) ends it. Lines on stdout: ``posted``,
``connected``, ``level`` (``t``: ``time.monotonic()`` when the new level took effect — the
same clock in every process, so the test measures from it) and ``result``. Imports nothing
from trio_sfu.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common
    from .aiortc_whip import patch_aioice
    from .gst_whip import http
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from aiortc_whip import patch_aioice
    from gst_whip import http

RATE = 48000
FRAME = 960  # 20 ms


def tone_track_class() -> type:
    """A MediaStreamTrack of a sine at a settable RMS level (built lazily: aiortc import)."""
    import numpy
    from aiortc.mediastreams import MediaStreamTrack
    from av import AudioFrame

    class ToneTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, dbov: float) -> None:
            super().__init__()
            self.dbov = dbov
            self._pts = 0
            self._start: float | None = None
            self._phase = numpy.arange(FRAME) * (2 * math.pi * 440 / RATE)

        async def recv(self) -> Any:
            if self._start is None:
                self._start = time.monotonic()
            due = self._start + self._pts / RATE
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            # aiortc's level is 20*log10(rms/32767) (RFC 6465 App. A) and a sine's RMS is
            # peak/sqrt(2), so peak = 32767 * sqrt(2) * 10^(dBov/20).
            peak = min(32767.0, 32767.0 * math.sqrt(2) * 10 ** (self.dbov / 20))
            start = self._pts * (2 * math.pi * 440 / RATE)
            samples = (peak * numpy.sin(self._phase + start)).astype(numpy.int16)
            frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, RATE)
            self._pts += FRAME
            return frame

    return ToneTrack


async def run(args: argparse.Namespace, stdin: common.StdinLines) -> dict[str, Any]:
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    deadline = time.monotonic() + args.timeout
    errors: list[str] = []
    patch_aioice("127.0.0.1")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[],
                                            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    tone = tone_track_class()(args.dbov)
    pc.addTransceiver(tone, direction="sendonly")
    channel = pc.createDataChannel("control")
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed") and not stopping:
            errors.append(f"connectionState {pc.connectionState}")

    @channel.on("message")
    def _on_message(message: Any) -> None:
        if isinstance(message, str) and message.startswith("ERROR"):
            errors.append(message)

    stopping = False
    await pc.setLocalDescription(await pc.createOffer())
    url = f"{args.base_url}/pub/{args.room}/{args.id}"
    loop = asyncio.get_running_loop()
    status, _, _, body = await loop.run_in_executor(None, lambda: http(
        "POST", url, body=pc.localDescription.sdp.encode(),
        headers={"Content-Type": "application/sdp"}))
    common.emit({"type": "posted", "status": status})
    if status // 100 != 2:
        errors.append(f"POST answered {status}: {body.strip()[:200]}")
    else:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        try:
            await asyncio.wait_for(connected.wait(), max(1.0, deadline - time.monotonic()))
            common.emit({"type": "connected", "id": args.id})
        except TimeoutError:
            errors.append("not connected before --timeout")
    while not errors:
        try:
            line = stdin.get(0)
        except common.StdinClosed:
            break
        if line is not None:
            if line.get("type") == "stop":
                break
            if line.get("type") == "level":
                tone.dbov = float(line["dbov"])
                common.emit({"type": "level", "dbov": tone.dbov, "t": time.monotonic()})
        if time.monotonic() >= deadline:
            errors.append("--timeout passed before the stop line")
            break
        await asyncio.sleep(0.05)
    stopping = True
    if channel.readyState == "open":
        channel.send("STOP")
        await asyncio.sleep(0.2)
    await asyncio.wait_for(pc.close(), 10)
    return {"type": "result", "ok": not errors, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--base-url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--dbov", type=float, default=-30.0, help="the tone's RMS level")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.base_url = args.base_url.rstrip("/")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr)

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
