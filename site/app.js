// trio-sfu demo page: join a room, publish camera/mic and screen, watch everyone else, chat.
//
// All protocol work is in sfu-client.js; this file is only UI. One subscriber connection (auto
// mode) receives every other user's publishers; mic, camera and screen share are tracks of one
// publisher connection (issue 15): the camera may start off and be turned on later
// (addTrack → ADD_MEDIA + SDP_OFFER), unchecking a device mutes it (MUTE, no renegotiation),
// and a share is added and removed on the same connection. Remote tiles are labelled by the
// track's APP_ID (camera, screen, …). A user who joined without camera and mic shares the
// screen on a connection of its own (a publisher needs a track to start).
// Issue 11: the camera is sent as three simulcast streams unless "Simulcast" is unchecked or
// the camera gives less than 960×540 (then one stream; a resolution change across that size
// re-adds the camera's section with the right encodings);
// each remote tile shows the stream it decodes (low/mid/high and its size), has a quality menu
// (LAYER auto/high/mid/low/off) and reports its rendered size (SIZE) so `auto` does not send
// more pixels than the tile shows.
// `window.sfuDemo.snapshot()` exposes the page state for the end-to-end tests.

import {
  connectPublisher,
  connectSubscriber,
  formatBitrate,
  formatLayer,
  formatPair,
  layerOfWidth,
  simulcastFits,
  randomSuffix,
  sanitizeName,
  streamStats,
  userOfId,
} from './sfu-client.js';

const RESOLUTIONS = {
  '240p': { width: 320, height: 240 },
  '480p': { width: 640, height: 480 },
  '720p': { width: 1280, height: 720 },
};
const STATS_EVERY_MS = 1000;
const MAX_USER = 55;  // 64 minus '-' and the 8-symbol suffix
const LOG_LINES = 50;
const HINT_LINES = 50;
const CHAT_LINES = 500;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('join-form'),
  room: $('room'),
  user: $('user'),
  camera: $('camera'),
  mic: $('mic'),
  resolution: $('resolution'),
  simulcast: $('simulcast'),
  fps: $('fps'),
  token: $('token'),
  tokenRow: $('token-row'),
  cameraDevice: $('camera-device'),
  micDevice: $('mic-device'),
  actual: $('camera-actual'),
  join: $('join'),
  share: $('share'),
  leave: $('leave'),
  grid: $('grid'),
  empty: $('empty'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
  status: $('status'),
  log: $('log'),
  tileTemplate: $('tile-template'),
};

const state = {
  phase: 'idle',   // idle -> joining -> joined -> leaving -> idle
  room: '',
  user: '',
  baseUrl: '',
  token: null,     // Bearer token from ?token= (servers started with --api-key/--api-secret)
  fixed: { room: false, user: false },  // names the token decides
  camera: null,    // {stream, conn}: the publisher connection (mic, camera and shared screen)
  screen: null,    // {stream, conn, shared}: shared = a track of state.camera.conn
  sub: null,
  tiles: new Map(),  // key ('local:camera', 'local:screen' or a publisher id) -> tile
  speaker: null,     // the room's active speaker (SPEAKER), a publisher id
  devices: [],       // what enumerateDevices() listed
  actual: null,      // the camera's real {width, height, frameRate} (getSettings)
  chat: [],
  log: [],
  hints: [],         // the LAYER and SIZE commands sent, newest last (for tests and curiosity)
  timer: 0,
  statsBusy: false,
};

// ---------------------------------------------------------------------------- log and status

function note(message, level = 'info') {
  const entry = { time: new Date().toISOString(), level, message };
  state.log.push(entry);
  if (state.log.length > LOG_LINES) state.log.shift();
  const li = document.createElement('li');
  li.className = level;
  li.textContent = `${entry.time.slice(11, 19)} ${message}`;
  ui.log.append(li);
  while (ui.log.childElementCount > LOG_LINES) ui.log.firstElementChild.remove();
  ui.log.scrollTop = ui.log.scrollHeight;
  if (level === 'error') console.warn('[sfu-demo]', message);
}

function updateStatus() {
  if (state.phase !== 'joined') {
    ui.status.textContent = state.phase === 'joining' ? 'Connecting…' : 'Not connected.';
    return;
  }
  const parts = [`Room ${state.room} as ${state.user}`];
  if (state.sub) parts.push(`watching as ${state.sub.id}`);
  if (state.camera?.conn) parts.push(`publishing ${state.camera.conn.id}`);
  if (state.screen?.conn) parts.push(`sharing on ${state.screen.conn.id}`);
  ui.status.textContent = `${parts.join(' · ')}.`;
}

function updateControls() {
  const idle = state.phase === 'idle';
  const joined = state.phase === 'joined';
  ui.room.disabled = !idle || state.fixed.room;
  ui.simulcast.disabled = !idle;  // applies to the next publisher connection
  ui.user.disabled = !idle || state.fixed.user;
  ui.join.disabled = !idle;
  ui.leave.disabled = !joined;
  ui.share.disabled = !joined || !navigator.mediaDevices?.getDisplayMedia;
  ui.share.textContent = state.screen ? 'Stop sharing' : 'Share screen';
  ui.share.setAttribute('aria-pressed', state.screen ? 'true' : 'false');
  ui.chatInput.disabled = !joined;
  ui.chatSend.disabled = !joined;
  ui.empty.hidden = state.tiles.size > 0;
  updateStatus();
}

// ---------------------------------------------------------------------------- tiles

function makeTile(key, { label, local, publisher = null }) {
  let tile = state.tiles.get(key);
  if (tile) return tile;
  const el = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  const video = el.querySelector('video');
  video.muted = local;  // never play our own microphone back
  el.classList.toggle('local', local);
  el.dataset.key = key;
  if (publisher) el.dataset.publisher = publisher;
  el.querySelector('.name').textContent = label;
  el.querySelector('.name').title = publisher ?? label;
  const play = el.querySelector('.play');
  play.addEventListener('click', () => {
    video.play().then(() => { play.hidden = true; }, () => {});
  });
  tile = {
    key, el, video, play, label, local, publisher,
    user: publisher ? userOfId(publisher) : state.user,
    conn: null,  // local tiles: the publisher connection carrying the tracks
    tracks: new Set(),
    trackIds: new Map(),  // remote tiles: track -> the server's track id
    appIds: new Map(),    // remote tiles: track -> APP_ID
    muted: new Set(),     // remote tiles: track ids the publisher muted
    stats: null,
    quality: 'auto',      // remote tiles: the LAYER asked for
    topWidth: 0,          // remote tiles: the widest frame decoded of the current video track
    layer: null,          // remote tiles: 'low'|'mid'|'high'|'paused'|null (not simulcast)
    qualityEl: el.querySelector('.quality'),
    observer: null,
  };
  state.tiles.set(key, tile);
  ui.grid.append(el);
  if (!local) {
    tile.qualityEl.addEventListener('change', () => onQualityPick(tile));
    // SIZE: the rendered size in device pixels (a 2× screen shows twice the pixels).
    if (typeof ResizeObserver === 'function') {
      tile.observer = new ResizeObserver(() => reportSize(tile));
      tile.observer.observe(video);
    }
  }
  markSpeaker(tile);
  updateControls();
  return tile;
}

/** The active speaker's main tile (theirs, or our camera tile) gets the `speaking` class. */
function markSpeaker(tile) {
  const id = state.speaker;
  const speaking = id !== null
    && (tile.key === id || (tile.key === 'local:camera' && tile.conn?.id === id));
  tile.el.classList.toggle('speaking', speaking);
}

function showStream(tile, stream) {
  if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
  // Autoplay with sound needs a user gesture; the Join click normally counts, but a browser
  // may still refuse, so offer a button instead of failing silently.
  tile.video.play().then(() => { tile.play.hidden = true; }, () => { tile.play.hidden = false; });
  updateBadge(tile);
}

function updateBadge(tile) {
  const kinds = [...tile.tracks].filter((t) => t.readyState !== 'ended').map((t) => t.kind);
  const off = [...tile.tracks].filter((t) => t.enabled === false).map((t) => t.kind);
  const muted = [...tile.tracks].filter((t) => tile.muted.has(tile.trackIds.get(t)))
    .map((t) => tile.appIds.get(t) ?? t.kind);
  let text = '';
  if (!kinds.length) text = 'no media yet';
  else if (!kinds.includes('video')) text = 'audio only';
  else if (!kinds.includes('audio')) text = 'video only';
  if (tile.local && off.length) {
    text = [text, `${off.join(' and ')} off`].filter(Boolean).join(', ');
  }
  if (muted.length) text = [text, `${muted.join(' and ')} muted`].filter(Boolean).join(', ');
  const paused = !tile.local && tile.quality === 'off';
  if (paused) text = [text, 'video paused'].filter(Boolean).join(', ');
  tile.el.classList.toggle('paused', paused);
  tile.el.querySelector('.badge').textContent = text;
  if (!tile.local) tile.qualityEl.hidden = !videoOf(tile);
}

/** A tile's live video track, or null. */
function videoOf(tile) {
  return [...tile.tracks].find((t) => t.kind === 'video' && t.readyState !== 'ended') ?? null;
}

function noteHint(text) {
  state.hints.push(text);
  if (state.hints.length > HINT_LINES) state.hints.shift();
}

/** The tile's quality menu: LAYER <PUB_ID> <TRACK> auto|high|mid|low|off. */
function onQualityPick(tile) {
  const value = tile.qualityEl.value;
  tile.quality = value;
  const video = videoOf(tile);
  if (state.sub && video) {
    try {
      state.sub.setLayer(tile.publisher, tile.trackIds.get(video), value);
      note(`${tile.label}: ${value === 'off' ? 'video paused' : `quality ${value}`}`);
    } catch (err) {
      note(`quality: ${err.message}`, 'error');
    }
  }
  updateBadge(tile);
  showLayer(tile);
}

/** SIZE: the tile's rendered size, when it changed (the client throttles it per track). */
function reportSize(tile) {
  const video = videoOf(tile);
  if (!state.sub || !video || !state.tiles.has(tile.key)) return;
  const box = tile.video.getBoundingClientRect();
  const scale = window.devicePixelRatio || 1;
  const width = Math.round(box.width * scale);
  const height = Math.round(box.height * scale);
  if (width <= 0 || height <= 0) return;  // hidden: keep the last size
  try {
    state.sub.setSize(tile.publisher, tile.trackIds.get(video), width, height);
  } catch (err) {
    note(`size: ${err.message}`, 'error');
  }
}

/** The "layer" line of a tile: what it decodes (low/mid/high for a simulcast camera). */
function showLayer(tile) {
  const dd = tile.el.querySelector('[data-stat="layer"]');
  if (tile.local) {
    const video = videoOf(tile);
    const simulcast = video && tile.conn?.isSimulcast?.(video);
    dd.textContent = video ? (simulcast ? 'sending simulcast q/h/f' : 'sending one stream') : '—';
    return;
  }
  const paused = tile.quality === 'off';
  const video = videoOf(tile);
  const width = tile.stats?.width ?? null;
  const height = tile.stats?.height ?? null;
  // Only a camera may be simulcast (the demo sends screen shares as one stream).
  const named = video && tile.appIds.get(video) === 'camera';
  if (named && width > tile.topWidth) tile.topWidth = width;
  const layer = named ? layerOfWidth(width, tile.topWidth) : null;
  tile.layer = paused ? 'paused' : layer;
  tile.el.dataset.layer = tile.layer ?? '';
  dd.textContent = formatLayer({ paused, layer, width, height });
}

function removeTile(key) {
  const tile = state.tiles.get(key);
  if (!tile) return;
  state.tiles.delete(key);
  tile.observer?.disconnect();
  const video = videoOf(tile);
  if (video && tile.publisher) state.sub?.forgetSize(tile.publisher, tile.trackIds.get(video));
  tile.video.srcObject = null;
  tile.el.remove();
  updateControls();
}

function clearTiles() {
  for (const key of [...state.tiles.keys()]) removeTile(key);
}

// ---------------------------------------------------------------------------- stats

function aggregate(samples) {
  const video = samples.find((s) => s.kind === 'video');
  const audio = samples.find((s) => s.kind === 'audio');
  const rates = samples.map((s) => s.bitrate).filter((b) => typeof b === 'number');
  return {
    pair: samples.find((s) => s.pair)?.pair ?? null,
    bitrate: rates.length ? rates.reduce((a, b) => a + b, 0) : null,
    fps: video?.fps ?? null,
    framesDecoded: video?.framesDecoded ?? 0,
    frames: video?.frames ?? 0,
    videoPackets: video?.packets ?? 0,
    audioPackets: audio?.packets ?? 0,
    codec: video?.codec ?? audio?.codec ?? null,
    width: video?.width ?? null,
    height: video?.height ?? null,
  };
}

async function refreshTile(tile) {
  const pc = tile.local ? tile.conn?.pc : state.sub?.pc;
  const tracks = [...tile.tracks].filter((t) => t.readyState !== 'ended');
  if (!pc || !tracks.length) return;
  const samples = await Promise.all(tracks.map((t) => streamStats(pc, t)));
  if (!state.tiles.has(tile.key)) return;  // left while we waited
  tile.stats = aggregate(samples);
  const dd = (name) => tile.el.querySelector(`[data-stat="${name}"]`);
  dd('pair').textContent = formatPair(tile.stats.pair);
  dd('bitrate').textContent = formatBitrate(tile.stats.bitrate);
  const { fps, width, height } = tile.stats;
  const size = width && height ? ` (${width}×${height})` : '';
  dd('fps').textContent = typeof fps === 'number' ? `${fps.toFixed(0)}${size}` : '—';
  tile.refreshes = (tile.refreshes ?? 0) + 1;
  showLayer(tile);
}

async function refreshStats() {
  if (state.statsBusy) return;  // a slow getStats must not pile up calls
  state.statsBusy = true;
  try {
    await Promise.all([...state.tiles.values()].map((t) => refreshTile(t).catch((err) => {
      note(`stats for ${t.label}: ${err.message}`, 'error');
    })));
  } finally {
    state.statsBusy = false;
  }
}

// ---------------------------------------------------------------------------- media

function cameraConstraints() {
  const { width, height } = RESOLUTIONS[ui.resolution.value] ?? RESOLUTIONS['480p'];
  const frameRate = Number(ui.fps.value) || 30;
  const wanted = {
    width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: frameRate },
  };
  if (ui.cameraDevice.value) wanted.deviceId = { exact: ui.cameraDevice.value };
  return wanted;
}

/** Simulcast for this camera track: asked for, and the camera is large enough for 3 streams. */
function wantSimulcast(track) {
  return Boolean(track) && ui.simulcast.checked && simulcastFits(track.getSettings?.() ?? {});
}

/**
 * The camera's encodings no longer fit its size (a resolution picked while publishing): the
 * number of streams is fixed by the section's SDP, and a declared stream the browser stops
 * sending would leave subscribers waiting for it, so the camera's section is replaced by one
 * with the right encodings (REMOVE_MEDIA + ADD_MEDIA; subscribers get the new track).
 */
async function fitSimulcast(entry) {
  const old = entry?.stream.getVideoTracks()[0];
  const conn = entry?.conn;
  if (!old || !conn || !conn.tracks.includes(old)) return;
  const wanted = wantSimulcast(old);
  if (conn.isSimulcast(old) === wanted) return;
  const fresh = old.clone();  // same device, same constraints
  fresh.enabled = old.enabled;
  await conn.removeTrack(old);
  entry.stream.removeTrack(old);
  entry.stream.addTrack(fresh);
  old.stop();
  const tile = state.tiles.get('local:camera');
  if (tile) {
    tile.tracks.delete(old);
    tile.tracks.add(fresh);
    showStream(tile, entry.stream);
  }
  await conn.addTrack(fresh, 'camera', { simulcast: wanted });
  if (!fresh.enabled) conn.mute(fresh, true);
  note(`camera now sent as ${wanted ? 'three simulcast streams' : 'one stream'}`);
}

function micConstraints() {
  return ui.micDevice.value ? { deviceId: { exact: ui.micDevice.value } } : true;
}

/** What the camera really delivers (getSettings), next to what the selector asked for. */
function showActual() {
  const video = state.camera?.stream.getVideoTracks()[0];
  if (!video || video.readyState === 'ended') {
    ui.actual.textContent = '';
    state.actual = null;
    return;
  }
  const s = video.getSettings();
  const asked = RESOLUTIONS[ui.resolution.value] ?? RESOLUTIONS['480p'];
  state.actual = { width: s.width ?? 0, height: s.height ?? 0, frameRate: s.frameRate ?? 0 };
  const got = `${s.width ?? '?'}×${s.height ?? '?'} at ${Math.round(s.frameRate ?? 0)} fps`;
  ui.actual.textContent = s.width === asked.width && s.height === asked.height
    ? `camera gives ${got}`
    : `asked ${asked.width}×${asked.height}, camera gives ${got}`;
}

/** Fill the device pickers (labels appear once the page holds a media permission). */
async function listDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  for (const [select, kind, name] of [[ui.cameraDevice, 'videoinput', 'camera'],
    [ui.micDevice, 'audioinput', 'microphone']]) {
    const chosen = select.value;
    const options = [new Option('default', '')];
    devices.filter((d) => d.kind === kind && d.deviceId).forEach((d, i) => {
      options.push(new Option(d.label || `${name} ${i + 1}`, d.deviceId));
    });
    select.replaceChildren(...options);
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }
  state.devices = devices.filter((d) => d.deviceId).map((d) => ({
    kind: d.kind, deviceId: d.deviceId, label: d.label,
  }));
}

/**
 * Another camera or microphone picked while publishing: its track replaces the old one on the
 * same section (RTCRtpSender.replaceTrack): no renegotiation, same track for everyone.
 */
async function onDevicePick(kind) {
  const entry = state.camera;
  const old = entry?.stream.getTracks().find((t) => t.kind === kind);
  const what = kind === 'video' ? 'camera' : 'microphone';
  if (!entry?.conn || !old) return;
  try {
    const got = await navigator.mediaDevices.getUserMedia(
      kind === 'video' ? { video: cameraConstraints() } : { audio: micConstraints() });
    const fresh = got.getTracks()[0];
    if (state.camera !== entry) { fresh.stop(); return; }
    fresh.enabled = old.enabled;  // a muted camera stays muted
    await entry.conn.replaceTrack(old, fresh);  // also swaps it in entry.stream
    old.stop();
    const tile = state.tiles.get('local:camera');
    if (tile) {
      tile.tracks.delete(old);
      tile.tracks.add(fresh);
      showStream(tile, entry.stream);
    }
    if (kind === 'video') await fitSimulcast(entry);  // another camera, another size
    note(`${what} now ${fresh.label || 'switched'}`);
  } catch (err) {
    note(`${what}: ${err.message}`, 'error');
  }
  showActual();
}

function connOptions(extra) {
  return {
    baseUrl: state.baseUrl,
    room: state.room,
    user: state.user,
    token: state.token ?? undefined,
    fetchIceServers: true,  // STUN/TURN from GET /ice-servers (fresh TURN credentials)
    reconnectOnLoss: true,  // a lost connection comes back under a new id, with back-off
    onError: (err) => note(err.message, 'error'),
    onReconnect: (id, oldId) => note(`connection lost: reconnected as ${id} (was ${oldId})`),
    ...extra,
  };
}

async function startCamera() {
  const wantVideo = ui.camera.checked;
  const wantAudio = ui.mic.checked;
  if (!wantVideo && !wantAudio) return;
  const stream = await navigator.mediaDevices.getUserMedia({
    video: wantVideo ? cameraConstraints() : false,
    audio: wantAudio ? micConstraints() : false,
  });
  listDevices();  // now with labels
  if (state.phase !== 'joining' && state.phase !== 'joined') {
    stopTracks(stream);
    return;
  }
  const entry = { stream, conn: null };
  state.camera = entry;
  const tile = makeTile('local:camera', { label: `${state.user} (you)`, local: true });
  for (const t of stream.getTracks()) tile.tracks.add(t);
  showStream(tile, stream);
  entry.conn = await connectPublisher(connOptions({
    stream,
    // the camera as q/h/f when its size allows; mic and screen stay one stream
    simulcast: wantSimulcast(stream.getVideoTracks()[0]),
    onClose: (reason) => onPublisherClosed(entry, 'local:camera', reason),
  }));
  tile.conn = entry.conn;
  markSpeaker(tile);
  showActual();
  note(`publishing camera as ${entry.conn.id}`);
  updateControls();
}

async function stopCamera() {
  const entry = state.camera;
  if (!entry) return;
  state.camera = null;
  removeTile('local:camera');
  stopTracks(entry.stream);
  showActual();
  await entry.conn?.stop();
}

function onPublisherClosed(entry, key, reason) {
  if (reason === 'stopped') return;  // we asked for it
  note(`publisher ${entry.conn?.id ?? ''} closed: ${reason}`, 'error');
  if (state.camera === entry) state.camera = null;
  if (state.screen === entry) state.screen = null;
  if (state.screen?.shared && state.screen.conn === entry.conn) {
    // The shared screen was a track of this connection: it is gone with it.
    removeTile('local:screen');
    stopTracks(state.screen.stream);
    state.screen = null;
  }
  removeTile(key);
  stopTracks(entry.stream);
  updateControls();
}

/**
 * Camera and mic checkboxes while joined: a device not yet published is added to the same
 * connection (ADD_MEDIA + the browser's SDP_OFFER); a published one is muted or unmuted (MUTE:
 * subscribers are told, nothing is renegotiated). Without any publisher yet, one is started.
 */
async function onDeviceToggle() {
  if (state.phase !== 'joined') return;
  const entry = state.camera;
  if (!entry?.conn) {
    try {
      await startCamera();
    } catch (err) {
      note(`camera/mic: ${err.message}`, 'error');
    }
    return;
  }
  const tile = state.tiles.get('local:camera');
  for (const [kind, wanted, appId] of [['video', ui.camera.checked, 'camera'],
    ['audio', ui.mic.checked, 'mic']]) {
    const track = entry.stream.getTracks().find((t) => t.kind === kind);
    try {
      if (!track && wanted) {
        const got = await navigator.mediaDevices.getUserMedia(
          kind === 'video' ? { video: cameraConstraints() } : { audio: micConstraints() });
        const added = got.getTracks()[0];
        if (state.camera !== entry) { added.stop(); return; }
        entry.stream.addTrack(added);
        tile?.tracks.add(added);
        if (tile) showStream(tile, entry.stream);
        await entry.conn.addTrack(added, appId,
          { simulcast: kind === 'video' && wantSimulcast(added) });
        note(`${appId} added to ${entry.conn.id}`);
      } else if (track && track.enabled !== wanted) {
        track.enabled = wanted;
        entry.conn.mute(track, !wanted);
      }
    } catch (err) {
      note(`${appId}: ${err.message}`, 'error');
    }
  }
  if (tile) updateBadge(tile);
  showActual();
}

async function onQualityChange() {
  const video = state.camera?.stream.getVideoTracks()[0];
  if (!video) return;
  try {
    const { deviceId, ...quality } = cameraConstraints();  // the device stays as it is
    await video.applyConstraints(quality);
    await fitSimulcast(state.camera);
    const s = (state.camera?.stream.getVideoTracks()[0] ?? video).getSettings();
    note(`camera now ${s.width ?? '?'}×${s.height ?? '?'} at ${Math.round(s.frameRate ?? 0)} fps`);
    showActual();
  } catch (err) {
    note(`camera constraints: ${err.message}`, 'error');
  }
}

async function toggleShare() {
  if (state.phase !== 'joined') return;
  if (state.screen) {
    await stopShare();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15 } },
      audio: false,
    });
  } catch (err) {
    note(`screen share: ${err.message}`, 'error');
    return;
  }
  if (state.phase !== 'joined' || state.screen) {
    stopTracks(stream);
    return;
  }
  const [track] = stream.getVideoTracks();
  if (track && 'contentHint' in track) track.contentHint = 'detail';
  track?.addEventListener('ended', () => { if (state.screen?.stream === stream) stopShare(); });
  const publisher = state.camera?.conn ?? null;
  const entry = { stream, conn: null, shared: publisher !== null };
  state.screen = entry;
  const tile = makeTile('local:screen', { label: `${state.user} (your screen)`, local: true });
  for (const t of stream.getTracks()) tile.tracks.add(t);
  showStream(tile, stream);
  updateControls();
  try {
    if (publisher) {
      // A track of the publisher connection, labelled 'screen' for everyone's tiles.
      entry.conn = publisher;
      tile.conn = publisher;
      await publisher.addTrack(track, 'screen');
      note(`sharing screen on ${publisher.id}`);
    } else {
      entry.conn = await connectPublisher(connOptions({
        stream,
        // labelled as a screen share for everyone's tiles, not as a camera
        appIds: stream.getTracks().map((t) => (t.kind === 'video' ? 'screen' : 'screen-audio')),
        onClose: (reason) => onPublisherClosed(entry, 'local:screen', reason),
      }));
      tile.conn = entry.conn;
      note(`sharing screen as ${entry.conn.id}`);
    }
  } catch (err) {
    note(`screen share: ${err.message}`, 'error');
    if (state.screen === entry) await stopShare();
  }
  updateControls();
}

async function stopShare() {
  const entry = state.screen;
  if (!entry) return;
  state.screen = null;
  removeTile('local:screen');
  updateControls();
  if (entry.shared) {
    const [track] = entry.stream.getVideoTracks();
    try {
      if (entry.conn?.state === 'open' && entry.conn.tracks.includes(track)) {
        await entry.conn.removeTrack(track);
      }
    } catch (err) {
      note(`stop sharing: ${err.message}`, 'error');
    }
    stopTracks(entry.stream);
  } else {
    stopTracks(entry.stream);
    await entry.conn?.stop();
  }
}

function stopTracks(stream) {
  for (const t of stream?.getTracks() ?? []) t.stop();
}

// ---------------------------------------------------------------------------- subscriber

function subscriberCallbacks() {
  return {
    mode: 'auto',
    onPublisherJoin: (id, user) => {
      note(`${user} joined (${id})`);
      makeTile(id, { label: user, local: false, publisher: id });
    },
    onPublisherLeft: (id, user) => {
      note(`${user} left (${id})`);
      for (const key of [...state.tiles.keys()]) {
        if (key === id || key.startsWith(`${id}:`)) removeTile(key);
      }
    },
    onTrackAdd: (id, trackId, kind, appId) => note(`${userOfId(id)} added ${appId} (${kind})`),
    onTrackRemove: (id, trackId) => note(`${userOfId(id)} removed track ${trackId}`),
    onSpeaker: (id) => {
      state.speaker = id;
      for (const tile of state.tiles.values()) markSpeaker(tile);
    },
    onMuted: (id, trackId, muted) => {
      for (const tile of state.tiles.values()) {
        if (tile.publisher !== id) continue;
        if (muted) tile.muted.add(trackId); else tile.muted.delete(trackId);
        updateBadge(tile);
      }
    },
    onTrack: (id, track, stream, info) => {
      // The publisher's mic and camera share its main tile; any other video (a screen share,
      // a second camera) gets a tile of its own, labelled by its APP_ID.
      const appId = info?.appId ?? (track.kind === 'audio' ? 'mic' : 'camera');
      const main = track.kind === 'audio' || appId === 'camera';
      const key = main ? id : `${id}:${info?.trackId ?? track.id}`;
      const label = main ? userOfId(id) : `${userOfId(id)} · ${appId}`;
      const tile = makeTile(key, { label, local: false, publisher: id });
      tile.tracks.add(track);
      tile.trackIds.set(track, info?.trackId ?? track.id);
      tile.appIds.set(track, appId);
      if (info?.muted) tile.muted.add(info.trackId);
      const live = [...tile.tracks].filter((t) => t.readyState !== 'ended');
      showStream(tile, new MediaStream(live));
      if (track.kind === 'video') {
        tile.topWidth = 0;  // a new track: its streams are learnt afresh
        // A new video track (a recycled section, a reconnect) keeps the tile's choice and size.
        if (tile.quality !== 'auto') {
          try {
            state.sub?.setLayer(id, tile.trackIds.get(track), tile.quality);
          } catch (err) {
            note(`quality: ${err.message}`, 'error');
          }
        }
        reportSize(tile);
      }
    },
    onTrackEnded: (id, track) => {
      for (const tile of [...state.tiles.values()]) {
        if (tile.publisher !== id || !tile.tracks.has(track)) continue;
        if (track.kind === 'video') state.sub?.forgetSize(id, tile.trackIds.get(track));
        tile.tracks.delete(track);
        tile.trackIds.delete(track);  // a recycled section sets them again in onTrack
        tile.appIds.delete(track);
        if (tile.key !== id && !tile.tracks.size) {
          removeTile(tile.key);
        } else {
          showStream(tile, new MediaStream([...tile.tracks]));
        }
      }
    },
    onChat: (from, text) => addChat(from, text),
    onHint: noteHint,
    onClose: (reason) => {
      if (reason === 'stopped' || state.phase !== 'joined') return;
      note(`disconnected: ${reason}`, 'error');
      leave();
    },
  };
}

// ---------------------------------------------------------------------------- chat

function addChat(from, text) {
  const user = userOfId(from);
  const own = from === state.sub?.id || user === state.user;
  state.chat.push({ from, user, text, own });
  if (state.chat.length > CHAT_LINES) state.chat.shift();
  const li = document.createElement('li');
  li.classList.toggle('own', own);
  const who = document.createElement('span');
  who.className = 'from';
  who.textContent = own ? `${user} (you)` : user;
  who.title = from;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.append(who, body);
  ui.chatLog.append(li);
  while (ui.chatLog.childElementCount > CHAT_LINES) ui.chatLog.firstElementChild.remove();
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function sendChat(event) {
  event.preventDefault();
  const text = ui.chatInput.value.trim();
  if (!text || !state.sub) return;
  try {
    state.sub.chat(text);
    ui.chatInput.value = '';
  } catch (err) {
    note(`chat: ${err.message}`, 'error');
  }
}

// ---------------------------------------------------------------------------- join / leave

function userName(text) {
  return sanitizeName(text, { maxLength: MAX_USER, fallback: `guest${randomSuffix(4)}` });
}

function readNames() {
  const room = sanitizeName(ui.room.value, { fallback: 'lobby' });
  const user = userName(ui.user.value);
  ui.room.value = room;
  ui.user.value = user;
  const url = new URL(location.href);
  url.searchParams.set('room', room);
  url.searchParams.set('user', user);
  history.replaceState(null, '', url);
  return { room, user };
}

async function join(event) {
  event?.preventDefault();
  if (state.phase !== 'idle') return;
  const typed = ui.token.value.trim();
  if (typed) applyToken(typed);
  const { room, user } = readNames();
  Object.assign(state, { phase: 'joining', room, user });
  ui.chatLog.replaceChildren();
  state.chat = [];
  updateControls();
  try {
    // Media first: Chromium offers every local address (loopback included) only to a page
    // holding a media permission, which keeps local tests and LAN setups working.
    try {
      await startCamera();
    } catch (err) {
      if (state.camera?.conn || !(err instanceof DOMException)) throw err;  // a server problem
      // No camera, no permission: still join and watch.
      note(`camera/mic unavailable (${err.name}: ${err.message}); joining to watch only`, 'error');
      await stopCamera();
    }
    state.sub = await connectSubscriber(connOptions(subscriberCallbacks()));
    for (const tile of state.tiles.values()) if (!tile.local) reportSize(tile);
    note(`joined ${room} as ${user}; watching as ${state.sub.id}`);
    if (state.phase !== 'joining') return;  // left meanwhile
    state.phase = 'joined';
    state.timer = setInterval(refreshStats, STATS_EVERY_MS);
  } catch (err) {
    note(`join failed: ${err.message}`, 'error');
    if (err.status === 401) {
      // This server requires tokens (--api-key/--api-secret): ask for one, then join again.
      ui.tokenRow.hidden = false;
      ui.token.focus();
      note('this server needs a token: paste one (trio-sfu token …) and join again', 'error');
    }
    await leave();
    return;
  }
  updateControls();
}

async function leave() {
  if (state.phase !== 'joined' && state.phase !== 'joining') return;
  state.phase = 'leaving';
  clearInterval(state.timer);
  updateControls();
  const sub = state.sub;
  state.sub = null;
  await Promise.allSettled([stopCamera(), stopShare(), sub?.stop()]);
  clearTiles();
  state.speaker = null;
  state.hints = [];
  state.phase = 'idle';
  note(`left ${state.room}`);
  updateControls();
}

function stopAllNow() {
  for (const conn of [state.camera?.conn, state.screen?.conn, state.sub]) conn?.stopNow();
}

// ---------------------------------------------------------------------------- start

function snapshot() {
  return {
    phase: state.phase,
    room: state.room,
    user: state.user,
    speaker: state.speaker,
    ids: {
      camera: state.camera?.conn?.id ?? null,
      screen: state.screen?.conn?.id ?? null,  // the camera's id when shared on it
      subscriber: state.sub?.id ?? null,
    },
    tiles: [...state.tiles.values()].map((t) => ({
      key: t.key,
      publisher: t.publisher,
      user: t.user,
      local: t.local,
      label: t.label,
      kinds: [...t.tracks].filter((x) => x.readyState !== 'ended').map((x) => x.kind).sort(),
      appIds: [...t.appIds.values()].sort(),
      muted: [...t.muted].sort(),
      stats: t.stats,
      refreshes: t.refreshes ?? 0,
      quality: t.quality,
      layer: t.layer,
      topWidth: t.topWidth,
      videoTrack: (() => { const v = videoOf(t); return v ? (t.trackIds.get(v) ?? null) : null; })(),
      shown: Object.fromEntries(
        [...t.el.querySelectorAll('[data-stat]')].map((d) => [d.dataset.stat, d.textContent])),
    })),
    chat: state.chat.slice(),
    log: state.log.slice(),
    hints: state.hints.slice(),
    tokenAsked: !ui.tokenRow.hidden,
    devices: state.devices,
    actual: state.actual,
    actualText: ui.actual.textContent,
  };
}

// The claims of a token, read (never verified: the server does that) so the form can use the
// identity and room the server will insist on. Null when it is not a readable JWT.
function tokenClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function applyToken(token) {
  state.token = token;
  const claims = tokenClaims(token);
  if (typeof claims?.sub === 'string' && claims.sub) {
    ui.user.value = userName(claims.sub);
    state.fixed.user = true;
  }
  if (typeof claims?.room === 'string' && claims.room && claims.room !== '*') {
    ui.room.value = sanitizeName(claims.room, { fallback: 'lobby' });
    state.fixed.room = true;
  }
}

function start() {
  const params = new URLSearchParams(location.search);
  ui.room.value = sanitizeName(params.get('room') ?? '', { fallback: 'lobby' });
  ui.user.value = userName(params.get('user') ?? '');
  // A server that requires tokens is joined with ?token=<JWT> (trio-sfu token ...); the
  // token's identity and room, when it names one, fill the form and cannot be changed.
  const token = params.get('token');
  if (token) applyToken(token.trim());
  // Always the server that served this page: a link must not be able to send someone's
  // camera elsewhere. Pages that talk to another server use sfu-client.js with a baseUrl.
  state.baseUrl = location.origin;

  ui.form.addEventListener('submit', join);
  ui.leave.addEventListener('click', () => leave());
  ui.share.addEventListener('click', () => toggleShare());
  ui.camera.addEventListener('change', onDeviceToggle);
  ui.mic.addEventListener('change', onDeviceToggle);
  ui.cameraDevice.addEventListener('change', () => onDevicePick('video'));
  ui.micDevice.addEventListener('change', () => onDevicePick('audio'));
  navigator.mediaDevices?.addEventListener?.('devicechange', listDevices);
  listDevices();
  ui.resolution.addEventListener('change', onQualityChange);
  ui.fps.addEventListener('change', onQualityChange);
  ui.chatForm.addEventListener('submit', sendChat);
  window.addEventListener('pagehide', stopAllNow);

  window.sfuDemo = { snapshot, join: () => join(), leave, toggleShare };
  updateControls();
  if (!window.RTCPeerConnection || !navigator.mediaDevices) {
    note('this browser lacks WebRTC, or the page is not a secure context '
      + '(use https, or localhost)', 'error');
    state.phase = 'unsupported';
    updateControls();
  }
}

start();
