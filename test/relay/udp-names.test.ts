/**
 * Destination names in UDP datagrams (DestinationNames, shared by both UDP
 * relays): one lookup per name at a time, each with a deadline; answers and
 * failures remembered for a while, within `cachedNames`.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DestinationNames, FAILED_NAME_TTL_MS, NAME_TTL_MS, type UdpCounters, udpCounters } from '../../src/relay/udp.js';
import type { ResolvedAddress, Resolver } from '../../src/upstream/resolver.js';

/** A resolver whose answers the test gives, one pending lookup per call. */
function scriptedResolver() {
  const calls: Array<{ name: string; answer: (addresses: ResolvedAddress[]) => void; fail: () => void }> = [];
  const resolver: Resolver = {
    resolve: (name) => new Promise((resolve, reject) => {
      calls.push({ name, answer: resolve, fail: () => reject(Object.assign(new Error(`${name}: not found`), { code: 'ENOTFOUND' })) });
    }),
  };
  return { resolver, calls };
}

interface Harness {
  readonly names: DestinationNames;
  readonly counters: UdpCounters;
  readonly sent: string[];
  readonly calls: ReturnType<typeof scriptedResolver>['calls'];
  /** Moves the harness clock on. */
  advance(ms: number): void;
}

function harness(limits: { pendingDatagrams?: number; cachedNames?: number } = {}, lookupMs = 60_000): Harness {
  const { resolver, calls } = scriptedResolver();
  const counters = udpCounters();
  const sent: string[] = [];
  let clock = 1_000;
  const names = new DestinationNames(
    { resolver, lookupMs, clientAddress: '192.0.2.1', limits: { maxDatagram: 65_535, pendingDatagrams: limits.pendingDatagrams ?? 64, cachedNames: limits.cachedNames ?? 256 } },
    counters,
    (address, port, family, payload) => sent.push(`${address}:${port}/${family} ${payload.toString()}`),
    () => clock,
  );
  return { names, counters, sent, calls, advance: (ms) => { clock += ms; } };
}

/** Lets settled lookups run their callbacks. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('a name is looked up once while its datagrams wait, then its answer is used until NAME_TTL_MS, then looked up again', async () => {
  const h = harness();
  h.names.send('Example.test', 53, Buffer.from('a'));
  h.names.send('example.TEST', 54, Buffer.from('b'));
  assert.deepEqual(h.calls.map((c) => c.name), ['example.test'], 'one lookup, the name in lower case');
  h.calls[0]!.answer([{ address: '0:0:0:0:0:0:0:1', family: 6 }]);
  await settle();
  assert.deepEqual(h.sent, ['::1:53/6 a', '::1:54/6 b'], 'in order, the address as a socket spells it');

  h.advance(NAME_TTL_MS - 1);
  h.names.send('example.test', 55, Buffer.from('c'));
  assert.equal(h.calls.length, 1, 'the answer is still used');
  assert.equal(h.sent.at(-1), '::1:55/6 c');

  h.advance(1);
  h.names.send('example.test', 56, Buffer.from('d'));
  assert.equal(h.calls.length, 2, 'looked up again once the answer is old');
  h.calls[1]!.answer([{ address: '127.0.0.2', family: 4 }]);
  await settle();
  assert.equal(h.sent.at(-1), '127.0.0.2:56/4 d', 'the new answer is used');
});

test('a failed name is not looked up again for FAILED_NAME_TTL_MS: its datagrams are dropped, counted, without a lookup', async () => {
  const h = harness();
  h.names.send('gone.invalid', 9, Buffer.from('x'));
  h.calls[0]!.fail();
  await settle();
  assert.equal(h.counters.droppedInvalid, 1);
  for (let i = 0; i < 100; i++) h.names.send('gone.invalid', 9, Buffer.from('x'));
  assert.equal(h.calls.length, 1, 'no lookup per datagram');
  assert.equal(h.counters.droppedInvalid, 101);

  h.advance(FAILED_NAME_TTL_MS);
  h.names.send('gone.invalid', 9, Buffer.from('y'));
  assert.equal(h.calls.length, 2, 'tried again after a while');
  h.calls[1]!.answer([{ address: '127.0.0.3', family: 4 }]);
  await settle();
  assert.deepEqual(h.sent, ['127.0.0.3:9/4 y']);
});

test('a lookup that never answers gives up after lookupMs: its datagrams are dropped, counted, and their slots free again', async () => {
  const h = harness({ pendingDatagrams: 2 }, 20);
  h.names.send('slow.test', 1, Buffer.from('a'));
  h.names.send('slow.test', 2, Buffer.from('b'));
  h.names.send('other.test', 3, Buffer.from('c'));
  assert.equal(h.counters.droppedInvalid, 1, 'the queue was full');
  for (let i = 0; i < 500 && h.counters.droppedInvalid < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(h.counters.droppedInvalid, 3, 'the two waiting datagrams were dropped at the deadline');

  h.names.send('other.test', 4, Buffer.from('d'));
  assert.deepEqual(h.calls.map((c) => c.name), ['slow.test', 'other.test'], 'the queue takes datagrams again');
  h.calls[0]!.answer([{ address: '127.0.0.4', family: 4 }]);
  h.calls[1]!.answer([{ address: '127.0.0.5', family: 4 }]);
  await settle();
  assert.deepEqual(h.sent, ['127.0.0.5:4/4 d'], 'an answer after the deadline sends nothing');
});

test('at most cachedNames names are remembered; expired ones make room; cachedNames 0 looks up every time', async () => {
  const h = harness({ cachedNames: 2 });
  for (const name of ['a.test', 'b.test', 'c.test']) h.names.send(name, 1, Buffer.from(name));
  h.calls.forEach((call, i) => call.answer([{ address: `127.0.0.${i + 1}`, family: 4 }]));
  await settle();
  assert.equal(h.sent.length, 3, 'every datagram was sent');
  h.names.send('c.test', 1, Buffer.from('again'));
  assert.equal(h.calls.length, 4, 'the third name did not fit');

  h.advance(NAME_TTL_MS);
  h.calls[3]!.answer([{ address: '127.0.0.3', family: 4 }]);
  await settle();
  h.names.send('c.test', 1, Buffer.from('cached'));
  assert.equal(h.calls.length, 4, 'the expired names made room for it');

  const none = harness({ cachedNames: 0 });
  none.names.send('a.test', 1, Buffer.from('1'));
  none.calls[0]!.answer([{ address: '127.0.0.1', family: 4 }]);
  await settle();
  none.names.send('a.test', 1, Buffer.from('2'));
  assert.equal(none.calls.length, 2);
});

test('pendingDatagrams 0 relays no datagram to a name: each is dropped, counted, with no lookup', () => {
  const h = harness({ pendingDatagrams: 0 });
  h.names.send('a.test', 1, Buffer.from('x'));
  assert.equal(h.calls.length, 0);
  assert.equal(h.counters.droppedInvalid, 1);
});

test('an answer with a zone is sent to the address without it, as both relays can (ipaddr.js threw on some zones Node accepts, and the process ended)', async () => {
  const h = harness();
  h.names.send('scoped.test', 53, Buffer.from('a'));
  h.names.send('vlan.test', 53, Buffer.from('b'));
  h.calls[0]!.answer([{ address: '::1%lo', family: 6 }]);
  h.calls[1]!.answer([{ address: 'fe80::1%eth0.5', family: 6 }]);
  await settle();
  assert.deepEqual(h.sent, ['::1:53/6 a', 'fe80::1:53/6 b']);
});

test('an answer entry whose address getter throws is passed over, not thrown out of the relay', async () => {
  const h = harness();
  h.names.send('odd.test', 7, Buffer.from('x'));
  const throwing = { get address(): string { throw new Error('no address'); }, family: 4 as const };
  h.calls[0]!.answer([throwing as unknown as ResolvedAddress, { address: '127.0.0.9', family: 4 }]);
  await settle();
  assert.deepEqual(h.sent, ['127.0.0.9:7/4 x']);
});
