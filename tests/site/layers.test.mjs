// Simulcast publishing and the layer hints of site/sfu-client.js (issue 11 item 7): the layer a
// decoded width is, the LAYER/SIZE commands, the camera's sendEncodings and the SIZE throttle.
import assert from 'node:assert/strict';
import { afterEach, mock, test } from 'node:test';

import {
  LAYER_VALUES, SIMULCAST_ENCODINGS, SfuError, clientCommands, connectPublisher,
  connectSubscriber, formatLayer, layerOfWidth, parseClientCommand, simulcastEncodings,
  simulcastFits,
} from '../../site/sfu-client.js';
import { FakePeerConnection, FakeStream, FakeTrack, fakeFetch } from './fakes.mjs';

afterEach(() => {
  mock.timers.reset();
  FakePeerConnection.reset();
});

function base(extra = {}) {
  return {
    baseUrl: 'http://sfu.test:8080', room: 'r1', RTCPeerConnection: FakePeerConnection,
    stopTimeoutMs: 50, fetch: fakeFetch(), ...extra,
  };
}

test('a width names its simulcast stream against the widest decoded', () => {
  for (const [width, top, want] of [
    [1280, 1280, 'high'], [1270, 1280, 'high'], [960, 1280, 'high'],
    [640, 1280, 'mid'], [632, 1280, 'mid'], [480, 1280, 'mid'],
    [320, 1280, 'low'], [316, 1280, 'low'], [160, 640, 'low'], [320, 640, 'mid'],
  ]) {
    assert.equal(layerOfWidth(width, top), want, `${width} of ${top}`);
  }
  for (const [width, top] of [[0, 1280], [null, 1280], [320, 0], [320, undefined], [NaN, 5]]) {
    assert.equal(layerOfWidth(width, top), null, `${width} of ${top}`);
  }
});

test('a tile shows paused, the stream and its size, or only the size', () => {
  assert.equal(formatLayer({ paused: true, layer: 'low', width: 320, height: 180 }), 'paused');
  assert.equal(formatLayer({ layer: 'low', width: 320, height: 180 }), 'low · 320×180');
  assert.equal(formatLayer({ layer: null, width: 1920, height: 1080 }), '1920×1080');
  assert.equal(formatLayer({ layer: 'high', width: null, height: null }), '—');
  assert.equal(formatLayer(), '—');
});

test('LAYER and SIZE are formatted as the server parses them, and checked first', () => {
  assert.deepEqual([...LAYER_VALUES], ['auto', 'high', 'mid', 'low', 'off']);
  for (const value of LAYER_VALUES) {
    assert.equal(clientCommands.layer('alice-k3', 't-1', value), `LAYER alice-k3 t-1 ${value}`);
  }
  assert.equal(clientCommands.size('alice-k3', '{9f}', 932, 699), 'SIZE alice-k3 {9f} 932x699');
  assert.equal(clientCommands.size('a-1', 'mid0', 0, 0), 'SIZE a-1 mid0 0x0');
  for (const bad of [
    () => clientCommands.layer('alice-k3', 't-1', 'medium'),
    () => clientCommands.layer('alice k3', 't-1', 'low'),
    () => clientCommands.layer('alice-k3', 't 1', 'low'),
    () => clientCommands.size('alice-k3', 't-1', 931.5, 699),
    () => clientCommands.size('alice-k3', 't-1', -1, 699),
    () => clientCommands.size('alice-k3', 't-1', 100000, 699),
    () => clientCommands.size('alice-k3', 't-1', 640, '360'),
  ]) {
    assert.throws(bad, SfuError);
  }
  for (const bad of ['LAYER a-1 t', 'LAYER a-1 t medium', 'LAYER a-1 t low x', 'SIZE a-1 t 640',
    'SIZE a-1 t 640x', 'SIZE a-1 t 123456x1', 'SIZE a-1 t -1x1', 'SIZE a/b t 1x1']) {
    assert.equal(parseClientCommand(bad).type, 'INVALID', bad);
  }
});

test('simulcast encodings are q/h/f, lowest first, a fresh copy each time', () => {
  const got = simulcastEncodings();
  assert.deepEqual(got, [
    { rid: 'q', scaleResolutionDownBy: 4 },
    { rid: 'h', scaleResolutionDownBy: 2 },
    { rid: 'f', scaleResolutionDownBy: 1 },
  ]);
  got[0].active = false;
  assert.equal(simulcastEncodings()[0].active, undefined);
  assert.ok(Object.isFrozen(SIMULCAST_ENCODINGS) && Object.isFrozen(SIMULCAST_ENCODINGS[0]));
});

test('a camera is sent as simulcast from 960x540 up (libwebrtc sends 3 streams from there)', () => {
  for (const [width, height] of [[1280, 720], [960, 540], [1920, 1080], [720, 1280], [540, 960]]) {
    assert.ok(simulcastFits({ width, height }), `${width}x${height}`);
  }
  for (const [width, height] of [[640, 480], [320, 240], [959, 540], [960, 539], [1280, 0],
    [undefined, 720]]) {
    assert.ok(!simulcastFits({ width, height }), `${width}x${height}`);
  }
  assert.ok(!simulcastFits());
});

test('simulcast: only the camera is sent as three streams, also when added or replaced', async () => {
  const mic = new FakeTrack('audio', 'mic');
  const cam = new FakeTrack('video', 'cam');
  const stream = new FakeStream('local', [mic, cam]);
  const pub = await connectPublisher(base({ user: 'alice', stream, simulcast: true }));
  const { channel, pc } = pub;
  channel.onSend = (text) => {
    if (text.startsWith('SDP_OFFER ')) setTimeout(() => channel.receive('SDP_ANSWER v=0\r\nok\r\n'), 0);
  };
  assert.equal(pc.transceivers[0].sendEncodings, null, 'audio stays one stream');
  assert.deepEqual(pc.transceivers[1].sendEncodings.map((e) => e.rid), ['q', 'h', 'f']);
  assert.ok(pub.isSimulcast(cam) && !pub.isSimulcast(mic));

  const screen = new FakeTrack('video', 'scr');
  await pub.addTrack(screen, 'screen');
  assert.equal(pc.transceivers[2].sendEncodings, null, 'a screen share stays one stream');
  const cam2 = new FakeTrack('video', 'cam2');
  await pub.addTrack(cam2, 'camera', { simulcast: false });
  assert.equal(pc.transceivers[3].sendEncodings, null, 'per track, simulcast may be refused');
  const cam3 = new FakeTrack('video', 'cam3');
  await pub.addTrack(cam3, 'camera');
  assert.deepEqual(pc.transceivers[4].sendEncodings.map((e) => e.scaleResolutionDownBy), [4, 2, 1]);

  const other = new FakeTrack('video', 'other');
  await pub.replaceTrack(cam, other);
  assert.ok(pub.isSimulcast(other) && !pub.isSimulcast(cam), 'another camera keeps simulcast');
  await pub.removeTrack(cam3);
  assert.ok(!pub.isSimulcast(cam3));
});

test('without the option every section is one stream', async () => {
  const stream = new FakeStream('local', [new FakeTrack('audio', 'm'), new FakeTrack('video', 'c')]);
  const pub = await connectPublisher(base({ user: 'alice', stream }));
  assert.deepEqual(pub.pc.transceivers.map((t) => t.sendEncodings), [null, null]);
});

test('setLayer sends LAYER; setSize sends SIZE when it changed, at most once per interval', async () => {
  const hints = [];
  const sub = await connectSubscriber(base({ user: 'bob', onHint: (t) => hints.push(t) }));
  const ch = sub.channel;
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  sub.setLayer('alice-1', 'v1', 'low');
  sub.setLayer('alice-1', 'v1', 'off');
  assert.throws(() => sub.setLayer('alice-1', 'v1', 'max'), SfuError);
  assert.deepEqual(ch.sent, ['LAYER alice-1 v1 low', 'LAYER alice-1 v1 off']);

  assert.equal(sub.setSize('alice-1', 'v1', 640, 480), 'SIZE alice-1 v1 640x480');
  assert.equal(sub.setSize('alice-1', 'v1', 640, 480), null, 'unchanged: nothing sent');
  // Another track has its own interval.
  assert.equal(sub.setSize('carol-2', 'v9', 300, 225), 'SIZE carol-2 v9 300x225');
  // A resize within the second is deferred; only the latest size goes out when it is over.
  mock.timers.tick(200);
  assert.equal(sub.setSize('alice-1', 'v1', 800, 600), null);
  assert.equal(sub.setSize('alice-1', 'v1', 900, 675), null);
  mock.timers.tick(799);
  assert.equal(ch.sent.length, 4);
  mock.timers.tick(1);
  assert.equal(ch.sent.at(-1), 'SIZE alice-1 v1 900x675');
  // Back to the size already sent before the deferred one fired: nothing goes out.
  mock.timers.tick(100);
  assert.equal(sub.setSize('alice-1', 'v1', 640, 480), null);
  assert.equal(sub.setSize('alice-1', 'v1', 900, 675), null);
  mock.timers.tick(5000);
  assert.equal(ch.sent.length, 5);
  // After the interval a change goes out at once.
  assert.equal(sub.setSize('alice-1', 'v1', 1280, 960), 'SIZE alice-1 v1 1280x960');
  assert.throws(() => sub.setSize('alice-1', 'v1', 1.5, 2), SfuError);
  assert.deepEqual(hints, ch.sent, 'onHint hears every LAYER and SIZE sent');

  // A forgotten track (its tile is gone) starts afresh, and a pending size is dropped.
  mock.timers.tick(100);
  assert.equal(sub.setSize('alice-1', 'v1', 10, 10), null);
  sub.forgetSize('alice-1', 'v1');
  mock.timers.tick(5000);
  assert.equal(ch.sent.length, 6);
  assert.equal(sub.setSize('alice-1', 'v1', 1280, 960), 'SIZE alice-1 v1 1280x960');
});
