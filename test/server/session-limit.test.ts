/**
 * `limits.sessions`: how many sessions a server holds at once. Past it a
 * connection is closed as soon as it is accepted (a FIN, before a byte is
 * read) and recorded as `limit-reached`; sessions already held are not
 * disturbed, and a slot freed is taken by the next client. Both handshake
 * engines: the relay thread refuses natively accepted connections itself.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';
import { type Socket, connect } from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { SocksClient } from 'socks';
import { type ServerOptions, type SessionRecord, createServer } from '../../src/index.js';
import { openFilesLimit, sessionLimit } from '../../src/server/session-limit.js';
import { RawClient, connectRequest } from '../helpers/raw.js';
import { type Fixture, recordsFrom, startEchoServer, until } from '../helpers/server.js';
import { ENGINES, type Engine, type EngineProxy, readSocks5Reply, startEngineProxy } from './native-helpers.js';

test('sessionLimit: a number is the whole server\'s, each process sharing the listeners takes its share, rounded up', () => {
  assert.equal(sessionLimit(100, 1, null), 100);
  assert.equal(sessionLimit(100, 2, 20_000), 50);
  assert.equal(sessionLimit(101, 2, null), 51);
  assert.equal(sessionLimit(1, 8, null), 1);
});

test('sessionLimit auto: half of what the open-files limit leaves after a reserve of 256 (a quarter of a small limit); none when unknown', () => {
  assert.equal(sessionLimit('auto', 1, 20_000), 9_872); // (20,000 - 256) / 2: two descriptors a session
  assert.equal(sessionLimit('auto', 4, 20_000), 9_872, 'each process has its own descriptors: not shared');
  assert.equal(sessionLimit('auto', 1, 1_048_576), 524_160);
  assert.equal(sessionLimit('auto', 1, 256), 96); // (256 - 64) / 2
  assert.equal(sessionLimit('auto', 1, 1), 1);
  assert.equal(sessionLimit('auto', 1, null), Infinity);
});

test('openFilesLimit reads the soft limit from /proc/self/limits; null when it cannot', () => {
  const limits = (soft: string) => () => [
    'Limit                     Soft Limit           Hard Limit           Units     ',
    'Max processes             95226                95226                processes ',
    `Max open files            ${soft.padEnd(21)}1048576              files     `,
    'Max locked memory         8388608              8388608              bytes     ',
  ].join('\n');
  assert.equal(openFilesLimit(limits('20000')), 20_000);
  assert.equal(openFilesLimit(limits('unlimited')), null);
  assert.equal(openFilesLimit(() => 'Max processes 10 10 processes\n'), null);
  assert.equal(openFilesLimit(() => { throw new Error('ENOENT'); }), null);
  const here = openFilesLimit();
  assert.ok(here !== null && here > 0, 'this machine has /proc/self/limits');
});

/** Runs `body` with a proxy whose handshakes run on `engine`, closed after it. */
async function withEngineProxy(engine: Engine, options: ServerOptions, body: (proxy: EngineProxy) => Promise<void>): Promise<void> {
  const proxy = await startEngineProxy(engine, options);
  try {
    await body(proxy);
  } finally {
    await proxy.close();
  }
}

/** A session relayed to the echo server through the npm socks client: an independent client, held open. */
async function relayed(proxy: EngineProxy, echo: Fixture) {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: proxy.port, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port: echo.port },
    timeout: 10_000,
  });
  socket.write('ping');
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  return socket;
}

/** A connection the proxy must refuse at the limit: its end, and its record. */
async function refused(proxy: EngineProxy): Promise<{ end: 'end' | 'reset'; record: SessionRecord }> {
  const next = recordsFrom(proxy);
  const client = await RawClient.connect(proxy.port);
  const end = await client.ended;
  const record = await next((r) => r.clientPort === client.localPort);
  return { end, record };
}

for (const engine of ENGINES) {
  describe(`limits.sessions (${engine} handshakes)`, () => {
    let echo: Fixture;
    before(async () => { echo = await startEchoServer(); });
    after(() => echo.close());

    it('sessionCount never counts the connections refused at the limit, even before they are recorded', async () => {
      await withEngineProxy(engine, { limits: { sessions: 2 } }, async (proxy) => {
        const held = [await relayed(proxy, echo), await relayed(proxy, echo)];
        let peak = 0;
        const sample = setInterval(() => { peak = Math.max(peak, proxy.server.sessionCount); }, 0);
        const start = proxy.records.length;
        const flood: Socket[] = [];
        try {
          // Bursts: the relay thread refuses a burst before JavaScript hears of it.
          for (let i = 0; i < 200; i++) {
            const socket = connect(proxy.port, '127.0.0.1');
            socket.on('error', () => {});
            flood.push(socket);
            if (i % 20 === 19) await new Promise((resolve) => setTimeout(resolve, 1));
          }
          await until(() => proxy.records.length - start === 200); // a record for each refused connection
        } finally {
          clearInterval(sample);
          for (const socket of [...flood, ...held]) socket.destroy();
        }
        assert.ok(peak <= 2, `sessionCount reached ${peak} at a limit of 2`);
      });
    });

    it('past the limit a connection is closed at once with a FIN, recorded as limit-reached, with no session-open; a freed slot is taken again', async () => {
      await withEngineProxy(engine, { limits: { sessions: 2 } }, async (proxy) => {
        assert.equal(proxy.server.sessionLimit, 2);
        const first = await relayed(proxy, echo);
        const second = await relayed(proxy, echo);
        const { end, record } = await refused(proxy);
        assert.equal(end, 'end');
        assert.equal(record.reason, 'limit-reached');
        assert.equal(record.error, 'session limit reached: 2 sessions open (limits.sessions 2)');
        assert.deepEqual([record.version, record.command, record.relay, record.bytesUp, record.bytesDown], [null, null, null, 0, 0]);
        assert.ok(!proxy.opens.some((o) => o.id === record.id), 'a refused connection is no session: no session-open');

        // The held sessions go on relaying, untouched.
        second.write('still here');
        await new Promise<void>((resolve) => second.once('data', () => resolve()));
        const ended = recordsFrom(proxy);
        first.end();
        await ended((r) => r.reason === 'client-closed');
        const third = await relayed(proxy, echo);
        third.destroy();
        second.destroy();
      });
    });

    it('a connection still in its handshake holds its slot, as a relayed one does', async () => {
      await withEngineProxy(engine, { limits: { sessions: 1 } }, async (proxy) => {
        const silent = await RawClient.connect(proxy.port); // sends nothing: its handshake waits
        await until(() => proxy.server.sessionCount === 1);
        const { record } = await refused(proxy);
        assert.equal(record.reason, 'limit-reached');
        silent.write('0501 00');
        assert.deepEqual(await silent.read(2), Buffer.from([5, 0]), 'the held handshake goes on');
        silent.write(connectRequest('127.0.0.1', echo.port));
        assert.equal((await readSocks5Reply(silent))[1], 0);
        silent.destroy();
      });
    });

    it('session-limit is told at the first refusal, then not again within a minute; the refusals in between are counted for the next', async () => {
      await withEngineProxy(engine, { limits: { sessions: 1 } }, async (proxy) => {
        const told: Array<{ limit: number; sessions: number; refused: number }> = [];
        proxy.server.on('session-limit', (event) => told.push(event));
        const held = await relayed(proxy, echo);
        await refused(proxy);
        await refused(proxy);
        assert.deepEqual(told, [{ limit: 1, sessions: 1, refused: 1 }]);
        held.destroy();
      });
    });

    it('a reload changes the limit for new connections; sessions held past a lowered limit go on', async () => {
      await withEngineProxy(engine, { limits: { sessions: 1 } }, async (proxy) => {
        const first = await relayed(proxy, echo);
        assert.equal((await refused(proxy)).record.reason, 'limit-reached');
        proxy.server.reload({ listen: [{ address: '127.0.0.1', port: 0 }], limits: { sessions: 2 }, handshake: { engine } });
        assert.equal(proxy.server.sessionLimit, 2);
        const second = await relayed(proxy, echo);
        proxy.server.reload({ listen: [{ address: '127.0.0.1', port: 0 }], limits: { sessions: 1 }, handshake: { engine } });
        assert.match((await refused(proxy)).record.error ?? '', /^session limit reached: 2 sessions open \(limits\.sessions 1\)$/);
        for (const socket of [first, second]) {
          socket.write('past the limit');
          await new Promise<void>((resolve) => socket.once('data', () => resolve()));
          socket.destroy();
        }
      });
    });
  });
}

for (const limits of [{ sessions: 1 }, { sessionsPerClient: 1 }]) {
  test(`native handshakes: the place of a session the relay thread ended is free at once, before JavaScript hears of the end (${JSON.stringify(limits)})`, async () => {
    // The relay thread tells JavaScript of ended sessions in batches (up to
    // 2 ms): a client that resets and reconnects at once was refused almost
    // every time at a limit of 1.
    await reconnectsAtOnce(limits);
  });
}

async function reconnectsAtOnce(limits: { sessions?: number; sessionsPerClient?: number }): Promise<void> {
  const echo = await startEchoServer();
  try {
    await withEngineProxy('native', { limits }, async (proxy) => {
      const start = proxy.records.length;
      const rounds = 40;
      for (let i = 0; i < rounds; i++) {
        const held = await relayed(proxy, echo);
        held.resetAndDestroy();
        const next = await RawClient.connect(proxy.port);
        next.write('050100'); // a greeting: a served client reads the method, a refused one the end
        await next.read(2).catch(() => {});
        next.destroy();
        await until(() => proxy.server.sessionCount === 0);
      }
      await until(() => proxy.records.length - start === 2 * rounds);
      const refused = proxy.records.slice(start).filter((r) => r.reason === 'limit-reached');
      assert.ok(refused.length <= rounds / 10, `${refused.length} of ${rounds} reconnects refused`);
    });
  } finally {
    await echo.close();
  }
}

describe('limits.sessions shared by processes (listen({ sharedBy }))', () => {
  it('each process applies its share of a number, rounded up, and its records say so', async () => {
    const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], limits: { sessions: 3 } });
    const records: SessionRecord[] = [];
    server.on('session-close', (r) => records.push(r));
    const [bound] = await server.listen({ sharedBy: 2 });
    try {
      assert.equal(server.sessionLimit, 2);
      const held = [await RawClient.connect(bound!.port), await RawClient.connect(bound!.port)];
      await until(() => server.sessionCount === 2);
      const third = await RawClient.connect(bound!.port);
      await third.ended;
      await until(() => records.length === 1);
      assert.equal(records[0]!.error, 'session limit reached: 2 sessions open (limits.sessions 3 shared by 2 processes: 2 here)');
      for (const client of held) client.destroy();
    } finally {
      await server.close({ graceMs: 0 });
    }
  });

  it('sharedBy must be a whole number of processes', async () => {
    for (const sharedBy of [0, 1.5, NaN]) {
      const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }] });
      await assert.rejects(server.listen({ sharedBy }), /sharedBy must be a whole number of processes/);
    }
  });
});

/** The proxy's loopback address in the family of `localAddress` (a dual-stack listener takes both). */
function loopbackFor(localAddress: string): string {
  return localAddress.includes(':') ? '::1' : '127.0.0.1';
}

/** A SOCKS5 session relayed to `echo` from `localAddress`, held open (RawClient: it can pick its address). */
async function relayedFrom(proxy: EngineProxy, echo: Fixture, localAddress: string): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port, loopbackFor(localAddress), undefined, localAddress);
  client.write('0501 00');
  assert.deepEqual(await client.read(2), Buffer.from([5, 0]));
  client.write(connectRequest('127.0.0.1', echo.port));
  assert.equal((await readSocks5Reply(client))[1], 0, 'CONNECT succeeded');
  return client;
}

/** A connection from `localAddress` that the proxy must refuse as soon as it accepts it. */
async function refusedFrom(proxy: EngineProxy, localAddress: string): Promise<SessionRecord> {
  const next = recordsFrom(proxy);
  const client = await RawClient.connect(proxy.port, loopbackFor(localAddress), undefined, localAddress);
  await client.ended;
  return next((r) => r.clientPort === client.localPort);
}

for (const engine of ENGINES) {
  describe(`limits.sessionsPerClient (${engine} handshakes)`, () => {
    let echo: Fixture;
    before(async () => { echo = await startEchoServer(); });
    after(() => echo.close());

    it('a client past its limit is refused as it connects, recorded as limit-reached naming it; other clients are not; a freed slot is its own again', async () => {
      await withEngineProxy(engine, { limits: { sessionsPerClient: 2 } }, async (proxy) => {
        const first = await relayedFrom(proxy, echo, '127.0.0.1');
        const second = await relayedFrom(proxy, echo, '127.0.0.1');
        const record = await refusedFrom(proxy, '127.0.0.1');
        assert.equal(record.reason, 'limit-reached');
        assert.equal(record.error, 'too many sessions from 127.0.0.1 (limits.sessionsPerClient 2)');
        assert.ok(!proxy.opens.some((o) => o.id === record.id), 'no session-open');

        const other = await relayedFrom(proxy, echo, '127.0.0.2'); // another client has slots of its own
        const ended = recordsFrom(proxy);
        first.destroy();
        await ended((r) => r.clientPort === first.localPort);
        const again = await relayedFrom(proxy, echo, '127.0.0.1');
        for (const client of [second, other, again]) client.destroy();
      });
    });

    it('a session refused after it was admitted (here by a rule) gives its slot back, as one that relayed does', async () => {
      await withEngineProxy(engine, {
        limits: { sessionsPerClient: 1 },
        rules: [{ name: 'no-closed-port', deny: { to: { ports: [9] } } }, { name: 'rest', allow: {} }],
      }, async (proxy) => {
        for (let i = 0; i < 3; i++) {
          const client = await RawClient.connect(proxy.port);
          client.write('0501 00');
          await client.read(2);
          client.write(connectRequest('127.0.0.1', 9));
          assert.equal((await readSocks5Reply(client))[1], 2, 'REP 0x02: not allowed by the rules');
          await client.ended;
          await until(() => proxy.server.sessionCount === 0);
        }
        const held = await relayedFrom(proxy, echo, '127.0.0.1');
        held.destroy();
      });
    });

    it('a dual-stack listener counts an IPv4 client as its IPv4 address, apart from ::1; a reload lifts the limit', async () => {
      await withEngineProxy(engine, {
        listen: [{ address: '::', port: 0 }],
        clients: { allow: ['127.0.0.0/8', '::1'] },
        limits: { sessionsPerClient: 1 },
      }, async (proxy) => {
        const v4 = await relayedFrom(proxy, echo, '127.0.0.1');
        const v6 = await relayedFrom(proxy, echo, '::1');
        const record = await refusedFrom(proxy, '127.0.0.1');
        assert.equal(record.error, 'too many sessions from 127.0.0.1 (limits.sessionsPerClient 1)');
        assert.equal(record.clientAddress, '127.0.0.1');
        assert.equal((await refusedFrom(proxy, '::1')).error, 'too many sessions from ::/64 (limits.sessionsPerClient 1)');
        proxy.server.reload({ listen: [{ address: '::', port: 0 }], clients: { allow: ['127.0.0.0/8', '::1'] }, handshake: { engine } });
        const more = await relayedFrom(proxy, echo, '127.0.0.1');
        for (const client of [v4, v6, more]) client.destroy();
      });
    });
  });
}

/**
 * A child process that opens `count` connections to `port` at once and, once
 * every one has been closed, writes the file `done`: it runs while this
 * process's JavaScript thread is kept busy.
 */
const REFUSED_CLIENTS = `
  const [port, count, done] = process.argv.slice(1);
  let open = Number(count);
  for (let i = 0; i < Number(count); i++) {
    const socket = require('node:net').connect(Number(port), '127.0.0.1');
    socket.on('error', () => {});
    socket.on('close', () => { if (--open === 0) require('node:fs').writeFileSync(done, ''); });
    socket.resume();
  }`;

test('native handshakes: connections refused at the limit hold no descriptor while JavaScript is busy (the relay thread closes them itself)', { timeout: 60_000 }, async () => {
  // The relay thread handed each refusal over with its descriptor, which
  // JavaScript closed once it got to it: while it lagged, a flood of refused
  // connections held a descriptor each and ran the process out (accept EMFILE).
  const echo = await startEchoServer();
  const done = join(mkdtempSync(join(tmpdir(), 'socksgate-refused-')), 'done');
  const COUNT = 40;
  try {
    await withEngineProxy('native', { limits: { sessions: 1 } }, async (proxy) => {
      const held = await relayed(proxy, echo);
      const before = readdirSync('/proc/self/fd').length;
      const child = spawn(process.execPath, ['-e', REFUSED_CLIENTS, String(proxy.port), String(COUNT), done], { stdio: 'ignore' });
      const exited = once(child, 'exit');
      // Busy (no turn of the event loop) until every client has been refused and has closed; bounded.
      const giveUp = Date.now() + 20_000;
      while (!existsSync(done) && Date.now() < giveUp) { /* JavaScript lags */ }
      const during = readdirSync('/proc/self/fd').length;
      assert.ok(existsSync(done), 'every client was refused (a FIN) while JavaScript was busy');
      assert.ok(during - before < 10, `${during - before} more descriptors open while ${COUNT} refused connections waited for JavaScript`);
      await until(() => proxy.records.filter((r) => r.reason === 'limit-reached').length === COUNT); // each one recorded
      held.destroy();
      await exited;
    });
  } finally {
    rmSync(dirname(done), { recursive: true, force: true });
    await echo.close();
  }
});
