// trio-sfu stats helpers for pages: one track's selected ICE candidate pair, bitrate and frame
// rate from getStats(), across Chromium's and Firefox's report shapes. Pages import them through
// sfu-client.js.

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
    const id = s.type === 'transport' ? s.selectedCandidatePairId : undefined;
    if (id && byId.has(id)) {
      pair = byId.get(id);
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
    if (typeof r.framesPerSecond === 'number') {
      framesPerSecond = (framesPerSecond ?? 0) + r.framesPerSecond;
    }
    if (typeof r.frameWidth === 'number' && r.frameWidth > (width ?? 0)) {
      width = r.frameWidth;
      height = r.frameHeight ?? null;
    }
    if (!codec && r.codecId && byId.has(r.codecId)) codec = byId.get(r.codecId).mimeType ?? null;
    timestamp = Math.max(timestamp, num(r.timestamp));
  }
  const sample = { bytes, frames, timestamp };
  const dt = previous && timestamp > previous.timestamp
    ? (timestamp - previous.timestamp) / 1000
    : 0;
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
  const previous = statsCache.get(track) ?? null;
  const summary = summarizeStats(report, { kind: track.kind, direction }, previous);
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

// ---------------------------------------------------------------------------- layers

/**
 * Which simulcast stream a decoded `width` is, given `topWidth`, the widest frame decoded of
 * that track (a subscriber starts on the top stream, and the server does not say which stream
 * it forwards). The streams are a quarter, half and the full width (SIMULCAST_ENCODINGS), so
 * the ratio names them: ~1 high, ~2 mid, ~4 low. Null while either width is unknown.
 */
export function layerOfWidth(width, topWidth) {
  if (!(width > 0) || !(topWidth > 0)) return null;
  const ratio = topWidth / width;
  if (ratio < 1.4) return 'high';
  if (ratio < 2.8) return 'mid';
  return 'low';
}

/**
 * The text a tile shows for the stream it receives: "paused" (LAYER off), "low · 320×180",
 * or just the size for a track that is not simulcast (`layer` null); "—" when nothing decoded.
 */
export function formatLayer({ paused = false, layer = null, width = null, height = null } = {}) {
  if (paused) return 'paused';
  if (!(width > 0) || !(height > 0)) return '—';
  const size = `${width}×${height}`;
  return layer ? `${layer} · ${size}` : size;
}
