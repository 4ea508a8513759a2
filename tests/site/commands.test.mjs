// Command parsing and formatting of site/sfu-client.js (the data-channel protocol, README).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  CLIENT_COMMANDS,
  SERVER_COMMANDS,
  clientCommands,
  parseClientCommand,
  parseServerCommand,
  serverCommands,
  SfuError,
} from '../../site/sfu-client.js';

test('CHAT keeps every space of the text after the sender id', () => {
  assert.deepEqual(parseServerCommand('CHAT a-1 hello world'),
    { type: 'CHAT', from: 'a-1', user: 'a', text: 'hello world' });
  assert.deepEqual(parseServerCommand('CHAT bob-x9   spaced  out '),
    { type: 'CHAT', from: 'bob-x9', user: 'bob', text: '  spaced  out ' });
  assert.equal(parseServerCommand('CHAT a-1 ünïcødé ✓ 🎉').text, 'ünïcødé ✓ 🎉');
  assert.equal(parseServerCommand('CHAT a-1').text, '');
  assert.equal(parseServerCommand('CHAT a-1 line one\nline two').text, 'line one\nline two');
});

test('CHAT without a valid sender is invalid', () => {
  for (const bad of ['CHAT', 'CHAT ', 'CHAT  text', 'CHAT bad/id text', `CHAT ${'x'.repeat(65)} hi`]) {
    const cmd = parseServerCommand(bad);
    assert.equal(cmd.type, 'INVALID', bad);
    assert.match(cmd.error, /sender/);
    assert.equal(cmd.raw, bad);
  }
});

test('PUB_JOIN and PUB_LEFT carry a publisher id and its user', () => {
  assert.deepEqual(parseServerCommand('PUB_JOIN alice-k3j2'),
    { type: 'PUB_JOIN', id: 'alice-k3j2', user: 'alice' });
  assert.deepEqual(parseServerCommand('PUB_LEFT mary-jane-77'),
    { type: 'PUB_LEFT', id: 'mary-jane-77', user: 'mary-jane' });
  assert.equal(parseServerCommand('PUB_JOIN nodash').user, 'nodash');
  for (const bad of ['PUB_JOIN', 'PUB_JOIN ', 'PUB_LEFT a b', 'PUB_JOIN ../etc', 'PUB_JOIN a\n']) {
    assert.equal(parseServerCommand(bad).type, 'INVALID', bad);
  }
});

test('SDP_OFFER keeps the SDP byte for byte', () => {
  const sdp = 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n';
  assert.deepEqual(parseServerCommand(`SDP_OFFER ${sdp}`), { type: 'SDP_OFFER', sdp });
  assert.equal(parseServerCommand('SDP_OFFER').type, 'INVALID');
  assert.equal(parseServerCommand('SDP_OFFER   ').type, 'INVALID');
});

test('MEDIA parses its JSON and insists on a publishers array', () => {
  const media = { publishers: [{ id: 'alice-k3j2', user: 'alice', audio: 1, video: 1,
    tracks: [{ kind: 'audio', track: 't1' }, { kind: 'video', track: 't2' }] }] };
  assert.deepEqual(parseServerCommand(`MEDIA ${JSON.stringify(media)}`), { type: 'MEDIA', media });
  assert.deepEqual(parseServerCommand('MEDIA {"publishers":[]}').media, { publishers: [] });
  assert.match(parseServerCommand('MEDIA {not json').error, /bad JSON/);
  assert.match(parseServerCommand('MEDIA []').error, /publishers/);
  assert.match(parseServerCommand('MEDIA null').error, /publishers/);
  assert.match(parseServerCommand('MEDIA {"publishers":{}}').error, /publishers/);
});

test('ERROR, RECONNECT, and unknown or non-text messages', () => {
  assert.deepEqual(parseServerCommand('ERROR unknown command FOO'), { type: 'ERROR', text: 'unknown command FOO' });
  assert.deepEqual(parseServerCommand('ERROR'), { type: 'ERROR', text: '' });
  assert.deepEqual(parseServerCommand('RECONNECT'), { type: 'RECONNECT' });
  assert.match(parseServerCommand('HELLO there').error, /unknown command "HELLO"/);
  assert.match(parseServerCommand('').error, /unknown command ""/);
  assert.match(parseServerCommand('pub_join a-1').error, /unknown/, 'commands are case-sensitive');
  assert.match(parseServerCommand(new Uint8Array([1, 2])).error, /not a text/);
  assert.match(parseServerCommand(`${'X'.repeat(1000)} y`).error.slice(0, 60), /unknown command "X{32}"/);
});

test('client commands are formatted exactly as the protocol says', () => {
  assert.equal(clientCommands.sdpAnswer('v=0\r\n'), 'SDP_ANSWER v=0\r\n');
  assert.equal(clientCommands.stop(), 'STOP');
  assert.equal(clientCommands.sub('alice-k3j2'), 'SUB alice-k3j2');
  assert.equal(clientCommands.unsub('alice-k3j2'), 'UNSUB alice-k3j2');
  assert.equal(clientCommands.subMode('auto'), 'SUB_MODE auto');
  assert.equal(clientCommands.subMode('manual'), 'SUB_MODE manual');
  assert.equal(clientCommands.chat('hello world'), 'CHAT hello world');
  assert.throws(() => clientCommands.sub('bad id'), SfuError);
  assert.throws(() => clientCommands.sub(''), SfuError);
  assert.throws(() => clientCommands.subMode('sometimes'), SfuError);
  assert.throws(() => clientCommands.chat(42), SfuError);
});

test('every client command round-trips through parseClientCommand', () => {
  const cases = [
    [clientCommands.sdpAnswer('v=0\r\nm=video 9 x 96\r\n'), { type: 'SDP_ANSWER', sdp: 'v=0\r\nm=video 9 x 96\r\n' }],
    [clientCommands.stop(), { type: 'STOP' }],
    [clientCommands.sub('bob-1'), { type: 'SUB', id: 'bob-1' }],
    [clientCommands.unsub('bob-1'), { type: 'UNSUB', id: 'bob-1' }],
    [clientCommands.subMode('manual'), { type: 'SUB_MODE', mode: 'manual' }],
    [clientCommands.sdpRecycle(false), { type: 'SDP_RECYCLE', on: false }],
    [clientCommands.sdpRecycle(true), { type: 'SDP_RECYCLE', on: true }],
    [clientCommands.chat('a  b'), { type: 'CHAT', text: 'a  b' }],
    [clientCommands.sdpOffer('v=0\r\n'), { type: 'SDP_OFFER', sdp: 'v=0\r\n' }],
    [clientCommands.addMedia('video', 'screen'), { type: 'ADD_MEDIA', kind: 'video', appId: 'screen' }],
    [clientCommands.removeMedia('audio', 'mic'), { type: 'REMOVE_MEDIA', kind: 'audio', appId: 'mic' }],
    [clientCommands.mute('t-1', true), { type: 'MUTE', track: 't-1', muted: true }],
    [clientCommands.layer('alice-1', '{9f-1a}', 'low'),
      { type: 'LAYER', id: 'alice-1', track: '{9f-1a}', layer: 'low' }],
    [clientCommands.size('alice-1', 'mid1', 1280, 720),
      { type: 'SIZE', id: 'alice-1', track: 'mid1', width: 1280, height: 720 }],
  ];
  const seen = new Set();
  for (const [text, want] of cases) {
    assert.deepEqual(parseClientCommand(text), want);
    seen.add(want.type);
  }
  assert.deepEqual([...seen].sort(), [...CLIENT_COMMANDS].sort());
  for (const bad of ['STOP now', 'SUB', 'SUB_MODE', 'SUB_MODE AUTO', 'SDP_ANSWER ', 'PUB_JOIN a-1',
    'SDP_RECYCLE', 'SDP_RECYCLE no']) {
    assert.equal(parseClientCommand(bad).type, 'INVALID', bad);
  }
});

test('every server command round-trips through parseServerCommand', () => {
  const cases = [
    [serverCommands.pubJoin('alice-1'), 'PUB_JOIN'],
    [serverCommands.pubLeft('alice-1'), 'PUB_LEFT'],
    [serverCommands.sdpOffer('v=0\r\n'), 'SDP_OFFER'],
    [serverCommands.media({ publishers: [] }), 'MEDIA'],
    [serverCommands.chat('alice-1', 'hi there'), 'CHAT'],
    [serverCommands.error('nope'), 'ERROR'],
    [serverCommands.reconnect(), 'RECONNECT'],
    [serverCommands.sdpAnswer('v=0\r\n'), 'SDP_ANSWER'],
    [serverCommands.trackAdd('alice-1', 't1', 'video', 'camera'), 'TRACK_ADD'],
    [serverCommands.trackRemove('alice-1', 't1'), 'TRACK_REMOVE'],
    [serverCommands.muted('alice-1', 't1', true), 'MUTED'],
    [serverCommands.speaker('alice-1'), 'SPEAKER'],
    [serverCommands.speakers([{ id: 'alice-1', dbov: -20 }]), 'SPEAKERS'],
    [serverCommands.layers('t1', ['q', 'f']), 'LAYERS'],
  ];
  for (const [text, type] of cases) assert.equal(parseServerCommand(text).type, type, text);
  assert.deepEqual(cases.map((c) => c[1]).sort(), [...SERVER_COMMANDS].sort());
});

test('TRACK_ADD, TRACK_REMOVE and MUTED name a publisher and one of its tracks (issue 15)', () => {
  assert.deepEqual(parseServerCommand('TRACK_ADD alice-k3 {9f-1a} video screen'),
    { type: 'TRACK_ADD', id: 'alice-k3', user: 'alice', track: '{9f-1a}', kind: 'video',
      appId: 'screen' });
  assert.deepEqual(parseServerCommand('TRACK_REMOVE alice-k3 mid2'),
    { type: 'TRACK_REMOVE', id: 'alice-k3', user: 'alice', track: 'mid2' });
  assert.deepEqual(parseServerCommand('MUTED alice-k3 t1 on'),
    { type: 'MUTED', id: 'alice-k3', user: 'alice', track: 't1', muted: true });
  assert.equal(parseServerCommand('MUTED alice-k3 t1 off').muted, false);
  for (const bad of ['TRACK_ADD alice-k3 t1 data cam', 'TRACK_ADD alice-k3 t1 video',
    'TRACK_ADD a-1 t1 video cam extra', 'TRACK_REMOVE a-1', 'TRACK_REMOVE a-1 t"1',
    'MUTED a-1 t1 maybe', 'MUTED a-1 t1', 'MUTED bad/id t1 on']) {
    assert.equal(parseServerCommand(bad).type, 'INVALID', bad);
  }
});

test('a publisher renegotiates with SDP_OFFER and labels tracks with ADD_MEDIA (issue 15)', () => {
  const sdp = 'v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n';
  assert.deepEqual(parseServerCommand(`SDP_ANSWER ${sdp}`), { type: 'SDP_ANSWER', sdp });
  assert.equal(clientCommands.sdpOffer(sdp), `SDP_OFFER ${sdp}`);
  assert.equal(clientCommands.addMedia('video', 'camera'), 'ADD_MEDIA video camera');
  assert.equal(clientCommands.removeMedia('audio', 'mic'), 'REMOVE_MEDIA audio mic');
  assert.equal(clientCommands.mute('{ab-1}', true), 'MUTE {ab-1} on');
  assert.equal(clientCommands.mute('t1', false), 'MUTE t1 off');
  assert.throws(() => clientCommands.addMedia('data', 'x'), SfuError);
  assert.throws(() => clientCommands.addMedia('video', 'a b'), SfuError);
  assert.throws(() => clientCommands.mute('a b', true), SfuError);
  for (const line of [clientCommands.sdpOffer(sdp), clientCommands.addMedia('video', 'screen'),
    clientCommands.removeMedia('video', 'screen'), clientCommands.mute('t1', true)]) {
    assert.notEqual(parseClientCommand(line).type, 'INVALID', line);
  }
  for (const line of [serverCommands.trackAdd('a-1', 't1', 'audio', 'mic'),
    serverCommands.trackRemove('a-1', 't1'), serverCommands.muted('a-1', 't1', false),
    serverCommands.sdpAnswer(sdp)]) {
    assert.notEqual(parseServerCommand(line).type, 'INVALID', line);
  }
  assert.equal(parseClientCommand('ADD_MEDIA video').type, 'INVALID');
  assert.equal(parseClientCommand('MUTE t1 yes').type, 'INVALID');
});

test('SPEAKER names a publisher; SPEAKERS lists levels in dBov, loudest first (issue 11)', () => {
  assert.deepEqual(parseServerCommand('SPEAKER alice-k3'),
    { type: 'SPEAKER', id: 'alice-k3', user: 'alice' });
  assert.deepEqual(parseServerCommand('SPEAKERS alice-k3:-20 bob-x:-45'), { type: 'SPEAKERS',
    levels: [{ id: 'alice-k3', user: 'alice', dbov: -20 }, { id: 'bob-x', user: 'bob', dbov: -45 }] });
  assert.deepEqual(parseServerCommand('SPEAKERS'), { type: 'SPEAKERS', levels: [] });
  assert.equal(serverCommands.speakers([]), 'SPEAKERS');
  for (const bad of ['SPEAKER', 'SPEAKER a b', 'SPEAKERS a-1', 'SPEAKERS a-1:x', 'SPEAKERS a-1:5',
    'SPEAKERS a-1:-200', 'SPEAKERS :-3', 'SPEAKERS a/1:-3']) {
    assert.equal(parseServerCommand(bad).type, 'INVALID', bad);
  }
});

test('LAYERS tells a simulcast publisher which rids to encode; - for none (dynacast, issue 11)', () => {
  assert.deepEqual(parseServerCommand('LAYERS {9f-1a} q,f'),
    { type: 'LAYERS', track: '{9f-1a}', rids: ['q', 'f'] });
  assert.deepEqual(parseServerCommand('LAYERS t1 -'), { type: 'LAYERS', track: 't1', rids: [] });
  assert.equal(serverCommands.layers('t1', []), 'LAYERS t1 -');
  for (const bad of ['LAYERS', 'LAYERS t1', 'LAYERS t1 q,,f', 'LAYERS t1 q f', 'LAYERS t"1 q',
    'LAYERS t1 q;f']) {
    assert.equal(parseServerCommand(bad).type, 'INVALID', bad);
  }
});
