#!/usr/bin/python3
"""GStreamer webrtcbin as a seed-API subscriber or a WHEP viewer, decoding what it receives.

The receiving counterpart of ``gst_whip.py``: a different WebRTC stack from the server's
(libnice, GStreamer's DTLS/SRTP/SCTP and RTP stack), used the way an application uses it.

``--role subscriber``: POST ``/sub/{room}/{id}`` with an offer holding one data channel; then,
on that channel, answer every ``SDP_OFFER`` with ``SDP_ANSWER`` (README "Data-channel
protocol"). ``--role whep``: make a recvonly audio + video offer, print ``ready`` and POST it to
``/whep/{room}`` when told. Every incoming video stream is depacketized and decoded by
GStreamer (``rtpvp8depay ! vp8dec``); a frame counts when ``vp8dec`` outputs it, for the
publisher whose ``a=msid`` the stream's m-section carries in the latest offer.

Runs under Debian's ``/usr/bin/python3`` (``python3-gi``, ``python3-gst-1.0``) inside a network
namespace (``tests/netns.py``: libnice ignores loopback) and imports nothing from trio_sfu.
Command line and lines on stdout: the interop matrix's peer protocol (tests/interop/README.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import common
    from .gst_whip import http
else:
    import common  # run as a script: tests/peers is sys.path[0]
    from gst_whip import http

PROGRESS_EVERY = 0.5
GATHER_TIMEOUT = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--role", choices=("subscriber", "whep"), required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--id", default="")
    p.add_argument("--token")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    base = args.base_url.rstrip("/")
    if args.role == "subscriber":
        if not args.id:
            p.error("--role subscriber needs --id")
        args.url = f"{base}/sub/{args.room}/{args.id}"
    else:
        args.url = f"{base}/whep/{args.room}"
    return args


def section_owners(sdp: str) -> list[str | None]:
    """Per m-section (in order), the stream id of its ``a=msid`` (RFC 8830 §2): the
    publisher's id in the server's offers (README "Data-channel protocol")."""
    owners: list[str | None] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            owners.append(None)
        elif line.startswith("a=msid:") and owners and owners[-1] is None:
            owners[-1] = line[len("a=msid:"):].split()[0]
    return owners


class Receiver:
    def __init__(self, args: argparse.Namespace, stdin: common.StdinLines) -> None:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import GLib, Gst, GstSdp, GstWebRTC

        self.GLib, self.Gst, self.GstSdp, self.GstWebRTC = GLib, Gst, GstSdp, GstWebRTC
        Gst.init(None)
        common.log("GStreamer", Gst.version_string())
        self.args = args
        self.stdin = stdin
        self.loop = GLib.MainLoop()
        self.start = time.monotonic()
        self.errors: list[str] = []
        self.messages: list[str] = []
        self.renegotiations: list[dict[str, Any]] = []
        self.pending: list[str] = []  # SDP_OFFERs waiting for the one in progress
        self.busy = False
        self.decoded: dict[str, int] = {}
        self.frames_dirty = False
        self.owners: list[str | None] = []  # m-line index -> publisher id (latest offer)
        self.connected_sent = False
        self.phase = "init"
        self.post: dict[str, Any] | None = None
        self.delete: dict[str, Any] | None = None
        self.location: str | None = None
        self.state = "new"
        self.stopping = False
        self._ready_offer = ""  # whep: the offer made, POSTed on the driver's "post"
        self.channel: Any = None

        self.pipeline = Gst.Pipeline.new("sub")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "wb")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipeline.add(self.webrtc)
        self.webrtc.connect("pad-added", self._on_pad_added)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)

    # ------------------------------------------------------------------ helpers

    def error(self, message: str) -> None:
        common.log("ERROR", message)
        if message not in self.errors:
            self.errors.append(message)

    def fail(self, message: str) -> bool:
        self.error(message)
        self.finish()
        return False

    def _on_bus_error(self, _bus: Any, message: Any) -> None:
        err, debug = message.parse_error()
        # Recorded (the result is not ok) but not fatal: the driver sees the stream's frames
        # stop and names the step, which says more than an abrupt exit would.
        source = message.src.get_name() if message.src is not None else "?"
        self.error(f"pipeline error from {source}: {err.message} ({debug})")

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        return headers

    def promise(self, callback: Any, field: str | None = None) -> Any:
        """A promise whose result reaches ``callback(value, error)`` on the main loop.

        The reply structure belongs to the promise and dies with it, so what the callback
        needs is taken out here, in the change func, as plain text: the error message, or the
        SDP of the description in ``field``.
        """

        def changed(promise: Any, _data: Any) -> None:
            reply = promise.get_reply()
            error = value = None
            if reply is not None and reply.has_field("error"):
                error = reply.get_value("error").message
            elif reply is not None and field is not None and reply.has_field(field):
                value = reply.get_value(field).sdp.as_text()
            self.GLib.idle_add(callback, value, error)

        return self.Gst.Promise.new_with_change_func(changed, None)

    # ------------------------------------------------------------------ the first offer

    def begin(self) -> bool:
        if self.args.role == "subscriber":
            self.channel = self.webrtc.emit("create-data-channel", "sfu", None)
            self.channel.connect("on-open", lambda _c: self.GLib.idle_add(self._on_open))
            self.channel.connect(
                "on-message-string", lambda _c, text: self.GLib.idle_add(self._on_text, text)
            )
        else:
            direction = self.GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
            for caps in (
                "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
                "encoding-params=(string)2",
                "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
            ):
                self.webrtc.emit("add-transceiver", direction, self.Gst.Caps.from_string(caps))
        self.phase = "offering"
        self.webrtc.emit("create-offer", None, self.promise(self._on_offer_created, "offer"))
        return False

    def _on_offer_created(self, offer: str | None, error: str | None) -> bool:
        description = offer and self._description(offer, self.GstWebRTC.WebRTCSDPType.OFFER)
        if not description:
            return self.fail(f"create-offer gave no offer: {error}")
        self.phase = "gathering"
        self.webrtc.emit("set-local-description", description, None)
        return False

    def _on_gathering(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("ice-gathering-state")
        if state == self.GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.GLib.idle_add(self._gathered)

    def _gathered(self) -> bool:
        if self.phase != "gathering":
            return False
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        if self.args.role == "whep":  # the driver times the POST (README here)
            self.phase = "ready"
            self._ready_offer = sdp
            common.emit({"type": "ready"})
            return False
        self._send_post(sdp)
        return False

    def _send_post(self, sdp: str) -> None:
        self.phase = "posting"
        threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:
        try:
            answer = http("POST", self.args.url, body=sdp.encode(),
                          headers=self.headers("application/sdp"))
        except Exception as exc:
            self.GLib.idle_add(self.fail, f"POST {self.args.url}: {type(exc).__name__}: {exc}")
            return
        self.GLib.idle_add(self._on_posted, *answer)

    def _on_posted(self, status: int, headers: dict[str, str], _links: list[str], body: str
                   ) -> bool:
        location = headers.get("location")
        self.location = urllib.parse.urljoin(self.args.url, location) if location else None
        self.post = {"status": status, "location": self.location, "etag": headers.get("etag")}
        common.emit({"type": "posted", **self.post})
        if status != 201:
            self.post["body"] = body[:500]
            return self.fail(f"POST answered {status}: {body.strip()[:300]}")
        self.post["answer"] = body
        description = self._description(body, self.GstWebRTC.WebRTCSDPType.ANSWER)
        if description is None:
            return self.fail("the answer is not SDP GStreamer can parse")
        self.phase = "connecting"
        self.webrtc.emit("set-remote-description", description,
                         self.promise(lambda _v, error: self._check(error, "the answer")))
        return False

    def _description(self, text: str, kind: Any) -> Any:
        ok, message = self.GstSdp.SDPMessage.new_from_text(text)
        if ok != self.GstSdp.SDPResult.OK:
            return None
        return self.GstWebRTC.WebRTCSessionDescription.new(kind, message)

    def _check(self, error: str | None, what: str) -> bool:
        if error is not None:
            self.error(f"{what}: {error}")
        return False

    # ------------------------------------------------------------------ seed protocol

    def connected(self) -> None:
        if not self.connected_sent:
            self.connected_sent = True
            common.emit({"type": "connected", "id": self.args.id})

    def _on_open(self) -> bool:
        # webrtcbin 1.22 cannot take a recycled m-line (README "Data-channel protocol")
        self.channel.emit("send-string", "SDP_RECYCLE off")
        self.connected()
        return False

    def _on_text(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        if name != "SDP_OFFER":
            self.messages.append(text)
            common.emit({"type": "command", "name": name, "arg": arg})
            return False
        offer = arg
        entry = {"n": len(self.renegotiations) + 1}
        self.renegotiations.append(entry)
        mids = [line[6:].strip() for line in offer.splitlines() if line.startswith("a=mid:")]
        common.emit({"type": "command", "name": "SDP_OFFER", "mids": mids})
        self.pending.append(offer)
        if not self.busy:
            self._next_offer()
        return False

    def _next_offer(self) -> None:
        if not self.pending or self.stopping:
            self.busy = False
            return
        self.busy = True
        offer = self.pending.pop(0)
        n = len(self.renegotiations) - len(self.pending)
        description = self._description(offer, self.GstWebRTC.WebRTCSDPType.OFFER)
        if description is None:
            self._refused(n, "the SDP_OFFER is not SDP GStreamer can parse")
            return

        def on_remote(_value: Any, error: str | None) -> bool:
            if error is not None:
                self._refused(n, f"set-remote-description: {error}")
                return False
            self.owners = section_owners(offer)
            self.webrtc.emit("create-answer", None, self.promise(on_answer, "answer"))
            return False

        def on_answer(answer: str | None, error: str | None) -> bool:
            local = answer and self._description(answer, self.GstWebRTC.WebRTCSDPType.ANSWER)
            if not local:
                self._refused(n, f"create-answer gave no answer: {error}")
                return False
            self.webrtc.emit("set-local-description", local,
                             self.promise(lambda _v, e: on_local(e, answer)))
            return False

        def on_local(error: str | None, sdp: str) -> bool:
            if error is not None:
                self._refused(n, f"set-local-description: {error}")
                return False
            self.channel.emit("send-string", f"SDP_ANSWER {sdp}")
            self.renegotiations[n - 1]["answered"] = True
            common.emit({"type": "answered", "ok": True})
            self._next_offer()
            return False

        self.webrtc.emit("set-remote-description", description, self.promise(on_remote))

    def _refused(self, n: int, reason: str) -> None:
        self.renegotiations[n - 1]["error"] = reason
        self.error(f"SDP_OFFER {n}: {reason}")
        common.emit({"type": "answered", "ok": False, "error": reason})
        self._next_offer()

    # ------------------------------------------------------------------ media

    def _on_pad_added(self, _element: Any, pad: Any) -> None:
        if pad.get_direction() != self.Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        s = caps.get_structure(0)
        media = s.get_string("media")
        encoding = (s.get_string("encoding-name") or "").upper()
        common.log("pad", pad.get_name(), media, encoding)
        if media == "video" and encoding == "VP8":
            # As a player would: after a loss, wait for a keyframe and ask for one (PLI).
            branch = (
                "queue ! rtpvp8depay wait-for-keyframe=true request-keyframe=true ! vp8dec ! "
                "fakesink sync=false async=false"
            )
        else:
            branch = "fakesink sync=false async=false"
        bin_ = self.Gst.parse_bin_from_description(branch, True)
        self.pipeline.add(bin_)
        bin_.sync_state_with_parent()
        if pad.link(bin_.get_static_pad("sink")) != self.Gst.PadLinkReturn.OK:
            self.error(f"cannot link {pad.get_name()} ({media} {encoding})")
            return
        if media == "video" and encoding == "VP8":
            # webrtcbin names its source pads src_<m-line index>.
            mline = int(pad.get_name().rsplit("_", 1)[1])
            decoder = next(e for e in bin_.iterate_elements() if e.get_factory()
                           and e.get_factory().get_name() == "vp8dec")

            def on_picture(_pad: Any, _info: Any, _data: Any) -> Any:
                self.GLib.idle_add(self._on_frame, mline)  # a streaming thread: count on main
                return self.Gst.PadProbeReturn.OK

            decoder.get_static_pad("src").add_probe(self.Gst.PadProbeType.BUFFER, on_picture, None)

    def _on_frame(self, mline: int) -> bool:
        """One decoded picture of the stream at ``mline``: it counts for the publisher that
        owns that m-section now."""
        if self.args.role == "whep":
            owner: str | None = "whep"
        else:
            owner = self.owners[mline] if mline < len(self.owners) else None
        key = owner or f"mline-{mline}"
        self.decoded[key] = self.decoded.get(key, 0) + 1
        self.frames_dirty = True
        return False

    # ------------------------------------------------------------------ lifetime

    def _on_connection_state(self, element: Any, _pspec: Any) -> None:
        self.GLib.idle_add(self._state, element.get_property("connection-state").value_nick)

    def _state(self, state: str) -> bool:
        self.state = state
        common.log("connection-state", state)
        if state == "connected" and self.args.role == "whep":
            self.connected()
        elif state in ("failed", "closed") and not self.stopping:
            common.emit({"type": "closed", "reason": f"connection {state}"})
        return False

    def _tick(self) -> bool:
        if self.stopping:
            return False
        if self.frames_dirty:
            self.frames_dirty = False
            common.emit({"type": "frames", "decoded": self.decoded})
        now = time.monotonic()
        if now - self.start > self.args.timeout:
            self.error("timeout")
            self.finish()
        elif self.phase == "gathering" and now - self.start > GATHER_TIMEOUT:
            self.fail("ICE gathering did not complete")
        return True

    def _poll_stdin(self) -> bool:
        if self.stopping:
            return False
        try:
            message = self.stdin.get(0)
        except common.StdinClosed:
            self.finish()
            return False
        if message is None:
            return True
        if message.get("type") == "stop":
            self.finish()
        elif message.get("type") == "post" and self.phase == "ready":
            self._send_post(self._ready_offer)
        else:
            common.log("ignoring stdin message", message.get("type"))
        return True

    def finish(self) -> bool:
        if not self.stopping:
            self.stopping = True
            self.loop.quit()
        return False

    def run(self) -> dict[str, Any]:
        self.pipeline.set_state(self.Gst.State.PLAYING)
        self.GLib.idle_add(self.begin)
        self.GLib.timeout_add(int(PROGRESS_EVERY * 1000), self._tick)
        self.GLib.timeout_add(50, self._poll_stdin)
        self.loop.run()
        delete_url = self.args.url if self.args.role == "subscriber" else self.location
        if self.post and self.post.get("status") == 201 and delete_url:
            try:
                status, _, _, body = http("DELETE", delete_url, headers=self.headers())
                self.delete = {"status": status, "body": body[:300]}
            except Exception as exc:
                self.delete = {"error": f"{type(exc).__name__}: {exc}"}
                self.error(f"DELETE failed: {exc}")
        self.pipeline.set_state(self.Gst.State.NULL)
        if self.frames_dirty:
            common.emit({"type": "frames", "decoded": self.decoded})
        post = {k: v for k, v in (self.post or {}).items() if k != "answer"}
        return {
            "type": "result",
            "ok": not self.errors and bool(self.post) and post.get("status") == 201,
            "errors": self.errors, "messages": self.messages,
            "renegotiations": self.renegotiations, "decoded": self.decoded,
            "state": self.state, "post": post, "delete": self.delete,
        }


def main(argv: list[str] | None = None) -> int:
    common.reserve_stdout()
    args = parse_args(argv)
    common.log("started:", " ".join(sys.argv[1:] if argv is None else argv))
    if args.verbose:
        import os

        os.environ.setdefault("GST_DEBUG", "webrtcbin:5,nice:4")

    def fallback(reason: str) -> dict[str, Any]:
        return {"type": "result", "ok": False, "errors": [reason]}

    final = common.FinalLine(fallback)
    final.arm(args.timeout + common.WATCHDOG_GRACE, "still running after --timeout")
    stdin = common.StdinLines()
    stdin.on_close(lambda: final.arm(common.EOF_GRACE + 10, "stdin closed and it did not stop"))
    try:
        result = Receiver(args, stdin).run()
    except Exception as exc:
        common.log("failed:", repr(exc))
        result = fallback(f"{type(exc).__name__}: {exc}")
    final.finish(result)
    return final.exit_code


if __name__ == "__main__":
    sys.exit(main())
