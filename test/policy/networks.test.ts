/** Network sets that keep IPv4 and IPv6 apart (src/policy/networks.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetworkSet, canonicalNetwork } from '../../src/policy/networks.js';
import { canonicalAddress, unmappedAddress } from '../../src/protocol/address.js';

test('canonicalAddress: an IP literal as a socket spells it (IPv6 compressed, IPv4-mapped as IPv4); not an address: undefined', () => {
  assert.equal(canonicalAddress('127.0.0.1'), '127.0.0.1');
  assert.equal(canonicalAddress('0:0:0:0:0:0:0:1'), '::1');
  assert.equal(canonicalAddress('2001:DB8:0:0:0:0:0:1'), '2001:db8::1');
  assert.equal(canonicalAddress('::ffff:7f00:2'), '127.0.0.2');
  assert.equal(canonicalAddress('::ffff:0:0'), '0.0.0.0');
  assert.equal(canonicalAddress('::'), '::');
  assert.equal(canonicalAddress('example.test'), undefined);
  assert.equal(canonicalAddress(''), undefined);
});

test('unmappedAddress: every spelling of an IPv4-mapped address is that IPv4 address; anything else is left as it is', () => {
  assert.equal(unmappedAddress('10.0.0.1'), '10.0.0.1');
  assert.equal(unmappedAddress('::ffff:10.0.0.1'), '10.0.0.1');
  assert.equal(unmappedAddress('::FFFF:a00:1'), '10.0.0.1');
  assert.equal(unmappedAddress('0:0:0:0:0:ffff:a00:1'), '10.0.0.1');
  assert.equal(unmappedAddress('::1'), '::1');
  assert.equal(unmappedAddress('2001:db8::ffff:1'), '2001:db8::ffff:1', 'ffff elsewhere is not a mapping');
  assert.equal(unmappedAddress('not an address'), 'not an address');
});

test('canonicalNetwork: a mapped network of prefix 96 or more is the IPv4 network it maps; others stay', () => {
  assert.deepEqual(canonicalNetwork({ family: 6, address: '::ffff:a00:0', prefix: 104 }), { family: 4, address: '10.0.0.0', prefix: 8 });
  assert.deepEqual(canonicalNetwork({ family: 6, address: '::ffff:0:0', prefix: 96 }), { family: 4, address: '0.0.0.0', prefix: 0 });
  assert.deepEqual(canonicalNetwork({ family: 6, address: '::', prefix: 0 }), { family: 6, address: '::', prefix: 0 });
  assert.deepEqual(canonicalNetwork({ family: 4, address: '10.0.0.0', prefix: 8 }), { family: 4, address: '10.0.0.0', prefix: 8 });
});

test('NetworkSet: ::/0 holds IPv6 addresses only; a mapped network holds its IPv4 addresses in any spelling', () => {
  const allV6 = new NetworkSet([{ family: 6, address: '::', prefix: 0 }]);
  assert.equal(allV6.has('::1'), true);
  assert.equal(allV6.has('127.0.0.1'), false);
  assert.equal(allV6.has('::ffff:127.0.0.1'), false, 'a mapped address is IPv4');
  const mapped = new NetworkSet([{ family: 6, address: '::ffff:7f00:0', prefix: 104 }]);
  assert.equal(mapped.has('127.0.0.1'), true);
  assert.equal(mapped.has('::ffff:127.0.0.2'), true);
  assert.equal(mapped.has('128.0.0.1'), false);
  assert.equal(mapped.has('::1'), false);
  assert.equal(mapped.has(''), false);
});
