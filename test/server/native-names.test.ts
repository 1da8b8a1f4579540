/**
 * A CONNECT to a name on the native engine: JavaScript decides it and looks
 * the name up (the server's resolver, as the node engine's dialer does), and
 * the relay thread dials the one address and relays. Several addresses, a
 * refusal by the rules, a lookup that fails: the answer and the record the
 * node engine gives, the case by case below, each run on both engines.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ResolvedAddress, Resolver, ServerOptions, SessionRecord } from '../../src/index.js';
import { RawClient, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, closedPort, startEchoServer } from '../helpers/server.js';
import {
  ENGINES, type Engine, type NativeCounters, comparable, countersSince, maskBound, nativeCounters, readSocks5Reply, recordOf, startEngineProxy,
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
    name: 'several addresses: handed over with the answer, and the node engine races them (the first refuses) without looking again',
    host: 'two.test',
    port: 'echo',
    counters: HANDED_OVER,
    rep: 0,
    lookups: 1,
    check: (r, p) => assert.equal(r.connected, `127.0.0.1:${p.echo}`),
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
  let ports: { echo: number; closed: number };

  before(async () => {
    echo = await startEchoServer();
    ports = { echo: echo.port, closed: await closedPort() };
  });
  after(() => echo.close());

  function options(resolver: Resolver): ServerOptions {
    return {
      resolver,
      timeouts: { connect: 300 },
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
      'denied.test': [V4('127.0.0.1')],
      'zero.test': [V4('0.0.0.0')],
      'slow.test': 'slow',
    });
  }

  async function run(engine: Engine, c: Case): Promise<{ answer: Buffer; record: SessionRecord; counters: NativeCounters; lookups: number }> {
    const resolver = table();
    const proxy = await startEngineProxy(engine, options(resolver));
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
});
