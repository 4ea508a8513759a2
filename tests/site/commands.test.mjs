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
  ];
  for (const [text, type] of cases) assert.equal(parseServerCommand(text).type, type, text);
  assert.deepEqual(cases.map((c) => c[1]).sort(), [...SERVER_COMMANDS].sort());
});
