// node-datachannel (npm; libdatachannel's C++ stack with libjuice ICE and its prebuilt binary)
// as an independent peer of trio-sfu.
//
//   node ndc_peer.mjs --role subscriber|publisher|whep --base-url URL --room R --id ID
//
// The roles, the HTTP and the seed protocol are in common.mjs; this file is the library's own
// API only (not its W3C polyfill, which has no media), with negotiation driven by hand
// (disableAutoNegotiation) so every description is the one the role asks for.

import nodeDataChannel from "node-datachannel";
import { keepCandidates, run } from "./common.mjs";

const { PeerConnection, Video, RtcpReceivingSession } = nodeDataChannel;
const VIDEO_SSRC = 0x11223344; // what tests/peers/gst_rtp_source.py writes by default
const VIDEO_PT = 96;
const AUDIO_SSRC = 0x55667788;
const AUDIO_PT = 111;

async function makeStack(args, log) {
  nodeDataChannel.initLogger(args.verbose ? "Debug" : "Warning", (level, message) => {
    log(`libdatachannel ${level}:`, message);
  });
  const pc = new PeerConnection("ndc", {
    iceServers: [],
    // libjuice gathers no loopback candidate; bound to --ice-address it offers exactly that.
    bindAddress: args.iceAddress,
    disableAutoNegotiation: true,
  });
  const stack = { onRtp: null, onText: null, onOpen: null, onTrack: null, onState: null };
  // Every Track object stays referenced here: node-datachannel closes a track whose JS object
  // is garbage-collected, and libdatachannel then leaves it out of the next description.
  const tracks = {};
  let dc = null;
  let gatheringDone = null;
  const gathered = new Promise((resolve) => { gatheringDone = resolve; });
  let described = null;

  pc.onStateChange((state) => stack.onState && stack.onState(state));
  pc.onGatheringStateChange((state) => { if (state === "complete") gatheringDone(); });
  pc.onLocalDescription((sdp, type) => {
    if (described) described({ sdp, type });
  });
  // Video RTP (after SRTP) to the common code, with libdatachannel's receiving session for
  // receiver reports and keyframe requests (PLI).
  function receiveOn(track) {
    const mid = track.mid();
    log("track", track.type(), "mid", mid, track.direction());
    stack.onTrack && stack.onTrack({ kind: track.type(), mid });
    if (track.type() !== "video") return;
    track.setMediaHandler(new RtcpReceivingSession());
    tracks[`recv:${mid}`] = track;
    track.onMessage((buf) => {
      stack.onRtp && stack.onRtp(buf, () => {
        if (!track.requestKeyframe()) log("requestKeyframe refused on mid", mid);
      });
    });
  }
  // Sections the remote side offers; tracks added here (WHEP) never come through onTrack.
  pc.onTrack(receiveOn);

  function nextDescription() {
    return new Promise((resolve) => { described = resolve; });
  }

  async function describe(type) {
    const next = nextDescription();
    pc.setLocalDescription(type);
    return (await next).sdp;
  }

  if (args.role === "whep") {
    const audio = new nodeDataChannel.Audio("0", "RecvOnly");
    audio.addOpusCodec(AUDIO_PT);
    tracks.recvAudio = pc.addTrack(audio);
    const video = new Video("1", "RecvOnly");
    video.addVP8Codec(VIDEO_PT);
    receiveOn(pc.addTrack(video));
  } else if (args.sends) {
    // Raw RTP goes out as GStreamer wrote it, so the SSRCs and payload types declared here
    // are those of tests/peers/gst_rtp_source.py.
    const video = new Video("0", "SendOnly");
    video.addVP8Codec(VIDEO_PT);
    video.addSSRC(VIDEO_SSRC, "ndc", "ndc-stream", "ndc-video");
    tracks.video = pc.addTrack(video);
    const audio = new nodeDataChannel.Audio("1", "SendOnly");
    audio.addOpusCodec(AUDIO_PT);
    audio.addSSRC(AUDIO_SSRC, "ndc", "ndc-stream", "ndc-audio");
    tracks.audio = pc.addTrack(audio);
  }
  if (args.role === "subscriber") {
    // libdatachannel picks its transport once, when the connection starts: DTLS-SRTP only if
    // the first negotiation had audio or video, plain DTLS otherwise, and media offered later
    // then fails ("The connection has no media transport"). So a libdatachannel subscriber
    // offers one recvonly video section up front, beside the seed protocol's data channel.
    const video = new Video("v", "RecvOnly");
    video.addVP8Codec(VIDEO_PT);
    tracks.placeholder = pc.addTrack(video);
  }
  if (args.role === "subscriber" || args.role === "publisher") {
    dc = pc.createDataChannel("sfu");
    dc.onOpen(() => stack.onOpen && stack.onOpen());
    dc.onMessage((msg) => {
      const text = typeof msg === "string" ? msg : Buffer.from(msg).toString("utf8");
      stack.onText && stack.onText(text);
    });
  }

  Object.assign(stack, {
    async offer() {
      await describe("offer");
      await gathered;
      return keepCandidates(pc.localDescription().sdp, args.iceAddress);
    },
    async setAnswer(sdp) {
      pc.setRemoteDescription(sdp, "answer");
    },
    async renegotiate(sdp) {
      pc.setRemoteDescription(sdp, "offer");
      return describe("answer");
    },
    sendText(text) { dc.sendMessage(text); },
    sendRtp(kind, buf) {
      const track = tracks[kind];
      if (!track || !track.isOpen()) return false;
      return track.sendMessageBinary(buf);
    },
    state() { return pc.state(); },
    close() { pc.close(); },
  });
  return stack;
}

run("ndc", makeStack).catch((e) => {
  process.stderr.write(`ndc_peer: ${e && e.stack ? e.stack : e}\n`);
  process.stdout.write(JSON.stringify({ type: "result", ok: false, errors: [String(e)] }) + "\n");
  process.exit(1);
});
