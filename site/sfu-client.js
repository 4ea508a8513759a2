// trio-sfu browser client: the signaling and data-channel protocol as one ES module.
//
// No dependencies and no build step: a page imports it with
//   import { connectPublisher, connectSubscriber } from '/sfu-client.js';
// The protocol it speaks is the server's contract (README, "Data-channel protocol"):
// one HTTP POST carries the offer (non-trickle, so the answer can come back in the response),
// then every change travels as one UTF-8 text command per data-channel message.
//
// The module touches no browser global at import time, so its pure parts (command parsing and
// formatting, ids, SDP and stats helpers) run under `node --test` too (tests/site/).

// ---------------------------------------------------------------------------- constants

/** Room names and connection ids: the server answers 400 to anything else. */
export const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
export const MAX_NAME_LENGTH = 64;
/** Random suffix per connection (the seed's unique-id rule): 8 of 36 symbols ≈ 41 bits. */
export const SUFFIX_LENGTH = 8;
const SUFFIX_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

export const SERVER_COMMANDS = Object.freeze([
  'PUB_JOIN', 'PUB_LEFT', 'SDP_OFFER', 'MEDIA', 'CHAT', 'ERROR', 'RECONNECT',
]);
export const CLIENT_COMMANDS = Object.freeze([
  'SDP_ANSWER', 'STOP', 'SUB', 'UNSUB', 'SUB_MODE', 'CHAT',
]);
export const SUB_MODES = Object.freeze(['auto', 'manual']);

const DEFAULTS = Object.freeze({
  dataChannelLabel: 'sfu',
  gatherTimeoutMs: 5000,    // non-trickle: POST whatever was gathered by then
  requestTimeoutMs: 15000,  // one HTTP request
  connectTimeoutMs: 20000,  // POST answered until the command channel is open
  stopTimeoutMs: 1500,      // STOP sent until the server closes the channel
  conflictRetries: 2,       // 409: the random suffix collided; retry with a fresh one
});

// ---------------------------------------------------------------------------- errors

/**
 * Everything the module reports. `kind` says where it came from:
 * 'http' (a non-201 answer; `status`, `body`, `retryAfter`), 'server' (an `ERROR` command),
 * 'protocol' (a message the module cannot parse), 'negotiation' (an SDP_OFFER that failed to
 * apply), 'connection' (ICE/DTLS/channel failures and timeouts), 'usage' (bad arguments).
 */
export class SfuError extends Error {
  constructor(message, { kind = 'usage', status = 0, body = '', retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SfuError';
    this.kind = kind;
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

// ---------------------------------------------------------------------------- ids

export function isValidName(value) {
  return typeof value === 'string' && NAME_PATTERN.test(value);
}

/** The user part of a connection id: everything before the last '-'. */
export function userOfId(id) {
  if (typeof id !== 'string') return '';
  const cut = id.lastIndexOf('-');
  return cut < 0 ? id : id.slice(0, cut);
}

function defaultRandomBytes(n) {
  const bytes = new Uint8Array(n);
  const crypto = globalThis.crypto;
  if (!crypto || typeof crypto.getRandomValues !== 'function') {
    throw new SfuError('crypto.getRandomValues is not available');
  }
  crypto.getRandomValues(bytes);
  return bytes;
}

/**
 * A random suffix of `length` symbols from [a-z0-9]. Rejection sampling keeps every symbol
 * equally likely (256 is not a multiple of 36), so collisions stay as rare as the length says.
 */
export function randomSuffix(length = SUFFIX_LENGTH, randomBytes = defaultRandomBytes) {
  if (!Number.isInteger(length) || length < 1 || length > MAX_NAME_LENGTH - 2) {
    throw new SfuError(`suffix length must be 1..${MAX_NAME_LENGTH - 2}, got ${length}`);
  }
  const limit = 256 - (256 % SUFFIX_ALPHABET.length);
  let out = '';
  for (let round = 0; out.length < length; round++) {
    if (round > 64) throw new SfuError('random source keeps returning unusable bytes');
    for (const b of randomBytes(length * 2)) {
      if (b < limit) out += SUFFIX_ALPHABET[b % SUFFIX_ALPHABET.length];
      if (out.length === length) break;
    }
  }
  return out;
}

/**
 * A fresh connection id for `user`: `user-<suffix>`. The server derives the user from the part
 * before the last '-', so a user may contain '-' but the suffix never does.
 */
export function makeConnectionId(user, { suffixLength = SUFFIX_LENGTH, randomBytes } = {}) {
  const maxUser = MAX_NAME_LENGTH - 1 - suffixLength;
  if (!isValidName(user) || user.length > maxUser) {
    throw new SfuError(
      `user must match [A-Za-z0-9_.-] and be 1..${maxUser} characters, got ${JSON.stringify(user)}`);
  }
  return `${user}-${randomSuffix(suffixLength, randomBytes)}`;
}

/**
 * Turn free text (a name typed by a person) into a valid room or user name: invalid characters
 * become '_', the result is cut to `maxLength`, and an empty result becomes `fallback`.
 */
export function sanitizeName(text, { maxLength = MAX_NAME_LENGTH, fallback = '' } = {}) {
  const cleaned = String(text ?? '').trim().replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, maxLength);
  return cleaned === '' ? fallback : cleaned;
}

// ---------------------------------------------------------------------------- commands

function splitFirst(text) {
  const cut = text.indexOf(' ');
  return cut < 0 ? [text, ''] : [text.slice(0, cut), text.slice(cut + 1)];
}

function invalid(raw, error) {
  return { type: 'INVALID', error, raw };
}

/**
 * Parse one server → client message into `{type, ...}`; never throws. Anything malformed comes
 * back as `{type: 'INVALID', error, raw}` so a caller can report it and keep going.
 */
export function parseServerCommand(message) {
  if (typeof message !== 'string') return invalid(message, 'not a text message');
  const [name, arg] = splitFirst(message);
  switch (name) {
    case 'PUB_JOIN':
    case 'PUB_LEFT':
      if (!isValidName(arg)) return invalid(message, `${name} needs a publisher id`);
      return { type: name, id: arg, user: userOfId(arg) };
    case 'SDP_OFFER':
      if (!arg.trim()) return invalid(message, 'SDP_OFFER without SDP');
      return { type: name, sdp: arg };
    case 'MEDIA': {
      let media;
      try {
        media = JSON.parse(arg);
      } catch (err) {
        return invalid(message, `MEDIA with bad JSON: ${err.message}`);
      }
      if (media === null || typeof media !== 'object' || !Array.isArray(media.publishers)) {
        return invalid(message, 'MEDIA JSON has no "publishers" array');
      }
      return { type: name, media };
    }
    case 'CHAT': {
      const [from, text] = splitFirst(arg);
      if (!isValidName(from)) return invalid(message, 'CHAT needs a sender id');
      return { type: name, from, user: userOfId(from), text };
    }
    case 'ERROR':
      return { type: name, text: arg };
    case 'RECONNECT':
      return { type: name };
    default:
      return invalid(message, `unknown command ${JSON.stringify(name.slice(0, 32))}`);
  }
}

/** Parse one client → server message (for fake servers and tests); same shape as above. */
export function parseClientCommand(message) {
  if (typeof message !== 'string') return invalid(message, 'not a text message');
  const [name, arg] = splitFirst(message);
  switch (name) {
    case 'SDP_ANSWER':
      if (!arg.trim()) return invalid(message, 'SDP_ANSWER without SDP');
      return { type: name, sdp: arg };
    case 'STOP':
      return arg === '' ? { type: name } : invalid(message, 'STOP takes no argument');
    case 'SUB':
    case 'UNSUB':
      if (!isValidName(arg)) return invalid(message, `${name} needs a publisher id`);
      return { type: name, id: arg };
    case 'SUB_MODE':
      if (!SUB_MODES.includes(arg)) return invalid(message, 'SUB_MODE needs auto or manual');
      return { type: name, mode: arg };
    case 'CHAT':
      return { type: name, text: arg };
    default:
      return invalid(message, `unknown command ${JSON.stringify(name.slice(0, 32))}`);
  }
}

function requireName(id, what) {
  if (!isValidName(id)) throw new SfuError(`${what} must match ${NAME_PATTERN}, got ${JSON.stringify(id)}`);
  return id;
}

function requireText(text, what) {
  if (typeof text !== 'string') throw new SfuError(`${what} must be a string`);
  return text;
}

/** Client → server commands, formatted exactly as the server parses them. */
export const clientCommands = Object.freeze({
  sdpAnswer: (sdp) => `SDP_ANSWER ${requireText(sdp, 'SDP')}`,
  stop: () => 'STOP',
  sub: (id) => `SUB ${requireName(id, 'publisher id')}`,
  unsub: (id) => `UNSUB ${requireName(id, 'publisher id')}`,
  subMode: (mode) => {
    if (!SUB_MODES.includes(mode)) throw new SfuError(`mode must be auto or manual, got ${JSON.stringify(mode)}`);
    return `SUB_MODE ${mode}`;
  },
  chat: (text) => `CHAT ${requireText(text, 'chat text')}`,
});

/** Server → client commands (used by fakes and tests; the server has its own formatter). */
export const serverCommands = Object.freeze({
  pubJoin: (id) => `PUB_JOIN ${requireName(id, 'publisher id')}`,
  pubLeft: (id) => `PUB_LEFT ${requireName(id, 'publisher id')}`,
  sdpOffer: (sdp) => `SDP_OFFER ${requireText(sdp, 'SDP')}`,
  media: (media) => `MEDIA ${JSON.stringify(media)}`,
  chat: (from, text) => `CHAT ${requireName(from, 'sender id')} ${requireText(text, 'chat text')}`,
  error: (text) => `ERROR ${requireText(text, 'error text')}`,
  reconnect: () => 'RECONNECT',
});

// ---------------------------------------------------------------------------- SDP helpers

/**
 * The `a=msid:<stream> <track>` of the m-section with `mid`, or null. Browsers hand the stream
 * id to `ontrack` as `event.streams[0].id`; this is the fallback when they do not.
 */
export function msidOfMid(sdp, mid) {
  if (typeof sdp !== 'string' || mid === null || mid === undefined) return null;
  const sections = sdp.split(/\r?\n(?=m=)/).slice(1);
  for (const section of sections) {
    const lines = section.split(/\r?\n/);
    if (!lines.some((l) => l === `a=mid:${mid}`)) continue;
    const msid = lines.find((l) => l.startsWith('a=msid:'));
    if (!msid) return null;
    const [stream, track = ''] = msid.slice('a=msid:'.length).trim().split(/\s+/);
    return { stream, track };
  }
  return null;
}

// ---------------------------------------------------------------------------- stats

const statsCache = new WeakMap();  // track -> previous sample, for byte and frame deltas

function statsById(report) {
  const byId = new Map();
  if (!report) return byId;
  const values = typeof report.values === 'function' ? report.values() : Object.values(report);
  for (const s of values) if (s && s.id !== undefined) byId.set(s.id, s);
  return byId;
}

function candidateInfo(c) {
  if (!c) return null;
  return {
    address: c.address ?? c.ip ?? '',
    port: c.port ?? 0,
    protocol: c.protocol ?? '',
    type: c.candidateType ?? '',
    relayProtocol: c.relayProtocol ?? null,
  };
}

/**
 * The candidate pair in use: via the transport's selectedCandidatePairId (the spec, Chromium),
 * else the pair flagged `selected` (Firefox), else a nominated pair that succeeded.
 */
export function selectedPair(report) {
  const byId = statsById(report);
  let pair = null;
  for (const s of byId.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId && byId.has(s.selectedCandidatePairId)) {
      pair = byId.get(s.selectedCandidatePairId);
      break;
    }
  }
  if (!pair) {
    const pairs = [...byId.values()].filter((s) => s.type === 'candidate-pair');
    pair = pairs.find((p) => p.selected === true)
      ?? pairs.find((p) => p.nominated && p.state === 'succeeded')
      ?? null;
  }
  if (!pair) return null;
  return {
    local: candidateInfo(byId.get(pair.localCandidateId)),
    remote: candidateInfo(byId.get(pair.remoteCandidateId)),
    state: pair.state ?? '',
    rtt: typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null,
  };
}

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/**
 * Summarize one track's stats report (pure; `streamStats` feeds it). `direction` is 'inbound'
 * (a received track) or 'outbound' (a sent one). `previous` is the sample from the last call,
 * whose byte and frame counters turn into bitrate and frame-rate deltas.
 */
export function summarizeStats(report, { kind, direction }, previous = null) {
  const byId = statsById(report);
  const type = direction === 'outbound' ? 'outbound-rtp' : 'inbound-rtp';
  const rtps = [...byId.values()].filter(
    (s) => s.type === type && (s.kind ?? s.mediaType) === kind);
  const inbound = direction !== 'outbound';
  let bytes = 0, packets = 0, packetsLost = 0, frames = 0, framesPerSecond = null;
  let width = null, height = null, codec = null, timestamp = 0;
  for (const r of rtps) {
    bytes += num(inbound ? r.bytesReceived : r.bytesSent);
    packets += num(inbound ? r.packetsReceived : r.packetsSent);
    packetsLost += num(r.packetsLost);
    frames += num(inbound ? r.framesDecoded : (r.framesEncoded ?? r.framesSent));
    if (typeof r.framesPerSecond === 'number') framesPerSecond = (framesPerSecond ?? 0) + r.framesPerSecond;
    if (typeof r.frameWidth === 'number' && r.frameWidth > (width ?? 0)) {
      width = r.frameWidth;
      height = r.frameHeight ?? null;
    }
    if (!codec && r.codecId && byId.has(r.codecId)) codec = byId.get(r.codecId).mimeType ?? null;
    timestamp = Math.max(timestamp, num(r.timestamp));
  }
  const sample = { bytes, frames, timestamp };
  const dt = previous && timestamp > previous.timestamp ? (timestamp - previous.timestamp) / 1000 : 0;
  const bitrate = dt > 0 && bytes >= previous.bytes ? ((bytes - previous.bytes) * 8) / dt : null;
  let fps = null;
  if (kind === 'video') {
    if (framesPerSecond !== null) fps = framesPerSecond;
    else if (dt > 0 && frames >= previous.frames) fps = (frames - previous.frames) / dt;
  }
  return {
    kind,
    direction,
    found: rtps.length > 0,
    bytes,
    packets,
    packetsLost,
    frames,
    framesDecoded: inbound ? frames : 0,
    fps,
    bitrate,
    width,
    height,
    codec,
    pair: selectedPair(report),
    timestamp,
    sample,
  };
}

/**
 * Stats of one track on `pc`: the selected ICE candidate pair, bitrate (bits/s, from the byte
 * delta since the previous call for this track; null on the first call), frames per second
 * and the raw counters. Works for sent tracks (the sender's stats) and received ones.
 */
export async function streamStats(pc, track) {
  const sender = pc.getSenders().find((s) => s.track === track);
  const receiver = sender ? null : pc.getReceivers().find((r) => r.track === track);
  let report;
  if (sender) report = await sender.getStats();
  else if (receiver) report = await receiver.getStats();
  else report = await pc.getStats(track);
  const direction = sender ? 'outbound' : 'inbound';
  const summary = summarizeStats(report, { kind: track.kind, direction }, statsCache.get(track) ?? null);
  if (!summary.pair) {
    // A selector-filtered report may omit the ICE stats (older Firefox); ask for all of them.
    summary.pair = selectedPair(await pc.getStats());
  }
  statsCache.set(track, summary.sample);
  return summary;
}

/** "1.23 Mbit/s", "456 kbit/s", "—" for unknown. */
export function formatBitrate(bps) {
  if (typeof bps !== 'number' || !Number.isFinite(bps) || bps < 0) return '—';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  if (bps >= 1e3) return `${Math.round(bps / 1e3)} kbit/s`;
  return `${Math.round(bps)} bit/s`;
}

function formatCandidate(c) {
  if (!c) return '?';
  const host = c.address.includes(':') ? `[${c.address}]` : c.address;
  return `${c.type || '?'} ${host || '?'}:${c.port}`;
}

/** "udp host 192.0.2.7:50712 ⇄ host 127.0.0.1:3478", "—" when no pair is selected yet. */
export function formatPair(pair) {
  if (!pair || (!pair.local && !pair.remote)) return '—';
  const protocol = (pair.local?.protocol || pair.remote?.protocol || '?').toLowerCase();
  return `${protocol} ${formatCandidate(pair.local)} ⇄ ${formatCandidate(pair.remote)}`;
}

// ---------------------------------------------------------------------------- plumbing

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new SfuError(`timed out after ${ms} ms: ${what}`, { kind: 'connection' })), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Non-trickle signaling: resolve when gathering completes, or after `ms` with what we have. */
function waitForGathering(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onState);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const onState = () => { if (pc.iceGatheringState === 'complete') done(); };
    const onCandidate = (ev) => { if (!ev.candidate) done(); };  // end-of-candidates marker
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', onState);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function waitForOpen(channel, ms) {
  if (channel.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const finish = (err) => {
      clearTimeout(timer);
      channel.removeEventListener('open', onOpen);
      channel.removeEventListener('close', onClose);
      if (err) reject(err); else resolve();
    };
    const onOpen = () => finish(null);
    const onClose = () => finish(new SfuError('data channel closed before it opened', { kind: 'connection' }));
    const timer = setTimeout(() => finish(new SfuError(
      `data channel not open after ${ms} ms (ICE/DTLS did not connect)`, { kind: 'connection' })), ms);
    channel.addEventListener('open', onOpen);
    channel.addEventListener('close', onClose);
  });
}

function waitForClose(channel, ms) {
  if (channel.readyState === 'closed') return Promise.resolve(true);
  return new Promise((resolve) => {
    const finish = (closed) => {
      clearTimeout(timer);
      channel.removeEventListener('close', onClose);
      resolve(closed);
    };
    const onClose = () => finish(true);
    const timer = setTimeout(() => finish(false), ms);
    channel.addEventListener('close', onClose);
  });
}

function apiUrl(baseUrl, role, room, id) {
  const base = String(baseUrl ?? '');
  const root = base.endsWith('/') ? base : `${base}/`;
  return `${root}${role}/${encodeURIComponent(room)}/${encodeURIComponent(id)}`;
}

function headersFor(token, extra = {}) {
  const headers = { ...extra };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function request(fetchImpl, url, init, timeoutMs) {
  const abort = typeof AbortController === 'function' ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), timeoutMs) : null;
  try {
    return await fetchImpl(url, abort ? { ...init, signal: abort.signal } : init);
  } catch (err) {
    const what = abort?.signal.aborted ? `no response after ${timeoutMs} ms` : err.message;
    throw new SfuError(`${init.method} ${url}: ${what}`, { kind: 'http', cause: err });
  } finally {
    if (timer) clearTimeout(timer);
  }
}

function decodeMessage(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return new TextDecoder('utf-8', { fatal: true }).decode(data);
  }
  throw new SfuError('data-channel message is neither text nor bytes', { kind: 'protocol' });
}

function call(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    // A failing callback must not break the protocol state machine.
    console.error('trio-sfu client: callback failed', err);
  }
}

// ---------------------------------------------------------------------------- connections

/**
 * One publisher or subscriber connection. A "leg" is one RTCPeerConnection plus its command
 * channel; RECONNECT (the cluster's drain, later) replaces the leg under a new id while the
 * object, its callbacks and its subscriptions stay.
 */
class SfuConnection {
  constructor(role, options) {
    const o = { ...DEFAULTS, ...options };
    if (!isValidName(o.room)) throw new SfuError(`room must match ${NAME_PATTERN}, got ${JSON.stringify(o.room)}`);
    makeConnectionId(o.user);  // validates the user now rather than at the first POST
    this.role = role;
    this.options = o;
    this.room = o.room;
    this.user = o.user;
    this.state = 'new';  // new -> connecting -> open -> closed
    this._leg = null;
    this._fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    this._RTCPeerConnection = o.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    if (typeof this._fetch !== 'function') throw new SfuError('fetch is not available');
    if (typeof this._RTCPeerConnection !== 'function') throw new SfuError('RTCPeerConnection is not available');
  }

  /** This connection's id (`user-suffix`); changes on RECONNECT. */
  get id() { return this._leg?.id ?? null; }
  get pc() { return this._leg?.pc ?? null; }
  get channel() { return this._leg?.channel ?? null; }
  /** The `/pub/{room}/{id}` or `/sub/{room}/{id}` URL of the current leg. */
  get url() { return this._leg ? apiUrl(this.options.baseUrl, this.role, this.room, this._leg.id) : null; }

  async _connect() {
    this.state = 'connecting';
    try {
      this._leg = await this._openLeg();
    } catch (err) {
      this.state = 'closed';
      throw err;
    }
    this.state = 'open';
    this._afterOpen(this._leg);
    return this;
  }

  _checkNotStopped() {
    if (this.state === 'closing' || this.state === 'closed') {
      throw new SfuError('stopped while connecting', { kind: 'connection' });
    }
  }

  async _openLeg() {
    const o = this.options;
    for (let attempt = 0; ; attempt++) {
      const leg = this._newLeg(makeConnectionId(this.user));
      this._connectingLeg = leg;
      try {
        const offer = await leg.pc.createOffer();
        await leg.pc.setLocalDescription(offer);
        await waitForGathering(leg.pc, o.gatherTimeoutMs);
        this._checkNotStopped();
        const answer = await this._post(leg, leg.pc.localDescription.sdp);
        leg.posted = true;
        this._checkNotStopped();
        await leg.pc.setRemoteDescription({ type: 'answer', sdp: answer });
        await withTimeout(waitForOpen(leg.channel, o.connectTimeoutMs), o.connectTimeoutMs + 1000,
          'data channel open');
        this._checkNotStopped();
        return leg;
      } catch (err) {
        // The server may hold this leg already (201 came back); DELETE rather than leave it
        // to the consent timeout.
        if (leg.posted) this._deleteQuietly(leg);
        this._closeLeg(leg);
        if (err instanceof SfuError && err.status === 409 && attempt < o.conflictRetries) continue;
        if (err instanceof SfuError) throw err;
        throw new SfuError(`${this.role} connection failed: ${err.message}`, { kind: 'connection', cause: err });
      } finally {
        this._connectingLeg = null;
      }
    }
  }

  _newLeg(id) {
    const pc = new this._RTCPeerConnection(this.options.rtcConfiguration ?? {});
    // The first channel the client opens carries the commands (created before the offer, so
    // the offer has its m=application section).
    const channel = pc.createDataChannel(this.options.dataChannelLabel);
    channel.binaryType = 'arraybuffer';
    const leg = { id, pc, channel, closed: false, posted: false, negotiation: Promise.resolve() };
    channel.addEventListener('message', (ev) => this._onMessage(leg, ev.data));
    channel.addEventListener('close', () => this._onLegLost(leg, 'the server closed the connection'));
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed') this._onLegLost(leg, 'the connection failed (ICE/DTLS)');
    });
    this._setupLeg(leg);
    return leg;
  }

  async _post(leg, sdp) {
    const o = this.options;
    const url = apiUrl(o.baseUrl, this.role, this.room, leg.id);
    const res = await request(this._fetch, url, {
      method: 'POST',
      headers: headersFor(o.token, { 'Content-Type': 'application/sdp', Accept: 'application/sdp' }),
      body: sdp,
    }, o.requestTimeoutMs);
    const body = await res.text();
    if (res.status !== 201) {
      const retry = Number.parseInt(res.headers?.get?.('Retry-After') ?? '', 10);
      throw new SfuError(`POST ${url}: ${res.status} ${body.trim() || res.statusText || ''}`.trim(), {
        kind: 'http', status: res.status, body, retryAfter: Number.isNaN(retry) ? null : retry,
      });
    }
    return body;
  }

  _closeLeg(leg) {
    if (leg.closed) return;
    leg.closed = true;
    try { leg.channel.close(); } catch { /* already closed */ }
    try { leg.pc.close(); } catch { /* already closed */ }
  }

  _send(text) {
    const channel = this._leg?.channel;
    if (this.state !== 'open' || !channel || channel.readyState !== 'open') {
      throw new SfuError(`cannot send ${text.split(' ', 1)[0]}: the connection is ${this.state}`);
    }
    channel.send(text);
  }

  /** Send one chat line to everyone in the room (subscribers receive it as CHAT <id> <text>). */
  chat(text) {
    this._send(clientCommands.chat(text));
  }

  _onLegLost(leg, reason) {
    if (leg.closed) return;
    this._closeLeg(leg);
    if (leg === this._leg && this.state === 'open') this._finish(reason);
  }

  _finish(reason) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this._leg) this._closeLeg(this._leg);
    this._onClosed();
    call(this.options.onClose, reason);
  }

  _onMessage(leg, data) {
    if (leg.closed) return;
    let text;
    try {
      text = decodeMessage(data);
    } catch (err) {
      this._error(err instanceof SfuError ? err : new SfuError(`undecodable message: ${err.message}`, { kind: 'protocol' }));
      return;
    }
    const cmd = parseServerCommand(text);
    switch (cmd.type) {
      case 'INVALID':
        this._error(new SfuError(`bad command from server: ${cmd.error}`, { kind: 'protocol' }));
        return;
      case 'ERROR':
        this._error(new SfuError(cmd.text || 'error', { kind: 'server' }));
        return;
      case 'CHAT':
        call(this.options.onChat, cmd.from, cmd.text);
        return;
      case 'RECONNECT':
        this._reconnect(leg);
        return;
      default:
        this._onCommand(leg, cmd);
    }
  }

  _error(err) {
    if (typeof this.options.onError === 'function') call(this.options.onError, err);
    else console.warn('trio-sfu client:', err.message);
  }

  /**
   * Move to a new leg through the same baseUrl (the server is draining). The new leg is made
   * before the old one is broken, so media gaps stay short.
   */
  async _reconnect(oldLeg) {
    if (oldLeg !== this._leg || this._reconnecting || this.state !== 'open') return;
    this._reconnecting = true;
    try {
      const leg = await this._openLeg();
      if (this.state !== 'open') {
        this._closeLeg(leg);
        return;
      }
      this._leg = leg;
      this._sendStopQuietly(oldLeg);
      setTimeout(() => this._closeLeg(oldLeg), this.options.stopTimeoutMs);
      this._afterReconnect(oldLeg, leg);
      call(this.options.onReconnect, leg.id, oldLeg.id);
    } catch (err) {
      if (this.state !== 'open') return;  // stopped meanwhile
      this._error(new SfuError(`reconnect failed: ${err.message}`, { kind: 'connection', cause: err }));
      this._finish('reconnect failed');
    } finally {
      this._reconnecting = false;
    }
  }

  _sendStopQuietly(leg) {
    try {
      if (leg.channel.readyState === 'open') {
        leg.channel.send(clientCommands.stop());
        return true;
      }
    } catch { /* fall through */ }
    return false;
  }

  _delete(leg) {
    return request(this._fetch, apiUrl(this.options.baseUrl, this.role, this.room, leg.id), {
      method: 'DELETE', headers: headersFor(this.options.token),
    }, this.options.requestTimeoutMs);
  }

  _deleteQuietly(leg) {
    // Best effort: the consent timeout cleans up whatever DELETE could not.
    this._delete(leg).catch(() => {});
  }

  /**
   * Leave: send STOP and wait (bounded) for the server to close the channel; if the channel is
   * not open or the server does not close it, DELETE does the same cleanup over HTTP.
   */
  async stop() {
    if (this.state === 'closed' || this.state === 'closing') return;
    this.state = 'closing';
    const leg = this._leg;
    if (leg && !leg.closed) {
      const sent = this._sendStopQuietly(leg);
      const closedByServer = sent && await waitForClose(leg.channel, this.options.stopTimeoutMs);
      if (!closedByServer) {
        try {
          await this._delete(leg);
        } catch { /* the consent timeout cleans up what DELETE could not */ }
      }
      this._closeLeg(leg);
    }
    // A leg still connecting (first connect or RECONNECT) notices the state and cleans up.
    if (this._connectingLeg) this._closeLeg(this._connectingLeg);
    this._finish('stopped');
  }

  /**
   * For `pagehide`/`beforeunload`: no awaiting, so the page can go. Sends STOP and a keepalive
   * DELETE (one of them reaches the server; the other is harmless).
   */
  stopNow() {
    if (this.state === 'closed') return;
    this.state = 'closing';
    const leg = this._leg;
    if (leg && !leg.closed) {
      this._sendStopQuietly(leg);
      try {
        this._fetch(apiUrl(this.options.baseUrl, this.role, this.room, leg.id), {
          method: 'DELETE', headers: headersFor(this.options.token), keepalive: true,
        }).catch(() => {});
      } catch { /* unloading anyway */ }
    }
    this._finish('stopped');
  }

  // Role hooks.
  _setupLeg(_leg) {}
  _afterOpen(_leg) {}
  _afterReconnect(_oldLeg, _newLeg) {}
  _onClosed() {}
  _onCommand(_leg, cmd) {
    this._error(new SfuError(`unexpected ${cmd.type} on a ${this.role} connection`, { kind: 'protocol' }));
  }
}

class PublisherConnection extends SfuConnection {
  constructor(options) {
    super('pub', options);
    const tracks = options.tracks ?? options.stream?.getTracks?.() ?? [];
    if (!tracks.length) throw new SfuError('a publisher needs a stream (or tracks) with at least one track');
    this.stream = options.stream ?? null;
    this.tracks = tracks;
  }

  _onCommand(leg, cmd) {
    // A publisher's channel carries no room events today; pass them on if the server sends them.
    if (cmd.type === 'PUB_JOIN') call(this.options.onPublisherJoin, cmd.id, cmd.user);
    else if (cmd.type === 'PUB_LEFT') call(this.options.onPublisherLeft, cmd.id, cmd.user);
    else if (cmd.type === 'MEDIA') call(this.options.onMedia, cmd.media);
    else super._onCommand(leg, cmd);
  }

  _setupLeg(leg) {
    // Send-only m-sections, each tagged with the stream so receivers group audio and video.
    const streams = this.stream ? [this.stream] : [];
    for (const track of this.tracks) leg.pc.addTransceiver(track, { direction: 'sendonly', streams });
  }
}

class SubscriberConnection extends SfuConnection {
  constructor(options) {
    super('sub', options);
    const mode = options.mode ?? 'auto';
    if (!SUB_MODES.includes(mode)) throw new SfuError(`mode must be auto or manual, got ${JSON.stringify(mode)}`);
    this.mode = mode;
    this.subscriptions = new Set();  // manual mode: publisher ids named by sub()
    this.publishers = new Map();     // id -> {id, user, stream, tracks: Set}
    this._ended = new WeakSet();
  }

  _setupLeg(leg) {
    leg.pc.addEventListener('track', (ev) => this._onTrack(leg, ev));
  }

  _afterOpen(leg) {
    this._replayState(leg);
  }

  _replayState(leg) {
    if (this.mode === 'manual') {
      leg.channel.send(clientCommands.subMode('manual'));
      for (const id of this.subscriptions) leg.channel.send(clientCommands.sub(id));
    }
  }

  _afterReconnect(oldLeg, leg) {
    this._replayState(leg);
    // Tracks of the old leg end with it; the new leg announces the room again.
    for (const [id, info] of [...this.publishers]) {
      if (info.leg === oldLeg) {
        this.publishers.delete(id);
        call(this.options.onPublisherLeft, id, info.user);
      }
    }
  }

  _publisher(leg, id) {
    let info = this.publishers.get(id);
    if (!info) {
      info = { id, user: userOfId(id), stream: null, tracks: new Set(), leg, announced: false };
      this.publishers.set(id, info);
    }
    return info;
  }

  _onCommand(leg, cmd) {
    switch (cmd.type) {
      case 'PUB_JOIN': {
        const info = this._publisher(leg, cmd.id);
        if (info.announced && info.leg === leg) return;  // already announced on this leg
        info.leg = leg;
        info.announced = true;
        call(this.options.onPublisherJoin, cmd.id, cmd.user);
        return;
      }
      case 'PUB_LEFT': {
        const info = this.publishers.get(cmd.id);
        this.publishers.delete(cmd.id);
        if (info) for (const track of info.tracks) this._trackEnded(info, track);
        call(this.options.onPublisherLeft, cmd.id, cmd.user);
        return;
      }
      case 'MEDIA':
        call(this.options.onMedia, cmd.media);
        return;
      case 'SDP_OFFER':
        // One renegotiation at a time: each offer waits for the previous answer to be sent.
        leg.negotiation = leg.negotiation.then(() => this._answer(leg, cmd.sdp));
        return;
      default:
        super._onCommand(leg, cmd);
    }
  }

  async _answer(leg, sdp) {
    if (leg.closed) return;
    const pc = leg.pc;
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await waitForGathering(pc, this.options.gatherTimeoutMs);
      if (leg.closed) return;
      leg.channel.send(clientCommands.sdpAnswer(pc.localDescription.sdp));
      this._reconcile(leg);
    } catch (err) {
      if (leg.closed) return;
      this._error(new SfuError(`could not apply SDP_OFFER: ${err.message}`, { kind: 'negotiation', cause: err }));
      try {
        if (pc.signalingState === 'have-remote-offer') await pc.setRemoteDescription({ type: 'rollback' });
      } catch { /* nothing more to undo */ }
    }
  }

  /** Tracks whose m-section was stopped (port 0) or went inactive have ended (RFC 8829 §5.2.2). */
  _reconcile(leg) {
    const active = new Set();
    for (const t of leg.pc.getTransceivers()) {
      const dir = t.currentDirection;
      const live = !t.stopped && dir !== 'stopped' && dir !== 'inactive' && dir !== 'sendonly';
      if (live && t.receiver?.track) active.add(t.receiver.track);
    }
    for (const info of this.publishers.values()) {
      if (info.leg !== leg) continue;
      for (const track of info.tracks) if (!active.has(track)) this._trackEnded(info, track);
    }
  }

  _onTrack(leg, ev) {
    if (leg.closed) return;
    const stream = ev.streams?.[0] ?? null;
    const mid = ev.transceiver?.mid;
    const id = stream?.id ?? msidOfMid(leg.pc.remoteDescription?.sdp, mid)?.stream;
    if (!id || id === '-') {
      this._error(new SfuError(`track on mid ${mid} has no publisher id (msid)`, { kind: 'protocol' }));
      return;
    }
    const info = this._publisher(leg, id);
    info.leg = leg;
    if (stream) info.stream = stream;
    if (info.tracks.has(ev.track)) return;
    info.tracks.add(ev.track);
    const ended = () => this._trackEnded(info, ev.track);
    ev.track.addEventListener('ended', ended, { once: true });
    stream?.addEventListener?.('removetrack', (e) => { if (e.track === ev.track) ended(); });
    call(this.options.onTrack, id, ev.track, stream);
  }

  _trackEnded(info, track) {
    if (this._ended.has(track)) return;
    this._ended.add(track);
    info.tracks.delete(track);
    call(this.options.onTrackEnded, info.id, track);
  }

  _onClosed() {
    for (const info of this.publishers.values()) {
      for (const track of info.tracks) this._ended.add(track);
    }
  }

  /** Manual mode: start receiving a publisher (remembered across RECONNECT). */
  sub(publisherId) {
    this._send(clientCommands.sub(publisherId));
    this.subscriptions.add(publisherId);
  }

  /** Manual mode: stop receiving a publisher. */
  unsub(publisherId) {
    this._send(clientCommands.unsub(publisherId));
    this.subscriptions.delete(publisherId);
  }

  /** 'auto' receives everyone but your own user; 'manual' only what `sub()` names. */
  setMode(mode) {
    this._send(clientCommands.subMode(mode));
    this.mode = mode;
  }
}

/**
 * Publish `stream` (its audio and/or video tracks) as `user` in `room`. Resolves once the
 * command channel is open, with an object exposing `id`, `pc`, `chat(text)`, `stop()`.
 *
 * Options: baseUrl (default ''), room, user, stream or tracks, token (Bearer auth), onChat,
 * onError, onClose(reason), onReconnect(newId, oldId), dataChannelLabel, rtcConfiguration,
 * timeouts (gatherTimeoutMs, requestTimeoutMs, connectTimeoutMs, stopTimeoutMs), and fetch /
 * RTCPeerConnection to substitute the browser's.
 */
export async function connectPublisher(options) {
  return new PublisherConnection(options)._connect();
}

/**
 * Subscribe in `room` as `user` (a data channel only; media arrives by SDP_OFFER). Resolves
 * once the command channel is open, with an object exposing `id`, `pc`, `publishers`,
 * `sub(id)`, `unsub(id)`, `setMode(mode)`, `chat(text)`, `stop()`.
 *
 * Callbacks: onPublisherJoin(id, user), onPublisherLeft(id, user), onTrack(publisherId, track,
 * stream), onTrackEnded(publisherId, track), onMedia(json), onChat(fromId, text),
 * onError(SfuError), onClose(reason), onReconnect(newId, oldId). Other options as for
 * connectPublisher, plus mode: 'auto' (default) or 'manual'.
 */
export async function connectSubscriber(options) {
  return new SubscriberConnection(options)._connect();
}
