/**
 * Through a real server, one client's name lookups hold up no other
 * client's (upstream/resolver.ts): the server's own resolver, over a fake
 * getaddrinfo with libuv's default four threads whose lookups last until the
 * test answers them. Client A is 127.0.0.1, client B 127.0.0.2. Before the
 * lookups took turns, A's eight names held all four threads and B's lookup
 * waited for one of them to end: ~10 s for a name DNS is slow to deny.
 */
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, beforeEach, test } from 'node:test';
import { nameLookups } from '../../src/upstream/resolver.js';
import { withTimeout } from '../cli/helpers.js';
import { type FakeGetaddrinfo, fakeGetaddrinfo } from '../helpers/lookup.js';
import { RawClient, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, startEchoServer, startProxy, until } from '../helpers/server.js';
import { bindUdp } from '../helpers/udp.js';
import { ENGINES, startEngineProxy } from './native-helpers.js';

const B = '127.0.0.2';
/** The fake has the default pool's four threads, and the resolver reads the pool's size from the environment. */
const opts = { skip: process.env.UV_THREADPOOL_SIZE !== undefined && 'written for the default thread pool' };
const METHOD_NONE = hex('05 00');
const HOST_UNREACHABLE = hex('05 04 00 01 00000000 0000');

let dns: FakeGetaddrinfo;
beforeEach(() => { dns = fakeGetaddrinfo(4); });
afterEach(async () => {
  dns.failAll(); // A's lookups still under way or waiting: their sessions end
  await delay(0);
  dns.restore();
});

/** Lookups the server has begun: those the fake was asked for (on a thread or waiting for one), and those waiting for their turn. */
const begun = () => dns.asked.length + nameLookups().waiting;

/** A client from `from` (default 127.0.0.1) that sends a greeting and a CONNECT to `name`. */
async function connectByName(proxy: RunningProxy, name: string, port: number, from?: string): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port, '127.0.0.1', undefined, from);
  client.write(Buffer.concat([hex('05 01 00'), connectRequestByName(name, port)]));
  return client;
}

/** Client B's CONNECT to a name, while A's lookups are under way: its lookup gets a thread at once, and B is relayed. */
async function otherClientIsServed(proxy: RunningProxy, echo: Fixture): Promise<void> {
  const other = await connectByName(proxy, 'b.test', echo.port, B);
  try {
    await until(() => dns.asked.includes('b.test'));
    assert.ok(dns.running().includes('b.test'), `client B's lookup waits for a thread; running: ${dns.running().join(' ')}`);
    dns.started.find((call) => call.name === 'b.test')!.answer('127.0.0.1');
    assert.deepEqual(await other.read(2), METHOD_NONE);
    assert.equal((await other.read(10))[1], 0x00, 'B is connected');
    other.write(Buffer.from('ping'));
    assert.equal((await other.read(4)).toString(), 'ping');
  } finally {
    other.destroy();
  }
}

for (const engine of ENGINES) {
  test(`${engine} handshakes: one client's CONNECTs to names DNS does not answer hold up no other client's CONNECT by name`, opts, async () => {
    const echo = await startEchoServer();
    const proxy = await startEngineProxy(engine);
    const flood: RawClient[] = [];
    try {
      for (let i = 0; i < 8; i++) flood.push(await connectByName(proxy, `a${i}.test`, 80));
      await until(() => begun() >= 8);
      await otherClientIsServed(proxy, echo);
      dns.failAll();
      for (const client of flood) assert.deepEqual(await client.readToEnd(), Buffer.concat([METHOD_NONE, HOST_UNREACHABLE]));
    } finally {
      for (const client of flood) client.destroy();
      await proxy.close();
      await echo.close();
    }
  });
}

for (const engine of ['splice', 'stream'] as const) {
  test(`${engine} relay: one client's UDP datagrams to names DNS does not answer hold up no other client's CONNECT by name`, opts, async () => {
    const echo = await startEchoServer();
    const proxy = await startProxy({ relay: { engine } });
    const peer = await bindUdp('127.0.0.1');
    const control = await RawClient.connect(proxy.port);
    try {
      const from = Buffer.alloc(2);
      from.writeUInt16BE(peer.address().port);
      control.write(Buffer.concat([hex('05 01 00 05 03 00 01 7f000001'), from]));
      const reply = await control.read(12);
      assert.equal(reply[3], 0x00, 'associated');
      const relayPort = reply.readUInt16BE(10);
      for (let i = 0; i < 8; i++) {
        const name = Buffer.from(`u${i}.test`);
        peer.send(Buffer.concat([hex('0000 00 03'), Buffer.from([name.length]), name, hex('0035'), Buffer.from('x')]), relayPort, '127.0.0.1');
      }
      await until(() => begun() >= 8);
      await otherClientIsServed(proxy, echo);
    } finally {
      control.destroy();
      peer.close();
      await proxy.close();
      await echo.close();
    }
  });
}

test('past 256 lookups waiting from one client, its CONNECT by name is refused at once: REP 0x04, the record naming why, no lookup made', opts, async () => {
  const proxy = await startProxy({ handshake: { engine: 'node' } });
  const flood: RawClient[] = [];
  try {
    for (let i = 0; i < 1 + 256; i++) flood.push(await connectByName(proxy, `a${i}.test`, 80));
    await until(() => begun() >= 1 + 256);
    const over = await connectByName(proxy, 'over.test', 80);
    let answered = false;
    void over.ended.then(() => { answered = true; });
    await until(() => answered || dns.asked.includes('over.test'));
    assert.equal(dns.asked.includes('over.test'), false, 'no lookup was made for it');
    assert.deepEqual(await over.readToEnd(), Buffer.concat([METHOD_NONE, HOST_UNREACHABLE]));
    const record = await withTimeout(proxy.record((r) => r.clientPort === over.localPort), 5000, 'the record');
    assert.equal(record.reason, 'connect-failed');
    assert.equal(record.error, 'too many name lookups waiting from 127.0.0.1 (256)');
  } finally {
    for (const client of flood) client.destroy();
    await proxy.close();
  }
});

test('a CONNECT whose client resets the connection while its lookup waits for a turn: the lookup is dropped, never made', opts, async () => {
  const proxy = await startProxy({ handshake: { engine: 'node' } });
  const first = await connectByName(proxy, 'a0.test', 80);
  try {
    await until(() => dns.asked.length === 1);
    const leaving: RawClient[] = [];
    for (let i = 1; i <= 3; i++) leaving.push(await connectByName(proxy, `a${i}.test`, 80));
    await until(() => begun() >= 4);
    for (const client of leaving) {
      client.socket.resetAndDestroy();
      await withTimeout(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the record of a client that left');
    }
    dns.started[0]!.fail();
    assert.deepEqual(await first.readToEnd(), Buffer.concat([METHOD_NONE, HOST_UNREACHABLE]));
    const next = await connectByName(proxy, 'next.test', 80);
    await until(() => dns.asked.includes('next.test'));
    next.destroy();
    assert.deepEqual(dns.asked, ['a0.test', 'next.test'], 'the lookups of the clients that left were not made');
  } finally {
    first.destroy();
    await proxy.close();
  }
});
