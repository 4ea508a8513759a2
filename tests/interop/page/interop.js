// The browser half of tests/peers/interop_browser.py: one peer of the interop matrix
// (tests/interop/README.md) in Chromium or Firefox. The page speaks the matrix's line protocol
// by POSTing each line to the peer process's collector (?collect=URL) and polling it for
// commands (stop, post). Subscriber and publisher go through the site's own module
// (/sfu-client.js), as an application would; the WHEP viewer is a plain RTCPeerConnection.
import { connectPublisher, connectSubscriber } from '/sfu-client.js';

const params = new URLSearchParams(location.search);
const role = params.get('role');
const room = params.get('room');
const id = params.get('id');
const collect = params.get('collect');
const errors = [];
let stopping = false;

let sent = Promise.resolve();
function emit(line) {
  // One POST at a time, so the lines keep their order; text/plain keeps the cross-origin
  // POST a simple request (no preflight).
  const body = JSON.stringify(line);
  sent = sent.then(() => fetch(collect + 'line', { method: 'POST', body })).catch(() => {});
  return sent;
}
const fail = (what) => { errors.push(String(what)); emit({ type: 'log', text: String(what) }); };
window.addEventListener('error', (ev) => fail(`pageerror: ${ev.message}`));
window.addEventListener('unhandledrejection', (ev) => fail(`unhandled: ${ev.reason}`));

async function nextCommand() {
  for (;;) {
    try {
      const text = (await (await fetch(collect + 'cmd')).text()).trim();
      if (text) return text;
    } catch { /* the collector is gone: keep trying until stopped */ }
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Decoded video frames per key, from getStats (inbound-rtp framesDecoded of each track).
const tracks = new Map();  // MediaStreamTrack -> key
const decoded = {};
let reported = '';
async function reportFrames(pc) {
  for (const [track, key] of tracks) {
    let report;
    try { report = await pc.getStats(track); } catch { continue; }  // a stopped transceiver
    for (const r of report.values()) {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        decoded[key] = Math.max(decoded[key] || 0, r.framesDecoded || 0);
      }
    }
  }
  const now = JSON.stringify(decoded);
  if (now !== reported) { reported = now; await emit({ type: 'frames', decoded }); }
}

// An RTCPeerConnection that reports every server command and every SDP_ANSWER sent, so the
// driver sees what the module did without the module knowing.
class Reporting extends RTCPeerConnection {
  createDataChannel(label, init) {
    const channel = super.createDataChannel(label, init);
    channel.addEventListener('message', (ev) => {
      if (typeof ev.data !== 'string') return;
      const space = ev.data.indexOf(' ');
      const name = space < 0 ? ev.data : ev.data.slice(0, space);
      const arg = space < 0 ? '' : ev.data.slice(space + 1);
      if (name === 'SDP_OFFER') {
        const mids = [...arg.matchAll(/^a=mid:(\S+)/gm)].map((m) => m[1]);
        emit({ type: 'command', name, mids });
      } else {
        emit({ type: 'command', name, arg });
      }
    });
    const send = channel.send.bind(channel);
    channel.send = (data) => {
      send(data);
      if (typeof data === 'string' && data.startsWith('SDP_ANSWER ')) {
        emit({ type: 'answered', ok: true });
      }
    };
    return channel;
  }
}

async function subscriber() {
  const sub = await connectSubscriber({
    room, user: id.slice(0, id.lastIndexOf('-')), RTCPeerConnection: Reporting,
    onTrack: (pid, track) => { if (track.kind === 'video') tracks.set(track, pid); },
    onError: (err) => {
      if (err.kind === 'negotiation') emit({ type: 'answered', ok: false, error: err.message });
      else if (err.kind !== 'server') fail(`${err.kind}: ${err.message}`);
    },
    onClose: (reason) => { if (!stopping) emit({ type: 'closed', reason }); },
  });
  await emit({ type: 'connected', id: sub.id });
  return { conn: sub, pc: () => sub.pc };
}

async function publisher() {
  const stream = await navigator.mediaDevices.getUserMedia(
    { audio: true, video: { width: 320, height: 240, frameRate: 30 } });
  const pub = await connectPublisher({
    room, user: id.slice(0, id.lastIndexOf('-')), stream,
    onError: (err) => fail(`${err.kind}: ${err.message}`),
    onClose: (reason) => { if (!stopping) emit({ type: 'closed', reason }); },
  });
  await emit({ type: 'connected', id: pub.id });
  return { conn: pub, pc: () => pub.pc };
}

// Issue 15: a publisher that starts with its microphone only and changes its tracks on the
// same connection when the driver says `do <what>`: camera, screen (a canvas capture track),
// remove-camera, mute-screen, unmute-screen. Each reply is a `did` line with the track id.
async function tracksPublisher() {
  const mic = (await navigator.mediaDevices.getUserMedia({ audio: true })).getAudioTracks()[0];
  const pub = await connectPublisher({
    room, user: id.slice(0, id.lastIndexOf('-')), tracks: [mic],
    onError: (err) => fail(`${err.kind}: ${err.message}`),
    onClose: (reason) => { if (!stopping) emit({ type: 'closed', reason }); },
  });
  const own = { mic };
  const camera = async () => {
    const s = await navigator.mediaDevices.getUserMedia(
      { video: { width: 320, height: 240, frameRate: 30 } });
    own.camera = s.getVideoTracks()[0];
    return pub.addTrack(own.camera, 'camera');
  };
  const screen = async () => {
    const c = document.createElement('canvas');
    c.width = 320; c.height = 240;
    document.body.appendChild(c);
    const g = c.getContext('2d');
    let i = 0;
    setInterval(() => {  // a moving picture: a static one would compress to nothing
      i += 1;
      g.fillStyle = `hsl(${(i * 7) % 360}, 80%, 50%)`; g.fillRect(0, 0, 320, 240);
      g.fillStyle = '#000'; g.fillRect((i * 4) % 320, 0, 24, 240);
    }, 33);
    own.screen = c.captureStream(30).getVideoTracks()[0];
    return pub.addTrack(own.screen, 'screen');
  };
  const actions = {
    mic: async () => pub.trackId(mic),
    camera,
    screen,
    'remove-camera': async () => { const t = pub.trackId(own.camera); await pub.removeTrack(own.camera); return t; },
    'mute-screen': async () => { await pub.mute(own.screen, true); return pub.trackId(own.screen); },
    'unmute-screen': async () => { await pub.mute(own.screen, false); return pub.trackId(own.screen); },
  };
  await emit({ type: 'connected', id: pub.id });
  return {
    conn: pub,
    pc: () => pub.pc,
    do: async (what) => {
      const action = actions[what];
      if (!action) throw new Error(`unknown action ${what}`);
      return action();
    },
  };
}

async function whep() {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addEventListener('track', (ev) => { if (ev.track.kind === 'video') tracks.set(ev.track, 'whep'); });
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected') emit({ type: 'connected', id: 'whep' });
    if (pc.connectionState === 'failed' && !stopping) emit({ type: 'closed', reason: 'failed' });
  });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
    setTimeout(resolve, 5000);
  });
  await emit({ type: 'ready' });
  if ((await nextCommand()) !== 'post') return { conn: null, pc: () => pc };
  const res = await fetch(`/whep/${room}`, {
    method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
  });
  await emit({ type: 'posted', status: res.status });
  const body = await res.text();
  if (res.status !== 201) { fail(`WHEP POST ${res.status}: ${body}`); return { conn: null, pc: () => pc }; }
  const location = res.headers.get('Location');
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  return {
    conn: { stop: async () => { pc.close(); if (location) await fetch(location, { method: 'DELETE' }); } },
    pc: () => pc,
  };
}

async function main() {
  const run = { subscriber, publisher, whep, tracks: tracksPublisher }[role];
  if (!run) { fail(`unknown role ${role}`); return; }
  let peer = null;
  try {
    peer = await run();
  } catch (err) {
    fail(`${role}: ${err.message || err}`);
  }
  if (peer) {
    const timer = setInterval(() => reportFrames(peer.pc()).catch(() => {}), 500);
    for (;;) {
      const command = await nextCommand();
      if (command === 'stop') break;
      if (command.startsWith('do ') && peer.do) {
        const what = command.slice(3);
        try {
          await emit({ type: 'did', what, value: await peer.do(what) });
        } catch (err) {
          fail(`${what}: ${err.message || err}`);
          await emit({ type: 'did', what, error: String(err.message || err) });
        }
      }
    }
    stopping = true;
    clearInterval(timer);
    await reportFrames(peer.pc()).catch(() => {});
    try { await peer.conn?.stop(); } catch (err) { fail(`stop: ${err.message}`); }
  }
  await emit({ type: 'result', ok: errors.length === 0, errors, decoded });
}

main();
