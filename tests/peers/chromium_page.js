// The browser half of tests/peers/chromium_peer.py.
//
// chromium_peer.py drives this page through Playwright: createOffer(opts) -> offer SDP,
// applyAnswer(sdp), start(), then status() polls until done, then result(reason). Everything the
// page logs goes to the console, which the driver copies to stderr.
//
// The message stream must match tests/peers/common.py bit for bit (mulberry32, same
// per-message seeding, same character classes), so any failing message can be regenerated in
// Python; tests/test_peer_harness.py checks that they agree.
'use strict';

(() => {
  const BUFFER_HIGH = 1 << 20;   // stop sending above this (Chromium closes at 16 MiB)
  const BUFFER_LOW = 256 << 10;  // resume on bufferedamountlow
  const CHANNELS = ['ordered', 'unordered'];
  const POLL_MS = 100;

  const log = (...args) => console.log('[page]', ...args);

  // ------------------------------------------------------------------ message stream

  function prng(state) {
    let a = state | 0;
    return () => {
      a = (a + 0x6D2B79F5) | 0;
      let t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return (t ^ (t >>> 14)) >>> 0;
    };
  }

  function messageSeed(seed, index) {
    return ((seed >>> 0) ^ Math.imul(index + 1, 0x9E3779B1)) >>> 0;
  }

  function messageChannel(index) {
    return CHANNELS[(index >> 1) & 1];
  }

  function makeText(next, size) {
    const parts = [];
    let cps = [];
    let remaining = size;
    while (remaining > 0) {
      const r = next();
      const cls = r & 15;
      const v = r >>> 4;
      let n = cls < 10 ? 1 : cls < 13 ? 2 : cls < 15 ? 3 : 4;
      if (n > remaining) n = remaining;
      let cp;
      if (n === 1) {
        cp = 0x20 + (v % 95);
      } else if (n === 2) {
        cp = 0xA0 + (v % 0x760);
      } else if (n === 3) {
        cp = 0x800 + (v % 0xF000);
        if (cp >= 0xD800) cp += 0x800;  // no lone surrogates
      } else {
        cp = 0x10000 + (v % 0x100000);
      }
      cps.push(cp);
      if (cps.length === 8192) {
        parts.push(String.fromCodePoint(...cps));
        cps = [];
      }
      remaining -= n;
    }
    parts.push(String.fromCodePoint(...cps));
    return parts.join('');
  }

  // Message `index`: string for even indices, Uint8Array for odd; 1..maxSize bytes (UTF-8).
  function makeMessage(seed, index, maxSize) {
    const next = prng(messageSeed(seed, index));
    const size = 1 + (next() % maxSize);
    if (index & 1) {
      const buf = new Uint8Array(size);
      for (let o = 0; o < size; o += 4) {
        const x = next();
        buf[o] = x & 255;
        buf[o + 1] = (x >>> 8) & 255;  // out-of-range typed-array writes are ignored
        buf[o + 2] = (x >>> 16) & 255;
        buf[o + 3] = x >>> 24;
      }
      return buf;
    }
    return makeText(next, size);
  }

  const encoder = new TextEncoder();
  const byteLength = (m) => (typeof m === 'string' ? encoder.encode(m).length : m.byteLength);
  const describe = (m) => `${typeof m === 'string' ? 'str' : 'bytes'}[${byteLength(m)}B]`;

  function sameMessage(a, b) {
    if (typeof a === 'string' || typeof b === 'string') return a === b;
    if (a.byteLength !== b.byteLength) return false;
    for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  // Per-channel echo check: in order for 'ordered', as a multiset for 'unordered'.
  class Tally {
    constructor(ordered) {
      this.ordered = ordered;
      this.sent = 0;
      this.echoed = 0;
      this.mismatches = 0;
      this.bytesSent = 0;
      this.firstMismatch = null;
      this.expected = [];
      this.next = 0;
      this.pending = new Map();  // "kind:bytes" -> [messages]
    }
    key(m) {
      return `${typeof m === 'string' ? 's' : 'b'}:${byteLength(m)}`;
    }
    onSent(m) {
      this.sent += 1;
      this.bytesSent += byteLength(m);
      if (this.ordered) {
        this.expected.push(m);
      } else {
        const k = this.key(m);
        if (!this.pending.has(k)) this.pending.set(k, []);
        this.pending.get(k).push(m);
      }
    }
    onEcho(m) {
      this.echoed += 1;
      let ok = false;
      let detail;
      if (this.ordered) {
        const want = this.next < this.expected.length ? this.expected[this.next] : null;
        if (want !== null) this.expected[this.next] = null;  // free memory as we go
        ok = want !== null && sameMessage(want, m);
        detail = `echo #${this.next}: got ${describe(m)}, want ${want === null ? 'nothing' : describe(want)}`;
        this.next += 1;
      } else {
        const list = this.pending.get(this.key(m)) || [];
        const idx = list.findIndex((w) => sameMessage(w, m));
        if (idx >= 0) {
          ok = true;
          list.splice(idx, 1);
        }
        detail = `unexpected echo ${describe(m)}`;
      }
      if (!ok) {
        this.mismatches += 1;
        if (this.firstMismatch === null) this.firstMismatch = detail;
      }
    }
    get complete() {
      return this.echoed >= this.sent;
    }
    summary() {
      return {
        sent: this.sent, echoed: this.echoed, mismatches: this.mismatches,
        bytesSent: this.bytesSent, firstMismatch: this.firstMismatch,
      };
    }
  }

  // ------------------------------------------------------------------ state

  const S = {
    opts: null,
    deadline: 0,
    pc: null,
    stream: null,
    channels: {},
    tallies: {},
    errors: [],
    phase: 'init',
    dataDone: false,
    videoDone: false,
    framesDecoded: 0,
    remoteTrack: null,
  };

  function error(msg) {
    log('ERROR', msg);
    if (!S.errors.includes(msg)) S.errors.push(msg);
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const remainingMs = () => S.deadline - Date.now();

  // Bounded wait for predicate(); events only shorten the sleep, the poll guarantees progress.
  async function waitUntil(predicate, what) {
    while (!predicate()) {
      if (remainingMs() <= 0) throw new Error(`timed out waiting for ${what}`);
      await sleep(Math.min(POLL_MS, Math.max(1, remainingMs())));
    }
  }

  function withTimeout(promise, ms, what) {
    let timer;
    return Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  // ------------------------------------------------------------------ setup

  async function createOffer(opts) {
    S.opts = opts;
    S.deadline = Date.now() + opts.timeout * 1000;
    const pc = new RTCPeerConnection({ iceServers: [] });
    S.pc = pc;
    pc.onconnectionstatechange = () => {
      log('connectionState', pc.connectionState);
      if (pc.connectionState === 'failed') error('peer connection failed');
    };
    pc.oniceconnectionstatechange = () => log('iceConnectionState', pc.iceConnectionState);
    pc.onicegatheringstatechange = () => log('iceGatheringState', pc.iceGatheringState);

    // Always ask for the camera: Chromium enumerates every interface (loopback included) only
    // for a page that holds a media permission; otherwise it gathers the default route only.
    const stream = await withTimeout(
      navigator.mediaDevices.getUserMedia({
        video: { width: opts.width, height: opts.height },
      }),
      Math.max(1000, remainingMs()), 'getUserMedia');
    S.stream = stream;

    if (opts.datachannel) {
      for (const name of CHANNELS) {
        const ch = pc.createDataChannel(name, { ordered: name === 'ordered' });
        ch.binaryType = 'arraybuffer';
        ch.bufferedAmountLowThreshold = BUFFER_LOW;
        const tally = new Tally(name === 'ordered');
        ch.onopen = () => log('channel open', name);
        ch.onerror = (ev) => error(`channel ${name} error: ${ev.error ? ev.error.message : ev}`);
        ch.onclose = () => {
          log('channel closed', name);
          if (!S.dataDone && S.phase !== 'finished') error(`channel ${name} closed before the check finished`);
        };
        ch.onmessage = (ev) => {
          const m = typeof ev.data === 'string' ? ev.data : new Uint8Array(ev.data);
          tally.onEcho(m);
        };
        S.channels[name] = ch;
        S.tallies[name] = tally;
      }
    }

    if (opts.video) {
      const track = stream.getVideoTracks()[0];
      // 'detail' makes Chromium keep the resolution and drop frame rate on a busy CPU
      // (maintain-resolution), so the size checks below do not depend on the machine's load.
      track.contentHint = 'detail';
      const tr = pc.addTransceiver(track, { direction: 'sendrecv', streams: [stream] });
      const codecs = RTCRtpReceiver.getCapabilities('video').codecs;
      const isVp8 = (c) => c.mimeType.toLowerCase() === 'video/vp8';
      tr.setCodecPreferences([...codecs.filter(isVp8), ...codecs.filter((c) => !isVp8(c))]);
      pc.ontrack = (ev) => {
        log('remote track', ev.track.kind, ev.track.id);
        if (ev.track.kind !== 'video') return;
        S.remoteTrack = ev.track;
        const video = document.getElementById('remote');
        video.srcObject = new MediaStream([ev.track]);
        video.play().catch((e) => log('video.play():', e.message));
      };
    }

    await pc.setLocalDescription(await pc.createOffer());
    // Non-trickle: the offer carries every candidate, so wait for gathering to finish.
    await waitUntil(() => pc.iceGatheringState === 'complete', 'ICE gathering');
    if (!opts.video) for (const t of stream.getTracks()) t.stop();
    S.phase = 'offered';
    return pc.localDescription.sdp;
  }

  async function applyAnswer(sdp) {
    await S.pc.setRemoteDescription({ type: 'answer', sdp });
    S.phase = 'connecting';
  }

  // ------------------------------------------------------------------ checks

  async function waitLow(ch) {
    // bufferedamountlow fires once on the crossing; the poll also covers a missed event.
    await new Promise((resolve) => {
      const done = () => {
        ch.removeEventListener('bufferedamountlow', done);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, POLL_MS);
      ch.addEventListener('bufferedamountlow', done);
    });
  }

  async function sendChannel(name, indices) {
    const ch = S.channels[name];
    const tally = S.tallies[name];
    const { seed, maxSize } = S.opts;
    for (const i of indices) {
      while (ch.bufferedAmount > BUFFER_HIGH) {
        if (ch.readyState !== 'open') throw new Error(`channel ${name} ${ch.readyState} while sending`);
        if (remainingMs() <= 0) throw new Error(`timed out sending on ${name} (send buffer full)`);
        await waitLow(ch);
      }
      if (ch.readyState !== 'open') throw new Error(`channel ${name} ${ch.readyState} while sending`);
      const m = makeMessage(seed, i, maxSize);
      const n = byteLength(m);
      if (n < 1 || n > maxSize) error(`generator bug: message ${i} is ${n} bytes`);
      tally.onSent(m);
      ch.send(m);
      if ((tally.sent & 15) === 0) await sleep(0);  // let echoes in while we send
    }
  }

  async function runData() {
    const names = CHANNELS;
    await waitUntil(() => names.every((n) => S.channels[n].readyState === 'open'),
      'both data channels to open');
    S.phase = 'datachannel';
    log('data channels open; sending', S.opts.messages, 'messages');
    const plan = { ordered: [], unordered: [] };
    for (let i = 0; i < S.opts.messages; i++) plan[messageChannel(i)].push(i);
    await Promise.all(names.map((n) => sendChannel(n, plan[n])));
    await waitUntil(() => names.every((n) => S.tallies[n].complete), 'all echoes');
    S.dataDone = true;
    log('data channel check done');
  }

  async function inboundVideo() {
    const stats = await S.pc.getStats();
    let inbound = null;
    let outbound = null;
    let codec = null;
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') inbound = r;
      if (r.type === 'outbound-rtp' && r.kind === 'video') outbound = r;
    });
    if (inbound && inbound.codecId) codec = stats.get(inbound.codecId);
    return { stats, inbound, outbound, codec };
  }

  async function runVideo() {
    await waitUntil(() => S.remoteTrack !== null, 'the echoed video track');
    for (;;) {
      const { inbound } = await inboundVideo();
      S.framesDecoded = (inbound && inbound.framesDecoded) || 0;
      if (S.framesDecoded >= S.opts.minFrames) break;
      if (remainingMs() <= 0) throw new Error('timed out waiting for decoded frames');
      await sleep(250);
    }
    S.videoDone = true;
    log('video check done, framesDecoded', S.framesDecoded);
  }

  function start() {
    S.phase = 'running';
    const guard = (p, what) => p.catch((e) => error(`${what}: ${e.message}`));
    if (S.opts.datachannel) guard(runData(), 'datachannel'); else S.dataDone = true;
    if (S.opts.video) guard(runVideo(), 'video'); else S.videoDone = true;
  }

  function dcCounts() {
    const out = { sent: 0, echoed: 0, mismatches: 0 };
    for (const t of Object.values(S.tallies)) {
      out.sent += t.sent;
      out.echoed += t.echoed;
      out.mismatches += t.mismatches;
    }
    return out;
  }

  function status() {
    const pc = S.pc;
    return {
      phase: S.phase,
      done: (S.dataDone && S.videoDone) || S.errors.length > 0,
      datachannel: dcCounts(),
      framesDecoded: S.framesDecoded,
      connectionState: pc ? pc.connectionState : 'none',
      errors: S.errors.length,
    };
  }

  function candidateInfo(c) {
    if (!c) return null;
    return {
      address: c.address || c.ip, port: c.port, protocol: c.protocol,
      candidateType: c.candidateType,
    };
  }

  async function result(reason) {
    S.phase = 'finished';
    const missing = [];
    const info = S.pc ? await inboundVideo() : { stats: new Map() };
    let selectedPair = null;
    info.stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) {
        const p = info.stats.get(r.selectedCandidatePairId);
        if (p) {
          selectedPair = {
            local: candidateInfo(info.stats.get(p.localCandidateId)),
            remote: candidateInfo(info.stats.get(p.remoteCandidateId)),
            state: p.state, nominated: p.nominated,
            bytesSent: p.bytesSent, bytesReceived: p.bytesReceived,
            currentRoundTripTime: p.currentRoundTripTime,
            dtlsState: r.dtlsState, dtlsCipher: r.dtlsCipher, srtpCipher: r.srtpCipher,
          };
        }
      }
    });
    if (info.inbound) S.framesDecoded = info.inbound.framesDecoded || 0;

    const counts = dcCounts();
    let datachannel = null;
    if (S.opts && S.opts.datachannel) {
      const channels = {};
      for (const [n, t] of Object.entries(S.tallies)) channels[n] = t.summary();
      datachannel = { expected: S.opts.messages, ...counts, channels };
      for (const n of CHANNELS) {
        const ch = S.channels[n];
        if (ch && ch.readyState !== 'open' && !S.dataDone) missing.push(`channel ${n} is ${ch.readyState}`);
      }
      if (counts.sent < S.opts.messages) missing.push(`sent ${counts.sent}/${S.opts.messages} messages`);
      if (counts.echoed < counts.sent) missing.push(`echoed ${counts.echoed}/${counts.sent} messages`);
      if (counts.mismatches) missing.push(`${counts.mismatches} mismatched echoes`);
    }
    if (S.opts && S.opts.video) {
      if (!S.remoteTrack) missing.push('no remote video track');
      if (S.framesDecoded < S.opts.minFrames) {
        missing.push(`framesDecoded ${S.framesDecoded}/${S.opts.minFrames}`);
      }
    }
    if (!selectedPair) missing.push('no selected candidate pair');
    const errors = [...S.errors];
    if (reason) errors.push(reason + (missing.length ? `; missing: ${missing.join(', ')}` : ''));
    const ok = errors.length === 0 && missing.length === 0 && S.dataDone && S.videoDone;

    const pick = (r, keys) => (r ? Object.fromEntries(keys.map((k) => [k, r[k]])) : null);
    return {
      type: 'result',
      ok,
      datachannel,
      framesDecoded: S.framesDecoded,
      selectedPair,
      errors,
      missing,
      connectionState: S.pc ? S.pc.connectionState : 'none',
      video: S.opts && S.opts.video ? {
        codec: info.codec ? info.codec.mimeType : null,
        inbound: pick(info.inbound, ['packetsReceived', 'packetsLost', 'framesReceived',
          'framesDecoded', 'keyFramesDecoded', 'framesDropped', 'frameWidth', 'frameHeight',
          'nackCount', 'pliCount', 'firCount', 'decoderImplementation']),
        outbound: pick(info.outbound, ['packetsSent', 'framesEncoded', 'keyFramesEncoded',
          'frameWidth', 'frameHeight', 'nackCount', 'pliCount', 'encoderImplementation']),
      } : null,
    };
  }

  // Exposed for tests/test_peer_harness.py: the generator must match common.make_message.
  function digestMessages(seed, count, maxSize) {
    return Array.from({ length: count }, (_, i) => {
      const m = makeMessage(seed, i, maxSize);
      const bytes = typeof m === 'string' ? encoder.encode(m) : m;
      let h = 0x811C9DC5;  // FNV-1a 32
      for (let k = 0; k < bytes.length; k++) h = Math.imul(h ^ bytes[k], 0x01000193);
      return [typeof m === 'string' ? 'str' : 'bytes', bytes.length, h >>> 0, messageChannel(i)];
    });
  }

  window.peer = { createOffer, applyAnswer, start, status, result, digestMessages };
  log('page ready');
})();
