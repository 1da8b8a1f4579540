/**
 * The system resolver's lookups take turns (upstream/resolver.ts): with the
 * default thread pool of 4, two run at once, one per client, the rest wait
 * in a line per client (256 each, 4,096 in all), and one nobody waits for
 * any more leaves its line without running. Over a fake getaddrinfo whose
 * lookups last until the test answers them: no DNS, no clock.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import { toSocksError } from '../../src/errors.js';
import { DestinationNames, udpCounters } from '../../src/relay/udp.js';
import { createDirectDialer, resolveWithin } from '../../src/upstream/dialer.js';
import { systemResolver } from '../../src/upstream/resolver.js';
import { type FakeGetaddrinfo, fakeGetaddrinfo } from '../helpers/lookup.js';

const FLOOD = '192.0.2.66';
const OTHER = '192.0.2.7';
const opts = { skip: process.env.UV_THREADPOOL_SIZE !== undefined && 'the numbers here are those of the default thread pool' };

let dns: FakeGetaddrinfo;
beforeEach(() => { dns = fakeGetaddrinfo(); });
afterEach(async () => {
  // Whatever a test left in the lines (a failed one) must not hold up the next.
  dns.failAll();
  await settle();
  dns.restore();
});

/** A lookup through the system resolver, its rejection handled (the tests look at it later, through `outcome`). */
function resolve(name: string, client?: string, signal?: AbortSignal): Promise<unknown> {
  const lookup = systemResolver.resolve(name, { client, signal });
  lookup.catch(() => {});
  return lookup;
}
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const settle = () => new Promise((done) => setImmediate(done));

/** What a lookup has come to once the event loop turns: its addresses, its error's message, or 'pending'. */
async function outcome(lookup: Promise<unknown>): Promise<unknown> {
  const settled = lookup.then((value) => value, (err: Error) => err.message);
  return Promise.race([settled, settle().then(() => 'pending')]);
}

test('one client\'s burst waits in its own line: another client\'s lookup starts beside the burst\'s first, before the rest of it', opts, async () => {
  const burst = range(8).map((i) => resolve(`a${i}.test`, FLOOD));
  const other = resolve('b.test', OTHER);
  assert.deepEqual(dns.started.map((c) => c.name), ['a0.test', 'b.test'], 'two at once, one of them the burst\'s');
  dns.started[1]!.answer('198.51.100.7');
  assert.deepEqual(await other, [{ address: '198.51.100.7', family: 4 }]);
  dns.started[0]!.answer('198.51.100.66');
  for (let i = 1; i < 8; i++) {
    await settle(); // the burst's next starts in the freed slot
    dns.started.at(-1)!.answer('198.51.100.66');
  }
  assert.deepEqual(dns.started.map((c) => c.name), ['a0.test', 'b.test', ...range(7).map((i) => `a${i + 1}.test`)], 'the rest of the burst, one at a time, in order');
  assert.equal((await Promise.all(burst)).length, 8);
  assert.equal(dns.peak, 2, 'never more than two at once');
});

test('one client may have 256 lookups waiting and all clients 4,096: past that a lookup fails at once as a lookup does (EAI_AGAIN, REP 0x04), naming why, and is never made', opts, async () => {
  // 2001:db8:0:1::5 and ::6 share a /64, so a line; one of theirs runs, 256 wait.
  for (let i = 0; i < 1 + 256; i++) resolve(`v6-${i}.test`, '2001:db8:0:1::5');
  const neighbour = resolve('neighbour.test', '2001:db8:0:1::6');
  const refusedNeighbour = await outcome(neighbour);
  assert.equal(refusedNeighbour, 'too many name lookups waiting from 2001:db8:0:1::/64 (256)');
  const error = await neighbour.catch((err: unknown) => err);
  assert.equal((error as { code?: string }).code, 'EAI_AGAIN');
  assert.equal(toSocksError(error).socks5Reply, 0x04, 'a CONNECT refused so is answered host unreachable');

  // Fifteen more clients: one runs, the others wait 256 each, to 4,096 in all.
  for (let c = 1; c <= 15; c++) for (let i = 0; i < (c === 1 ? 1 + 256 : 256); i++) resolve(`c${c}-${i}.test`, `198.51.100.${c}`);
  const overTotal = resolve('over.test', '203.0.113.1');
  assert.equal(await outcome(overTotal), 'too many name lookups waiting (4096)');
  assert.deepEqual(dns.asked.filter((name) => name === 'neighbour.test' || name === 'over.test'), [], 'the refused lookups were never made');
});

test('a waiting lookup whose session is gone leaves its line without running; one whose session is already gone does not queue', opts, async () => {
  const first = resolve('a0.test', FLOOD);
  const sessions = range(4).map(() => new AbortController());
  const waiting = sessions.map((session, i) => resolve(`w${i}.test`, FLOOD, session.signal));
  const gone = new Error('session closed');
  sessions[1]!.abort(gone);
  sessions[2]!.abort(gone);
  const alreadyGone = resolve('gone.test', FLOOD, AbortSignal.abort(gone));
  for (let i = 0; i < 3; i++) {
    dns.started.at(-1)!.answer('198.51.100.66');
    await settle();
  }
  const settled = await Promise.all([first, ...waiting, alreadyGone].map(outcome));
  assert.deepEqual(dns.asked, ['a0.test', 'w0.test', 'w3.test'], 'only the lookups someone waits for are made');
  assert.deepEqual(settled.map((s) => (typeof s === 'string' ? s : 'answered')), ['answered', 'answered', 'session closed', 'session closed', 'answered', 'session closed']);
});

test('a lookup whose deadline passes while it waits for its turn (a CONNECT\'s, a BIND\'s) never runs: the deadline\'s error, and the line moves on', opts, async () => {
  const first = resolve('a0.test', FLOOD);
  const dial = createDirectDialer().dial({ kind: 'domain', host: 'late-connect.test', port: 80 }, { timeoutMs: 1, client: FLOOD });
  const bind = resolveWithin(systemResolver, 'late-bind.test', 1, { client: FLOOD });
  await assert.rejects(dial, /connect to late-connect\.test:80 timed out after 1 ms/);
  await assert.rejects(bind, /resolving late-bind\.test timed out after 1 ms/);
  dns.started[0]!.answer('198.51.100.66');
  await first;
  resolve('next.test', FLOOD);
  assert.deepEqual(dns.asked, ['a0.test', 'next.test'], 'the late ones were dropped from the line, not made');
});

test('a UDP association\'s lookups still waiting when it closes are dropped without running; its datagrams are counted', opts, async () => {
  const counters = udpCounters();
  const limits = { maxDatagram: 65_535, pendingDatagrams: 64, cachedNames: 256 };
  const names = new DestinationNames({ resolver: systemResolver, lookupMs: 60_000, clientAddress: FLOOD, limits }, counters, () => {});
  for (let i = 0; i < 4; i++) names.send(`u${i}.test`, 53, Buffer.from('x'));
  resolve('b.test', OTHER);
  assert.deepEqual(dns.asked, ['u0.test', 'b.test'], 'the association\'s names take turns as its client\'s');
  names.clear();
  assert.equal(counters.droppedAtClose, 4);
  dns.started[0]!.answer('198.51.100.53');
  await settle();
  resolve('next.test', FLOOD);
  assert.deepEqual(dns.asked, ['u0.test', 'b.test', 'next.test'], 'the closed association\'s waiting names were not looked up');
});
