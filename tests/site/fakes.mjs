// In-memory stand-ins for RTCPeerConnection, RTCDataChannel and fetch, so the connection logic
// of site/sfu-client.js (POST, command dispatch, renegotiation queue, STOP/DELETE, RECONNECT)
// runs under node. They model only what the module relies on; the browser tests
// (tests/test_site.py) prove the same flows against real Chromium and the real server.

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

function event(type, props = {}) {
  const ev = new Event(type);
  for (const [k, v] of Object.entries(props)) Object.defineProperty(ev, k, { value: v });
  return ev;
}

export class FakeTrack extends EventTarget {
  constructor(kind, id) {
    super();
    this.kind = kind;
    this.id = id;
    this.readyState = 'live';
    this.enabled = true;
  }

  end() {
    this.readyState = 'ended';
    this.dispatchEvent(event('ended'));
  }
}

export class FakeStream extends EventTarget {
  constructor(id, tracks = []) {
    super();
    this.id = id;
    this.tracks = tracks;
  }

  getTracks() { return this.tracks.slice(); }

  addTrack(track) { if (!this.tracks.includes(track)) this.tracks.push(track); }

  removeTrack(track) { this.tracks = this.tracks.filter((t) => t !== track); }
}

export class FakeChannel extends EventTarget {
  constructor(label) {
    super();
    this.label = label;
    this.readyState = 'connecting';
    this.binaryType = 'blob';
    this.sent = [];
    this.onSend = null;  // test hook: (text) => void
  }

  send(data) {
    if (this.readyState !== 'open') throw new Error(`InvalidStateError: channel is ${this.readyState}`);
    this.sent.push(data);
    this.onSend?.(data);
  }

  close() {
    if (this.readyState === 'closed') return;
    this.readyState = 'closed';
    this.dispatchEvent(event('close'));
  }

  // Test side ("the server").
  open() {
    this.readyState = 'open';
    this.dispatchEvent(event('open'));
  }

  receive(data) {
    this.dispatchEvent(event('message', { data }));
  }
}

/**
 * A fake SDP dialect for server offers: one line per m-section, `m=<kind> <port> mid=<mid>
 * msid=<stream>:<track>`; port 0 stops the section, as in RFC 8829 §5.2.2.
 */
export function fakeOffer(sections) {
  const lines = ['v=0'];
  for (const s of sections) {
    lines.push(`m=${s.kind} ${s.port ?? 9} mid=${s.mid}${s.msid ? ` msid=${s.msid}` : ''}`);
  }
  return `${lines.join('\r\n')}\r\n`;
}

function parseFakeOffer(sdp) {
  return sdp.split('\r\n').filter((l) => l.startsWith('m=')).map((l) => {
    const [head, port, ...rest] = l.slice(2).split(' ');
    const attrs = Object.fromEntries(rest.map((kv) => kv.split('=')));
    const [stream, track] = attrs.msid ? attrs.msid.split(':') : [null, null];
    return { kind: head, port: Number(port), mid: attrs.mid, stream, track };
  });
}

export class FakePeerConnection extends EventTarget {
  static instances = [];
  /** Applied to every new instance (e.g. `{autoOpen: false}`). */
  static defaults = {};

  constructor(config) {
    super();
    Object.assign(this, { autoOpen: true, gatherDelayMs: 1, srdDelayMs: 0 }, FakePeerConnection.defaults);
    this.config = config;
    this.channels = [];
    this.transceivers = [];
    this.streams = new Map();
    this.iceGatheringState = 'new';
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.localDescription = null;
    this.remoteDescription = null;
    this.calls = [];  // ordered log of the API calls the module made
    this.closed = false;
    FakePeerConnection.instances.push(this);
  }

  static reset() {
    FakePeerConnection.instances = [];
    FakePeerConnection.defaults = {};
  }

  createDataChannel(label) {
    this.calls.push(`createDataChannel ${label}`);
    const channel = new FakeChannel(label);
    this.channels.push(channel);
    return channel;
  }

  addTransceiver(track, init) {
    this.calls.push(`addTransceiver ${track.kind} ${init.direction}`);
    const t = {
      mid: null, direction: init.direction, currentDirection: null, streams: init.streams,
      sendEncodings: init.sendEncodings ?? null,
      sender: {
        track, getStats: async () => new Map(),
        async replaceTrack(next) { this.track = next; },
      },
      receiver: { track: null, getStats: async () => new Map() },
      stopped: false,
      stop() { this.stopped = true; this.direction = 'stopped'; },
    };
    this.transceivers.push(t);
    return t;
  }

  getTransceivers() { return this.transceivers.slice(); }
  getSenders() { return this.transceivers.map((t) => t.sender); }
  getReceivers() { return this.transceivers.map((t) => t.receiver); }

  async createOffer() {
    this.calls.push('createOffer');
    const kinds = this.transceivers.map((t) => t.sender.track?.kind).join(',');
    return { type: 'offer', sdp: `v=0\r\nfake-offer tracks=${kinds} channels=${this.channels.length}\r\n` };
  }

  async createAnswer() {
    this.calls.push('createAnswer');
    return { type: 'answer', sdp: `v=0\r\nfake-answer to ${this.remoteDescription.sdp.length} bytes\r\n` };
  }

  async setLocalDescription(desc) {
    this.calls.push(`setLocalDescription ${desc.type}`);
    this.localDescription = { ...desc };
    if (desc.type === 'offer') {
      this.signalingState = 'have-local-offer';
      this.iceGatheringState = 'gathering';
      setTimeout(() => {
        // Non-trickle: the candidates show up in localDescription once gathering completes.
        this.localDescription = { ...this.localDescription, sdp: `${this.localDescription.sdp}a=candidate:fake\r\n` };
        this.iceGatheringState = 'complete';
        this.dispatchEvent(event('icegatheringstatechange'));
      }, this.gatherDelayMs);
    } else {
      this.signalingState = 'stable';
      for (const t of this.transceivers) {
        if (t.pendingPort === undefined) continue;
        t.currentDirection = t.pendingPort === 0 ? 'stopped' : 'recvonly';
        delete t.pendingPort;
      }
    }
  }

  async setRemoteDescription(desc) {
    this.calls.push(`setRemoteDescription ${desc.type}`);
    if (this.srdDelayMs) await new Promise((resolve) => setTimeout(resolve, this.srdDelayMs));
    if (this.closed) throw new Error('InvalidStateError: closed');
    if (desc.type === 'rollback') {
      this.signalingState = 'stable';
      return;
    }
    if (desc.type === 'answer') {
      if (desc.sdp.includes('reject-me')) throw new Error('OperationError: bad answer');
      this.remoteDescription = { ...desc };
      this.signalingState = 'stable';
      this.connectionState = 'connected';
      // Our offer's new sections get their mids once answered.
      this.transceivers.forEach((t, i) => { if (t.mid === null) t.mid = `${i}`; });
      if (this.autoOpen) setTimeout(() => this.channels[0]?.open(), 0);
      return;
    }
    if (desc.sdp.includes('garbage')) throw new Error('OperationError: cannot parse offer');
    this.remoteDescription = { ...desc };
    this.signalingState = 'have-remote-offer';
    for (const section of parseFakeOffer(desc.sdp)) {
      let t = this.transceivers.find((x) => x.mid === section.mid);
      if (!t) {
        const track = new FakeTrack(section.kind, section.track ?? `t${section.mid}`);
        t = {
          mid: section.mid, direction: 'recvonly', currentDirection: null,
          sender: { track: null, getStats: async () => new Map() },
          receiver: { track, getStats: async () => new Map() },
        };
        this.transceivers.push(t);
        if (section.port !== 0) {
          let stream = null;
          if (section.stream) {
            stream = this.streams.get(section.stream) ?? new FakeStream(section.stream);
            this.streams.set(section.stream, stream);
            stream.tracks.push(track);
          }
          this.dispatchEvent(event('track', {
            track, transceiver: t, receiver: t.receiver, streams: stream ? [stream] : [],
          }));
        }
      }
      t.pendingPort = section.port;
    }
  }

  async getStats() { return new Map(); }

  close() {
    if (this.closed) return;
    this.calls.push('close');
    this.closed = true;
    this.connectionState = 'closed';
    this.signalingState = 'closed';
    for (const c of this.channels) c.close();
  }

  // Test side.
  fail() {
    this.connectionState = 'failed';
    this.dispatchEvent(event('connectionstatechange'));
  }
}

/**
 * A fetch that records requests and answers from `handler(req)` → {status, body, headers};
 * the default accepts every POST with 201 and a fake answer, every DELETE with 204.
 */
export function fakeFetch(handler = null) {
  const requests = [];
  const fetch = async (url, init = {}) => {
    const req = { url, method: init.method ?? 'GET', headers: { ...(init.headers ?? {}) }, body: init.body ?? null, keepalive: !!init.keepalive };
    requests.push(req);
    await tick();
    let res = handler ? await handler(req, requests) : null;
    if (!res) res = req.method === 'POST' ? { status: 201, body: 'v=0\r\nfake-answer\r\n' } : { status: 204, body: null };
    return new Response(res.status === 204 ? null : res.body ?? '', { status: res.status, headers: res.headers ?? {} });
  };
  fetch.requests = requests;
  return fetch;
}

/** Wait (bounded) until `predicate()` holds; the fakes run on timers, so poll. */
export async function until(predicate, what, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
