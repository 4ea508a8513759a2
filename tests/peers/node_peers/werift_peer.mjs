// werift (npm, a WebRTC stack in TypeScript) as an independent peer of trio-sfu.
//
//   node werift_peer.mjs --role subscriber|publisher|whep --base-url URL --room R --id ID
//
// subscriber: a seed-API subscriber (POST /sub/{room}/{id} with a data channel only, then
// answers every SDP_OFFER on it); publisher: a seed-API publisher (sendonly VP8 + Opus fed by
// GStreamer, plus the data channel); whep: a WHEP viewer (recvonly audio + video). The roles, the HTTP, the seed protocol and the line protocol are
// in common.mjs; this file is werift's API only.

import { MediaStreamTrack, RTCPeerConnection, RTCRtpCodecParameters } from "werift";
import { keepCandidates, run } from "./common.mjs";

const VIDEO_FEEDBACK = [
  { type: "nack" }, { type: "nack", parameter: "pli" }, { type: "ccm", parameter: "fir" },
  { type: "goog-remb" },
];

async function makeStack(args, log) {
  const pc = new RTCPeerConnection({
    // werift skips loopback (and veth) interfaces when gathering; the server under test
    // listens on --ice-address, so add it as a host address explicitly.
    iceAdditionalHostAddresses: [args.iceAddress],
    iceUseIpv6: false,
    codecs: {
      video: [new RTCRtpCodecParameters({
        mimeType: "video/VP8", clockRate: 90000, payloadType: 96, rtcpFeedback: VIDEO_FEEDBACK,
      })],
      audio: [new RTCRtpCodecParameters({
        mimeType: "audio/opus", clockRate: 48000, channels: 2, payloadType: 111,
      })],
    },
  });
  const stack = {
    onRtp: null, onText: null, onOpen: null, onTrack: null, onState: null,
  };
  let dc = null;
  const tracks = {};

  pc.connectionStateChange.subscribe((state) => stack.onState && stack.onState(state));
  pc.onTrack.subscribe((track) => {
    log("track", track.kind, track.id);
    stack.onTrack && stack.onTrack({ kind: track.kind, id: track.id });
    if (track.kind !== "video") return;
    const transceiver = pc.getTransceivers().find((t) => t.receiver.tracks.includes(track));
    track.onReceiveRtp.subscribe((rtp) => {
      stack.onRtp && stack.onRtp(rtp.serialize(), (ssrc) => {
        // RFC 4585 §6.3.1: the decoder needs a keyframe to start.
        if (transceiver) transceiver.receiver.sendRtcpPLI(ssrc).catch((e) => log("PLI:", e));
      });
    });
  });

  if (args.role === "whep") {
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
  } else if (args.sends) {
    // The seed publisher: sendonly audio + video (and the data channel below).
    tracks.video = new MediaStreamTrack({ kind: "video" });
    pc.addTransceiver(tracks.video, { direction: "sendonly" });
    tracks.audio = new MediaStreamTrack({ kind: "audio" });
    pc.addTransceiver(tracks.audio, { direction: "sendonly" });
  }
  if (args.role === "subscriber" || args.role === "publisher") {
    dc = pc.createDataChannel("sfu");
    dc.stateChanged.subscribe((state) => {
      if (state === "open") stack.onOpen && stack.onOpen();
    });
    dc.onMessage.subscribe((msg) => {
      const text = typeof msg === "string" ? msg : Buffer.from(msg).toString("utf8");
      stack.onText && stack.onText(text);
    });
  }

  async function gathered() {
    if (pc.iceGatheringState === "complete") return;
    await new Promise((resolve) => {
      const sub = pc.iceGatheringStateChange.subscribe((state) => {
        if (state === "complete") { sub.unSubscribe(); resolve(); }
      });
    });
  }

  Object.assign(stack, {
    async offer() {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered();
      return keepCandidates(pc.localDescription.sdp, args.iceAddress);
    },
    async setAnswer(sdp) {
      await pc.setRemoteDescription({ type: "answer", sdp });
    },
    async renegotiate(sdp) {
      await pc.setRemoteDescription({ type: "offer", sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return pc.localDescription.sdp;
    },
    sendText(text) { dc.send(text); },
    // werift's sender rewrites SSRC, payload type, sequence numbers and timestamps to its own.
    sendRtp(kind, buf) {
      const track = tracks[kind];
      if (!track) return false;
      track.writeRtp(buf);
      return true;
    },
    state() { return pc.connectionState; },
    close() { pc.close(); },
  });
  return stack;
}

run("werift", makeStack).catch((e) => {
  process.stderr.write(`werift_peer: ${e && e.stack ? e.stack : e}\n`);
  process.stdout.write(JSON.stringify({ type: "result", ok: false, errors: [String(e)] }) + "\n");
  process.exit(1);
});
