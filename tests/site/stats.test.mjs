// Stats and SDP helpers of site/sfu-client.js, fed with reports shaped like Chromium's and
// Firefox's getStats() output.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  formatBitrate, formatPair, msidOfMid, selectedPair, streamStats, summarizeStats,
} from '../../site/sfu-client.js';
import { FakeTrack } from './fakes.mjs';

const report = (...stats) => new Map(stats.map((s) => [s.id, s]));

const candidates = [
  { id: 'L1', type: 'local-candidate', address: '192.0.2.7', port: 50712, protocol: 'udp', candidateType: 'host' },
  { id: 'R1', type: 'remote-candidate', address: '127.0.0.1', port: 3478, protocol: 'udp', candidateType: 'host' },
  { id: 'L2', type: 'local-candidate', ip: '10.0.0.2', port: 40000, protocol: 'udp', candidateType: 'srflx' },
  { id: 'R2', type: 'remote-candidate', address: '::1', port: 3478, protocol: 'udp', candidateType: 'host' },
];

function chromiumInbound(t, bytes, frames, extra = {}) {
  return report(
    ...candidates,
    { id: 'P1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', state: 'succeeded', nominated: true, currentRoundTripTime: 0.001 },
    { id: 'P2', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R2', state: 'succeeded', nominated: true },
    { id: 'T1', type: 'transport', selectedCandidatePairId: 'P1' },
    { id: 'C1', type: 'codec', mimeType: 'video/VP8' },
    { id: 'IV', type: 'inbound-rtp', kind: 'video', timestamp: t, bytesReceived: bytes, packetsReceived: 100,
      packetsLost: 2, framesDecoded: frames, frameWidth: 640, frameHeight: 480, codecId: 'C1', ...extra },
    { id: 'IA', type: 'inbound-rtp', kind: 'audio', timestamp: t, bytesReceived: 999, packetsReceived: 50 },
  );
}

test('Chromium: the pair comes from the transport, bitrate and fps from deltas', () => {
  const first = summarizeStats(chromiumInbound(10_000, 100_000, 300), { kind: 'video', direction: 'inbound' });
  assert.equal(first.found, true);
  assert.equal(first.bitrate, null, 'no bitrate without a previous sample');
  assert.equal(first.fps, null);
  assert.equal(first.framesDecoded, 300);
  assert.equal(first.packets, 100);
  assert.equal(first.packetsLost, 2);
  assert.equal(first.codec, 'video/VP8');
  assert.deepEqual([first.width, first.height], [640, 480]);
  assert.deepEqual(first.pair, {
    local: { address: '192.0.2.7', port: 50712, protocol: 'udp', type: 'host', relayProtocol: null },
    remote: { address: '127.0.0.1', port: 3478, protocol: 'udp', type: 'host', relayProtocol: null },
    state: 'succeeded',
    rtt: 0.001,
  });
  // 2 s later: 250 kB more and 60 frames more -> 1 Mbit/s, 30 fps.
  const second = summarizeStats(chromiumInbound(12_000, 350_000, 360), { kind: 'video', direction: 'inbound' }, first.sample);
  assert.equal(second.bitrate, 1_000_000);
  assert.equal(second.fps, 30);
  // framesPerSecond, when the browser reports it, wins over the delta.
  const third = summarizeStats(chromiumInbound(13_000, 350_000, 390, { framesPerSecond: 24 }),
    { kind: 'video', direction: 'inbound' }, second.sample);
  assert.equal(third.fps, 24);
  assert.equal(third.bitrate, 0);
});

test('audio has packets and bitrate but no fps', () => {
  const a = summarizeStats(chromiumInbound(1000, 0, 0), { kind: 'audio', direction: 'inbound' });
  const b = summarizeStats(
    report({ id: 'IA', type: 'inbound-rtp', kind: 'audio', timestamp: 2000, bytesReceived: 999 + 4000, packetsReceived: 100 }),
    { kind: 'audio', direction: 'inbound' }, a.sample);
  assert.equal(a.packets, 50);
  assert.equal(b.bitrate, 32_000);
  assert.equal(b.fps, null);
  assert.equal(b.pair, null);
});

test('Firefox: the pair flagged selected, older mediaType and ip fields', () => {
  const r = report(
    ...candidates,
    { id: 'P1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', state: 'succeeded', nominated: true, selected: false },
    { id: 'P2', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R2', state: 'succeeded', nominated: true, selected: true },
    { id: 'OV', type: 'outbound-rtp', mediaType: 'video', timestamp: 5, bytesSent: 10, packetsSent: 3, framesEncoded: 9 },
  );
  const s = summarizeStats(r, { kind: 'video', direction: 'outbound' });
  assert.equal(s.frames, 9);
  assert.equal(s.framesDecoded, 0);
  assert.equal(s.packets, 3);
  assert.equal(s.pair.local.address, '10.0.0.2');
  assert.equal(s.pair.remote.address, '::1');
  assert.equal(formatPair(s.pair), 'udp srflx 10.0.0.2:40000 ⇄ host [::1]:3478');
});

test('without a transport or selected flag, a nominated succeeded pair is used', () => {
  const r = report(...candidates,
    { id: 'P1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', state: 'in-progress', nominated: false },
    { id: 'P2', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R2', state: 'succeeded', nominated: true });
  assert.equal(selectedPair(r).local.address, '10.0.0.2');
  assert.equal(selectedPair(report(...candidates)), null);
  assert.equal(selectedPair(null), null);
});

test('simulcast outbound streams are summed', () => {
  const r = report(
    { id: 'O1', type: 'outbound-rtp', kind: 'video', timestamp: 1000, bytesSent: 100, packetsSent: 1, framesEncoded: 10, frameWidth: 320, frameHeight: 180 },
    { id: 'O2', type: 'outbound-rtp', kind: 'video', timestamp: 1000, bytesSent: 300, packetsSent: 2, framesEncoded: 10, frameWidth: 1280, frameHeight: 720 },
  );
  const s = summarizeStats(r, { kind: 'video', direction: 'outbound' });
  assert.equal(s.bytes, 400);
  assert.equal(s.packets, 3);
  assert.deepEqual([s.width, s.height], [1280, 720]);
});

test('a counter reset (new leg) gives no negative bitrate', () => {
  const a = summarizeStats(chromiumInbound(1000, 5000, 50), { kind: 'video', direction: 'inbound' });
  const b = summarizeStats(chromiumInbound(2000, 100, 2), { kind: 'video', direction: 'inbound' }, a.sample);
  assert.equal(b.bitrate, null);
  assert.equal(b.fps, null);
});

test('streamStats uses the sender for sent tracks, the receiver for received ones, and remembers', async () => {
  const sent = new FakeTrack('video', 'cam');
  const received = new FakeTrack('video', 'remote');
  let t = 1000;
  let bytes = 0;
  const outbound = () => report(...candidates,
    { id: 'T', type: 'transport', selectedCandidatePairId: 'P' },
    { id: 'P', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', state: 'succeeded' },
    { id: 'O', type: 'outbound-rtp', kind: 'video', timestamp: t, bytesSent: bytes, framesEncoded: 0 });
  const inbound = () => report(
    { id: 'I', type: 'inbound-rtp', kind: 'video', timestamp: t, bytesReceived: bytes * 2, framesDecoded: 7 });
  const pc = {
    getSenders: () => [{ track: sent, getStats: async () => outbound() }],
    getReceivers: () => [{ track: received, getStats: async () => inbound() }],
    // Receiver reports without ICE stats make streamStats ask the whole pc for the pair.
    getStats: async () => report(...candidates,
      { id: 'P', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R2', selected: true }),
  };
  const s1 = await streamStats(pc, sent);
  assert.equal(s1.direction, 'outbound');
  assert.equal(s1.bitrate, null);
  t += 1000;
  bytes += 125_000;
  const s2 = await streamStats(pc, sent);
  assert.equal(s2.bitrate, 1_000_000);
  assert.equal(s2.pair.local.address, '192.0.2.7');
  const r1 = await streamStats(pc, received);
  assert.equal(r1.direction, 'inbound');
  assert.equal(r1.framesDecoded, 7);
  assert.equal(r1.bitrate, null, 'each track has its own history');
  assert.equal(r1.pair.local.address, '10.0.0.2');
});

test('formatBitrate and formatPair', () => {
  assert.equal(formatBitrate(1_234_567), '1.23 Mbit/s');
  assert.equal(formatBitrate(456_400), '456 kbit/s');
  assert.equal(formatBitrate(999), '999 bit/s');
  assert.equal(formatBitrate(0), '0 bit/s');
  for (const bad of [null, undefined, NaN, -1, Infinity, '5']) assert.equal(formatBitrate(bad), '—');
  assert.equal(formatPair(null), '—');
  assert.equal(formatPair({ local: null, remote: null }), '—');
  assert.equal(formatPair({ local: { address: '192.0.2.7', port: 1, protocol: 'UDP', type: 'host' }, remote: null }),
    'udp host 192.0.2.7:1 ⇄ ?');
});

test('msidOfMid finds the msid of one m-section', () => {
  const sdp = [
    'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0 1 2 3',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'a=mid:0',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:1', 'a=sendonly', 'a=msid:alice-k3j2 a1',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:2', 'a=sendonly', 'a=msid:alice-k3j2 v1',
    'm=video 0 UDP/TLS/RTP/SAVPF 96', 'a=mid:3', 'a=inactive', '',
  ].join('\r\n');
  assert.deepEqual(msidOfMid(sdp, '1'), { stream: 'alice-k3j2', track: 'a1' });
  assert.deepEqual(msidOfMid(sdp, '2'), { stream: 'alice-k3j2', track: 'v1' });
  assert.equal(msidOfMid(sdp, '3'), null, 'stopped sections have no msid');
  assert.equal(msidOfMid(sdp, '0'), null);
  assert.equal(msidOfMid(sdp, '9'), null);
  assert.equal(msidOfMid(sdp.replaceAll('\r\n', '\n'), '2').track, 'v1');
  assert.equal(msidOfMid(sdp, '1'.slice(0, 0)), null, 'a=mid: prefix must match exactly');
  assert.equal(msidOfMid(undefined, '1'), null);
  assert.equal(msidOfMid(sdp, null), null);
});
