/** Several listeners at once, IPv4 and IPv6, each with its own SOCKS4 switch. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SocksClient } from 'socks';
import { createServer, ListenError } from '../../src/index.js';
import { startEchoServer } from '../helpers/server.js';

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
    assert.equal(second.addresses().length, 1, 'the first listener was bound before the failure');
  } finally {
    await first.close({ graceMs: 0 });
  }
});
