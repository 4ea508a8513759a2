#!/usr/bin/env python3
"""An echo endpoint on aiortc, used only to validate the peer harness itself.

It plays the role trio-sfu plays in the real tests: it reads ``{"type": "offer"}`` on stdin,
answers with ``{"type": "answer"}``, echoes every data-channel message on the channel it came
from with the same type (str or bytes), and sends each received video track back on the same
connection (the answer's video section becomes sendrecv). It runs until stdin closes or
``--timeout`` expires, then prints ``{"type": "closed", ...}`` with its counters.

``--mangle corrupt|reorder`` breaks the echo on purpose so the tests can prove that the peers'
checks fail when they should: ``corrupt`` alters every 5th message on each channel (a flipped
byte, or a string sent back as bytes); ``reorder`` swaps each pair of consecutive messages,
which the ordered channel must flag and the unordered one must accept.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common  # imported by the tests as tests.peers.<module>
else:
    import common  # run as a script: tests/peers is sys.path[0]


async def run(args: Any, stdin: common.StdinLines) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    common.patch_aioice()
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    stop = asyncio.Event()
    stdin.on_close(lambda: loop.call_soon_threadsafe(stop.set))

    try:
        offer = await common.async_wait_for(stdin, "offer", deadline)
    except common.StdinClosed:
        return {"type": "closed", "reason": "stdin closed before the offer arrived"}
    if offer is None:
        return {"type": "closed", "reason": "timed out waiting for the offer"}

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    echoed: dict[str, int] = {}
    echoed_bytes: dict[str, int] = {}

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        common.log("connectionState", pc.connectionState)

    @pc.on("datachannel")
    def _on_channel(channel: Any) -> None:
        name = channel.label
        common.log("data channel", name, "ordered" if channel.ordered else "unordered")
        echoed.setdefault(name, 0)
        echoed_bytes.setdefault(name, 0)

        held: list[str | bytes] = []

        def flush_held() -> None:
            if held:
                channel.send(held.pop())

        def _on_message(message: str | bytes) -> None:
            echoed[name] += 1
            echoed_bytes[name] += len(message.encode() if isinstance(message, str) else message)
            if args.mangle == "corrupt" and echoed[name] % 5 == 0:
                if isinstance(message, str):
                    message = message.encode()  # right bytes, wrong type
                else:
                    message = message[:-1] + bytes([message[-1] ^ 0xFF])
            elif args.mangle == "reorder":
                if not held:
                    held.append(message)
                    loop.call_later(0.5, flush_held)  # the last odd one still goes back
                    return
                channel.send(message)
                flush_held()
                return
            channel.send(message)  # same channel, same type

        channel.on("message", _on_message)

    @pc.on("track")
    def _on_track(track: Any) -> None:
        common.log("echoing remote", track.kind, "track")
        pc.addTrack(track)  # decoded frames are re-encoded on the same transceiver

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    common.cap_sctp_receive_window(pc)
    await pc.setLocalDescription(await pc.createAnswer())
    common.emit({"type": "answer", "sdp": pc.localDescription.sdp})

    reason = "stdin closed"
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        reason = "timeout"
    common.log("stopping:", reason, "echoed", echoed)
    await asyncio.wait_for(pc.close(), 10)
    return {"type": "closed", "reason": reason, "echoed": echoed, "echoedBytes": echoed_bytes}


def _echo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mangle", choices=("none", "corrupt", "reorder"), default="none",
        help="break the echo on purpose (tests of the peers' checks)",
    )


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    args = common.parse_args(__doc__.splitlines()[0], argv, extra=_echo_args)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr
    )

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "closed", "reason": reason, "ok": False}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE, "stdin closed and the echo did not stop"))
    try:
        final.finish(asyncio.run(run(args, stdin)))
    except Exception as exc:
        common.log("failed:", repr(exc))
        final.finish(fallback(f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
