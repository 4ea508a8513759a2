// Connection ids (the seed's unique-id rule) and name helpers of site/sfu-client.js.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  NAME_PATTERN,
  SUFFIX_LENGTH,
  SfuError,
  isValidName,
  makeConnectionId,
  randomSuffix,
  sanitizeName,
  userOfId,
} from '../../site/sfu-client.js';

test('a connection id is the user, a dash and a fresh random suffix', () => {
  const id = makeConnectionId('alice');
  assert.match(id, /^alice-[a-z0-9]{8}$/);
  assert.equal(SUFFIX_LENGTH, 8);
  assert.equal(userOfId(id), 'alice');
  assert.ok(NAME_PATTERN.test(id));
  const ids = new Set(Array.from({ length: 2000 }, () => makeConnectionId('alice')));
  assert.equal(ids.size, 2000, 'suffixes repeat');
});

test('users may contain dashes; the user is everything before the last one', () => {
  const id = makeConnectionId('mary-jane');
  assert.equal(userOfId(id), 'mary-jane');
  assert.equal(userOfId('a-b-c'), 'a-b');
  assert.equal(userOfId('solo'), 'solo');
  assert.equal(userOfId('-x'), '');
  assert.equal(userOfId(undefined), '');
});

test('the whole id fits the 64-character limit', () => {
  const longest = 'u'.repeat(64 - 1 - SUFFIX_LENGTH);
  const id = makeConnectionId(longest);
  assert.equal(id.length, 64);
  assert.ok(isValidName(id));
  assert.throws(() => makeConnectionId(`${longest}u`), SfuError);
  assert.throws(() => makeConnectionId('x'.repeat(20), { suffixLength: 60 }), SfuError);
});

test('invalid users are refused rather than sent to the server', () => {
  for (const bad of ['', 'a b', 'a/b', 'ä', 'a\n', null, undefined, 7]) {
    assert.throws(() => makeConnectionId(bad), SfuError, String(bad));
  }
});

test('the suffix is uniform over [a-z0-9] (rejection sampling, injectable randomness)', () => {
  // 256 is not a multiple of 36: bytes 252..255 would favour a-d, so they must be skipped.
  const bytes = [255, 252, 0, 35, 36, 251, 253, 1];
  let i = 0;
  const source = (n) => Uint8Array.from({ length: n }, () => bytes[i++ % bytes.length]);
  assert.equal(randomSuffix(5, source), 'a9a9b');

  // Each accepted byte value maps to one symbol; over 0..251 every symbol comes out 7 times,
  // and 252..255 are skipped in favour of the next byte.
  const counts = new Map();
  for (let b = 0; b < 256; b++) {
    const ch = randomSuffix(1, (n) => Uint8Array.from({ length: n }, (_, k) => (k === 0 ? b : 7)));
    if (b >= 252) assert.equal(ch, 'h', `byte ${b} must be skipped`);
    else counts.set(ch, (counts.get(ch) ?? 0) + 1);
  }
  assert.equal(counts.size, 36);
  for (const [ch, n] of counts) assert.equal(n, 7, ch);
});

test('a random source that never yields usable bytes fails instead of looping', () => {
  assert.throws(() => randomSuffix(4, (n) => new Uint8Array(n).fill(255)), /unusable/);
  assert.throws(() => randomSuffix(0), SfuError);
});

test('sanitizeName turns typed text into a valid name', () => {
  assert.equal(sanitizeName('  My Room! '), 'My_Room_');
  assert.equal(sanitizeName('ok-name_1.2'), 'ok-name_1.2');
  assert.equal(sanitizeName('', { fallback: 'lobby' }), 'lobby');
  assert.equal(sanitizeName(null, { fallback: 'lobby' }), 'lobby');
  assert.equal(sanitizeName('x'.repeat(100)).length, 64);
  assert.equal(sanitizeName('x'.repeat(100), { maxLength: 55 }).length, 55);
  assert.equal(sanitizeName('Zoë'), 'Zo_');
  for (const s of ['a b', '日本', '../..', 'x'.repeat(70)]) assert.ok(isValidName(sanitizeName(s)), s);
});

test("isValidName is the server's [A-Za-z0-9_.-]{1,64}", () => {
  for (const good of ['a', 'A.b_c-d', '0'.repeat(64), 'r1', '...']) assert.ok(isValidName(good), good);
  for (const bad of ['', ' ', 'a b', 'a/b', '0'.repeat(65), 'é', 'a\\n', 'a\n', undefined, 3]) {
    assert.ok(!isValidName(bad), String(bad));
  }
});
