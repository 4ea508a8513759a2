// trio-sfu wire format: names and ids, the data-channel commands, SDP helpers. Pure functions
// only (no browser globals at import time), so node runs them too (tests/site/). Pages import
// everything through sfu-client.js.

// ---------------------------------------------------------------------------- constants

/** Room names and connection ids: the server answers 400 to anything else. */
export const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
export const MAX_NAME_LENGTH = 64;
/** Random suffix per connection (the seed's unique-id rule): 8 of 36 symbols ≈ 41 bits. */
export const SUFFIX_LENGTH = 8;
const SUFFIX_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

export const SERVER_COMMANDS = Object.freeze([
  'PUB_JOIN', 'PUB_LEFT', 'TRACK_ADD', 'TRACK_REMOVE', 'MUTED', 'SDP_OFFER', 'SDP_ANSWER',
  'MEDIA', 'CHAT', 'ERROR', 'RECONNECT', 'SPEAKER', 'SPEAKERS', 'LAYERS',
]);
export const CLIENT_COMMANDS = Object.freeze([
  'SDP_ANSWER', 'SDP_OFFER', 'ADD_MEDIA', 'REMOVE_MEDIA', 'MUTE', 'STOP', 'SUB', 'UNSUB',
  'SUB_MODE', 'SDP_RECYCLE', 'CHAT', 'LAYER', 'SIZE',
]);
export const SUB_MODES = Object.freeze(['auto', 'manual']);
export const MEDIA_KINDS = Object.freeze(['audio', 'video']);
/** `LAYER` values (issue 11): a fixed simulcast stream, `off` (paused) or the SFU's choice. */
export const LAYER_VALUES = Object.freeze(['auto', 'high', 'mid', 'low', 'off']);
/** Largest `SIZE` dimension the server takes (five digits). */
export const MAX_SIZE = 99999;
/**
 * The camera's simulcast streams (RFC 8853), lowest first as the server orders them by their
 * known names q/h/f: a quarter, half and the full resolution. `simulcastEncodings()` gives a
 * fresh copy for `addTransceiver({sendEncodings})` (the browser may annotate what it gets).
 */
export const SIMULCAST_ENCODINGS = Object.freeze([
  Object.freeze({ rid: 'q', scaleResolutionDownBy: 4 }),
  Object.freeze({ rid: 'h', scaleResolutionDownBy: 2 }),
  Object.freeze({ rid: 'f', scaleResolutionDownBy: 1 }),
]);
export function simulcastEncodings() {
  return SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
}
/**
 * Whether a camera of `width`×`height` can be sent as the three SIMULCAST_ENCODINGS. libwebrtc
 * sends as many streams as the resolution allows (3 from 960×540 up, fewer below: a 320×240
 * camera gets only `q`), and a stream declared but never sent is a top stream the SFU waits
 * for; so below this size the camera goes as one stream.
 */
export function simulcastFits({ width, height } = {}) {
  if (!(width > 0) || !(height > 0)) return false;
  return Math.max(width, height) >= 960 && Math.min(width, height) >= 540;
}
/** A track id as the server names it: the msid track id (RFC 8830 token chars) or `mid<N>`. */
export const TRACK_PATTERN = /^[!#$%&'*+.^_`{|}~0-9A-Za-z-]{1,64}$/;
/** A simulcast stream's rid (RFC 8851 §10: alphanumerics, '-' and '_'). */
export const RID_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;

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
      `user must match [A-Za-z0-9_.-] and be 1..${maxUser} characters, `
      + `got ${JSON.stringify(user)}`);
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
    case 'SDP_ANSWER':
      if (!arg.trim()) return invalid(message, `${name} without SDP`);
      return { type: name, sdp: arg };
    case 'TRACK_ADD': {
      const [id, track, kind, appId, ...rest] = arg.split(' ');
      if (rest.length || !isValidName(id) || !TRACK_PATTERN.test(track ?? '')
          || !MEDIA_KINDS.includes(kind) || !isValidName(appId ?? '')) {
        return invalid(message, 'TRACK_ADD needs <PUB_ID> <TRACK> <audio|video> <APP_ID>');
      }
      return { type: name, id, user: userOfId(id), track, kind, appId };
    }
    case 'TRACK_REMOVE': {
      const [id, track, ...rest] = arg.split(' ');
      if (rest.length || !isValidName(id) || !TRACK_PATTERN.test(track ?? '')) {
        return invalid(message, 'TRACK_REMOVE needs <PUB_ID> <TRACK>');
      }
      return { type: name, id, user: userOfId(id), track };
    }
    case 'MUTED': {
      const [id, track, state, ...rest] = arg.split(' ');
      if (rest.length || !isValidName(id) || !TRACK_PATTERN.test(track ?? '')
          || (state !== 'on' && state !== 'off')) {
        return invalid(message, 'MUTED needs <PUB_ID> <TRACK> on|off');
      }
      return { type: name, id, user: userOfId(id), track, muted: state === 'on' };
    }
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
    case 'SPEAKER':
      if (!isValidName(arg)) return invalid(message, 'SPEAKER needs a publisher id');
      return { type: name, id: arg, user: userOfId(arg) };
    case 'SPEAKERS': {
      // `<PUB_ID>:<dBov> ...`, loudest first; none at all when nobody is audible.
      const levels = [];
      for (const item of arg.split(' ').filter((x) => x !== '')) {
        const cut = item.lastIndexOf(':');
        const id = item.slice(0, cut);
        const dbov = Number(item.slice(cut + 1));
        if (cut < 0 || !isValidName(id) || !Number.isInteger(dbov) || dbov < -127 || dbov > 0) {
          return invalid(message, 'SPEAKERS needs <PUB_ID>:<dBov -127..0> items');
        }
        levels.push({ id, user: userOfId(id), dbov });
      }
      return { type: name, levels };
    }
    case 'LAYERS': {
      // Dynacast: the simulcast streams (rids) of a published track some subscriber needs.
      const [track, list, ...rest] = arg.split(' ');
      const rids = list === '-' ? [] : (list ?? '').split(',');
      if (rest.length || !TRACK_PATTERN.test(track ?? '')
          || !rids.every((r) => RID_PATTERN.test(r))) {
        return invalid(message, 'LAYERS needs <TRACK> <rid>[,<rid>...] or -');
      }
      return { type: name, track, rids };
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
    case 'SDP_OFFER':
      if (!arg.trim()) return invalid(message, `${name} without SDP`);
      return { type: name, sdp: arg };
    case 'ADD_MEDIA':
    case 'REMOVE_MEDIA': {
      const [kind, appId, ...rest] = arg.split(' ');
      if (rest.length || !MEDIA_KINDS.includes(kind) || !isValidName(appId ?? '')) {
        return invalid(message, `${name} needs audio|video and an APP_ID`);
      }
      return { type: name, kind, appId };
    }
    case 'MUTE': {
      const [track, state, ...rest] = arg.split(' ');
      if (rest.length || !TRACK_PATTERN.test(track) || (state !== 'on' && state !== 'off')) {
        return invalid(message, 'MUTE needs <TRACK> on|off');
      }
      return { type: name, track, muted: state === 'on' };
    }
    case 'STOP':
      return arg === '' ? { type: name } : invalid(message, 'STOP takes no argument');
    case 'SUB':
    case 'UNSUB':
      if (!isValidName(arg)) return invalid(message, `${name} needs a publisher id`);
      return { type: name, id: arg };
    case 'SUB_MODE':
      if (!SUB_MODES.includes(arg)) return invalid(message, 'SUB_MODE needs auto or manual');
      return { type: name, mode: arg };
    case 'SDP_RECYCLE':
      if (arg !== 'on' && arg !== 'off') return invalid(message, 'SDP_RECYCLE needs on or off');
      return { type: name, on: arg === 'on' };
    case 'CHAT':
      return { type: name, text: arg };
    case 'LAYER':
    case 'SIZE': {
      const [id, track, value, ...rest] = arg.split(' ');
      if (rest.length || !isValidName(id) || !TRACK_PATTERN.test(track ?? '')) {
        return invalid(message, `${name} needs <PUB_ID> <TRACK> and a value`);
      }
      if (name === 'LAYER') {
        if (!LAYER_VALUES.includes(value)) {
          return invalid(message, 'LAYER takes low, mid, high, off or auto');
        }
        return { type: name, id, track, layer: value };
      }
      const size = /^([0-9]{1,5})x([0-9]{1,5})$/.exec(value ?? '');
      if (!size) return invalid(message, 'SIZE takes <W>x<H> in pixels');
      return { type: name, id, track, width: Number(size[1]), height: Number(size[2]) };
    }
    default:
      return invalid(message, `unknown command ${JSON.stringify(name.slice(0, 32))}`);
  }
}

function requireName(id, what) {
  if (!isValidName(id)) {
    throw new SfuError(`${what} must match ${NAME_PATTERN}, got ${JSON.stringify(id)}`);
  }
  return id;
}

/** 'auto' or 'manual', else a usage error. */
export function requireMode(mode) {
  if (!SUB_MODES.includes(mode)) {
    throw new SfuError(`mode must be auto or manual, got ${JSON.stringify(mode)}`);
  }
  return mode;
}

function requireKind(kind) {
  if (!MEDIA_KINDS.includes(kind)) {
    throw new SfuError(`kind must be audio or video, got ${JSON.stringify(kind)}`);
  }
  return kind;
}

function requireTrack(track) {
  if (typeof track !== 'string' || !TRACK_PATTERN.test(track)) {
    throw new SfuError(`track id must match ${TRACK_PATTERN}, got ${JSON.stringify(track)}`);
  }
  return track;
}

const onOff = (on) => (on ? 'on' : 'off');

function requireLayer(layer) {
  if (!LAYER_VALUES.includes(layer)) {
    throw new SfuError(`layer must be one of ${LAYER_VALUES.join('|')}, got ${JSON.stringify(layer)}`);
  }
  return layer;
}

function requirePixels(value, what) {
  if (!Number.isInteger(value) || value < 0 || value > MAX_SIZE) {
    throw new SfuError(`${what} must be an integer 0..${MAX_SIZE}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function requireText(text, what) {
  if (typeof text !== 'string') throw new SfuError(`${what} must be a string`);
  return text;
}

/** Client → server commands, formatted exactly as the server parses them. */
export const clientCommands = Object.freeze({
  sdpAnswer: (sdp) => `SDP_ANSWER ${requireText(sdp, 'SDP')}`,
  sdpOffer: (sdp) => `SDP_OFFER ${requireText(sdp, 'SDP')}`,
  addMedia: (kind, appId) => `ADD_MEDIA ${requireKind(kind)} ${requireName(appId, 'APP_ID')}`,
  removeMedia: (kind, appId) =>
    `REMOVE_MEDIA ${requireKind(kind)} ${requireName(appId, 'APP_ID')}`,
  mute: (track, on) => `MUTE ${requireTrack(track)} ${onOff(on)}`,
  stop: () => 'STOP',
  sub: (id) => `SUB ${requireName(id, 'publisher id')}`,
  unsub: (id) => `UNSUB ${requireName(id, 'publisher id')}`,
  subMode: (mode) => `SUB_MODE ${requireMode(mode)}`,
  sdpRecycle: (on) => `SDP_RECYCLE ${on ? 'on' : 'off'}`,
  chat: (text) => `CHAT ${requireText(text, 'chat text')}`,
  layer: (id, track, layer) =>
    `LAYER ${requireName(id, 'publisher id')} ${requireTrack(track)} ${requireLayer(layer)}`,
  size: (id, track, width, height) => `SIZE ${requireName(id, 'publisher id')} `
    + `${requireTrack(track)} ${requirePixels(width, 'width')}x${requirePixels(height, 'height')}`,
});

/** Server → client commands (used by fakes and tests; the server has its own formatter). */
export const serverCommands = Object.freeze({
  pubJoin: (id) => `PUB_JOIN ${requireName(id, 'publisher id')}`,
  pubLeft: (id) => `PUB_LEFT ${requireName(id, 'publisher id')}`,
  sdpOffer: (sdp) => `SDP_OFFER ${requireText(sdp, 'SDP')}`,
  sdpAnswer: (sdp) => `SDP_ANSWER ${requireText(sdp, 'SDP')}`,
  trackAdd: (id, track, kind, appId) => `TRACK_ADD ${requireName(id, 'publisher id')} `
    + `${requireTrack(track)} ${requireKind(kind)} ${requireName(appId, 'APP_ID')}`,
  trackRemove: (id, track) =>
    `TRACK_REMOVE ${requireName(id, 'publisher id')} ${requireTrack(track)}`,
  muted: (id, track, on) =>
    `MUTED ${requireName(id, 'publisher id')} ${requireTrack(track)} ${onOff(on)}`,
  media: (media) => `MEDIA ${JSON.stringify(media)}`,
  chat: (from, text) => `CHAT ${requireName(from, 'sender id')} ${requireText(text, 'chat text')}`,
  error: (text) => `ERROR ${requireText(text, 'error text')}`,
  reconnect: () => 'RECONNECT',
  speaker: (id) => `SPEAKER ${requireName(id, 'publisher id')}`,
  speakers: (levels) => ['SPEAKERS', ...levels.map(
    ({ id, dbov }) => `${requireName(id, 'publisher id')}:${Math.round(dbov)}`)].join(' '),
  layers: (track, rids) => `LAYERS ${requireTrack(track)} ${rids.join(',') || '-'}`,
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
