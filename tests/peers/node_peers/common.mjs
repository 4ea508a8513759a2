// The role logic shared by the werift and node-datachannel peers (tests/peers/node_peers/).
//
// Each stack's script supplies a small adapter (how to make an offer, apply an answer, answer a
// renegotiation, send and receive RTP); everything the server sees (the HTTP requests, the
// seed data-channel protocol, when RTP starts) is decided here, once, so the two stacks are
// driven exactly alike and differ only where their own WebRTC implementations differ.
//
// Command line and stdout lines: the interop matrix's peer protocol (tests/interop/README.md):
// --role subscriber|publisher|whep --base-url URL --room ROOM --id ID --timeout S, lines
// `ready`, `posted`, `connected`, `command`, `answered`, `frames`, `closed`, `result`; stdin
// `{"type": "stop"}` (or EOF) and `{"type": "post"}`. Options of these peers beyond it:
//   --python PATH      the interpreter (with PyAV) that runs tests/peers/vp8_decoder.py
//   --ice-address IP   the only host candidate offered (default 127.0.0.1)
//
// Neither stack has codecs. A subscriber or WHEP viewer forwards every VP8 RTP packet its
// stack hands it (after SRTP) to tests/peers/vp8_decoder.py (PyAV), which reports decoded
// frames per SSRC; the SSRC is mapped to its publisher through the server's a=ssrc/a=msid
// lines. A publisher sends the RTP that tests/peers/gst_rtp_source.py (GStreamer) writes to
// its local UDP ports. Proof of media is therefore decoded frames.

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
    role: null, baseUrl: null, room: null, id: null, timeout: 300, python: "python3",
    iceAddress: "127.0.0.1", token: null, width: 320, height: 240, verbose: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value`);
      return argv[++i];
    };
    if (key === "--role") args.role = value();
    else if (key === "--base-url") args.baseUrl = value().replace(/\/+$/, "");
    else if (key === "--room") args.room = value();
    else if (key === "--id") args.id = value();
    else if (key === "--timeout") args.timeout = Number(value());
    else if (key === "--python") args.python = value();
    else if (key === "--ice-address") args.iceAddress = value();
    else if (key === "--token") args.token = value();
    else if (key === "--verbose") args.verbose = true;
    else throw new Error(`unknown argument ${key}`);
  }
  const paths = {
    subscriber: `/sub/${args.room}/${args.id}`, publisher: `/pub/${args.room}/${args.id}`,
    whep: `/whep/${args.room}`,
  };
  if (!(args.role in paths)) throw new Error(`bad --role ${args.role}`);
  if (!args.baseUrl || !args.room) throw new Error("--base-url and --room are required");
  if ((args.role === "subscriber" || args.role === "publisher") && !args.id) {
    throw new Error(`--role ${args.role} needs --id`);
  }
  args.url = args.baseUrl + paths[args.role];
  args.sends = args.role === "publisher";
  args.receives = args.role === "subscriber" || args.role === "whep";
  return args;
}

// RFC 5576 §4.1 a=ssrc lines with their section's a=msid (RFC 8830 §2): SSRC -> the stream
// id, which the server sets to the publisher's id (README "Data-channel protocol").
export function ssrcOwners(sdp) {
  const owners = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const msid = section.match(/^a=msid:(\S+)/m);
    if (!msid) continue;
    for (const m of section.matchAll(/^a=ssrc:(\d+) /gm)) owners.set(Number(m[1]), msid[1]);
  }
  return owners;
}

export function mids(sdp) {
  return [...sdp.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]);
}

// RFC 4566 §6 a=rtpmap: the payload types that carry VP8 in a description.
export function vp8PayloadTypes(sdp) {
  const types = new Set();
  for (const m of sdp.matchAll(/^a=rtpmap:(\d+) VP8\/90000/gim)) types.add(Number(m[1]));
  return types;
}

// Only our host candidates on --ice-address, the address the test set up to reach the server
// (loopback, or a namespace's veth end): other interfaces would only make the server probe
// addresses outside the test.
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
// "post" (or with `stopped`, so a waiting peer never hangs).
function readStdin() {
  let stop, post;
  const stopped = new Promise((r) => { stop = r; });
  const go = new Promise((r) => { post = r; });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    let msg;
    try { msg = JSON.parse(line); } catch { log("ignoring non-JSON stdin line"); return; }
    if (msg.type === "stop") { stop("stop"); post("stop"); }
    else if (msg.type === "post") post("post");
    else log("ignoring stdin message", msg.type);
  });
  rl.on("close", () => { stop("stdin closed"); post("stdin closed"); });
  return { stopped, go };
}

// Starts GStreamer writing VP8 and Opus RTP to local UDP sockets; calls onPacket(kind, buf).
async function startSource(args, onPacket) {
  const sockets = {};
  for (const kind of ["video", "audio"]) {
    const socket = dgram.createSocket("udp4");
    socket.on("message", (buf) => onPacket(kind, buf));
    await new Promise((r) => socket.bind(0, "127.0.0.1", r));
    sockets[kind] = socket;
  }
  const argv = [
    path.join(PEERS_DIR, "gst_rtp_source.py"),
    "--video-port", String(sockets.video.address().port),
    "--audio-port", String(sockets.audio.address().port),
    "--width", String(args.width), "--height", String(args.height),
    "--timeout", String(args.timeout + 30),
  ];
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

// Starts tests/peers/vp8_decoder.py; resolves to {port, stop()} once it listens, and calls
// onCounts({ssrc: frames}) with its running totals.
function startDecoder(args, onCounts) {
  const child = spawn(args.python, [path.join(PEERS_DIR, "vp8_decoder.py")],
                      { stdio: ["pipe", "pipe", "inherit"] });
  child.on("exit", (code, signal) => log("vp8_decoder exited", code, signal));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    const rl = readline.createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      const msg = JSON.parse(line);
      if (msg.type === "port") {
        resolve({
          port: msg.port,
          stop() {
            try { child.stdin.end(); } catch { /* already gone */ }
            setTimeout(() => child.kill("SIGKILL"), 3000).unref();
          },
        });
      } else if (msg.type === "decoded") onCounts(msg.ssrc);
    });
    rl.on("close", () => reject(new Error("vp8_decoder.py ended before listening")));
  });
}

// Runs one role with a stack adapter (see werift_peer.mjs / ndc_peer.mjs for the contract):
//   stack.offer() -> complete local offer SDP (gathering done)
//   stack.setAnswer(sdp)
//   stack.renegotiate(offerSdp) -> answer SDP                     (subscriber)
//   stack.sendText(text), stack.onText = cb, stack.onOpen = cb    (subscriber, publisher)
//   stack.onRtp = (buf, requestKeyframe) => ...  video RTP after SRTP   (subscriber, whep)
//   stack.sendRtp(kind, buf)                                       (publisher)
//   stack.onState = cb(state); stack.state(); stack.close()
export async function run(name, makeStack) {
  NAME = name;
  const args = parseArgs(process.argv.slice(2));
  log("started:", process.argv.slice(2).join(" "));
  const errors = [];
  let vp8 = new Set();
  let owners = new Map(); // SSRC -> publisher id (subscriber) from the latest SDP_OFFER
  const decoded = {}; // publisher id -> frames
  const perSsrc = {}; // SSRC -> frames already counted
  let post = null;
  let del = null;
  let connectedSent = false;
  let stopping = false;
  let source = null;
  let decoder = null;
  let framesDirty = false;
  const { stopped, go } = readStdin();
  const deadline = new Promise((r) => setTimeout(() => r("timeout"), args.timeout * 1000).unref());
  const out = dgram.createSocket("udp4");
  const stack = await makeStack(args, log);

  function connected() {
    if (connectedSent) return;
    connectedSent = true;
    emit({ type: "connected", id: args.id });
  }

  if (args.receives) {
    decoder = await startDecoder(args, (counts) => {
      for (const [key, total] of Object.entries(counts)) {
        const ssrc = Number(key);
        const fresh = total - (perSsrc[ssrc] || 0);
        perSsrc[ssrc] = total;
        if (fresh <= 0) continue;
        // Frames of a stream count for the publisher that owns its SSRC now.
        const owner = args.role === "whep" ? "whep" : owners.get(ssrc) || `ssrc-${ssrc}`;
        decoded[owner] = (decoded[owner] || 0) + fresh;
        framesDirty = true;
      }
    });
  }

  // What an application feeding a decoder does: ask each new video stream for a keyframe
  // (RFC 4585 §6.3.1 PLI) when it starts, and once or twice more in case the first request
  // went out before the sender was ready. Bounded: three requests per SSRC.
  const asked = new Set();
  stack.onRtp = (buf, requestKeyframe) => {
    // RTCP (RFC 5761 §4: PT 192-223 in the second octet) and RTX are not VP8 data.
    if (buf.length < 12 || !vp8.has(buf[1] & 0x7f) || !decoder) return;
    out.send(buf, decoder.port, "127.0.0.1");
    const ssrc = buf.readUInt32BE(8);
    if (requestKeyframe && !asked.has(ssrc)) {
      asked.add(ssrc);
      requestKeyframe(ssrc);
      for (const delay of [1000, 3000]) setTimeout(() => requestKeyframe(ssrc), delay).unref();
    }
  };
  stack.onState = (state) => {
    log("connection state", state);
    if (state === "connected" && args.role !== "subscriber") connected();
    if ((state === "closed" || state === "failed") && !stopping) {
      emit({ type: "closed", reason: `connection ${state}` });
    }
  };
  stack.onOpen = () => { if (args.role === "subscriber") connected(); };

  // The seed protocol (README "Data-channel protocol"): every server command is reported;
  // each SDP_OFFER is answered in turn, as the stack's own API does it.
  let chain = Promise.resolve();
  stack.onText = (text) => {
    const space = text.indexOf(" ");
    const command = space < 0 ? text : text.slice(0, space);
    const arg = space < 0 ? "" : text.slice(space + 1);
    if (command !== "SDP_OFFER") {
      emit({ type: "command", name: command, arg });
      return;
    }
    emit({ type: "command", name: command, mids: mids(arg) });
    chain = chain.then(async () => {
      try {
        const answer = await stack.renegotiate(arg);
        for (const pt of vp8PayloadTypes(arg)) vp8.add(pt);
        owners = ssrcOwners(arg);
        stack.sendText(`SDP_ANSWER ${answer}`);
        emit({ type: "answered", ok: true });
      } catch (e) {
        errors.push(`SDP_OFFER: ${e}`);
        emit({ type: "answered", ok: false, error: String(e) });
      }
    });
  };

  const framesTimer = setInterval(() => {
    if (!framesDirty) return;
    framesDirty = false;
    emit({ type: "frames", decoded });
  }, 500);
  try {
    const offer = await stack.offer();
    log("offer sections:", offer.split(/\r?\n/).filter((l) => l.startsWith("m=")).join(" | "));
    if (args.role === "whep") {
      // The driver times the POST itself (right after a publisher's POST).
      emit({ type: "ready" });
      const why = await go;
      if (why !== "post") throw new Error(`told to stop before posting (${why})`);
    }
    post = await request(args, "POST", args.url, offer, "application/sdp");
    emit({ type: "posted", status: post.status, location: post.location, etag: post.etag });
    if (post.status !== 201) throw new Error(`POST ${args.url} answered ${post.status}: ${post.text}`);
    if (args.role !== "subscriber") for (const pt of vp8PayloadTypes(post.text)) vp8.add(pt);
    await stack.setAnswer(post.text);
    if (args.sends) {
      source = await startSource(args, (kind, buf) => stack.sendRtp(kind, buf));
    }
    const reason = await Promise.race([stopped, deadline]);
    log("stopping:", reason);
    if (reason === "timeout") errors.push("timeout");
  } catch (e) {
    errors.push(String(e && e.stack ? e.stack : e));
    log("failed:", e && e.stack ? e.stack : e);
  } finally {
    stopping = true;
    clearInterval(framesTimer);
    await chain;
  }
  if (source) source.stop();
  const location = args.role === "subscriber" || args.role === "publisher"
    ? args.url : post && post.location;
  if (post && post.status === 201 && location) {
    try {
      const r = await request(args, "DELETE", location);
      del = { status: r.status, body: r.text.slice(0, 300) };
    } catch (e) {
      del = { error: String(e) };
      errors.push(`DELETE: ${e}`);
    }
  }
  if (framesDirty) emit({ type: "frames", decoded });
  const result = {
    type: "result",
    ok: errors.length === 0 && !!post && post.status === 201,
    errors, decoded, state: stack.state(), delete: del,
    post: post && { status: post.status, location: post.location,
                    body: post.status === 201 ? undefined : post.text.slice(0, 500) },
  };
  try { stack.close(); } catch (e) { log("close:", e); }
  if (decoder) decoder.stop();
  out.close();
  emit(result);
  // The stacks keep timers (consent, SCTP) alive; the result is out, so end here.
  setTimeout(() => process.exit(result.ok ? 0 : 1), 200);
}
