// The connection logic of site/sfu-client.js against fakes (tests/site/fakes.mjs): what it
// POSTs, what it sends on the command channel, and what it reports through its callbacks.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { SfuError, connectPublisher, connectSubscriber } from '../../site/sfu-client.js';
import {
  FakePeerConnection, FakeStream, FakeTrack, fakeFetch, fakeOffer, until,
} from './fakes.mjs';

afterEach(() => FakePeerConnection.reset());

function camera() {
  return new FakeStream('local-cam', [new FakeTrack('audio', 'mic'), new FakeTrack('video', 'cam')]);
}

function base(extra = {}) {
  return {
    baseUrl: 'http://sfu.test:8080',
    room: 'r1',
    RTCPeerConnection: FakePeerConnection,
    stopTimeoutMs: 50,
    ...extra,
  };
}

function recorder() {
  const events = [];
  const cb = (name) => (...args) => events.push([name, ...args]);
  return {
    events,
    callbacks: {
      onPublisherJoin: cb('join'), onPublisherLeft: cb('left'),
      onTrack: (id, track, stream) => events.push(['track', id, track.kind, stream?.id ?? null]),
      onTrackEnded: (id, track) => events.push(['ended', id, track.kind]),
      onMedia: cb('media'), onChat: cb('chat'),
      onError: (err) => events.push(['error', err.kind, err.message]),
      onClose: cb('close'), onReconnect: cb('reconnect'),
    },
    of: (name) => events.filter((e) => e[0] === name),
  };
}

/** A request URL without its query (a publisher's POST carries ?app_ids=). */
const pathOf = (url) => url.split('?')[0];

test('a publisher POSTs its complete offer as application/sdp and applies the answer', async () => {
  const fetch = fakeFetch();
  const pub = await connectPublisher(base({ user: 'alice', stream: camera(), fetch }));
  assert.match(pub.id, /^alice-[a-z0-9]{8}$/);
  const [post] = fetch.requests;
  assert.equal(post.method, 'POST');
  // The offer's sections are labelled in order (issue 15): mic, camera by default.
  assert.equal(post.url, `http://sfu.test:8080/pub/r1/${pub.id}?app_ids=mic,camera`);
  assert.equal(pub.url, `http://sfu.test:8080/pub/r1/${pub.id}`);
  assert.equal(post.headers['Content-Type'], 'application/sdp');
  assert.equal(post.headers.Authorization, undefined);
  // Non-trickle: the POSTed offer is the one after gathering, candidates included.
  assert.match(post.body, /fake-offer tracks=audio,video channels=1/);
  assert.match(post.body, /a=candidate:fake/);
  const pc = pub.pc;
  assert.deepEqual(pc.calls.slice(0, 6), [
    'createDataChannel sfu', 'addTransceiver audio sendonly', 'addTransceiver video sendonly',
    'createOffer', 'setLocalDescription offer', 'setRemoteDescription answer',
  ]);
  assert.equal(pc.transceivers[0].streams[0].id, 'local-cam', 'tracks are tagged with their stream');
  assert.equal(pc.remoteDescription.sdp, 'v=0\r\nfake-answer\r\n');
  assert.equal(pub.channel.readyState, 'open');
  assert.equal(pub.state, 'open');
});

test('a publisher labels its first sections with appIds (a screen shared alone)', async () => {
  const fetch = fakeFetch();
  const stream = camera();
  const video = stream.getTracks().filter((t) => t.kind === 'video');
  const pub = await connectPublisher(base({ user: 'alice', tracks: video, appIds: ['screen'], fetch }));
  assert.equal(fetch.requests[0].url, `http://sfu.test:8080/pub/r1/${pub.id}?app_ids=screen`);
  assert.equal(pub.appIds.get(video[0]), 'screen');
  await assert.rejects(
    () => connectPublisher(base({ user: 'alice', tracks: video, appIds: ['no spaces'], fetch })),
    /APP_ID must match/);
});

test('trailing slashes and a Bearer token are handled on every request', async () => {
  const fetch = fakeFetch((req) => (req.method === 'DELETE' ? { status: 204 } : null));
  const pub = await connectPublisher(base({
    baseUrl: 'https://sfu.test/', user: 'alice', stream: camera(), fetch, token: 's3cret',
  }));
  // The fake server never closes the channel after STOP, so stop() falls back to DELETE.
  await pub.stop();
  const [post, del] = fetch.requests;
  assert.equal(post.url, `https://sfu.test/pub/r1/${pub.id}?app_ids=mic,camera`);
  assert.equal(post.headers.Authorization, 'Bearer s3cret');
  assert.equal(del.method, 'DELETE');
  assert.equal(del.url, `https://sfu.test/pub/r1/${pub.id}`);
  assert.equal(del.headers.Authorization, 'Bearer s3cret');
});

test('stop() sends STOP and skips DELETE when the server closes the channel', async () => {
  const fetch = fakeFetch();
  const rec = recorder();
  const pub = await connectPublisher(base({ user: 'alice', stream: camera(), fetch, ...rec.callbacks }));
  pub.channel.onSend = (text) => { if (text === 'STOP') setTimeout(() => pub.channel.close(), 5); };
  const pc = pub.pc;
  await pub.stop();
  assert.deepEqual(pc.channels[0].sent, ['STOP']);
  assert.deepEqual(fetch.requests.map((r) => r.method), ['POST']);
  assert.ok(pc.closed);
  assert.deepEqual(rec.of('close'), [['close', 'stopped']]);
  assert.equal(pub.state, 'closed');
  await pub.stop();  // idempotent
  assert.equal(rec.of('close').length, 1);
  assert.throws(() => pub.chat('late'), SfuError);
});

test('HTTP errors reject with status and body, and the peer connection is closed', async () => {
  const fetch = fakeFetch(() => ({ status: 400, body: 'malformed SDP: no m= line' }));
  await assert.rejects(
    connectPublisher(base({ user: 'alice', stream: camera(), fetch })),
    (err) => err instanceof SfuError && err.kind === 'http' && err.status === 400
      && err.body === 'malformed SDP: no m= line' && /400 malformed SDP: no m= line/.test(err.message),
  );
  assert.ok(FakePeerConnection.instances[0].closed);
});

test('503 reports Retry-After once the retries are spent', async () => {
  const fetch = fakeFetch(() => ({ status: 503, body: 'draining', headers: { 'Retry-After': '7' } }));
  await assert.rejects(
    connectPublisher(base({ user: 'alice', stream: camera(), fetch, unavailableRetries: 0 })),
    (err) => err.status === 503 && err.retryAfter === 7);
});

test('503, 502 and no answer are retried with back-off, honouring Retry-After', async () => {
  const answers = [
    { status: 503, body: 'draining', headers: { 'Retry-After': '0' } },
    { status: 502, body: 'no pod available' },
    new Error('connection refused'),
  ];
  const fetch = fakeFetch(() => {
    const next = answers.shift();
    if (next instanceof Error) throw next;
    return next ?? null;
  });
  const began = Date.now();
  const pub = await connectPublisher(base({
    user: 'alice', stream: camera(), fetch, retryBaseMs: 20, retryMaxMs: 100,
  }));
  const posts = fetch.requests.filter((r) => r.method === 'POST');
  assert.equal(posts.length, 4);
  assert.equal(pub.id, pathOf(posts[3].url).split('/').pop());
  // Retry-After 0: at once; then 20 ms doubled to 40 ms.
  assert.ok(Date.now() - began >= 60, `${Date.now() - began} ms`);
  await pub.stop();
});

test('503 is not retried forever', async () => {
  const fetch = fakeFetch(() => ({ status: 503, body: 'draining' }));
  await assert.rejects(
    connectPublisher(base({
      user: 'alice', stream: camera(), fetch, retryBaseMs: 1, unavailableRetries: 3,
    })),
    (err) => err.status === 503);
  assert.equal(fetch.requests.filter((r) => r.method === 'POST').length, 4);
});

test('409 (suffix collision) retries with a fresh id, then gives up', async () => {
  let conflicts = 1;
  const fetch = fakeFetch(() => (conflicts-- > 0 ? { status: 409, body: 'id in use' } : null));
  const pub = await connectPublisher(base({ user: 'alice', stream: camera(), fetch }));
  const ids = fetch.requests.map((r) => pathOf(r.url).split('/').pop());
  assert.equal(ids.length, 2);
  assert.notEqual(ids[0], ids[1]);
  assert.equal(pub.id, ids[1]);
  assert.ok(FakePeerConnection.instances[0].closed, 'the refused attempt is closed');

  const always = fakeFetch(() => ({ status: 409, body: 'id in use' }));
  await assert.rejects(connectPublisher(base({ user: 'alice', stream: camera(), fetch: always })),
    (err) => err.status === 409);
  assert.equal(always.requests.length, 3);
});

test('a channel that never opens times out and the accepted leg is DELETEd', async () => {
  FakePeerConnection.defaults = { autoOpen: false };
  const fetch = fakeFetch();
  await assert.rejects(
    connectPublisher(base({ user: 'alice', stream: camera(), fetch, connectTimeoutMs: 30 })),
    (err) => err.kind === 'connection' && /not open after 30 ms/.test(err.message));
  await until(() => fetch.requests.length === 2, 'DELETE');
  assert.deepEqual(fetch.requests.map((r) => r.method), ['POST', 'DELETE']);
  assert.equal(pathOf(fetch.requests[0].url), fetch.requests[1].url);
});

test('bad arguments are refused before anything is sent', async () => {
  const fetch = fakeFetch();
  await assert.rejects(connectPublisher(base({ user: 'a b', stream: camera(), fetch })), SfuError);
  await assert.rejects(connectPublisher(base({ room: 'no/slash', user: 'a', stream: camera(), fetch })), SfuError);
  await assert.rejects(connectPublisher(base({ user: 'a', stream: new FakeStream('s'), fetch })), /at least one track/);
  await assert.rejects(connectSubscriber(base({ user: 'a', mode: 'some', fetch })), /auto or manual/);
  assert.equal(fetch.requests.length, 0);
});

test('a subscriber offers only a data channel and answers each SDP_OFFER over it', async () => {
  const fetch = fakeFetch();
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', fetch, ...rec.callbacks }));
  const [post] = fetch.requests;
  assert.equal(post.url, `http://sfu.test:8080/sub/r1/${sub.id}`);
  assert.match(post.body, /tracks= channels=1/);
  assert.equal(sub.pc.transceivers.length, 0);

  const ch = sub.channel;
  ch.receive('PUB_JOIN alice-aaaa1111');
  ch.receive(`SDP_OFFER ${fakeOffer([
    { kind: 'audio', mid: '1', msid: 'alice-aaaa1111:a1' },
    { kind: 'video', mid: '2', msid: 'alice-aaaa1111:v1' },
  ])}`);
  await until(() => ch.sent.length === 1, 'SDP_ANSWER');
  assert.match(ch.sent[0], /^SDP_ANSWER v=0\r\nfake-answer to \d+ bytes\r\n$/);
  assert.deepEqual(rec.events, [
    ['join', 'alice-aaaa1111', 'alice'],
    ['track', 'alice-aaaa1111', 'audio', 'alice-aaaa1111'],
    ['track', 'alice-aaaa1111', 'video', 'alice-aaaa1111'],
  ]);
  assert.deepEqual([...sub.publishers.keys()], ['alice-aaaa1111']);
  assert.equal(sub.publishers.get('alice-aaaa1111').tracks.size, 2);
});

test("PUB_LEFT ends the publisher's tracks, and a stopped m-section ends its track", async () => {
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch(), ...rec.callbacks }));
  const ch = sub.channel;
  ch.receive('PUB_JOIN alice-1');
  ch.receive('PUB_JOIN carol-2');
  ch.receive(`SDP_OFFER ${fakeOffer([
    { kind: 'audio', mid: '1', msid: 'alice-1:a' }, { kind: 'video', mid: '2', msid: 'alice-1:v' },
    { kind: 'audio', mid: '3', msid: 'carol-2:a' }, { kind: 'video', mid: '4', msid: 'carol-2:v' },
  ])}`);
  await until(() => ch.sent.length === 1, 'first answer');
  rec.events.length = 0;

  ch.receive('PUB_LEFT alice-1');
  assert.deepEqual(rec.events, [
    ['ended', 'alice-1', 'audio'], ['ended', 'alice-1', 'video'], ['left', 'alice-1', 'alice'],
  ]);
  rec.events.length = 0;
  // The server stops alice's sections (port 0) and carol's video (e.g. UNSUB of one track).
  ch.receive(`SDP_OFFER ${fakeOffer([
    { kind: 'audio', mid: '1', port: 0 }, { kind: 'video', mid: '2', port: 0 },
    { kind: 'audio', mid: '3', msid: 'carol-2:a' }, { kind: 'video', mid: '4', port: 0 },
  ])}`);
  await until(() => ch.sent.length === 2, 'second answer');
  assert.deepEqual(rec.events, [['ended', 'carol-2', 'video']]);
  assert.equal(sub.publishers.get('carol-2').tracks.size, 1);
  assert.ok(!sub.publishers.has('alice-1'));
});

test('SDP_OFFERs are handled one at a time, in order', async () => {
  FakePeerConnection.defaults = { srdDelayMs: 15 };
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch() }));
  const ch = sub.channel;
  const pc = sub.pc;
  pc.calls.length = 0;
  const answered = [];
  ch.onSend = (text) => answered.push([text.slice(0, 10), pc.calls.length]);
  ch.receive(`SDP_OFFER ${fakeOffer([{ kind: 'audio', mid: '1', msid: 'a-1:x' }])}`);
  ch.receive(`SDP_OFFER ${fakeOffer([{ kind: 'audio', mid: '1', msid: 'a-1:x' }, { kind: 'video', mid: '2', msid: 'a-1:y' }])}`);
  ch.receive(`SDP_OFFER ${fakeOffer([{ kind: 'audio', mid: '1', port: 0 }, { kind: 'video', mid: '2', port: 0 }])}`);
  await until(() => ch.sent.length === 3, 'three answers');
  const round = ['setRemoteDescription offer', 'createAnswer', 'setLocalDescription answer'];
  assert.deepEqual(pc.calls, [...round, ...round, ...round]);
  // Each answer went out before the next offer was applied.
  assert.deepEqual(answered.map((a) => a[1]), [3, 6, 9]);
});

test('an offer that fails to apply is reported and rolled back; the connection stays up', async () => {
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch(), ...rec.callbacks }));
  const ch = sub.channel;
  ch.receive('SDP_OFFER garbage');
  await until(() => rec.of('error').length === 1, 'error');
  assert.equal(rec.of('error')[0][1], 'negotiation');
  ch.receive(`SDP_OFFER ${fakeOffer([{ kind: 'audio', mid: '1', msid: 'a-1:x' }])}`);
  await until(() => ch.sent.length === 1, 'answer after the failure');
  assert.equal(sub.state, 'open');
});

test('CHAT, MEDIA, ERROR and malformed commands reach the right callbacks', async () => {
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch(), ...rec.callbacks }));
  const ch = sub.channel;
  ch.receive('CHAT alice-1 hello world');
  ch.receive(new TextEncoder().encode('CHAT alice-1 as bytes').buffer);
  ch.receive('MEDIA {"publishers":[{"id":"alice-1","user":"alice","audio":1,"video":0,"tracks":[]}]}');
  ch.receive('ERROR unknown command SUBB');
  ch.receive('WHAT is this');
  ch.receive('PUB_JOIN not valid');
  ch.receive(new Uint8Array([0xff, 0xfe]).buffer);
  assert.deepEqual(rec.events.slice(0, 4), [
    ['chat', 'alice-1', 'hello world'],
    ['chat', 'alice-1', 'as bytes'],
    ['media', { publishers: [{ id: 'alice-1', user: 'alice', audio: 1, video: 0, tracks: [] }] }],
    ['error', 'server', 'unknown command SUBB'],
  ]);
  const kinds = rec.events.slice(4).map((e) => e.slice(0, 2));
  assert.deepEqual(kinds, [['error', 'protocol'], ['error', 'protocol'], ['error', 'protocol']]);
  sub.chat('still here');
  assert.deepEqual(ch.sent, ['CHAT still here']);
});

test('a throwing callback does not break the connection', async () => {
  const original = console.error;
  console.error = () => {};
  try {
    const sub = await connectSubscriber(base({
      user: 'bob', fetch: fakeFetch(), onChat: () => { throw new Error('boom'); },
    }));
    sub.channel.receive('CHAT a-1 x');
    sub.channel.receive(`SDP_OFFER ${fakeOffer([{ kind: 'audio', mid: '1', msid: 'a-1:x' }])}`);
    await until(() => sub.channel.sent.length === 1, 'answer');
  } finally {
    console.error = original;
  }
});

test('manual mode: SUB_MODE on open, SUB/UNSUB, setMode', async () => {
  const sub = await connectSubscriber(base({ user: 'bob', mode: 'manual', fetch: fakeFetch() }));
  const ch = sub.channel;
  assert.deepEqual(ch.sent, ['SUB_MODE manual']);
  sub.sub('alice-1');
  sub.sub('carol-2');
  sub.unsub('alice-1');
  sub.setMode('auto');
  assert.deepEqual(ch.sent.slice(1), ['SUB alice-1', 'SUB carol-2', 'UNSUB alice-1', 'SUB_MODE auto']);
  assert.deepEqual([...sub.subscriptions], ['carol-2']);
  assert.throws(() => sub.sub('bad id'), SfuError);
  assert.throws(() => sub.setMode('sometimes'), SfuError);
  assert.equal(ch.sent.length, 5);
});

test('auto mode sends no SUB_MODE', async () => {
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch() }));
  assert.deepEqual(sub.channel.sent, []);
});

test('the server closing the channel, or ICE failing, reports onClose once', async () => {
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', fetch: fakeFetch(), ...rec.callbacks }));
  sub.channel.close();
  assert.deepEqual(rec.of('close'), [['close', 'the server closed the connection']]);
  assert.equal(sub.state, 'closed');
  assert.ok(sub.pc.closed);

  const rec2 = recorder();
  const pub = await connectPublisher(base({ user: 'al', stream: camera(), fetch: fakeFetch(), ...rec2.callbacks }));
  pub.pc.fail();
  pub.pc.fail();
  assert.deepEqual(rec2.of('close'), [['close', 'the connection failed (ICE/DTLS)']]);
});

test('stopNow() sends STOP and a keepalive DELETE without waiting', async () => {
  const fetch = fakeFetch();
  const rec = recorder();
  const pub = await connectPublisher(base({ user: 'alice', stream: camera(), fetch, ...rec.callbacks }));
  const ch = pub.channel;
  pub.stopNow();
  assert.deepEqual(ch.sent, ['STOP']);
  assert.equal(pub.state, 'closed');
  assert.deepEqual(rec.of('close'), [['close', 'stopped']]);
  await until(() => fetch.requests.length === 2, 'DELETE');
  assert.equal(fetch.requests[1].method, 'DELETE');
  assert.ok(fetch.requests[1].keepalive);
});

test('a connection closed while connecting rejects instead of hanging', async () => {
  FakePeerConnection.defaults = { autoOpen: false };
  const fetch = fakeFetch();
  const pending = connectSubscriber(base({ user: 'bob', fetch }));
  await until(() => fetch.requests.length === 1, 'POST');
  FakePeerConnection.instances[0].close();
  await assert.rejects(pending, (err) => err.kind === 'connection' && /closed/.test(err.message));
  await until(() => fetch.requests.length === 2, 'DELETE of the accepted leg');
  assert.equal(fetch.requests[1].method, 'DELETE');
});

test('RECONNECT moves to a new id with the same user and keeps callbacks and SUBs', async () => {
  const fetch = fakeFetch();
  const rec = recorder();
  const sub = await connectSubscriber(base({ user: 'bob', mode: 'manual', fetch, ...rec.callbacks }));
  const oldId = sub.id;
  const oldChannel = sub.channel;
  sub.sub('alice-1');
  oldChannel.receive('PUB_JOIN alice-1');
  oldChannel.receive('RECONNECT');
  await until(() => rec.of('reconnect').length === 1, 'reconnect');
  const newId = sub.id;
  assert.notEqual(newId, oldId);
  assert.match(newId, /^bob-[a-z0-9]{8}$/);
  assert.deepEqual(rec.of('reconnect'), [['reconnect', newId, oldId]]);
  assert.equal(fetch.requests[1].url, `http://sfu.test:8080/sub/r1/${newId}`);
  assert.deepEqual(oldChannel.sent.slice(-1), ['STOP']);
  assert.deepEqual(sub.channel.sent, ['SUB_MODE manual', 'SUB alice-1']);
  // The old leg's publishers are gone; the new leg announces the room again.
  assert.deepEqual(rec.of('left'), [['left', 'alice-1', 'alice']]);
  sub.channel.receive('PUB_JOIN alice-1');
  assert.equal(rec.of('join').length, 2);
  // Closing the old leg afterwards is not a close of the connection.
  oldChannel.close();
  assert.equal(rec.of('close').length, 0);
  assert.equal(sub.state, 'open');
  sub.chat('hi');
  assert.deepEqual(sub.channel.sent.slice(-1), ['CHAT hi']);
});

test('a failed RECONNECT closes the connection and says why (after its retries)', async () => {
  let posts = 0;
  const fetch = fakeFetch((req) => (req.method === 'POST' && ++posts > 1 ? { status: 503, body: 'full' } : null));
  const rec = recorder();
  const pub = await connectPublisher(base({
    user: 'alice', stream: camera(), fetch, unavailableRetries: 2, retryBaseMs: 1, ...rec.callbacks,
  }));
  pub.channel.receive('RECONNECT');
  await until(() => rec.of('close').length === 1, 'close');
  assert.equal(posts, 4);  // the first connection, then the reconnect's try and two retries
  assert.deepEqual(rec.of('close'), [['close', 'reconnect failed']]);
  assert.match(rec.of('error')[0][2], /reconnect failed: POST .* 503 full/);
});

test('a publisher adds, mutes and removes tracks on its one connection (issue 15)', async () => {
  const mic = new FakeTrack('audio', 'mic1');
  const pub = await connectPublisher(base({ user: 'alice', tracks: [mic], fetch: fakeFetch() }));
  const { channel, pc } = pub;
  const answerOffers = (text) => {
    if (text.startsWith('SDP_OFFER ')) setTimeout(() => channel.receive('SDP_ANSWER v=0\r\nok\r\n'), 0);
  };
  channel.onSend = answerOffers;
  const cam = new FakeTrack('video', 'cam1');
  assert.equal(await pub.addTrack(cam, 'camera'), 'cam1');
  assert.equal(channel.sent[0], 'ADD_MEDIA video camera');
  assert.match(channel.sent[1], /^SDP_OFFER v=0\r\nfake-offer tracks=audio,video/);
  assert.match(channel.sent[1], /a=candidate:fake/);  // the complete offer, after gathering
  assert.equal(pc.remoteDescription.sdp, 'v=0\r\nok\r\n');
  assert.deepEqual(pub.tracks, [mic, cam]);

  pub.mute(cam, true);
  pub.mute(cam, false);
  assert.deepEqual(channel.sent.slice(2), ['MUTE cam1 on', 'MUTE cam1 off']);

  await pub.removeTrack(cam);
  assert.equal(channel.sent[4], 'REMOVE_MEDIA video camera');
  assert.match(channel.sent[5], /^SDP_OFFER /);
  assert.ok(pc.transceivers[1].stopped, 'the section is stopped, for the server to recycle');
  assert.deepEqual(pub.tracks, [mic]);

  // A refused offer rejects (kind 'negotiation') and is rolled back; the connection stays.
  channel.onSend = (text) => {
    if (text.startsWith('SDP_OFFER ')) {
      setTimeout(() => channel.receive('ERROR bad SDP_OFFER: no'), 0);
    }
  };
  const errors = [];
  pub.options.onError = (e) => errors.push(e);
  await assert.rejects(pub.addTrack(new FakeTrack('video', 'scr1'), 'screen'),
    (e) => e instanceof SfuError && e.kind === 'negotiation' && /bad SDP_OFFER/.test(e.message));
  assert.equal(pc.calls.at(-1), 'setLocalDescription rollback');
  assert.deepEqual(errors, [], 'the refusal goes to the caller, not onError');
  assert.equal(pub.state, 'open');
  channel.onSend = answerOffers;
  await pub.addTrack(new FakeTrack('video', 'scr2'), 'screen');  // the next one works

  await assert.rejects(pub.addTrack(new FakeTrack('video', 'x'), 'a b'), SfuError);
  await assert.rejects(pub.addTrack(mic, 'mic'), SfuError);
  await assert.rejects(pub.removeTrack(new FakeTrack('audio', 'nope')), SfuError);
  assert.throws(() => pub.mute(new FakeTrack('audio', 'nope'), true), SfuError);
});

test('a subscriber hears TRACK_ADD / TRACK_REMOVE / MUTED and gets APP_IDs with tracks', async () => {
  const events = [];
  const sub = await connectSubscriber(base({
    user: 'bob', fetch: fakeFetch(),
    onTrack: (id, track, stream, info) => events.push(['track', id, track.kind, info]),
    onTrackEnded: (id, track, trackId) => events.push(['ended', id, trackId]),
    onTrackAdd: (...a) => events.push(['add', ...a]),
    onTrackRemove: (...a) => events.push(['remove', ...a]),
    onMuted: (...a) => events.push(['muted', ...a]),
  }));
  const { channel } = sub;
  channel.receive('PUB_JOIN alice-1');
  channel.receive('TRACK_ADD alice-1 a1 audio mic');
  channel.receive('TRACK_ADD alice-1 s1 video screen');
  channel.receive('MUTED alice-1 s1 on');
  channel.receive(`SDP_OFFER ${fakeOffer([
    { kind: 'audio', mid: '1', msid: 'alice-1:a1' }, { kind: 'video', mid: '2', msid: 'alice-1:s1' }])}`);
  await until(() => events.filter((e) => e[0] === 'track').length === 2, 'two tracks');
  assert.deepEqual(events.filter((e) => e[0] !== 'track'), [
    ['add', 'alice-1', 'a1', 'audio', 'mic'], ['add', 'alice-1', 's1', 'video', 'screen'],
    ['muted', 'alice-1', 's1', true]]);
  assert.deepEqual(events.filter((e) => e[0] === 'track').map((e) => e[3]), [
    { trackId: 'a1', appId: 'mic', muted: false }, { trackId: 's1', appId: 'screen', muted: true }]);
  channel.receive('TRACK_REMOVE alice-1 s1');
  assert.deepEqual(events.slice(-2), [['ended', 'alice-1', 's1'], ['remove', 'alice-1', 's1']]);
  assert.deepEqual([...sub.publishers.get('alice-1').appIds], [['a1', 'mic']]);
});

test('reconnectOnLoss: a lost leg comes back under a new id, the old one is DELETEd', async () => {
  const fetch = fakeFetch();
  const rec = recorder();
  const sub = await connectSubscriber(base({
    user: 'bob', mode: 'manual', fetch, reconnectOnLoss: true, reconnectBaseDelayMs: 5,
    ...rec.callbacks,
  }));
  const oldId = sub.id;
  sub.sub('alice-1');
  sub.pc.fail();  // ICE failed: the network changed under the client
  await until(() => rec.of('reconnect').length === 1, 'reconnect');
  assert.notEqual(sub.id, oldId);
  assert.match(sub.id, /^bob-[a-z0-9]{8}$/);
  assert.deepEqual(rec.of('reconnect'), [['reconnect', sub.id, oldId]]);
  assert.deepEqual(rec.of('close'), []);
  assert.equal(sub.state, 'open');
  const methods = fetch.requests.map((r) => `${r.method} ${pathOf(r.url).split('/').slice(-1)[0]}`);
  assert.ok(methods.includes(`DELETE ${oldId}`), methods.join(', '));
  assert.ok(methods.includes(`POST ${sub.id}`), methods.join(', '));
  assert.deepEqual(sub.channel.sent, ['SUB_MODE manual', 'SUB alice-1']);
  await sub.stop();
});

test('reconnectOnLoss: back-off grows and ends in onClose when every attempt fails', async () => {
  let posts = 0;
  const fetch = fakeFetch((req) => (req.method === 'POST' && ++posts > 1 ? { status: 503, body: 'down' } : null));
  const rec = recorder();
  const pub = await connectPublisher(base({
    user: 'alice', stream: camera(), fetch, reconnectOnLoss: true, reconnectAttempts: 3,
    reconnectBaseDelayMs: 2, reconnectMaxDelayMs: 6, unavailableRetries: 0, ...rec.callbacks,
  }));
  const delays = [0, 1, 2, 3, 10].map((n) => pub._backoffMs(n));
  assert.ok(delays[0] >= 1 && delays[0] <= 3, delays);       // 2 ms ± 20 %
  assert.ok(delays[1] >= 3 && delays[1] <= 5, delays);       // 4 ms
  for (const d of delays.slice(2)) assert.ok(d >= 4 && d <= 8, delays);  // capped at 6 ms
  pub.channel.close();  // the server side went away
  await until(() => rec.of('close').length === 1, 'close');
  assert.deepEqual(rec.of('close'), [['close', 'the server closed the connection; reconnecting failed']]);
  assert.equal(posts, 4);  // the first connection and three attempts
  assert.equal(rec.of('error').length, 3);
  assert.match(rec.of('error')[0][2], /reconnect attempt 1 failed: POST .* 503 down/);
});
