/**
 * The relay thread remembers JavaScript's verdicts (accepted credentials,
 * allowed requests) under a SipHash-2-4 tag of their input with a secret
 * random key. That is only safe if the function is SipHash itself: checked
 * against the reference vectors (key 00..0f, message 00..len-1) of the
 * SipHash paper and its reference implementation.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spliceAddon } from '../../src/relay/splice.js';

const KEY = Buffer.from([...Array(16).keys()]);
const message = (length: number) => Buffer.from([...Array(length).keys()]);

test('SipHash-2-4 gives the reference tags (empty message; 15 bytes, the paper\'s example)', () => {
  const addon = spliceAddon();
  assert.ok(addon, 'the addon is built (the test command builds it)');
  assert.equal(addon.siphash(KEY, message(0)).toString('hex'), '310e0edd47db6f72');
  assert.equal(addon.siphash(KEY, message(15)).toString('hex'), 'e545be4961ca29a1'); // 0xa129ca6149be45e5
});

test('SipHash-2-4: every message length across two blocks gives a distinct tag, and another key another tag', () => {
  const addon = spliceAddon()!;
  const tags = new Set<string>();
  for (let length = 0; length <= 17; length++) tags.add(addon.siphash(KEY, message(length)).toString('hex'));
  assert.equal(tags.size, 18);
  const otherKey = Buffer.from(KEY).fill(1, 0, 1);
  assert.notEqual(addon.siphash(otherKey, message(15)).toString('hex'), 'e545be4961ca29a1');
  assert.throws(() => addon.siphash(Buffer.alloc(8), message(1)), /16 bytes/);
});
