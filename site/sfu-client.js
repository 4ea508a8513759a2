// trio-sfu browser client: the signaling and data-channel protocol as ES modules.
//
// No dependencies and no build step: a page imports this one file (it re-exports the rest) with
//   import { connectPublisher, connectSubscriber } from '/sfu-client.js';
// The protocol it speaks is the server's contract (README, "Data-channel protocol"):
// one HTTP POST carries the offer (non-trickle, so the answer can come back in the response),
// then every change travels as one UTF-8 text command per data-channel message.
//
// sfu-protocol.js holds the wire format (ids, commands, SDP helpers), sfu-stats.js the stats
// helpers. Nothing touches a browser global at import time, so node runs the pure parts and the
// connection logic against fakes (tests/site/).

import {
  NAME_PATTERN, SfuError, clientCommands, isValidName, makeConnectionId, msidOfMid,
  parseServerCommand, requireMode, simulcastEncodings, userOfId,
} from './sfu-protocol.js';

export * from './sfu-protocol.js';
export * from './sfu-stats.js';


const DEFAULTS = Object.freeze({
  dataChannelLabel: 'sfu',
  gatherTimeoutMs: 5000,    // non-trickle: POST whatever was gathered by then
  requestTimeoutMs: 15000,  // one HTTP request
  connectTimeoutMs: 20000,  // POST answered until the command channel is open
  stopTimeoutMs: 1500,      // STOP sent until the server closes the channel
  conflictRetries: 2,       // 409: the random suffix collided; retry with a fresh one
  // GET {baseUrl}/ice-servers before each connection and use its STUN/TURN servers (fresh,
  // short-lived TURN credentials) unless rtcConfiguration names iceServers itself.
  fetchIceServers: false,
  // A leg lost without RECONNECT (ICE/DTLS failed, the channel closed: the network changed,
  // the pod died) is replaced under a new id after 0.5 s, 1 s, 2 s, ... (at most
  // reconnectMaxDelayMs, ±20 % jitter), up to reconnectAttempts times, before onClose.
  reconnectOnLoss: false,
  reconnectAttempts: 6,
  reconnectBaseDelayMs: 500,
  reconnectMaxDelayMs: 8000,
  // 502/503/504 or no answer (a draining pod, a pod gone, a backend outage): retry with
  // back-off, honouring Retry-After; never give up on the first one.
  unavailableRetries: 8,
  retryBaseMs: 250,         // first back-off without Retry-After, doubled per retry
  retryMaxMs: 4000,         // longest wait between two tries (also caps Retry-After)
  // Publisher: send video tracks labelled `camera` as three simulcast streams (q/h/f).
  simulcast: false,
  // Subscriber: setSize() sends at most one SIZE per track per this interval (the last size
  // wins); a tile being dragged must not flood the channel.
  sizeIntervalMs: 1000,
});

/** Statuses that mean "not now, maybe elsewhere": worth another try through the same URL. */
const RETRYABLE = new Set([0, 502, 503, 504]);

function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

// ---------------------------------------------------------------------------- plumbing

const connectionError = (message, cause) => new SfuError(message, { kind: 'connection', cause });
const protocolError = (message) => new SfuError(message, { kind: 'protocol' });

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(connectionError(`timed out after ${ms} ms: ${what}`)), ms);
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
    const onClose = () => finish(connectionError('data channel closed before it opened'));
    const timer = setTimeout(() => finish(connectionError(
      `data channel not open after ${ms} ms (ICE/DTLS did not connect)`)), ms);
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

function iceServersUrl(baseUrl) {
  return `${String(baseUrl ?? '').replace(/\/+$/, '')}/ice-servers`;
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
    if (!isValidName(o.room)) {
      throw new SfuError(`room must match ${NAME_PATTERN}, got ${JSON.stringify(o.room)}`);
    }
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
    if (typeof this._RTCPeerConnection !== 'function') {
      throw new SfuError('RTCPeerConnection is not available');
    }
  }

  /** This connection's id (`user-suffix`); changes on RECONNECT. */
  get id() { return this._leg?.id ?? null; }
  get pc() { return this._leg?.pc ?? null; }
  get channel() { return this._leg?.channel ?? null; }
  /** The `/pub/{room}/{id}` or `/sub/{room}/{id}` URL of the current leg. */
  get url() { return this._leg ? this._urlOf(this._leg) : null; }

  _urlOf(leg) {
    return apiUrl(this.options.baseUrl, this.role, this.room, leg.id);
  }

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

  /**
   * The RTCConfiguration of a new leg: `rtcConfiguration`, plus the server's STUN/TURN list
   * when `fetchIceServers` is set (TURN credentials expire, so fetched for every leg). A
   * server without the route, or any failure, leaves host candidates only (ICE-TCP included).
   */
  async _rtcConfiguration() {
    const o = this.options;
    const config = { ...(o.rtcConfiguration ?? {}) };
    if (!o.fetchIceServers || config.iceServers) return config;
    try {
      const res = await request(this._fetch, iceServersUrl(o.baseUrl), {
        method: 'GET', headers: headersFor(o.token, { Accept: 'application/json' }),
      }, o.requestTimeoutMs);
      if (res.status === 200) {
        const body = await res.json();
        if (Array.isArray(body?.iceServers)) config.iceServers = body.iceServers;
      }
    } catch { /* host candidates only */ }
    return config;
  }

  async _openLeg() {
    const o = this.options;
    let unavailable = 0;
    for (let attempt = 0; ; attempt++) {
      const leg = this._newLeg(makeConnectionId(this.user), await this._rtcConfiguration());
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
        if (err instanceof SfuError && err.kind === 'http' && RETRYABLE.has(err.status)
            && !leg.posted && unavailable < o.unavailableRetries) {
          // The POST created nothing (503 comes before anything is made): try again, through
          // the same base URL, which a load balancer sends to a live pod.
          const backoff = Math.min(o.retryMaxMs, o.retryBaseMs * 2 ** unavailable);
          const wait = err.retryAfter != null ? Math.min(o.retryMaxMs, err.retryAfter * 1000)
            : backoff;
          unavailable++;
          await sleep(wait);
          this._checkNotStopped();
          continue;
        }
        if (err instanceof SfuError) throw err;
        throw connectionError(`${this.role} connection failed: ${err.message}`, err);
      } finally {
        this._connectingLeg = null;
      }
    }
  }

  _newLeg(id, rtcConfiguration) {
    const pc = new this._RTCPeerConnection(rtcConfiguration ?? this.options.rtcConfiguration ?? {});
    // The first channel the client opens carries the commands (created before the offer, so
    // the offer has its m=application section).
    const channel = pc.createDataChannel(this.options.dataChannelLabel);
    channel.binaryType = 'arraybuffer';
    const leg = { id, pc, channel, closed: false, posted: false, negotiation: Promise.resolve() };
    channel.addEventListener('message', (ev) => this._onMessage(leg, ev.data));
    channel.addEventListener('close', () => {
      this._onLegLost(leg, 'the server closed the connection');
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed') this._onLegLost(leg, 'the connection failed (ICE/DTLS)');
    });
    this._setupLeg(leg);
    return leg;
  }

  /** Extra query for the POST (a publisher labels its sections). */
  _postQuery() { return ''; }

  async _post(leg, sdp) {
    const o = this.options;
    const url = this._urlOf(leg) + this._postQuery();
    const headers = { 'Content-Type': 'application/sdp', Accept: 'application/sdp' };
    const res = await request(this._fetch, url, {
      method: 'POST', headers: headersFor(o.token, headers), body: sdp,
    }, o.requestTimeoutMs);
    const body = await res.text();
    if (res.status !== 201) {
      const retry = Number.parseInt(res.headers?.get?.('Retry-After') ?? '', 10);
      const detail = body.trim() || res.statusText || '';
      throw new SfuError(`POST ${url}: ${res.status} ${detail}`.trim(), {
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
    if (leg !== this._leg || this.state !== 'open') return;
    if (this.options.reconnectOnLoss && !this._reconnecting) {
      this._recoverLostLeg(leg, reason);
    } else {
      this._finish(reason);
    }
  }

  /** Delay before recovery attempt `n` (0-based): exponential, capped, ±20 % jitter. */
  _backoffMs(n) {
    const o = this.options;
    const delay = Math.min(o.reconnectMaxDelayMs, o.reconnectBaseDelayMs * 2 ** n);
    return Math.round(delay * (0.8 + 0.4 * Math.random()));
  }

  /**
   * The current leg was lost (not a RECONNECT from the server): connect again under a new id
   * with exponential back-off. The old leg is DELETEd quietly so the server frees it now
   * rather than at its consent timeout. Kept apart from `_reconnect` (the server-initiated
   * move), which needs no back-off.
   */
  async _recoverLostLeg(oldLeg, reason) {
    this._reconnecting = true;
    this._deleteQuietly(oldLeg);
    try {
      for (let attempt = 0; attempt < this.options.reconnectAttempts; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, this._backoffMs(attempt)));
        if (this.state !== 'open') return;  // stopped meanwhile
        let leg;
        try {
          leg = await this._openLeg();
        } catch (err) {
          if (this.state !== 'open') return;
          this._error(connectionError(`reconnect attempt ${attempt + 1} failed: ${err.message}`, err));
          continue;
        }
        if (this.state !== 'open') {
          this._closeLeg(leg);
          return;
        }
        this._leg = leg;
        this._afterReconnect(oldLeg, leg);
        call(this.options.onReconnect, leg.id, oldLeg.id);
        return;
      }
      this._finish(`${reason}; reconnecting failed`);
    } finally {
      this._reconnecting = false;
    }
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
      const problem = err instanceof SfuError ? err : protocolError(`undecodable: ${err.message}`);
      this._error(problem);
      return;
    }
    const cmd = parseServerCommand(text);
    switch (cmd.type) {
      case 'INVALID':
        this._error(protocolError(`bad command from server: ${cmd.error}`));
        return;
      case 'ERROR':
        if (this._onServerError(leg, cmd.text)) return;
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
      this._error(connectionError(`reconnect failed: ${err.message}`, err));
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
    return request(this._fetch, this._urlOf(leg), {
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
        this._fetch(this._urlOf(leg), {
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
  _onServerError(_leg, _text) { return false; }
  _onCommand(_leg, cmd) {
    this._error(protocolError(`unexpected ${cmd.type} on a ${this.role} connection`));
  }
}

const DEFAULT_APP_IDS = Object.freeze({ audio: 'mic', video: 'camera' });
const APP_ID_PATTERN = NAME_PATTERN;

/**
 * A publisher: one connection whose tracks may change over time (issue 15). The browser stays
 * the offerer of everything it sends: addTrack/removeTrack renegotiate with SDP_OFFER on the
 * command channel, the server answers SDP_ANSWER and never offers to a publisher (no glare).
 */
class PublisherConnection extends SfuConnection {
  constructor(options) {
    super('pub', options);
    const tracks = options.tracks ?? options.stream?.getTracks?.() ?? [];
    if (!tracks.length) {
      throw new SfuError('a publisher needs a stream (or tracks) with at least one track');
    }
    this.stream = options.stream ?? null;
    this.tracks = [...tracks];
    /** track -> APP_ID (options.appIds, in the order of the tracks, else mic/camera). */
    const labels = options.appIds ?? [];
    for (const label of labels) {
      if (typeof label !== 'string' || !APP_ID_PATTERN.test(label)) {
        throw new SfuError(`APP_ID must match ${APP_ID_PATTERN}, got ${JSON.stringify(label)}`);
      }
    }
    this.appIds = new Map(tracks.map((t, i) => [t, labels[i] ?? DEFAULT_APP_IDS[t.kind]]));
    /** track -> sendEncodings (simulcast cameras); kept so a reconnect sends them again. */
    this.encodings = new Map();
    for (const t of tracks) this._chooseEncodings(t, this.appIds.get(t), this.options.simulcast);
    this.muted = new Set();
    /** track id -> the rids the server last asked this publisher to encode (dynacast). */
    this.activeLayers = new Map();
    this._answerWaiter = null;
    this._layers = null;
  }

  _onCommand(leg, cmd) {
    if (cmd.type === 'SDP_ANSWER') {
      const waiter = this._answerWaiter;
      if (waiter && waiter.leg === leg) waiter.resolve(cmd.sdp);
      else this._error(protocolError('SDP_ANSWER without an SDP_OFFER'));
    } else if (cmd.type === 'PUB_JOIN') call(this.options.onPublisherJoin, cmd.id, cmd.user);
    else if (cmd.type === 'PUB_LEFT') call(this.options.onPublisherLeft, cmd.id, cmd.user);
    else if (cmd.type === 'MEDIA') call(this.options.onMedia, cmd.media);
    else if (cmd.type === 'LAYERS') this._applyLayers(leg, cmd.track, cmd.rids);
    else super._onCommand(leg, cmd);
  }

  /**
   * Dynacast: encode only the simulcast streams of `trackId` that some subscriber needs
   * (`encodings[i].active`); the server resumes a stream as soon as it is needed again.
   * Changes are applied in order, one setParameters at a time.
   */
  _applyLayers(leg, trackId, rids) {
    const run = async () => {
      if (leg.closed || leg !== this._leg) return;
      const track = this.tracks.find((t) => this.trackId(t) === trackId);
      const sender = track && leg.pc.getSenders().find((x) => x.track === track);
      if (!sender) return;
      const params = sender.getParameters();
      if (!params.encodings?.some((e) => e.rid)) return;  // not simulcast
      let changed = false;
      for (const encoding of params.encodings) {
        const active = rids.includes(encoding.rid);
        if (encoding.active !== active) { encoding.active = active; changed = true; }
      }
      if (changed) await sender.setParameters(params);
      this.activeLayers.set(trackId, [...rids]);
    };
    const done = (this._layers ?? Promise.resolve()).then(run, run);
    this._layers = done.catch((err) => this._error(
      new SfuError(`LAYERS ${trackId}: ${err.message}`, { kind: 'negotiation', cause: err })));
    return done;
  }

  _onServerError(leg, text) {
    const waiter = this._answerWaiter;
    if (waiter && waiter.leg === leg && /^(bad SDP_OFFER|SDP_OFFER refused)/.test(text)) {
      waiter.reject(new SfuError(text, { kind: 'negotiation' }));
      return true;
    }
    return false;
  }

  /**
   * `?app_ids=` labels the offer's sections in order (one per track, as _setupLeg adds them):
   * a screen shared on a connection of its own is `screen`, and after a reconnect every track
   * keeps the label it had (issue 15).
   */
  _postQuery() {
    const labels = this.tracks.map((t) => this.appIds.get(t) ?? DEFAULT_APP_IDS[t.kind]);
    return `?app_ids=${labels.join(',')}`;  // labels match APP_ID_PATTERN: URL-safe
  }

  _setupLeg(leg) {
    // Send-only m-sections, each tagged with the stream so receivers group audio and video.
    for (const track of this.tracks) leg.pc.addTransceiver(track, this._transceiverInit(track));
  }

  /**
   * Simulcast (issue 11) for a camera: three streams the SFU picks from per subscriber. Audio
   * and screen shares (or anything not labelled `camera`) stay single-layer.
   */
  _chooseEncodings(track, appId, simulcast) {
    if (simulcast && track.kind === 'video' && appId === 'camera') {
      this.encodings.set(track, simulcastEncodings());
    } else {
      this.encodings.delete(track);
    }
  }

  _transceiverInit(track) {
    const init = { direction: 'sendonly', streams: this.stream ? [this.stream] : [] };
    const encodings = this.encodings.get(track);
    if (encodings) init.sendEncodings = encodings.map((e) => ({ ...e }));
    return init;
  }

  /** Whether `track` is sent as simulcast streams. */
  isSimulcast(track) {
    return this.encodings.has(track);
  }

  /** The id subscribers know `track` by (its msid track id in our SDP), or null. */
  trackId(track) {
    const pc = this.pc;
    const t = pc?.getTransceivers().find((x) => x.sender.track === track);
    if (!t || t.mid === null) return null;
    return msidOfMid(pc.localDescription?.sdp, t.mid)?.track || track.id;
  }

  /**
   * Start sending `track` on this connection, labelled `appId` (e.g. 'camera', 'screen'):
   * ADD_MEDIA, then an SDP_OFFER adding a sendonly section. Resolves once answered.
   */
  async addTrack(track, appId = DEFAULT_APP_IDS[track?.kind],
    { simulcast = this.options.simulcast } = {}) {
    if (!track || !['audio', 'video'].includes(track.kind)) {
      throw new SfuError('addTrack needs an audio or video MediaStreamTrack');
    }
    if (typeof appId !== 'string' || !APP_ID_PATTERN.test(appId)) {
      throw new SfuError(`APP_ID must match ${APP_ID_PATTERN}, got ${JSON.stringify(appId)}`);
    }
    if (this.tracks.includes(track)) throw new SfuError('that track is already published');
    const leg = this._leg;
    this._send(clientCommands.addMedia(track.kind, appId));
    this.tracks.push(track);
    this.appIds.set(track, appId);
    this._chooseEncodings(track, appId, simulcast);
    await this._renegotiate(leg, () => {
      leg.pc.addTransceiver(track, this._transceiverInit(track));
    });
    return this.trackId(track);
  }

  /**
   * Stop sending `track`: REMOVE_MEDIA (subscribers stop receiving it at once), then an
   * SDP_OFFER stopping its section (port 0; the server and subscribers recycle it later).
   */
  async removeTrack(track) {
    const index = this.tracks.indexOf(track);
    if (index < 0) throw new SfuError('that track is not published');
    const leg = this._leg;
    this._send(clientCommands.removeMedia(track.kind, this.appIds.get(track)));
    this.tracks.splice(index, 1);
    this.appIds.delete(track);
    this.encodings.delete(track);
    this.muted.delete(track);
    await this._renegotiate(leg, () => {
      const t = leg.pc.getTransceivers().find((x) => x.sender.track === track);
      if (t) t.stop();
    });
  }

  /** Pause (`on`) or resume forwarding `track` to subscribers; no renegotiation. */
  /**
   * Send `newTrack` instead of `oldTrack` (another camera or microphone) on the same section:
   * RTCRtpSender.replaceTrack, no renegotiation; subscribers keep the same track id, label
   * and mute state. A later reconnect publishes the new track.
   */
  async replaceTrack(oldTrack, newTrack) {
    const index = this.tracks.indexOf(oldTrack);
    if (index < 0) throw new SfuError('that track is not published');
    if (!newTrack || newTrack.kind !== oldTrack.kind) {
      throw new SfuError('replaceTrack needs a track of the same kind');
    }
    const sender = this.pc?.getSenders().find((x) => x.track === oldTrack);
    if (sender) await sender.replaceTrack(newTrack);
    this.tracks[index] = newTrack;
    this.appIds.set(newTrack, this.appIds.get(oldTrack));
    this.appIds.delete(oldTrack);
    if (this.encodings.has(oldTrack)) this.encodings.set(newTrack, this.encodings.get(oldTrack));
    this.encodings.delete(oldTrack);
    if (this.muted.delete(oldTrack)) this.muted.add(newTrack);
    if (this.stream?.getTracks().includes(oldTrack)) {
      this.stream.removeTrack(oldTrack);
      this.stream.addTrack(newTrack);
    }
  }

  mute(track, on = true) {
    const id = this.trackId(track);
    if (id === null) throw new SfuError('that track is not published (yet)');
    this._send(clientCommands.mute(id, on));
    if (on) this.muted.add(track); else this.muted.delete(track);
  }

  /** One renegotiation at a time on a leg; `change` alters the pc right before the offer. */
  _renegotiate(leg, change) {
    const run = async () => {
      if (leg.closed || leg !== this._leg) return;
      const pc = leg.pc;
      change();
      await pc.setLocalDescription(await pc.createOffer());
      await waitForGathering(pc, this.options.gatherTimeoutMs);
      let answer;
      try {
        answer = await withTimeout(new Promise((resolve, reject) => {
          this._answerWaiter = { leg, resolve, reject };
          leg.channel.send(clientCommands.sdpOffer(pc.localDescription.sdp));
        }), this.options.requestTimeoutMs, 'SDP_ANSWER');
      } catch (err) {
        if (pc.signalingState === 'have-local-offer') {
          try { await pc.setLocalDescription({ type: 'rollback' }); } catch { /* closed */ }
        }
        throw err;
      } finally {
        this._answerWaiter = null;
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    };
    const done = leg.negotiation.then(run, run);
    leg.negotiation = done.catch(() => {});
    return done;
  }
}

class SubscriberConnection extends SfuConnection {
  constructor(options) {
    super('sub', options);
    this.mode = requireMode(options.mode ?? 'auto');
    this.subscriptions = new Set();  // manual mode: publisher ids named by sub()
    this.publishers = new Map();     // id -> {id, user, stream, tracks: Set}
    this._ended = new WeakSet();
    this._sizes = new Map();         // 'pid track' -> {sent, pending, timer, at}: SIZE throttle
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
    // The new leg's tracks start without hints: sizes are sent again when reported again.
    for (const entry of this._sizes.values()) if (entry.timer) clearTimeout(entry.timer);
    this._sizes.clear();
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
      info = {
        id, user: userOfId(id), stream: null, tracks: new Set(), leg, announced: false,
        // issue 15: what TRACK_ADD/MUTED said, by the server's track id (the msid track id)
        appIds: new Map(), kinds: new Map(), muted: new Set(), trackIds: new Map(),
      };
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
      case 'TRACK_ADD': {
        const info = this._publisher(leg, cmd.id);
        info.appIds.set(cmd.track, cmd.appId);
        info.kinds.set(cmd.track, cmd.kind);
        call(this.options.onTrackAdd, cmd.id, cmd.track, cmd.kind, cmd.appId);
        return;
      }
      case 'TRACK_REMOVE': {
        const info = this.publishers.get(cmd.id);
        if (info) {
          info.appIds.delete(cmd.track);
          info.kinds.delete(cmd.track);
          info.muted.delete(cmd.track);
          // Its section stops in the next SDP_OFFER; the track ends now for the page.
          for (const [track, id] of info.trackIds) {
            if (id === cmd.track) this._trackEnded(info, track);
          }
        }
        call(this.options.onTrackRemove, cmd.id, cmd.track);
        return;
      }
      case 'MUTED': {
        const info = this._publisher(leg, cmd.id);
        if (cmd.muted) info.muted.add(cmd.track); else info.muted.delete(cmd.track);
        call(this.options.onMuted, cmd.id, cmd.track, cmd.muted);
        return;
      }
      case 'MEDIA':
        call(this.options.onMedia, cmd.media);
        return;
      case 'SPEAKER':
        this.speaker = cmd.id;
        call(this.options.onSpeaker, cmd.id, cmd.user);
        return;
      case 'SPEAKERS':
        this.speakers = cmd.levels;
        call(this.options.onSpeakers, cmd.levels);
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
      const message = `could not apply SDP_OFFER: ${err.message}`;
      this._error(new SfuError(message, { kind: 'negotiation', cause: err }));
      try {
        if (pc.signalingState === 'have-remote-offer') {
          await pc.setRemoteDescription({ type: 'rollback' });
        }
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
    const msid = msidOfMid(leg.pc.remoteDescription?.sdp, mid);
    const id = stream?.id ?? msid?.stream;
    if (!id || id === '-') {
      this._error(protocolError(`track on mid ${mid} has no publisher id (msid)`));
      return;
    }
    const info = this._publisher(leg, id);
    info.leg = leg;
    if (stream) info.stream = stream;
    const trackId = msid?.track || ev.track.id;
    // A recycled section brings a new publisher track on the same receiver track object.
    const previous = info.trackIds.get(ev.track);
    info.trackIds.set(ev.track, trackId);
    if (info.tracks.has(ev.track) && previous === trackId) return;
    this._ended.delete(ev.track);
    info.tracks.add(ev.track);
    const ended = () => this._trackEnded(info, ev.track);
    ev.track.addEventListener('ended', ended, { once: true });
    stream?.addEventListener?.('removetrack', (e) => { if (e.track === ev.track) ended(); });
    call(this.options.onTrack, id, ev.track, stream, {
      trackId, appId: info.appIds.get(trackId) ?? null, muted: info.muted.has(trackId),
    });
  }

  _trackEnded(info, track) {
    if (this._ended.has(track)) return;
    this._ended.add(track);
    info.tracks.delete(track);
    call(this.options.onTrackEnded, info.id, track, info.trackIds.get(track) ?? null);
  }

  _onClosed() {
    for (const info of this.publishers.values()) {
      for (const track of info.tracks) this._ended.add(track);
    }
    for (const entry of this._sizes.values()) if (entry.timer) clearTimeout(entry.timer);
    this._sizes.clear();
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

  /**
   * Which layer of a received track to get (issue 11): 'low', 'mid', 'high' (a simulcast
   * stream; congestion may still lower it), 'off' (paused, no renegotiation) or 'auto' (the
   * SFU's choice from its estimate of this link, no wider than the last setSize()).
   * `trackId` is the server's track id (TRACK_ADD, onTrack's info.trackId).
   */
  setLayer(publisherId, trackId, layer) {
    const text = clientCommands.layer(publisherId, trackId, layer);
    this._send(text);
    call(this.options.onHint, text);
  }

  /**
   * Tell the SFU the size (pixels) a received track is rendered at, so `auto` does not climb
   * above it. Sent only when it changed, and at most once per `sizeIntervalMs` per track: a
   * size arriving sooner is sent when the interval is over (the latest one only). Returns the
   * command sent now, or null (unchanged, or deferred).
   */
  setSize(publisherId, trackId, width, height) {
    const text = clientCommands.size(publisherId, trackId, width, height);  // validates
    const key = `${publisherId} ${trackId}`;
    let entry = this._sizes.get(key);
    if (!entry) {
      entry = { sent: null, pending: null, timer: null, at: -Infinity };
      this._sizes.set(key, entry);
    }
    entry.pending = text === entry.sent ? null : text;
    if (entry.pending === null || entry.timer !== null) return null;
    const wait = entry.at + this.options.sizeIntervalMs - Date.now();
    if (wait > 0) {
      entry.timer = setTimeout(() => {
        entry.timer = null;
        this._flushSize(entry);
      }, wait);
      return null;
    }
    return this._flushSize(entry);
  }

  _flushSize(entry) {
    const text = entry.pending;
    if (text === null || this.state !== 'open') return null;
    entry.pending = null;
    entry.sent = text;
    entry.at = Date.now();
    try {
      this._send(text);
    } catch (err) {
      this._error(err);
      return null;
    }
    call(this.options.onHint, text);
    return text;
  }

  /** Forget a track's sizes (its tile is gone), so a later track starts afresh. */
  forgetSize(publisherId, trackId) {
    const key = `${publisherId} ${trackId}`;
    const entry = this._sizes.get(key);
    if (entry?.timer) clearTimeout(entry.timer);
    this._sizes.delete(key);
  }

  /** 'auto' receives everyone but your own user; 'manual' only what `sub()` names. */
  setMode(mode) {
    this._send(clientCommands.subMode(mode));
    this.mode = mode;
  }
}

/**
 * Publish `stream` (its audio and/or video tracks) as `user` in `room`. Resolves once the
 * command channel is open, with an object exposing `id`, `pc`, `chat(text)`, `stop()`, and
 * (issue 15) `addTrack(track, appId)`, `removeTrack(track)`, `mute(track, on)`, `trackId(track)`:
 * tracks added and removed over the connection's life, each a renegotiation the browser offers.
 *
 * Options: baseUrl (default ''), room, user, stream or tracks, appIds (the tracks' labels in
 * order; default mic/camera), simulcast (send `camera` video as three streams q/h/f: quarter,
 * half and full resolution; addTrack(track, appId, {simulcast}) overrides it per track),
 * token (Bearer auth), onChat,
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
 * `sub(id)`, `unsub(id)`, `setMode(mode)`, `chat(text)`, `stop()`, and (issue 11)
 * `setLayer(publisherId, trackId, 'auto'|'high'|'mid'|'low'|'off')` and
 * `setSize(publisherId, trackId, width, height)` (throttled by `sizeIntervalMs`).
 *
 * Callbacks: onPublisherJoin(id, user), onPublisherLeft(id, user), onTrack(publisherId, track,
 * stream, {trackId, appId, muted}), onTrackEnded(publisherId, track, trackId),
 * onTrackAdd(publisherId, trackId, kind, appId), onTrackRemove(publisherId, trackId),
 * onMuted(publisherId, trackId, muted), onMedia(json), onChat(fromId, text),
 * onSpeaker(publisherId, user) (the room's active speaker changed; also `speaker`),
 * onSpeakers([{id, user, dbov}]) (who is audible, loudest first; also `speakers`),
 * onHint(text) (a LAYER or SIZE command just sent),
 * onError(SfuError), onClose(reason), onReconnect(newId, oldId). Other options as for
 * connectPublisher, plus mode: 'auto' (default) or 'manual'.
 */
export async function connectSubscriber(options) {
  return new SubscriberConnection(options)._connect();
}
