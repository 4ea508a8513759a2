#!/usr/bin/python3
"""GStreamer's webrtcbin as an offer/answer partner only (no network): JSON lines in and out.

Run under Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-plugins-bad-1.0). It lets a test
put the server's renegotiation offers through GStreamer's own SDP and JSEP code quickly,
without ICE: ``{"op": "offer"}`` → ``{"sdp": <webrtcbin's offer: one data channel and one
recvonly video section>}``;
``{"op": "answer", "sdp": S}`` applies S as the remote answer → ``{"ok": true}``;
``{"op": "reoffer", "sdp": S}`` applies S as a remote offer, creates and applies the answer
→ ``{"sdp": <answer>}``. Any failure → ``{"error": "..."}``. Exits on stdin EOF.
Imports nothing from trio_sfu.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

TIMEOUT_NS = 10 * Gst.SECOND


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait(promise: Gst.Promise, what: str) -> Gst.Structure | None:
    result = promise.wait()
    if result != Gst.PromiseResult.REPLIED:
        raise RuntimeError(f"{what}: promise {result.value_nick}")
    structure = promise.get_reply()
    if structure is not None and structure.has_field("error"):
        raise RuntimeError(f"{what}: {structure.get_value('error').message}")
    return structure


def description(kind: GstWebRTC.WebRTCSDPType, text: str) -> GstWebRTC.WebRTCSessionDescription:
    result, message = GstSdp.SDPMessage.new_from_text(text)
    if result != GstSdp.SDPResult.OK:
        raise RuntimeError(f"GstSdp could not parse the SDP ({result.value_nick})")
    return GstWebRTC.WebRTCSessionDescription.new(kind, message)


def main() -> int:
    Gst.init(None)
    pipeline = Gst.Pipeline.new()
    webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
    if webrtc is None:
        reply({"error": "no webrtcbin element (gst-plugins-bad)"})
        return 1
    webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    pipeline.add(webrtc)
    pipeline.set_state(Gst.State.PLAYING)
    keep: list[Any] = []  # the transceiver and the channel must outlive their creation
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            op = request["op"]
            if op == "offer":
                # webrtcbin 1.22 creates no offer (NULL, no error) for a data channel alone;
                # one recvonly transceiver makes it write the channel's section too.
                caps = Gst.Caps.from_string(
                    "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")
                keep.append(webrtc.emit("add-transceiver",
                                        GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps))
                keep.append(webrtc.emit("create-data-channel", "control", None))
                # The description lives in its promise's reply: keep both alive.
                created = Gst.Promise.new()
                webrtc.emit("create-offer", None, created)
                made = wait(created, "create-offer")  # the description lives in this reply
                offer = made.get_value("offer")
                promise = Gst.Promise.new()
                webrtc.emit("set-local-description", offer, promise)
                wait(promise, "set-local-description(offer)")
                reply({"sdp": offer.sdp.as_text()})
            elif op == "answer":
                promise = Gst.Promise.new()
                webrtc.emit("set-remote-description",
                            description(GstWebRTC.WebRTCSDPType.ANSWER, request["sdp"]), promise)
                wait(promise, "set-remote-description(answer)")
                reply({"ok": True})
            elif op == "reoffer":
                promise = Gst.Promise.new()
                webrtc.emit("set-remote-description",
                            description(GstWebRTC.WebRTCSDPType.OFFER, request["sdp"]), promise)
                wait(promise, "set-remote-description(offer)")
                created = Gst.Promise.new()
                webrtc.emit("create-answer", None, created)
                made = wait(created, "create-answer")
                answer = made.get_value("answer")
                promise = Gst.Promise.new()
                webrtc.emit("set-local-description", answer, promise)
                try:
                    wait(promise, "set-local-description(answer)")
                except RuntimeError as exc:
                    reply({"error": str(exc), "answer": answer.sdp.as_text()})
                    continue
                reply({"sdp": answer.sdp.as_text()})
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
