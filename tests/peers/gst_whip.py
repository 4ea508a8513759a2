#!/usr/bin/python3
"""GStreamer webrtcbin as an independent WHIP publisher (RFC 9725), speaking JSON lines.

A different WebRTC stack from Chromium and aiortc (libnice for ICE, OpenSSL DTLS via
dtlssrtpenc, GStreamer's RTP stack), driven the way a WHIP client drives it: one POST of a
complete (non-trickle) offer, the answer and the session URL from the ``201``, and a DELETE
at the end. GStreamer provides the media (``videotestsrc`` → VP8, ``audiotestsrc`` → Opus);
the HTTP part is this script's, with urllib.

It runs under Debian's ``/usr/bin/python3`` (``python3-gi``, ``python3-gst-1.0``), never the
project's virtualenv, and imports nothing from trio_sfu. libnice ignores loopback, so the
endpoint must be reachable on a real interface: the tests run it in a network namespace with a
veth pair (``tests/netns.py``).

Lines on stdout (one JSON object each; logs go to stderr):
``{"type": "published", "status": 201, "location": ..., "etag": ..., "links": [...]}`` after
the POST, ``{"type": "connected"}`` when the connection is up, ``{"type": "progress", ...}``
about once a second, and finally ``{"type": "result", "ok": ..., "post": {...}, "delete":
{...}, "video": {...}, "audio": {...}, "errors": [...]}``. It publishes until ``--duration``
seconds after connecting (0: until told), a ``{"type": "stop"}`` line or stdin EOF, then sends
DELETE and exits 0 if everything worked, 1 otherwise. A failed POST ends it at once with the
status and body in the result.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common  # imported by the tests as tests.peers.<module>
else:
    import common  # run as a script: tests/peers is sys.path[0]

PROGRESS_EVERY = 1.0
HTTP_TIMEOUT = 15.0
GATHER_TIMEOUT = 10.0  # libnice finishes host gathering in well under a second


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", required=True, help="the WHIP endpoint, e.g. http://h:p/whip/room")
    p.add_argument("--token", help="sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--duration", type=float, default=0.0,
                   help="seconds to publish once connected (0: until stop/EOF)")
    p.add_argument("--timeout", type=float, default=60.0, help="overall bound in seconds")
    p.add_argument("--connect-timeout", type=float, default=20.0,
                   help="seconds from the answer to a connected peer connection")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--framerate", type=int, default=30)
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern (moving by default)")
    p.add_argument("--keyframe-interval", type=int, default=60,
                   help="frames between VP8 keyframes (vp8enc keyframe-max-dist)")
    p.add_argument("--mtu", type=int, default=0,
                   help="rtpvp8pay/rtpopuspay MTU (0: GStreamer's default, 1400 bytes)")
    p.add_argument("--bundle-policy", default="max-bundle",
                   choices=("balanced", "max-compat", "max-bundle"))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not (args.video or args.audio):
        p.error("nothing to publish: --no-video and --no-audio")
    return args


def pipeline_description(args: argparse.Namespace) -> str:
    mtu = f" mtu={args.mtu}" if args.mtu else ""
    parts = [f"webrtcbin name=wb bundle-policy={args.bundle_policy}"]
    if args.video:
        parts.append(
            f"videotestsrc is-live=true pattern={args.pattern} ! videoconvert ! "
            f"video/x-raw,width={args.width},height={args.height},"
            f"framerate={args.framerate}/1 ! "
            f"vp8enc deadline=1 cpu-used=8 target-bitrate=600000 "
            f"keyframe-max-dist={args.keyframe_interval} error-resilient=partitions ! "
            f"rtpvp8pay pt=96 picture-id-mode=15-bit{mtu} ! "
            "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! "
            "wb."
        )
    if args.audio:
        parts.append(
            "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
            f"opusenc ! rtpopuspay pt=111{mtu} ! "
            "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! "
            "wb."
        )
    return " ".join(parts)


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], list[str], str]:
    """One request: (status, headers with lower-case names, every Link value, body text).

    4xx/5xx are answers, not errors: the tests want to see them.
    """
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            status = response.status
            raw_headers = response.headers
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        status = error.code
        raw_headers = error.headers
        text = error.read().decode("utf-8", "replace")
    found = {k.lower(): v for k, v in raw_headers.items()}
    links = raw_headers.get_all("Link") or []
    return status, found, links, text


def ssrc_kinds(sdp: str) -> dict[int, str]:
    """SSRC → "audio"/"video", from the a=ssrc lines of each m-section (RFC 5576 §4.1)."""
    kinds: dict[int, str] = {}
    media = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            media = line[2:].split(" ", 1)[0]
        elif line.startswith("a=ssrc:") and media:
            try:
                kinds[int(line[7:].split(" ", 1)[0])] = media
            except ValueError:
                pass
    return kinds


class Publisher:
    def __init__(self, args: argparse.Namespace, stdin: common.StdinLines) -> None:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import GLib, Gst, GstSdp, GstWebRTC

        self.GLib, self.Gst, self.GstSdp, self.GstWebRTC = GLib, Gst, GstSdp, GstWebRTC
        Gst.init(None)
        self.args = args
        self.stdin = stdin
        self.loop = GLib.MainLoop()
        self.start = time.monotonic()
        self.deadline = self.start + args.timeout
        self.errors: list[str] = []
        self.phase = "init"
        self.post: dict[str, Any] = {}
        self.delete: dict[str, Any] | None = None
        self.location: str | None = None
        self.connected_at: float | None = None
        self.answered_at: float | None = None
        self.stats: dict[str, Any] = {}
        self.states: list[str] = []
        self.stopping = False
        self.ssrc_kinds: dict[int, str] = {}

        common.log("GStreamer", Gst.version_string())
        self.pipeline = Gst.parse_launch(pipeline_description(args))
        self.webrtc = self.pipeline.get_by_name("wb")
        # One MediaStream for both tracks: a WHIP offer with several is refused (RFC 9725 §4.2).
        for pad in self.webrtc.sinkpads:
            pad.set_property("msid", "gst-whip")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection_state)
        self.webrtc.connect("notify::ice-connection-state", self._on_ice_state)
        self._offer_sent = False

    # ------------------------------------------------------------------ helpers

    def error(self, message: str) -> None:
        common.log("ERROR", message)
        if message not in self.errors:
            self.errors.append(message)

    def fail(self, message: str) -> None:
        self.error(message)
        self.finish()

    def _on_bus_error(self, _bus: Any, message: Any) -> None:
        err, debug = message.parse_error()
        self.fail(f"pipeline error: {err.message} ({debug})")

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        return headers

    # ------------------------------------------------------------------ negotiation

    def _on_negotiation_needed(self, element: Any) -> None:
        if self._offer_sent:
            return
        self._offer_sent = True
        # A publisher only sends (RFC 9725 §4.2: the offer's media are sendonly).
        direction = self.GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
        index = 0
        while True:
            transceiver = element.emit("get-transceiver", index)
            if transceiver is None:
                break
            transceiver.set_property("direction", direction)
            index += 1
        common.log("creating the offer;", index, "transceivers")
        promise = self.Gst.Promise.new_with_change_func(self._on_offer_created, None)
        element.emit("create-offer", None, promise)

    def _on_offer_created(self, promise: Any, _data: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            self.GLib.idle_add(self.fail, "create-offer gave no offer")
            return
        self.phase = "gathering"
        self.webrtc.emit("set-local-description", offer, None)

    def _on_gathering(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("ice-gathering-state")
        common.log("ice-gathering-state", state.value_nick)
        if state == self.GstWebRTC.WebRTCICEGatheringState.COMPLETE and self.phase == "gathering":
            # Non-trickle: the offer carries every candidate (RFC 9725 §4.3.1 allows it).
            sdp = element.get_property("local-description").sdp.as_text()
            self.ssrc_kinds = ssrc_kinds(sdp)
            self.phase = "posting"
            threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:
        try:
            status, headers, links, body = http(
                "POST", self.args.url, body=sdp.encode(), headers=self.headers("application/sdp")
            )
        except Exception as exc:
            self.GLib.idle_add(self.fail, f"POST {self.args.url}: {type(exc).__name__}: {exc}")
            return
        self.GLib.idle_add(self._on_posted, sdp, status, headers, links, body)

    def _on_posted(
        self, offer: str, status: int, headers: dict[str, str], links: list[str], body: str
    ) -> bool:
        location = headers.get("location")
        self.post = {
            "status": status,
            "location": location,
            "etag": headers.get("etag"),
            "links": links,
            "contentType": headers.get("content-type"),
            "offer": offer,
        }
        if status != 201:
            self.post["body"] = body[:2000]
            self.fail(f"POST answered {status}: {body.strip()[:300]}")
            return False
        if not location:
            self.fail("201 without a Location header")
            return False
        self.location = urllib.parse.urljoin(self.args.url, location)
        self.post["answer"] = body
        common.emit({
            "type": "published", "status": status, "location": self.location,
            "etag": headers.get("etag"), "links": links,
        })
        ok, sdp_message = self.GstSdp.SDPMessage.new_from_text(body)
        if ok != self.GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP GStreamer can parse")
            return False
        answer = self.GstWebRTC.WebRTCSessionDescription.new(
            self.GstWebRTC.WebRTCSDPType.ANSWER, sdp_message
        )
        promise = self.Gst.Promise.new_with_change_func(self._on_answer_applied, None)
        self.webrtc.emit("set-remote-description", answer, promise)
        return False

    def _on_answer_applied(self, promise: Any, _data: Any) -> None:
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            message = reply.get_value("error").message
            self.GLib.idle_add(self.fail, f"set-remote-description failed: {message}")
            return
        common.log("answer applied")
        self.answered_at = time.monotonic()
        self.phase = "connecting"

    # ------------------------------------------------------------------ state

    def _on_connection_state(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("connection-state").value_nick
        common.log("connection-state", state)
        self.states.append(state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.phase = "publishing"
            common.emit({"type": "connected", "after": round(self.connected_at - self.start, 3)})
        elif state == "failed" and not self.stopping:
            self.GLib.idle_add(self.fail, "peer connection failed")

    def _on_ice_state(self, element: Any, _pspec: Any) -> None:
        common.log("ice-connection-state", element.get_property("ice-connection-state").value_nick)

    def _collect_stats(self) -> None:
        promise = self.Gst.Promise.new_with_change_func(self._on_stats, None)
        self.webrtc.emit("get-stats", None, promise)

    def _on_stats(self, promise: Any, _data: Any) -> None:
        reply = promise.get_reply()
        if reply is None:
            return
        out: dict[str, dict[str, Any]] = {}
        pair: dict[str, Any] | None = None
        entries: list[Any] = []

        def visit(_field_id: int, value: Any, _data: Any) -> bool:
            if isinstance(value, self.Gst.Structure):
                entries.append(value)
            return True

        reply.foreach(visit, None)
        for s in entries:
            kind = s.get_value("type")
            nick = kind.value_nick if hasattr(kind, "value_nick") else str(kind)
            if nick == "outbound-rtp" and s.has_field("ssrc"):
                ssrc = int(s.get_value("ssrc"))
                # GStreamer 1.22 labels a bundled video stream with the audio codec's kind and
                # codec-id, so the kind comes from our own offer's a=ssrc lines instead.
                media = self.ssrc_kinds.get(ssrc, "unknown")
                entry = out.setdefault(media, {"packetsSent": 0, "bytesSent": 0, "ssrc": []})
                for field, key in (("packets-sent", "packetsSent"), ("bytes-sent", "bytesSent")):
                    if s.has_field(field):
                        entry[key] += int(s.get_value(field))
                for field, key in (("nack-count", "nackCount"), ("pli-count", "pliCount"),
                                   ("fir-count", "firCount")):
                    if s.has_field(field):
                        entry[key] = entry.get(key, 0) + int(s.get_value(field))
                entry["ssrc"].append(ssrc)
            elif nick == "candidate-pair" and pair is None and s.has_field("local-candidate-id"):
                pair = {"local": s.get_value("local-candidate-id"),
                        "remote": s.get_value("remote-candidate-id")}
        self.stats = {**out, "pair": pair}

    # ------------------------------------------------------------------ lifetime

    def _tick(self) -> bool:
        if self.stopping:
            return False
        now = time.monotonic()
        if self.webrtc is not None and self.connected_at is not None:
            self._collect_stats()
        common.emit(self.progress())
        if self.stdin.closed.is_set():
            self.finish("stdin closed")
        elif now >= self.deadline:
            self.finish("timeout" if self.connected_at is None or self.args.duration else None)
        elif (
            self.answered_at is not None
            and self.connected_at is None
            and now - self.answered_at > self.args.connect_timeout
        ):
            self.fail(f"not connected {self.args.connect_timeout:.0f} s after the answer")
        elif self.phase == "gathering" and now - self.start > GATHER_TIMEOUT:
            self.fail("ICE gathering did not complete")
        elif (
            self.args.duration
            and self.connected_at is not None
            and now - self.connected_at >= self.args.duration
        ):
            self.finish()
        return True

    def _poll_stdin(self) -> bool:
        if self.stopping:
            return False
        try:
            message = self.stdin.get(0)
        except common.StdinClosed:
            return True  # _tick notices
        if message is not None:
            if message.get("type") == "stop":
                self.finish()
            else:
                common.log("ignoring stdin message", message.get("type"))
        return True

    def progress(self) -> dict[str, Any]:
        return {
            "type": "progress",
            "phase": self.phase,
            "connectionState": self.states[-1] if self.states else "new",
            **{k: v for k, v in self.stats.items() if k in ("video", "audio")},
        }

    def finish(self, reason: str | None = None) -> bool:
        if self.stopping:
            return False
        self.stopping = True
        if reason:
            if self.connected_at is None or reason == "timeout":
                self.error(reason)
            common.log("stopping:", reason)
        self.phase = "stopping"
        self.loop.quit()
        return False

    def run(self) -> dict[str, Any]:
        self.GLib.timeout_add(int(PROGRESS_EVERY * 1000), self._tick)
        self.GLib.timeout_add(50, self._poll_stdin)
        self.pipeline.set_state(self.Gst.State.PLAYING)
        self.loop.run()
        # Final stats, then DELETE while the pipeline still runs: the server tears the
        # session down on its side first (RFC 9725 §4.4).
        if self.connected_at is not None:
            self._collect_stats()
            time.sleep(0.2)
        if self.location is not None:
            try:
                status, _, _, body = http("DELETE", self.location, headers=self.headers())
                self.delete = {"status": status, "body": body[:500]}
                common.log("DELETE", self.location, "->", status)
            except Exception as exc:
                self.delete = {"error": f"{type(exc).__name__}: {exc}"}
                self.error(f"DELETE failed: {exc}")
        self.pipeline.set_state(self.Gst.State.NULL)
        return self.result()

    def result(self) -> dict[str, Any]:
        missing = []
        if self.post.get("status") != 201:
            missing.append("no 201 to the POST")
        if self.connected_at is None:
            missing.append("never connected")
        for media in ("video",) * self.args.video + ("audio",) * self.args.audio:
            if not self.stats.get(media, {}).get("packetsSent"):
                missing.append(f"no {media} packets sent")
        if self.location is not None and (self.delete or {}).get("status", 0) // 100 != 2:
            missing.append(f"DELETE not answered 2xx: {self.delete}")
        post = {k: v for k, v in self.post.items() if k not in ("offer", "answer")}
        return {
            "type": "result",
            "ok": not self.errors and not missing,
            "errors": self.errors,
            "missing": missing,
            "post": post,
            "answer": self.post.get("answer"),
            "offer": self.post.get("offer"),
            "delete": self.delete,
            "connectionStates": self.states,
            "connectedAfter": (
                round(self.connected_at - self.start, 3) if self.connected_at else None
            ),
            **{k: v for k, v in self.stats.items() if k in ("video", "audio", "pair")},
        }


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    args = parse_args(argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    if args.verbose:
        import os

        os.environ.setdefault("GST_DEBUG", "webrtcbin:5,nice:4,dtlssrtpenc:4")

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason]}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE + 10, "stdin closed and it did not stop"))
    try:
        result = Publisher(args, stdin).run()
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
