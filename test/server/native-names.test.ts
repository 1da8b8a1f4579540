/**
 * A CONNECT to a name on the native engine: JavaScript decides it and looks
 * the name up (the server's resolver, as the node engine's dialer does), and
 * the relay thread races the addresses as that dialer does (Happy Eyeballs)
 * and relays. Several addresses, a refusal by the rules, a lookup that
 * fails: the answer and the record the node engine gives, the case by case
 * below, each run on both engines.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import fc from 'fast-check';
import type { ResolvedAddress, Resolver, ServerOptions, SessionRecord } from '../../src/index.js';
import { RawClient, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, closedPort, startEchoServer } from '../helpers/server.js';
import {
  ENGINES, type Engine, type EngineProxy, type NativeCounters, comparable, countersSince, maskBound, nativeCounters, readSocks5Reply, recordOf, startBlackHole,
  startEngineProxy,
} from './native-helpers.js';

const opts = { timeout: 20_000 };
const STAYED_NATIVE: NativeCounters = { accepted: 1, handedOver: 0 };
const HANDED_OVER: NativeCounters = { accepted: 1, handedOver: 1 };
const NO_AUTH = '05 01 00';

/** Answers from a table (an unknown name: ENOTFOUND, as getaddrinfo fails), and counts the lookups of each name. */
class TableResolver implements Resolver {
  readonly lookups = new Map<string, number>();
  constructor(private readonly table: Readonly<Record<string, readonly ResolvedAddress[] | 'slow'>>) {}

  async resolve(hostname: string, options?: { signal?: AbortSignal }): Promise<readonly ResolvedAddress[]> {
    this.lookups.set(hostname, (this.lookups.get(hostname) ?? 0) + 1);
    const answer = this.table[hostname];
    if (answer === 'slow') {
      // Answers after the connect timeout, unless the lookup is dropped first.
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => resolve([{ address: '127.0.0.1', family: 4 }]), 5000);
        options?.signal?.addEventListener('abort', () => { clearTimeout(timer); reject(options.signal?.reason); }, { once: true });
      });
    }
    if (answer === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return answer;
  }
}

const V4 = (address: string): ResolvedAddress => ({ address, family: 4 });

interface Case {
  readonly name: string;
  /** The name asked for, and the port: the echo server's, or a closed one. */
  readonly host: string;
  readonly port: 'echo' | 'closed';
  readonly counters: NativeCounters;
  /** The reply's REP byte. */
  readonly rep: number;
  /** How many times the resolver is asked on the native engine. */
  readonly lookups: number;
  /** timeouts.connect, if not 300 ms. */
  readonly connectMs?: number;
  readonly check?: (record: SessionRecord, ports: { echo: number; closed: number }) => void;
}

const CASES: readonly Case[] = [
  {
    name: 'one address: dialled and relayed by the relay thread; the record names the name and the address',
    host: 'one.test',
    port: 'echo',
    counters: STAYED_NATIVE,
    rep: 0,
    lookups: 1,
    check: (r, p) => {
      assert.equal(r.requested, `one.test:${p.echo}`);
      assert.equal(r.connected, `127.0.0.1:${p.echo}`);
      assert.equal(r.relay, 'splice');
      assert.equal(r.rule, 'tests-allowed');
    },
  },
  {
    name: 'several addresses, the first refuses: the relay thread moves on to the next at once and relays',
    host: 'two.test',
    port: 'echo',
    counters: STAYED_NATIVE,
    rep: 0,
    lookups: 1,
    check: (r, p) => assert.equal(r.connected, `127.0.0.1:${p.echo}`),
  },
  {
    name: 'several addresses, the first never answers: the next is tried after the attempt delay (250 ms) and wins',
    host: 'late.test',
    port: 'echo',
    counters: STAYED_NATIVE,
    rep: 0,
    lookups: 1,
    connectMs: 5000,
    check: (r, p) => {
      assert.equal(r.connected, `127.0.0.1:${p.echo}`);
      assert.equal(r.relay, 'splice');
    },
  },
  {
    name: 'three addresses, the first two never answer: each next one 250 ms after the one before, the third wins',
    host: 'later.test',
    port: 'echo',
    counters: STAYED_NATIVE,
    rep: 0,
    lookups: 1,
    connectMs: 5000,
    check: (r, p) => assert.equal(r.connected, `127.0.0.1:${p.echo}`),
  },
  {
    name: 'several addresses, all refuse: 05 05, worded with the first refusal',
    host: 'refusing.test',
    port: 'closed',
    counters: HANDED_OVER,
    rep: 5,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect ECONNREFUSED 127.0.0.2:${p.closed}`),
  },
  {
    name: 'an unreachable address, then a refusing one: the refusal is the failure recorded (the more telling one)',
    host: 'unreachable-first.test',
    port: 'closed',
    counters: HANDED_OVER,
    rep: 5,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect ECONNREFUSED 127.0.0.3:${p.closed}`),
  },
  {
    name: 'a refusing address, then an unreachable one: still the refusal',
    host: 'unreachable-last.test',
    port: 'closed',
    counters: HANDED_OVER,
    rep: 5,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect ECONNREFUSED 127.0.0.3:${p.closed}`),
  },
  {
    name: 'only unreachable addresses: 05 03, worded as Node words a connect that failed at once',
    host: 'unreachable.test',
    port: 'closed',
    counters: HANDED_OVER,
    rep: 3,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect ENETUNREACH 127.255.255.255:${p.closed} - Local (0.0.0.0:0)`),
  },
  {
    name: 'more addresses than the relay thread races (64): handed over with the answer, and the node engine races them without looking again',
    host: 'many.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 0,
    lookups: 1,
    check: (r, p) => assert.equal(r.connected, `127.0.0.1:${p.echo}`),
  },
  {
    name: 'an IPv6 address with a zone (fe80::1%lo): handed over with the answer, as the relay thread cannot name the interface',
    host: 'zoned.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 3,
    lookups: 1,
    // The node engine connects on lo, which has no fe80::1: the network is unreachable (the zone dropped would be EINVAL).
    check: (r, p) => assert.equal(r.error, `connect ENETUNREACH fe80::1%lo:${p.echo} - Local (:::0)`),
  },
  {
    name: 'a name that does not resolve: 05 04, looked up once (the session it is handed to does not ask again)',
    host: 'missing.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 4,
    lookups: 1,
    check: (r) => assert.match(r.error ?? '', /ENOTFOUND missing\.test/),
  },
  {
    name: 'its one address refuses: 05 05, worded with the address dialled, as Node words it',
    host: 'one.test',
    port: 'closed',
    counters: HANDED_OVER,
    rep: 5,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect ECONNREFUSED 127.0.0.1:${p.closed}`),
  },
  {
    name: 'a name the rules deny: 05 02, never looked up',
    host: 'denied.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 2,
    lookups: 0,
    check: (r) => assert.equal(r.rule, 'no-denied-names'),
  },
  {
    name: 'a name that resolves to the unspecified address: refused as the dialer refuses it',
    host: 'zero.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 4,
    lookups: 1,
    check: (r) => assert.match(r.error ?? '', /unspecified address/),
  },
  {
    name: 'a lookup slower than timeouts.connect: 05 06, the connect timeout names the name',
    host: 'slow.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 6,
    lookups: 1,
    check: (r, p) => assert.equal(r.error, `connect to slow.test:${p.echo} timed out after 300 ms`),
  },
];

describe('native handshakes: a CONNECT to a name', { timeout: 120_000 }, () => {
  let echo: Fixture;
  let hole: Awaited<ReturnType<typeof startBlackHole>>;
  let ports: { echo: number; closed: number };

  before(async () => {
    echo = await startEchoServer();
    // late.test's first address: the echo server's port on another loopback address, where connects hang.
    hole = await startBlackHole({ host: '127.0.0.4', port: echo.port });
    ports = { echo: echo.port, closed: await closedPort() };
  });
  after(async () => {
    await hole.close();
    await echo.close();
  });

  function options(resolver: Resolver, connectMs: number): ServerOptions {
    return {
      resolver,
      timeouts: { connect: connectMs },
      rules: [
        { name: 'no-denied-names', deny: { to: { hosts: ['denied.test'] } } },
        { name: 'tests-allowed', allow: { from: { nets: ['127.0.0.0/8'] } } },
      ],
    };
  }

  function table(): TableResolver {
    return new TableResolver({
      'one.test': [V4('127.0.0.1')],
      // 127.0.0.2 has no listener: the node engine's dialer moves on to the next.
      'two.test': [V4('127.0.0.2'), V4('127.0.0.1')],
      'late.test': [V4('127.0.0.4'), V4('127.0.0.1')],
      'later.test': [V4('127.0.0.4'), V4('127.0.0.4'), V4('127.0.0.1')],
      'refusing.test': [V4('127.0.0.2'), V4('127.0.0.3')],
      // 127.255.255.255 is loopback's broadcast address: connect() fails at once, nothing is sent.
      'unreachable-first.test': [V4('127.255.255.255'), V4('127.0.0.3')],
      'unreachable-last.test': [V4('127.0.0.3'), V4('127.255.255.255')],
      'unreachable.test': [V4('127.255.255.255')],
      'hole.test': [V4('127.0.0.4')],
      'zoned.test': [{ address: 'fe80::1%lo', family: 6 }],
      // 64 addresses where nothing listens, then the echo server's.
      'many.test': [...Array.from({ length: 64 }, (_, i) => V4(`127.0.1.${i + 1}`)), V4('127.0.0.1')],
      'denied.test': [V4('127.0.0.1')],
      'zero.test': [V4('0.0.0.0')],
      'slow.test': 'slow',
    });
  }

  async function run(engine: Engine, c: Case, resolver = table()): Promise<{ answer: Buffer; record: SessionRecord; counters: NativeCounters; lookups: number }> {
    const proxy = await startEngineProxy(engine, options(resolver, c.connectMs ?? 300));
    try {
      const before = nativeCounters();
      const client = await RawClient.connect(proxy.port);
      try {
        client.write(Buffer.concat([hex(NO_AUTH), connectRequestByName(c.host, c.port === 'echo' ? ports.echo : ports.closed)]));
        const answer = Buffer.concat([await client.read(2), await readSocks5Reply(client)]);
        if (answer[3] === 0) {
          client.write(Buffer.from('ping'));
          assert.equal((await client.read(4)).toString(), 'ping', 'relayed both ways');
        }
        client.socket.end();
        await client.readToEnd();
        const record = await recordOf(proxy, client.localPort);
        return { answer: maskBound(answer, 5), record, counters: countersSince(before), lookups: resolver.lookups.get(c.host) ?? 0 };
      } finally {
        client.destroy();
      }
    } finally {
      await proxy.close();
    }
  }

  for (const c of CASES) {
    test(c.name, opts, async () => {
      const [native, node] = [await run(ENGINES[0], c), await run(ENGINES[1], c)];
      assert.equal(native.answer[3], c.rep, `REP 0x${native.answer[3]?.toString(16)}`);
      assert.deepEqual(native.answer, node.answer, 'the same answer on both engines');
      assert.deepEqual(comparable(native.record), comparable(node.record), 'the same record on both engines');
      assert.deepEqual(native.counters, c.counters, 'native engine: stayed native, or was handed over');
      assert.equal(native.lookups, c.lookups, 'lookups on the native engine');
      c.check?.(native.record, ports);
    });
  }

  /*
   * Any mix of addresses that answer at once (the echo server's, refusing
   * ones, an unreachable one, IPv6 loopback, where nothing listens on the
   * port): the relay thread's race gives the answer and record the node
   * engine's dialer gives, whichever wins or whatever failure is kept.
   */
  test('a race over any mix of accepting, refusing and unreachable addresses: the node engine\'s answer and record', { timeout: 120_000 }, async () => {
    const address = fc.constantFrom<ResolvedAddress>(
      V4('127.0.0.1'), V4('127.0.0.2'), V4('127.0.0.3'), V4('127.255.255.255'), { address: '::1', family: 6 },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(address, { minLength: 1, maxLength: 4 }), async (addresses) => {
        const c: Case = { name: 'generated', host: 'mix.test', port: 'echo', counters: STAYED_NATIVE, rep: 0, lookups: 1 };
        const resolver = () => new TableResolver({ 'mix.test': addresses });
        const [native, node] = [await run(ENGINES[0], c, resolver()), await run(ENGINES[1], c, resolver())];
        assert.deepEqual(native.answer, node.answer, 'the same answer on both engines');
        assert.deepEqual(comparable(native.record), comparable(node.record), 'the same record on both engines');
        assert.equal(native.lookups, 1, 'looked up once on the native engine');
        const wins = addresses.some((a) => a.address === '127.0.0.1');
        assert.deepEqual(native.counters, wins ? STAYED_NATIVE : HANDED_OVER, 'a win stays native, a failure is handed over');
      }),
      { numRuns: 30, includeErrorInReport: true },
    );
  });

  /** Connects still waiting for the black hole's handshake (SYN-SENT to 127.0.0.4:port), from /proc/net/tcp. */
  async function waitingForHole(): Promise<number> {
    const hole = `0400007F:${ports.echo.toString(16).toUpperCase().padStart(4, '0')}`;
    const rows = (await readFile('/proc/net/tcp', 'utf8')).split('\n').slice(1).map((row) => row.trim().split(/\s+/));
    return rows.filter((row) => row[2] === hole && row[3] === '02').length;
  }

  /** Until `count` connects wait for the black hole (bounded: the relay thread starts its connect within milliseconds). */
  async function untilWaiting(count: number): Promise<void> {
    for (let i = 0; i < 200 && (await waitingForHole()) !== count; i++) await delay(10);
    assert.equal(await waitingForHole(), count, 'connects waiting for the black hole');
  }

  /** A native session racing for hole.test (one address that never answers), its client and proxy; `end` ends the race somehow. */
  async function raceForHole(end: (client: RawClient, proxy: EngineProxy) => Promise<void>): Promise<void> {
    const idle = await waitingForHole();
    const proxy = await startEngineProxy('native', options(table(), 5000));
    try {
      const client = await RawClient.connect(proxy.port);
      try {
        client.write(Buffer.concat([hex(NO_AUTH), connectRequestByName('hole.test', ports.echo)]));
        await untilWaiting(idle + 1);
        await end(client, proxy);
        await untilWaiting(idle);
      } finally {
        client.destroy();
      }
    } finally {
      await proxy.close();
    }
  }

  test('the address that lost the race is closed once another one won', opts, async () => {
    const idle = await waitingForHole();
    const native = await run(ENGINES[0], CASES.find((c) => c.host === 'late.test')!);
    assert.equal(native.answer[3], 0);
    assert.equal(await waitingForHole(), idle, 'the connect to the black hole was closed');
  });

  test('a client that resets while the race runs: its connects are closed, and it is recorded as gone', opts, async () => {
    await raceForHole(async (client, proxy) => {
      client.socket.resetAndDestroy();
      const record = await recordOf(proxy, client.localPort);
      assert.equal(record.reason, 'client-gone');
    });
  });

  test('a server that shuts down while a race runs: its connects are closed', opts, async () => {
    await raceForHole(async (client, proxy) => {
      await proxy.close();
      assert.equal(await client.ended, 'end');
    });
  });
});
