/**
 * A resolver's answer used again (Resolver.reuseMs): the native engine's
 * relay thread remembers a name's answer and the rules' verdict under the
 * request's key (the client, the name and port, the user), and dials a
 * repeated CONNECT at once, without asking JavaScript. What must hold: a
 * repeated request is not looked up again and is recorded as the first was;
 * anything that changes the key asks again; the answer expires; a reload
 * forgets it; and a reused answer that no longer connects is looked up
 * afresh instead of failing the client.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type Server, createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { ResolvedAddress, Resolver, ServerOptions, SessionRecord } from '../../src/index.js';
import { SYSTEM_ANSWER_REUSE_MS, systemResolver } from '../../src/upstream/resolver.js';
import { RawClient, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, startEchoServer } from '../helpers/server.js';
import {
  type EngineProxy, type NativeCounters, comparable, countersSince, credentials, nativeCounters, readSocks5Reply, recordOf, startEngineProxy, withProxy,
} from './native-helpers.js';

const opts = { timeout: 20_000 };
const STAYED_NATIVE: NativeCounters = { accepted: 1, handedOver: 0 };
const HANDED_OVER: NativeCounters = { accepted: 1, handedOver: 1 };

/** Answers every name with `answer` (changeable), allows reuse for `reuseMs`, and counts its lookups. */
class CountingResolver implements Resolver {
  lookups = 0;
  constructor(public answer: readonly ResolvedAddress[], readonly reuseMs?: number) {}

  async resolve(): Promise<readonly ResolvedAddress[]> {
    this.lookups++;
    return this.answer;
  }
}

const V4 = (address: string): ResolvedAddress => ({ address, family: 4 });

interface Outcome {
  readonly rep: number;
  readonly record: SessionRecord;
  readonly counters: NativeCounters;
}

function options(resolver: Resolver, extra: ServerOptions = {}): ServerOptions {
  return {
    resolver,
    timeouts: { connect: 2000 },
    rules: [{ name: 'loopback-clients', allow: { from: { nets: ['127.0.0.0/8'] } } }],
    ...extra,
  };
}

/** One CONNECT to `host:port` (optionally as `user`, from `from`), relayed both ways when it succeeds. */
async function connectOnce(proxy: EngineProxy, host: string, port: number, how: { user?: string; from?: string } = {}): Promise<Outcome> {
  const before = nativeCounters();
  const client = await RawClient.connect(proxy.port, '127.0.0.1', undefined, how.from);
  try {
    const greeting = how.user === undefined ? hex('05 01 00') : Buffer.concat([hex('05 01 02'), credentials(how.user, 'secret')]);
    client.write(Buffer.concat([greeting, connectRequestByName(host, port)]));
    await client.read(2);
    if (how.user !== undefined) await client.read(2);
    const reply = await readSocks5Reply(client);
    if (reply[1] === 0) {
      client.write(Buffer.from('ping'));
      assert.equal((await client.read(4)).toString(), 'ping', 'relayed both ways');
    }
    client.socket.end();
    await client.readToEnd();
    return { rep: reply[1]!, record: await recordOf(proxy, client.localPort), counters: countersSince(before) };
  } finally {
    client.destroy();
  }
}


/** A TCP echo server on `host:port` (another loopback address, the same port as one elsewhere). */
async function echoAt(host: string, port: number): Promise<Server> {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.listen(port, host);
  await once(server, 'listening');
  return server;
}

describe('native handshakes: a name\'s answer used again', { timeout: 120_000 }, () => {
  let echo: Fixture;

  before(async () => {
    echo = await startEchoServer();
  });
  after(async () => {
    await echo.close();
  });

  test('a repeated CONNECT to a name is dialled from the remembered answer: looked up once, recorded as the first', opts, async () => {
    const resolver = new CountingResolver([V4('127.0.0.1')], 60_000);
    await withProxy('native', options(resolver), async (proxy) => {
      const first = await connectOnce(proxy, 'again.test', echo.port);
      const second = await connectOnce(proxy, 'again.test', echo.port);
      const third = await connectOnce(proxy, 'again.test', echo.port);
      assert.equal(resolver.lookups, 1, 'one lookup for three sessions');
      for (const outcome of [first, second, third]) {
        assert.equal(outcome.rep, 0);
        assert.deepEqual(outcome.counters, STAYED_NATIVE);
      }
      assert.deepEqual(comparable(second.record), comparable(first.record), 'the same record as the session that asked');
      assert.equal(second.record.requested, `again.test:${echo.port}`);
      assert.equal(second.record.connected, `127.0.0.1:${echo.port}`);
      assert.equal(second.record.rule, 'loopback-clients', 'the rule that allowed the first');
      assert.equal(second.record.relay, 'splice');
    });
  });

  test('the node engine, and a resolver without reuseMs, ask every time; the records match the native engine\'s', opts, async () => {
    const records: SessionRecord[][] = [];
    for (const [engine, reuseMs] of [['native', 60_000], ['node', 60_000], ['native', undefined], ['native', 0]] as const) {
      const resolver = new CountingResolver([V4('127.0.0.1')], reuseMs);
      await withProxy(engine, options(resolver), async (proxy) => {
        const outcomes = [await connectOnce(proxy, 'again.test', echo.port), await connectOnce(proxy, 'again.test', echo.port)];
        records.push(outcomes.map((o) => o.record));
        const expected = engine === 'native' && reuseMs ? 1 : 2;
        assert.equal(resolver.lookups, expected, `${engine} engine, reuseMs ${reuseMs}: lookups`);
      });
    }
    for (const sessions of records.slice(1)) assert.deepEqual(sessions.map(comparable), records[0]!.map(comparable));
  });

  test('another port, another user or another client is a request of its own: looked up again', opts, async () => {
    const resolver = new CountingResolver([V4('127.0.0.1')], 60_000);
    const other = await startEchoServer();
    try {
      const serverOptions = options(resolver, { auth: { methods: ['userpass'], users: [{ name: 'ann', password: 'secret' }, { name: 'bob', password: 'secret' }] } });
      await withProxy('native', serverOptions, async (proxy) => {
        await connectOnce(proxy, 'again.test', echo.port, { user: 'ann' });
        assert.equal(resolver.lookups, 1);
        await connectOnce(proxy, 'again.test', echo.port, { user: 'ann' });
        assert.equal(resolver.lookups, 1, 'the same request: reused');
        await connectOnce(proxy, 'again.test', other.port, { user: 'ann' });
        assert.equal(resolver.lookups, 2, 'another port');
        await connectOnce(proxy, 'again.test', echo.port, { user: 'bob' });
        assert.equal(resolver.lookups, 3, 'another user');
        const fromElsewhere = await connectOnce(proxy, 'again.test', echo.port, { user: 'ann', from: '127.0.0.2' });
        assert.equal(resolver.lookups, 4, 'another client address');
        assert.equal(fromElsewhere.rep, 0);
      });
    } finally {
      await other.close();
    }
  });

  test('when a rule looks at client ports, the port is part of the key: every connection asks again', opts, async () => {
    const resolver = new CountingResolver([V4('127.0.0.1')], 60_000);
    const byPort = { rules: [{ name: 'unprivileged-ports', allow: { from: { nets: ['127.0.0.0/8'], ports: ['1024-65535'] } } }] };
    await withProxy('native', options(resolver, byPort), async (proxy) => {
      const outcomes = [await connectOnce(proxy, 'again.test', echo.port), await connectOnce(proxy, 'again.test', echo.port)];
      assert.deepEqual(outcomes.map((o) => [o.rep, o.record.rule]), [[0, 'unprivileged-ports'], [0, 'unprivileged-ports']]);
      assert.equal(resolver.lookups, 2, 'each client port is a request of its own');
    });
  });

  test('an answer is used for reuseMs only, and a reload forgets it', opts, async () => {
    const resolver = new CountingResolver([V4('127.0.0.1')], 300);
    await withProxy('native', options(resolver), async (proxy) => {
      await connectOnce(proxy, 'again.test', echo.port);
      await connectOnce(proxy, 'again.test', echo.port);
      assert.equal(resolver.lookups, 1);
      await delay(600);
      await connectOnce(proxy, 'again.test', echo.port);
      assert.equal(resolver.lookups, 2, 'looked up again once it expired');
    });
    const lasting = new CountingResolver([V4('127.0.0.1')], 60_000);
    await withProxy('native', options(lasting), async (proxy) => {
      await connectOnce(proxy, 'again.test', echo.port);
      proxy.server.reload({ ...options(lasting), listen: [{ address: '127.0.0.1', port: proxy.port }], timeouts: { connect: 3000 } });
      await connectOnce(proxy, 'again.test', echo.port);
      assert.equal(lasting.lookups, 2, 'looked up again after a reload');
    });
  });

  test('a remembered answer that no longer connects: the name is looked up afresh and the new address dialled', opts, async () => {
    // The destination moves: from 127.0.0.1:port to 127.0.0.6:port, and its name's answer with it.
    const moving = await echoAt('127.0.0.1', 0);
    const port = (moving.address() as { port: number }).port;
    const resolver = new CountingResolver([V4('127.0.0.1')], 60_000);
    let moved: Server | null = null;
    try {
      await withProxy('native', options(resolver), async (proxy) => {
        assert.equal((await connectOnce(proxy, 'moving.test', port)).rep, 0);
        await new Promise<void>((resolve) => moving.close(() => resolve()));
        moved = await echoAt('127.0.0.6', port);
        resolver.answer = [V4('127.0.0.6')];

        const stale = await connectOnce(proxy, 'moving.test', port);
        assert.equal(stale.rep, 0, 'the client is served, not refused');
        assert.equal(stale.record.connected, `127.0.0.6:${port}`);
        assert.equal(stale.record.requested, `moving.test:${port}`);
        assert.deepEqual(stale.counters, HANDED_OVER, 'handed over to look the name up afresh');
        assert.equal(resolver.lookups, 2);

        // The stale answer is forgotten: the next asks, and its answer is remembered again.
        assert.deepEqual((await connectOnce(proxy, 'moving.test', port)).counters, STAYED_NATIVE);
        assert.equal(resolver.lookups, 3);
        assert.deepEqual((await connectOnce(proxy, 'moving.test', port)).counters, STAYED_NATIVE);
        assert.equal(resolver.lookups, 3);
      });
    } finally {
      moving.close();
      (moved as Server | null)?.close();
    }
  });

  test('an answer whose connect is refused is not remembered: each attempt asks again and is refused as before', opts, async () => {
    const closed = await echoAt('127.0.0.1', 0);
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const resolver = new CountingResolver([V4('127.0.0.1')], 60_000);
    await withProxy('native', options(resolver), async (proxy) => {
      for (let i = 1; i <= 2; i++) {
        const refused = await connectOnce(proxy, 'closed.test', port);
        assert.equal(refused.rep, 5);
        assert.equal(refused.record.error, `connect ECONNREFUSED 127.0.0.1:${port}`);
        assert.equal(resolver.lookups, i);
      }
    });
  });

  test('the system resolver lets its answers be used again for a minute', () => {
    assert.equal(SYSTEM_ANSWER_REUSE_MS, 60_000);
    assert.equal(systemResolver.reuseMs, SYSTEM_ANSWER_REUSE_MS);
  });
});
