#!/usr/bin/python3
"""Live VP8 (and optionally Opus) RTP from GStreamer to a local UDP port, for codec-less peers.

werift and node-datachannel have no encoders: their publisher scripts
(``tests/peers/node_peers/``) start this process and send the RTP it writes to their UDP port
through their own WebRTC stack. GStreamer does the media work (``videotestsrc`` → ``vp8enc`` →
``rtpvp8pay``, RFC 7741), so the packets are real, decodable VP8 with a keyframe every
``--keyframe-interval`` frames. The ``videotestsrc`` pattern is a moving ball, so every frame
differs and a decoder cannot count a frozen picture twice.

Runs under Debian's ``/usr/bin/python3`` (``python3-gi``, ``python3-gst-1.0``), like
``gst_whip.py``, and imports nothing from trio_sfu. It streams until stdin closes or SIGTERM,
with ``--timeout`` as the bound; it prints nothing on stdout.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def pipeline(args: argparse.Namespace) -> str:
    video = (
        f"videotestsrc is-live=true pattern=ball ! videoconvert ! "
        f"video/x-raw,width={args.width},height={args.height},framerate={args.framerate}/1 ! "
        f"vp8enc deadline=1 cpu-used=8 target-bitrate=500000 "
        f"keyframe-max-dist={args.keyframe_interval} ! "
        f"rtpvp8pay pt={args.video_pt} ssrc={args.video_ssrc} picture-id-mode=15-bit "
        f"mtu={args.mtu} ! udpsink host=127.0.0.1 port={args.video_port} sync=false"
    )
    if not args.audio_port:
        return video
    audio = (
        "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
        f"opusenc ! rtpopuspay pt={args.audio_pt} ssrc={args.audio_ssrc} ! "
        f"udpsink host=127.0.0.1 port={args.audio_port} sync=false"
    )
    return f"{video} {audio}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--video-port", type=int, required=True)
    p.add_argument("--video-pt", type=int, default=96)
    p.add_argument("--video-ssrc", type=int, default=0x11223344)
    p.add_argument("--audio-port", type=int, default=0, help="0: no audio")
    p.add_argument("--audio-pt", type=int, default=111)
    p.add_argument("--audio-ssrc", type=int, default=0x55667788)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--framerate", type=int, default=30)
    p.add_argument("--keyframe-interval", type=int, default=30)
    p.add_argument("--mtu", type=int, default=1200)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()

    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import GLib, Gst

    Gst.init(None)
    loop = GLib.MainLoop()
    pipe = Gst.parse_launch(pipeline(args))
    bus = pipe.get_bus()
    bus.add_signal_watch()
    failed: list[str] = []

    def on_error(_bus: object, message: object) -> None:
        err, debug = message.parse_error()  # type: ignore[attr-defined]
        failed.append(f"{err.message} ({debug})")
        loop.quit()

    bus.connect("message::error", on_error)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        GLib.idle_add(loop.quit)

    threading.Thread(target=watch_stdin, daemon=True).start()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.timeout_add(int(args.timeout * 1000), loop.quit)
    pipe.set_state(Gst.State.PLAYING)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    if failed:
        print(f"gst_rtp_source: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
