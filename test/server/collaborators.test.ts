/**
 * Collaborators of the library's own (dialer, resolver, authenticator) that
 * break their contract: each failure is the session's refusal, with a
 * record naming it, never an error out of the server or a session held for
 * good (README, "Library": "a failed check, dial or lookup, never an error
 * out of the server").
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { type Authenticator, type Dialer, type ResolveOptions, type Resolver, createServer } from '../../src/index.js';
import { withTimeout } from '../cli/helpers.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import { startProxy, startTcpServer, until } from '../helpers/server.js';

const REFUSED_GENERAL = '05 00 05 01 00 01 00000000 0000';

for (const [what, value] of [['null', null], ['an object', {}], ['a string', 'socket']] as const) {
  test(`a dialer that resolves ${what}, not a socket: REP 0x01 naming it, and close() still resolves`, async () => {
    const dialer = { dial: async () => value } as unknown as Dialer;
    const proxy = await startProxy({ dialer });
    try {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', 9)]));
      assert.deepEqual(await client.readToEnd(), hex(REFUSED_GENERAL));
      const record = await withTimeout(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the record');
      assert.equal(record.reason, 'connect-failed');
      assert.match(record.error ?? '', /the dialer gave (null|object|string), not a net\.Socket/);
    } finally {
      await withTimeout(proxy.close(), 5000, 'close()');
    }
    assert.equal(proxy.server.sessionCount, 0);
  });
}

test('a dialer that never settles (it ignores the deadline and the signal): REP 0x06 at timeouts.connect; a socket it gives later is closed, not relayed', async () => {
  let late: (socket: unknown) => void = () => {};
  const target = await startTcpServer((socket) => socket.write('should not be relayed'));
  const dialer: Dialer = {
    dial: () => new Promise((resolve) => { late = resolve as (socket: unknown) => void; }),
  };
  const proxy = await startProxy({ dialer, timeouts: { connect: 300 } });
  try {
    const client = await RawClient.connect(proxy.port);
    client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
    assert.deepEqual(await withTimeout(client.readToEnd(), 5000, 'the refusal'), hex('05 00 05 06 00 01 00000000 0000'));
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'connect-failed');
    assert.match(record.error ?? '', /timed out after 300 ms/);
    const socket = connect({ host: '127.0.0.1', port: target.port });
    late(socket);
    await withTimeout(new Promise((resolve) => socket.once('close', resolve)), 5000, 'the late socket to be closed');
  } finally {
    await proxy.close();
    await target.close();
  }
});

test('a resolver answering no IP address (an empty entry, a name): REP 0x04, and nothing is dialled (net.connect took them for localhost)', async () => {
  let reached = 0;
  const local = await startTcpServer((socket) => { reached++; socket.destroy(); });
  const answers: unknown[][] = [[{}], [{ address: 'localhost', family: 4 }], [null]];
  const resolver: Resolver = { resolve: async () => answers.shift() as never };
  const proxy = await startProxy({ resolver, handshake: { engine: 'node' } });
  try {
    for (let i = 0; i < 3; i++) {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequestByName('www.example.com', local.port)]));
      assert.deepEqual(await client.readToEnd(), hex('05 00 05 04 00 01 00000000 0000'), `answer ${i}`);
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.error, 'www.example.com: the resolver gave no IP address');
    }
    assert.equal(reached, 0, 'nothing reached the local listener');
  } finally {
    await proxy.close();
    await local.close();
  }
});

test('an authenticator that throws a value that cannot be turned into a string: status 0x01, auth-failed, the process unharmed', async () => {
  const unprintable = { toString() { throw new Error('no string'); } };
  const authenticator: Authenticator = { verify: async () => { throw unprintable; } };
  const proxy = await startProxy({ auth: { methods: ['userpass'] }, authenticator });
  try {
    const client = await RawClient.connect(proxy.port);
    client.write(Buffer.concat([hex('05 01 02'), hex('01 01 61 01 62')]));
    assert.deepEqual(await client.readToEnd(), hex('05 02 01 01'));
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'auth-failed');
    assert.equal(record.error, 'authenticator failed: unknown error');
  } finally {
    await proxy.close();
  }
});

test('an authenticator may read the context the server always passes (the type says so); addresses() is empty once closed', async () => {
  const seen: string[] = [];
  const authenticator: Authenticator = { verify: async (_user, _password, { clientAddress }) => (seen.push(clientAddress), true) };
  const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], auth: { methods: ['userpass'] }, authenticator });
  const [bound] = await server.listen();
  const client = await RawClient.connect(bound!.port);
  client.write(Buffer.concat([hex('05 01 02'), hex('01 01 61 01 62')]));
  assert.deepEqual(await client.read(4), hex('05 02 01 00'));
  client.destroy();
  assert.deepEqual(seen, ['127.0.0.1']);
  assert.equal(server.addresses().length, 1);
  await server.close({ graceMs: 0 });
  assert.deepEqual(server.addresses(), [], 'nothing is bound any more');
});

test('a resolver of the library\'s own is asked with the client\'s address and a signal that aborts when the session is gone, and is not queued: one client\'s eight lookups are all asked at once', async () => {
  const asked: Array<{ host: string; options: ResolveOptions | undefined }> = [];
  const resolver: Resolver = {
    resolve: (host, options) => {
      asked.push({ host, options });
      return new Promise(() => {}); // answers nothing
    },
  };
  const proxy = await startProxy({ resolver, handshake: { engine: 'node' } });
  const clients: RawClient[] = [];
  try {
    for (let i = 0; i < 8; i++) {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequestByName(`n${i}.example`, 80)]));
      clients.push(client);
    }
    await until(() => asked.length === 8);
    assert.deepEqual(asked.map((a) => a.options?.client), Array(8).fill('127.0.0.1'), 'each lookup names its client');
    assert.ok(asked.every((a) => a.options?.signal instanceof AbortSignal && !a.options.signal.aborted), 'each with a signal, not aborted while its session waits');
    clients[0]!.socket.resetAndDestroy();
    await withTimeout(proxy.record((r) => r.clientPort === clients[0]!.localPort), 5000, 'the record of the client that reset');
    assert.equal(asked.find((a) => a.host === 'n0.example')?.options?.signal?.aborted, true, 'its session gone, its signal aborted');
  } finally {
    for (const client of clients) client.destroy();
    await proxy.close();
  }
});

for (const engine of ['native', 'node'] as const) {
  test(`a now() that steps an hour mid-session (the wall clock set): startedAt is now()'s, durationMs the monotonic clock's (${engine} handshakes)`, async () => {
    let step = 0;
    const start = Date.now();
    const echo = await startTcpServer((socket) => socket.pipe(socket));
    const proxy = await startProxy({ now: () => Date.now() + step, handshake: { engine } });
    try {
      const opened: number[] = [];
      proxy.server.on('session-open', ({ clientPort }) => opened.push(clientPort));
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', echo.port)]));
      assert.deepEqual((await client.read(12)).subarray(0, 2), hex('05 00'));
      // Native handshakes tell JavaScript of a session in batches: step once it knows.
      await withTimeout(until(() => opened.includes(client.localPort)), 5000, 'the session-open event');
      step = 3_600_000;
      client.write(Buffer.from('x'));
      assert.equal((await client.read(1)).toString(), 'x');
      client.socket.end();
      await client.readToEnd();
      const record = await withTimeout(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the record');
      assert.ok(record.startedAt >= start && record.startedAt < start + 60_000, `startedAt ${record.startedAt}: before the step`);
      assert.ok(record.durationMs < 60_000, `durationMs ${record.durationMs}: the step is not part of it`);
    } finally {
      await proxy.close();
      await echo.close();
    }
  });
}
