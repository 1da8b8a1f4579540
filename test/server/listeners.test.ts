/** Several listeners at once, IPv4 and IPv6, each with its own SOCKS4 switch. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { SocksClient } from 'socks';
import { type ServerOptions, type SessionRecord, type SocksServer, createServer, ListenError, reservePorts } from '../../src/index.js';
import { canBind, withTimeout } from '../cli/helpers.js';
import { startEchoServer } from '../helpers/server.js';
import { RawClient } from '../helpers/raw.js';
import { ENGINES, countersSince, nativeCounters } from './native-helpers.js';

test('one server listens on 127.0.0.1 and ::1; SOCKS4 only where switched on', async () => {
  const echo = await startEchoServer();
  const server = createServer({
    listen: [
      { address: '127.0.0.1', port: 0, socks4: true },
      { address: '::1', port: 0 },
    ],
  });
  const bound = await server.listen();
  try {
    assert.deepEqual(bound.map((b) => [b.address, b.family, b.socks4]), [['127.0.0.1', 'IPv4', true], ['::1', 'IPv6', false]]);
    const destination = { host: '127.0.0.1', port: echo.port };
    for (const [listener, type] of [[bound[0]!, 5], [bound[0]!, 4], [bound[1]!, 5]] as const) {
      const { socket } = await SocksClient.createConnection({ proxy: { host: listener.address, port: listener.port, type }, command: 'connect', destination });
      const reply = new Promise<string>((resolve) => socket.once('data', (c: Buffer) => resolve(c.toString())));
      socket.write(`via ${listener.address} v${type}`);
      assert.equal(await reply, `via ${listener.address} v${type}`);
      socket.destroy();
    }
    await assert.rejects(
      SocksClient.createConnection({ proxy: { host: '::1', port: bound[1]!.port, type: 4 }, command: 'connect', destination }),
      /Socks4 Proxy rejected connection/,
    );
  } finally {
    await server.close({ graceMs: 0 });
    await echo.close();
  }
});

test('when one listener cannot bind, listen() rejects with a one-line ListenError and binds none', async () => {
  const first = createServer({ listen: [{ address: '127.0.0.1', port: 0 }] });
  const [taken] = await first.listen();
  const second = createServer({ listen: [{ address: '127.0.0.1', port: 0 }, { address: '127.0.0.1', port: taken!.port }] });
  try {
    await assert.rejects(second.listen(), (err: unknown) => {
      assert.ok(err instanceof ListenError);
      assert.equal(err.code, 'EADDRINUSE');
      assert.equal(err.message, `cannot listen on 127.0.0.1:${taken!.port}: address already in use`);
      return true;
    });
    assert.deepEqual(second.addresses(), [], 'none is listed: the one bound before the failure was closed again');
  } finally {
    await first.close({ graceMs: 0 });
  }
});

/**
 * A server on 127.0.0.1:0 with `options`, one SOCKS5 session (npm socks) relaying to an echo
 * server, and `scenario`, which is to close the server; the echo server is closed after it.
 */
async function withOneSession(options: ServerOptions, scenario: (server: SocksServer, socket: Socket) => Promise<void>): Promise<void> {
  const echo = await startEchoServer();
  const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], ...options });
  const [bound] = await server.listen();
  try {
    const { socket } = await SocksClient.createConnection({ proxy: { host: bound!.address, port: bound!.port, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: echo.port } });
    await scenario(server, socket);
  } finally {
    await echo.close();
  }
}

for (const engine of ENGINES) {
  test(`close() right after listen(): listen() rejects, close() resolves, no listener is left bound (${engine} handshakes)`, async () => {
    const listeningSockets = () => process.getActiveResourcesInfo().filter((kind) => kind === 'TCPServerWrap').length;
    const before = listeningSockets();
    const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }, { address: '::1', port: 0 }], handshake: { engine } });
    const listening = server.listen();
    const closed = server.close();
    await withTimeout(assert.rejects(listening, /the server was closed before it was listening/), 5000, 'listen() to settle');
    await withTimeout(closed, 5000, 'close() to resolve');
    assert.deepEqual(server.addresses(), []);
    assert.equal(listeningSockets(), before);
  });

  test(`a second close() without a grace resolves only when the first does: once the open session is gone (${engine} handshakes)`, () =>
    withOneSession({ handshake: { engine } }, async (server, socket) => {
      const order: string[] = [];
      const first = server.close({ graceMs: 60_000 }).then(() => order.push('first'));
      const second = server.close().then(() => order.push('second'));
      await once(server, 'draining');
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(order, [], 'neither resolved while the session was open');
      assert.equal(server.sessionCount, 1);
      socket.destroy();
      await withTimeout(Promise.all([first, second]), 5000, 'both close() calls');
      assert.deepEqual(order, ['first', 'second']);
    }));

  test(`a second close() with a shorter grace cuts the open session now, with its record; a longer one changes nothing (${engine} handshakes)`, () =>
    withOneSession({ handshake: { engine } }, async (server, socket) => {
      const records: SessionRecord[] = [];
      server.on('session-close', (record) => records.push(record));
      const first = server.close({ graceMs: 60_000 });
      await once(server, 'draining');
      assert.equal(server.close({ graceMs: 120_000 }), first, 'the first close() promise');
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(server.sessionCount, 1, 'a longer grace cut nothing');
      const hurried = server.close({ graceMs: 0 });
      await withTimeout(hurried, 5000, 'close() to resolve once the session is cut');
      assert.equal(hurried, first);
      assert.deepEqual(records.map((r) => r.reason), ['shutdown']);
      if (!socket.closed) await withTimeout(once(socket, 'close'), 5000, 'the client to see its session cut');
    }));
}

test('close() with a grace that is not a number >= 0 rejects and closes nothing; a valid close() after it works', async () => {
  const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }] });
  await server.listen();
  try {
    for (const graceMs of [NaN, -1, '5' as unknown as number]) {
      await assert.rejects(server.close({ graceMs }), (err: unknown) => err instanceof RangeError && /graceMs must be/.test(err.message));
    }
    const client = await RawClient.connect(server.addresses()[0]!.port);
    client.destroy();
  } finally {
    await withTimeout(server.close({ graceMs: 0 }), 5000, 'close()');
  }
});

test('close({ graceMs: Infinity }) waits for the open session itself (a timer that long would fire at once)', () =>
  withOneSession({}, async (server, socket) => {
    let resolved = false;
    const closed = server.close({ graceMs: Infinity }).then(() => { resolved = true; });
    await once(server, 'draining');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(resolved, false);
    assert.equal(server.sessionCount, 1, 'the session was not shut down');
    const echoed = new Promise<string>((resolve) => socket.once('data', (c: Buffer) => resolve(c.toString())));
    socket.write('still relayed');
    assert.equal(await echoed, 'still relayed');
    socket.destroy();
    await withTimeout(closed, 5000, 'close()');
  }));

test('reusePort: a listener on an IPv4-mapped address is named as a plain listener is ([::ffff:127.0.0.1]:port), so listeners: rules match it', async () => {
  const echo = await startEchoServer();
  const listen = [{ address: '::ffff:127.0.0.1', port: 0 }];
  const [port] = reservePorts(listen);
  const server = createServer({ listen, rules: [{ name: 'this-listener', allow: { listeners: [`[::ffff:7f00:1]:${port}`] } }] });
  try {
    await server.listen({ reusePort: { ports: [port!] } });
    assert.deepEqual(server.addresses().map((a) => [a.address, a.family]), [['::ffff:127.0.0.1', 'IPv6']], 'as Node reports such a listener');
    const closed = once(server, 'session-close');
    const { socket } = await SocksClient.createConnection({ proxy: { host: '127.0.0.1', port: port!, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: echo.port } });
    socket.destroy();
    const [record] = await withTimeout(closed, 5000, 'the session record') as [{ listener: string; rule: string | null }];
    assert.equal(record.listener, `[::ffff:127.0.0.1]:${port}`);
    assert.equal(record.rule, 'this-listener');
  } finally {
    await server.close({ graceMs: 0 });
    await echo.close();
  }
});

test('reusePort: two servers on the port reservePorts() reserved, both accepting natively; the kernel spreads connections', async () => {
  const echo = await startEchoServer();
  const listen = [{ address: '127.0.0.1', port: 0 }];
  const [port] = reservePorts(listen);
  assert.ok(port! > 0, 'port 0 became a real port');
  const servers = [createServer({ listen }), createServer({ listen })];
  const served = servers.map(() => 0);
  servers.forEach((server, i) => server.on('session-close', () => { served[i]!++; }));
  try {
    assert.equal(await canBind(port!), false, 'the reservation holds the port against others, though nothing listens on it yet');
    for (const server of servers) {
      assert.deepEqual((await server.listen({ reusePort: { ports: [port!] } })).map((b) => b.port), [port], 'the reserved port');
      assert.equal(server.handshakeEngine, 'native');
    }
    const before = nativeCounters();
    // The kernel picks a socket by the connection's addresses: bounded, and both are all but certain within a few.
    for (let i = 0; i < 200 && served.some((n) => n === 0); i++) {
      const { socket } = await SocksClient.createConnection({ proxy: { host: '127.0.0.1', port: port!, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: echo.port } });
      socket.end('x');
      await once(socket, 'close');
      await withTimeout(new Promise<void>((resolve) => { const check = () => served.reduce((a, b) => a + b) > i ? resolve() : setTimeout(check, 5); check(); }), 5000, 'the session record');
    }
    assert.ok(served.every((n) => n > 0), `both servers served: ${served}`);
    assert.equal(countersSince(before).handedOver, 0, 'every session stayed native');
  } finally {
    for (const server of servers) await server.close({ graceMs: 0 });
    await echo.close();
  }
});

test('reusePort: a listener written in full (0:0:0:0:0:0:0:1) is named as Node names a bound one ([::1]:port), in addresses() and records, so rules on listeners match', async () => {
  const echo = await startEchoServer('::1');
  const listen = [{ address: '0:0:0:0:0:0:0:1', port: 0 }];
  const [port] = reservePorts(listen);
  const rules = [{ name: 'this-listener', allow: { listeners: [`[::1]:${port}`] } }];
  const server = createServer({ listen, rules });
  const records: string[] = [];
  server.on('session-close', (record) => records.push(`${record.listener} ${record.rule}`));
  try {
    assert.deepEqual((await server.listen({ reusePort: { ports: [port!] } })).map((b) => b.address), ['::1']);
    const { socket } = await SocksClient.createConnection({ proxy: { host: '::1', port: port!, type: 5 }, command: 'connect', destination: { host: '::1', port: echo.port } });
    socket.end('x');
    await once(socket, 'close');
    await withTimeout(new Promise<void>((resolve) => { const check = () => records.length > 0 ? resolve() : setTimeout(check, 5); check(); }), 5000, 'the session record');
    assert.deepEqual(records, [`[::1]:${port} this-listener`]);
  } finally {
    await server.close({ graceMs: 0 });
    await echo.close();
  }
});

for (const engine of ENGINES) {
  test(`${engine}: close() from a \`listening\` listener: listen() rejects and nothing stays bound`, async () => {
    const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], handshake: { engine } });
    let port = 0;
    server.on('listening', (info) => {
      port = info.port;
      void server.close();
    });
    await assert.rejects(server.listen(), /closed before it was listening/);
    assert.ok(port > 0);
    assert.equal(await canBind(port), true, 'the port is free again');
    await server.close();
  });
}

test('reservePorts() reports a port in use as a ListenError, and listen({ reusePort }) without native handshakes binds as usual', async () => {
  const holder = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], handshake: { engine: 'node' } });
  const [taken] = await holder.listen({ reusePort: { ports: [1] } });
  try {
    assert.notEqual(taken!.port, 1, 'ports are for SO_REUSEPORT sockets only');
    assert.throws(() => reservePorts([{ address: '127.0.0.1', port: taken!.port }]), (err: unknown) =>
      err instanceof ListenError && err.code === 'EADDRINUSE' && err.message === `cannot listen on 127.0.0.1:${taken!.port}: address already in use`);
  } finally {
    await holder.close({ graceMs: 0 });
  }
});

test('reservePorts(): all or none, and malformed listeners are refused as ListenErrors before any socket is bound', async () => {
  const holder = createServer({ listen: [{ address: '127.0.0.1', port: 0 }] });
  const [taken] = await holder.listen();
  try {
    // A port free now, so that the reservation below binds it first.
    const probe = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], handshake: { engine: 'node' } });
    const [unreserved] = await probe.listen();
    await probe.close({ graceMs: 0 });
    assert.throws(() => reservePorts([{ address: '127.0.0.1', port: unreserved!.port }, { address: '127.0.0.1', port: taken!.port }]), ListenError);
    assert.ok(await canBind(unreserved!.port), 'the first port was let go when the second failed');

    for (const [listener, why] of [
      [{ address: '127.0.0.1', port: 65536 }, /not a TCP port: 65536/],
      [{ address: '127.0.0.1', port: -1 }, /not a TCP port: -1/],
      [{ address: '127.0.0.1', port: 1.5 }, /not a TCP port: 1.5/],
      [{ address: 'localhost', port: 0 }, /not an IP address/],
      [{ address: '127.0.0.1.1', port: 0 }, /not an IP address/],
      // The longest address text (45 characters) and one more: refused whole, not cut to the address.
      [{ address: 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255x', port: 0 }, /not an IP address/],
    ] as const) {
      assert.throws(() => reservePorts([listener]), (err: unknown) => err instanceof ListenError && why.test(err.message), JSON.stringify(listener));
    }
  } finally {
    await holder.close({ graceMs: 0 });
  }
});

for (const engine of ENGINES) {
  test(`an IPv4 client of a dual-stack listener (::) is named by its IPv4 address, as on an IPv4 listener: in its record, to the authenticator and to the rules (${engine} handshakes)`, async () => {
    const echo = await startEchoServer();
    const seen: string[] = [];
    const server = createServer({
      listen: [{ address: '::', port: 0 }],
      clients: { allow: ['127.0.0.0/8', '::1'] },
      handshake: { engine },
      auth: { methods: ['userpass'] },
      authenticator: { verify: async (_user, _password, context) => { seen.push(context.clientAddress); return true; } },
      rules: [{ name: 'loopback-v4', allow: { from: { nets: ['127.0.0.0/8'] } } }],
    });
    const [bound] = await server.listen();
    try {
      const closed = once(server, 'session-close');
      const { socket } = await SocksClient.createConnection({
        proxy: { host: '127.0.0.1', port: bound!.port, type: 5, userId: 'u', password: 'p' }, command: 'connect', destination: { host: '127.0.0.1', port: echo.port },
      });
      socket.destroy();
      const [record] = await withTimeout(closed, 5000, 'the session record') as [{ clientAddress: string; rule: string | null }];
      assert.equal(record.clientAddress, '127.0.0.1', 'not ::ffff:127.0.0.1');
      assert.equal(record.rule, 'loopback-v4');
      assert.deepEqual(seen, ['127.0.0.1']);
    } finally {
      await server.close({ graceMs: 0 });
      await echo.close();
    }
  });
}
