// The npm package whip-whep (the WHIP/WHEP browser clients by the WHIP spec's author) driving
// a real Chromium peer connection. The test calls the window.* functions below through
// Playwright (tests/peers/browser.py) and reads window.report().
//
// Every fetch the library makes is recorded (method, URL, request headers and fragment, status,
// response headers and body) so the tests can assert what went over HTTP: the trickle PATCH
// (RFC 8840 sdpfrag, RFC 9725 §4.3.1) and the ICE restart PATCH (If-Match: *, §4.3.2) with the
// server's 200 and new ETag. Unhandled rejections are recorded too: the library throws from
// timers (for example on a refused trickle PATCH) and nothing else would see it.
import { WHIPClient } from "./node_modules/whip-whep/whip.js";
import { WHEPClient } from "./node_modules/whip-whep/whep.js";

const S = {
  role: null, // "publisher" | "viewer"
  pc: null,
  client: null,
  http: [],
  errors: [],
  events: [],
  restarts: 0,
  stream: null,
};
window.S = S;

const t0 = performance.now();
function log(...parts) {
  const line = parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ");
  S.events.push({ t: Math.round(performance.now() - t0), line });
  console.log(line);
}

window.addEventListener("unhandledrejection", (ev) => {
  const message = ev.reason && ev.reason.message ? ev.reason.message : String(ev.reason);
  S.errors.push(`unhandled rejection: ${message}`);
  console.error("unhandled rejection:", message);
});

// -- the HTTP log ------------------------------------------------------------------------------

const RESPONSE_HEADERS = ["location", "etag", "link", "content-type", "accept-patch",
  "retry-after", "www-authenticate"];
const originalFetch = window.fetch.bind(window);
window.fetch = async (input, init = {}) => {
  const method = (init.method || "GET").toUpperCase();
  const url = typeof input === "string" ? input : input.toString();
  const reqHeaders = {};
  for (const [k, v] of Object.entries(init.headers || {})) {
    reqHeaders[k.toLowerCase()] = k.toLowerCase() === "authorization" ? "Bearer …" : v;
  }
  const entry = {
    t: Math.round(performance.now() - t0),
    method,
    url,
    reqHeaders,
    reqBody: method === "PATCH" ? String(init.body || "") : undefined,
  };
  S.http.push(entry);
  try {
    const response = await originalFetch(input, init);
    entry.status = response.status;
    entry.headers = {};
    for (const name of RESPONSE_HEADERS) {
      const value = response.headers.get(name);
      if (value !== null) entry.headers[name] = value;
    }
    if (method === "PATCH" || !response.ok) {
      entry.body = await response.clone().text();
    }
    log(`${method} ${url} -> ${response.status}`);
    return response;
  } catch (err) {
    entry.error = String(err);
    log(`${method} ${url} failed: ${err}`);
    throw err;
  }
};

// -- peer connection ---------------------------------------------------------------------------

function newPeerConnection() {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  // The library sets onconnectionstatechange itself, so listen with addEventListener.
  pc.addEventListener("connectionstatechange", () => log("connectionState", pc.connectionState));
  pc.addEventListener("iceconnectionstatechange",
    () => log("iceConnectionState", pc.iceConnectionState));
  return pc;
}

// Chromium enumerates every interface (loopback included) only for a page that holds a media
// permission, so both roles ask for the fake camera.
async function camera(audio) {
  return navigator.mediaDevices.getUserMedia({ audio, video: { width: 640, height: 360 } });
}

window.publish = async ({ url, token }) => {
  if (S.client) throw new Error("this page already has a client");
  S.role = "publisher";
  S.stream = await camera(true);
  document.getElementById("local").srcObject = S.stream;
  const pc = S.pc = newPeerConnection();
  for (const track of S.stream.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [S.stream] });
  }
  const whip = S.client = new WHIPClient();
  await whip.publish(pc, url, token || undefined);
  log("published", whip.resourceURL.toString());
  return { location: whip.resourceURL.toString(), etag: whip.etag };
};

window.view = async ({ url, token }) => {
  if (S.client) throw new Error("this page already has a client");
  S.role = "viewer";
  const permission = await camera(false);
  permission.getTracks().forEach((t) => t.stop());
  const pc = S.pc = newPeerConnection();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (ev) => {
    log("track", ev.track.kind);
    if (ev.track.kind === "video") {
      document.getElementById("remote").srcObject = ev.streams[0] || new MediaStream([ev.track]);
    }
  };
  const whep = S.client = new WHEPClient();
  await whep.view(pc, url, token || undefined);
  log("viewing", whep.resourceURL.toString());
  return { location: whep.resourceURL.toString() };
};

// The library's ICE restart: restartIce(), a new offer, PATCH with If-Match: * (RFC 9725 §4.3.2).
window.restart = async () => {
  S.restarts += 1;
  log("ICE restart", S.restarts);
  await S.client.restart();
  return { etag: S.client.etag };
};

window.stop = async () => {
  if (!S.client) return null;
  await S.client.stop();
  if (S.stream) S.stream.getTracks().forEach((t) => t.stop());
  return true;
};

// -- what the test reads -------------------------------------------------------------------------

async function rtpStats() {
  const out = { video: {}, audio: {}, pair: null };
  if (!S.pc || S.pc.signalingState === "closed") return out;
  const stats = await S.pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  stats.forEach((s) => {
    if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && (s.kind in out)) {
      const o = out[s.kind];
      o[s.type] = {
        packets: s.packetsReceived ?? s.packetsSent,
        bytes: s.bytesReceived ?? s.bytesSent,
        framesDecoded: s.framesDecoded,
        framesEncoded: s.framesEncoded,
        keyFramesDecoded: s.keyFramesDecoded,
        keyFramesEncoded: s.keyFramesEncoded,
        pliCount: s.pliCount,
        nackCount: s.nackCount,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        codec: byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null,
      };
    }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      if (pair) {
        const local = byId.get(pair.localCandidateId) || {};
        const remote = byId.get(pair.remoteCandidateId) || {};
        out.pair = {
          local: `${local.address}:${local.port}`,
          remote: `${remote.address}:${remote.port}`,
          state: pair.state,
          dtlsState: s.dtlsState,
          iceState: s.iceState,
          remoteUfrag: remote.usernameFragment,
        };
      }
    }
  });
  return out;
}

window.report = async () => {
  const rtp = await rtpStats();
  const inbound = rtp.video["inbound-rtp"] || {};
  const outbound = rtp.video["outbound-rtp"] || {};
  return {
    role: S.role,
    connectionState: S.pc ? S.pc.connectionState : "none",
    iceConnectionState: S.pc ? S.pc.iceConnectionState : "none",
    framesDecoded: inbound.framesDecoded || 0,
    framesEncoded: outbound.framesEncoded || 0,
    rtp,
    restarts: S.restarts,
    http: S.http,
    errors: S.errors,
    events: S.events.slice(-50),
  };
};

window.pageReady = true;
log("page ready");
