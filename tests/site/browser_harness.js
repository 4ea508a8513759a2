// Page-side half of tests/test_site.py's module test: drives site/sfu-client.js the way another
// page would (import, connectPublisher, connectSubscriber), keeps what the callbacks report,
// and attaches every received stream to a <video> "tile", as a real page does.
// tests/test_site.py injects it as a module script into the served demo page; it is not a node
// test (the name does not match node --test's patterns).
import { connectPublisher, connectSubscriber, streamStats } from '/sfu-client.js';

const now = () => Date.now();
const pubs = {};
const subs = {};
const errors = [];

function tileFor(sub, id, stream) {
  let tile = sub.tiles[id];
  if (!tile) {
    const video = document.createElement('video');
    video.autoplay = true;
    video.muted = true;  // no user gesture in this test page; muted autoplay is always allowed
    video.playsInline = true;
    video.dataset.sub = sub.name;
    video.dataset.publisher = id;
    document.body.append(video);
    tile = { video, tracks: new Set() };
    sub.tiles[id] = tile;
  }
  if (stream && tile.video.srcObject !== stream) tile.video.srcObject = stream;
  return tile;
}

function removeTile(sub, id) {
  const tile = sub.tiles[id];
  if (!tile) return;
  tile.video.srcObject = null;
  tile.video.remove();
  delete sub.tiles[id];
  sub.removedAt[id] = now();
}

async function publish(name, {
  room, user, width = 320, height = 240, rtcConfiguration, fetchIceServers = false,
}) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width, height } });
  const conn = await connectPublisher({
    baseUrl: location.origin, room, user, stream, rtcConfiguration, fetchIceServers,
    onError: (err) => errors.push(`${name}: ${err.kind}: ${err.message}`),
    onClose: (reason) => { pubs[name].closed = reason; },
  });
  pubs[name] = { conn, stream, closed: null, stoppedAt: null };
  return conn.id;
}

async function unpublish(name) {
  const pub = pubs[name];
  pub.stoppedAt = now();
  await pub.conn.stop();
  for (const t of pub.stream.getTracks()) t.stop();
  return pub.stoppedAt;
}

async function subscribe(name, {
  room, user, mode = 'auto', rtcConfiguration, fetchIceServers = false, reconnectOnLoss = false,
  reconnectBaseDelayMs,
}) {
  const sub = {
    name, conn: null, tiles: {}, events: [], joinedAt: {}, leftAt: {}, removedAt: {}, chat: [],
    media: null,
  };
  subs[name] = sub;
  sub.conn = await connectSubscriber({
    baseUrl: location.origin, room, user, mode, rtcConfiguration, fetchIceServers,
    reconnectOnLoss, reconnectBaseDelayMs,
    onReconnect: (id, oldId) => sub.events.push(['reconnect', id, oldId]),
    onPublisherJoin: (id) => { sub.events.push(['join', id]); sub.joinedAt[id] = now(); },
    onPublisherLeft: (id) => {
      sub.events.push(['left', id]);
      sub.leftAt[id] = now();
      removeTile(sub, id);
    },
    onTrack: (id, track, stream) => {
      sub.events.push(['track', id, track.kind]);
      tileFor(sub, id, stream).tracks.add(track);
    },
    onTrackEnded: (id, track) => {
      sub.events.push(['ended', id, track.kind]);
      sub.tiles[id]?.tracks.delete(track);
    },
    onChat: (from, text) => sub.chat.push([from, text]),
    onMedia: (media) => { sub.media = media; },
    onError: (err) => errors.push(`${name}: ${err.kind}: ${err.message}`),
    onClose: (reason) => sub.events.push(['close', reason]),
  });
  return sub.conn.id;
}

/** Per subscriber: for every tile, the decoded frames (and their width) and audio packets so far. */
async function status(name) {
  const sub = subs[name];
  const tiles = {};
  for (const [id, tile] of Object.entries(sub.tiles)) {
    const entry = { kinds: [], framesDecoded: 0, width: 0, audioPackets: 0, videoPlaying: false };
    for (const track of tile.tracks) {
      if (track.readyState === 'ended') continue;
      const s = await streamStats(sub.conn.pc, track);
      entry.kinds.push(track.kind);
      if (track.kind === 'video') {
        entry.framesDecoded = s.framesDecoded;
        entry.width = s.width || tile.video.videoWidth || 0;  // what it decodes now
      }
      else entry.audioPackets = s.packets;
    }
    entry.kinds.sort();
    entry.videoPlaying = tile.video.readyState >= 2 && tile.video.videoWidth > 0;
    tiles[id] = entry;
  }
  return {
    id: sub.conn.id,
    state: sub.conn.state,
    tiles,
    events: sub.events.slice(),
    leftAt: { ...sub.leftAt },
    removedAt: { ...sub.removedAt },
    publishers: [...sub.conn.publishers.keys()],
    transceivers: sub.conn.pc.getTransceivers().map((t) => t.currentDirection),
    chat: sub.chat.slice(),
    media: sub.media,
  };
}

/**
 * The selected ICE candidate pair of a publisher's or subscriber's current connection, from
 * getStats(): the local and remote candidates' protocol, type and address.
 */
async function selectedPair(name) {
  const conn = (subs[name] ?? pubs[name]).conn;
  const report = await conn.pc.getStats();
  let pairId = null;
  report.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  if (!pairId) {
    report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pairId = s.id; });
  }
  const pair = pairId && report.get(pairId);
  if (!pair) return null;
  const side = (c) => c && {
    protocol: c.protocol, candidateType: c.candidateType, address: c.address ?? c.ip,
    port: c.port, relayProtocol: c.relayProtocol ?? null, tcpType: c.tcpType ?? null,
  };
  return {
    id: conn.id, state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
    local: side(report.get(pair.localCandidateId)), remote: side(report.get(pair.remoteCandidateId)),
  };
}

/** Lose a connection's current leg as a dead network would (its command channel closes). */
function breakLeg(name) {
  const conn = (subs[name] ?? pubs[name]).conn;
  const id = conn.id;
  conn.channel.close();
  return id;
}

/** The remote ICE candidates (a=candidate lines) of a connection's current answer. */
function remoteCandidates(name) {
  const conn = (subs[name] ?? pubs[name]).conn;
  const sdp = conn.pc.remoteDescription?.sdp ?? '';
  return [...new Set(sdp.split('\r\n').filter((l) => l.startsWith('a=candidate:')))];
}

async function stopAll() {
  await Promise.allSettled([
    ...Object.values(pubs).map((p) => p.conn.stop()),
    ...Object.values(subs).map((s) => s.conn.stop()),
  ]);
}

window.harness = {
  publish, unpublish, subscribe, status, stopAll, errors, selectedPair, remoteCandidates,
  breakLeg,
  ids: () => [...Object.values(pubs), ...Object.values(subs)].map((x) => x.conn.id),
  chat: (name, text) => subs[name].conn.chat(text),
  sub: (name, id) => subs[name].conn.sub(id),
  unsub: (name, id) => subs[name].conn.unsub(id),
};
