// The role logic shared by the werift and node-datachannel peers (tests/peers/node_peers/).
//
// Each stack's script supplies a small adapter (how to make an offer, apply an answer, answer a
// renegotiation, send and receive RTP); everything the server sees (the HTTP requests, the
// seed data-channel protocol, when RTP starts) is decided here, once, so the two stacks are
// driven exactly alike and differ only where their own WebRTC implementations differ.
//
// The line protocol with the parent (tests/interop/node_peer.py) is the one of the other
// peers: one JSON object per line on stdout, logs on stderr, `{"type": "stop"}` or EOF on stdin
// to end. Lines: `posted` (the POST's status and Location), `open` (the data channel),
// `message` (every seed command that is not an SDP_OFFER: PUB_JOIN, PUB_LEFT, ERROR, ...),
// `offer` / `answered` (each SDP_OFFER and our SDP_ANSWER, or the stack's error), `track`,
// `ready` (with --wait-post: the offer is made, POST on a `{"type": "post"}` line),
// `state`, `progress` (about once a second) and the final `result`.
//
// Neither stack has codecs. A subscriber or WHEP viewer writes every received VP8 RTP packet
// (after SRTP, as its stack hands it over) to 127.0.0.1:--rtp-out, where the test decodes it
// with PyAV; a publisher sends the RTP that tests/peers/gst_rtp_source.py (GStreamer) writes to
// its local UDP port. Proof of media is therefore decoded frames, counted by the test.

import { spawn } from "node:child_process";
import dgram from "node:dgram";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PEERS_DIR = path.dirname(HERE);
const DEBIAN_PYTHON = "/usr/bin/python3";
const START = Date.now();
let NAME = "node-peer";

export function log(...parts) {
  const t = ((Date.now() - START) / 1000).toFixed(3).padStart(8);
  process.stderr.write(`[${NAME} ${t}] ${parts.map(String).join(" ")}\n`);
}

export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export function parseArgs(argv) {
  const args = {
    role: "sub", url: null, rtpOut: 0, timeout: 120, iceAddress: "127.0.0.1", token: null,
    width: 320, height: 240, audio: false, verbose: false, waitPost: false,
    holdAnswer: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value`);
      return argv[++i];
    };
    if (key === "--role") args.role = value();
    else if (key === "--url") args.url = value();
    else if (key === "--rtp-out") args.rtpOut = Number(value());
    else if (key === "--timeout") args.timeout = Number(value());
    else if (key === "--ice-address") args.iceAddress = value();
    else if (key === "--token") args.token = value();
    else if (key === "--audio") args.audio = true;
    else if (key === "--wait-post") args.waitPost = true;
    else if (key === "--hold-answer") args.holdAnswer = true;
    else if (key === "--verbose") args.verbose = true;
    else throw new Error(`unknown argument ${key}`);
  }
  if (!["sub", "pub", "whip", "whep"].includes(args.role)) throw new Error(`bad --role ${args.role}`);
  if (!args.url) throw new Error("--url is required");
  if (["sub", "whep"].includes(args.role) && !args.rtpOut) throw new Error(`--role ${args.role} needs --rtp-out`);
  return args;
}

// RFC 4566 §6 a=rtpmap: the payload types that carry VP8 in a description.
export function vp8PayloadTypes(sdp) {
  const types = new Set();
  for (const m of sdp.matchAll(/^a=rtpmap:(\d+) VP8\/90000/gim)) types.add(Number(m[1]));
  return types;
}

export function mediaSections(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l.startsWith("m=")).length;
}

// Only host candidates on --ice-address: the server under test listens there, and a stack
// that also offers its other interfaces would only make the server probe addresses the test
// cannot vouch for.
export function keepCandidates(sdp, address) {
  const lines = sdp.split(/\r?\n/).filter((line) => {
    if (!line.startsWith("a=candidate:")) return true;
    const parts = line.split(" ");
    return parts[2].toLowerCase() === "udp" && parts[4] === address;
  });
  return lines.join("\r\n");
}

function headers(args, contentType) {
  const h = {};
  if (contentType) h["Content-Type"] = contentType;
  if (args.token) h.Authorization = `Bearer ${args.token}`;
  return h;
}

async function request(args, method, url, body, contentType) {
  const res = await fetch(url, {
    method, body, headers: headers(args, contentType), signal: AbortSignal.timeout(15000),
  });
  const text = await res.text();
  const location = res.headers.get("location");
  return {
    status: res.status, text, location: location ? new URL(location, url).href : null,
    etag: res.headers.get("etag"),
  };
}

// Reads {"type": ...} lines from the parent: `stopped` resolves on "stop" or EOF, `go` on
// "post", `proceed` on "apply" (both also with `stopped`, so a waiting peer never hangs).
function readStdin() {
  let stop, post, apply;
  const stopped = new Promise((r) => { stop = r; });
  const go = new Promise((r) => { post = r; });
  const proceed = new Promise((r) => { apply = r; });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    let msg;
    try { msg = JSON.parse(line); } catch { log("ignoring non-JSON stdin line"); return; }
    if (msg.type === "stop") { stop("stop"); post("stop"); apply("stop"); }
    else if (msg.type === "post") post("post");
    else if (msg.type === "apply") apply("apply");
    else log("ignoring stdin message", msg.type);
  });
  rl.on("close", () => { stop("stdin closed"); post("stdin closed"); apply("stdin closed"); });
  return { stopped, go, proceed };
}

// Starts GStreamer writing VP8 (and Opus) RTP to local UDP sockets; calls onPacket(kind, buf).
async function startSource(args, onPacket) {
  const sockets = {};
  const kinds = args.audio ? ["video", "audio"] : ["video"];
  for (const kind of kinds) {
    const socket = dgram.createSocket("udp4");
    socket.on("message", (buf) => onPacket(kind, buf));
    await new Promise((r) => socket.bind(0, "127.0.0.1", r));
    sockets[kind] = socket;
  }
  const argv = [
    path.join(PEERS_DIR, "gst_rtp_source.py"),
    "--video-port", String(sockets.video.address().port),
    "--width", String(args.width), "--height", String(args.height),
    "--timeout", String(args.timeout + 30),
  ];
  if (sockets.audio) argv.push("--audio-port", String(sockets.audio.address().port));
  const child = spawn(DEBIAN_PYTHON, argv, { stdio: ["pipe", "ignore", "inherit"] });
  child.on("exit", (code, signal) => log("gst_rtp_source exited", code, signal));
  return {
    stop() {
      try { child.stdin.end(); } catch { /* already gone */ }
      setTimeout(() => child.kill("SIGKILL"), 3000).unref();
      for (const s of Object.values(sockets)) s.close();
    },
  };
}

// Runs one role with a stack adapter (see werift_peer.mjs / ndc_peer.mjs for the contract):
//   stack.offer() -> complete local offer SDP (gathering done)
//   stack.setAnswer(sdp)
//   stack.renegotiate(offerSdp) -> answer SDP            (role sub)
//   stack.sendText(text), stack.onText = cb, stack.onOpen = cb   (sub, pub)
//   stack.onRtp = (buf) => ...   video RTP after SRTP    (sub, whep)
//   stack.sendRtp(kind, buf)                              (pub)
//   stack.state() -> connection state string; stack.close()
export async function run(name, makeStack) {
  NAME = name;
  const args = parseArgs(process.argv.slice(2));
  log("started:", process.argv.slice(2).join(" "));
  const errors = [];
  const messages = [];
  const renegotiations = [];
  const counts = { rtpIn: 0, vp8In: 0, rtpOut: 0, sourcePackets: 0, keyframeRequests: 0 };
  let vp8 = new Set();
  let post = null;
  let del = null;
  let opened = false;
  let source = null;
  const { stopped, go, proceed } = readStdin();
  const deadline = new Promise((r) => setTimeout(() => r("timeout"), args.timeout * 1000).unref());
  const out = dgram.createSocket("udp4");
  const stack = await makeStack(args, log);

  // What an application feeding a decoder does: ask each new video stream for a keyframe
  // (RFC 4585 §6.3.1 PLI) when it starts, and once or twice more in case the first request
  // went out before the sender was ready. Bounded: three requests per SSRC.
  const asked = new Set();
  stack.onRtp = (buf, requestKeyframe) => {
    counts.rtpIn++;
    // RTCP (RFC 5761 §4: PT 192-223 in the second octet) and RTX are not VP8 data.
    if (buf.length < 12 || !vp8.has(buf[1] & 0x7f)) return;
    counts.vp8In++;
    out.send(buf, args.rtpOut, "127.0.0.1");
    const ssrc = buf.readUInt32BE(8);
    if (requestKeyframe && !asked.has(ssrc)) {
      asked.add(ssrc);
      counts.keyframeRequests++;
      requestKeyframe(ssrc);
      for (const delay of [1000, 3000]) {
        setTimeout(() => { counts.keyframeRequests++; requestKeyframe(ssrc); }, delay).unref();
      }
    }
  };
  stack.onTrack = (info) => emit({ type: "track", ...info });
  stack.onState = (state) => emit({ type: "state", state });
  stack.onOpen = () => { opened = true; emit({ type: "open" }); };

  // The seed protocol (README "Data-channel protocol"): answer each SDP_OFFER in turn.
  let chain = Promise.resolve();
  stack.onText = (text) => {
    if (!text.startsWith("SDP_OFFER ")) {
      messages.push(text);
      emit({ type: "message", text });
      return;
    }
    const offer = text.slice("SDP_OFFER ".length);
    const n = renegotiations.length + 1;
    const entry = { n, sections: mediaSections(offer) };
    renegotiations.push(entry);
    emit({ type: "offer", n, sdp: offer });
    chain = chain.then(async () => {
      try {
        const answer = await stack.renegotiate(offer);
        for (const pt of vp8PayloadTypes(offer)) vp8.add(pt);
        stack.sendText(`SDP_ANSWER ${answer}`);
        entry.answered = true;
        emit({ type: "answered", n, ok: true, sdp: answer });
      } catch (e) {
        entry.error = String(e && e.stack ? e.stack : e);
        errors.push(`SDP_OFFER ${n}: ${e}`);
        emit({ type: "answered", n, ok: false, error: String(e) });
      }
    });
  };

  let progressTimer = null;
  try {
    const offer = await stack.offer();
    if (args.waitPost) {
      // The test times the POST itself (e.g. right after another client's POST).
      emit({ type: "ready" });
      const why = await go;
      if (why !== "post") throw new Error(`told to stop before posting (${why})`);
    }
    const ct = "application/sdp";
    post = await request(args, "POST", args.url, offer, ct);
    emit({ type: "posted", status: post.status, location: post.location, etag: post.etag });
    if (post.status !== 201) throw new Error(`POST ${args.url} answered ${post.status}: ${post.text}`);
    if (args.role !== "sub") for (const pt of vp8PayloadTypes(post.text)) vp8.add(pt);
    if (args.holdAnswer) {
      // Keep the connection from starting (no ICE checks before the answer is applied), so
      // the test can act while this client is certainly still connecting.
      const why = await proceed;
      if (why !== "apply") throw new Error(`told to stop before applying the answer (${why})`);
    }
    await stack.setAnswer(post.text);
    if (args.role === "pub" || args.role === "whip") {
      source = await startSource(args, (kind, buf) => {
        counts.sourcePackets++;
        if (stack.sendRtp(kind, buf)) counts.rtpOut++;
      });
    }
    progressTimer = setInterval(() => emit({
      type: "progress", state: stack.state(), opened, ...counts,
      offers: renegotiations.length, answered: renegotiations.filter((r) => r.answered).length,
    }), 1000);
    const reason = await Promise.race([stopped, deadline]);
    log("stopping:", reason);
    if (reason === "timeout") errors.push("timeout");
  } catch (e) {
    errors.push(String(e && e.stack ? e.stack : e));
    log("failed:", e && e.stack ? e.stack : e);
  } finally {
    if (progressTimer) clearInterval(progressTimer);
    await chain;
  }
  if (source) source.stop();
  const location = args.role === "sub" || args.role === "pub" ? args.url : post && post.location;
  if (post && post.status === 201 && location) {
    try {
      const r = await request(args, "DELETE", location);
      del = { status: r.status, body: r.text.slice(0, 300) };
    } catch (e) {
      del = { error: String(e) };
      errors.push(`DELETE: ${e}`);
    }
  }
  const result = {
    type: "result",
    ok: errors.length === 0 && !!post && post.status === 201,
    errors, messages, renegotiations, ...counts, opened,
    state: stack.state(),
    post: post && { status: post.status, location: post.location, etag: post.etag,
                    body: post.status === 201 ? undefined : post.text.slice(0, 500) },
    answer: post && post.status === 201 ? post.text : undefined,
    delete: del,
  };
  try { stack.close(); } catch (e) { log("close:", e); }
  out.close();
  emit(result);
  // The stacks keep timers (consent, SCTP) alive; the result is out, so end here.
  setTimeout(() => process.exit(result.ok ? 0 : 1), 200);
}
