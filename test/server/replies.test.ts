/**
 * Every failure of a CONNECT gets its own reply code, and the record names
 * the cause. Dialers and resolvers are swapped in where loopback cannot
 * produce the failure (an unreachable network, a name that does not exist).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Dialer, Resolver } from '../../src/index.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, closedPort, startEchoServer, startProxy } from '../helpers/server.js';

function errno(code: string): Error {
  return Object.assign(new Error(`simulated ${code}`), { code });
}

/** A dialer that fails every dial with the given error. */
function failingDialer(err: Error): Dialer {
  return { dial: () => Promise.reject(err) };
}

/** Sends a SOCKS5 no-auth greeting and a request; returns the 10-byte IPv4 reply and the session record. */
async function socks5Attempt(proxy: RunningProxy, request: Buffer) {
  const client = await RawClient.connect(proxy.port);
  client.write('05 01 00');
  assert.deepEqual(await client.read(2), hex('05 00'));
  client.write(request);
  const reply = await client.read(10);
  assert.equal(await client.ended, 'end', 'the server closes after a refusal');
  const record = await proxy.record((r) => r.clientPort === client.localPort);
  return { reply, record };
}

describe('SOCKS5 reply codes', () => {
  test('0x05 connection refused: a loopback port with no listener', async () => {
    const proxy = await startProxy();
    try {
      const { reply, record } = await socks5Attempt(proxy, connectRequest('127.0.0.1', await closedPort()));
      assert.deepEqual(reply, hex('05 05 00 01 00000000 0000'));
      assert.equal(record.reply, 0x05);
      assert.equal(record.reason, 'connect-failed');
      assert.match(record.error ?? '', /ECONNREFUSED/);
    } finally {
      await proxy.close();
    }
  });

  const mapped: Array<[string, number]> = [
    ['ENETUNREACH', 0x03],
    ['EHOSTUNREACH', 0x04],
    ['ENOTFOUND', 0x04],
    ['ETIMEDOUT', 0x06],
    ['EACCES', 0x01],
  ];
  for (const [code, rep] of mapped) {
    test(`0x0${rep} for a dial that fails with ${code}`, async () => {
      const proxy = await startProxy({ dialer: failingDialer(errno(code)) });
      try {
        const { reply, record } = await socks5Attempt(proxy, connectRequest('192.0.2.1', 80));
        assert.equal(reply[1], rep);
        assert.equal(record.reply, rep);
        assert.match(record.error ?? '', new RegExp(code));
      } finally {
        await proxy.close();
      }
    });
  }

  test('0x01 for a dialer that throws synchronously (not an async function): the record names its error', async () => {
    const dialer: Dialer = { dial: () => { throw new Error('a bug in the dialer'); } };
    const proxy = await startProxy({ dialer });
    try {
      const { reply, record } = await socks5Attempt(proxy, connectRequest('192.0.2.1', 80));
      assert.equal(reply[1], 0x01);
      assert.equal(record.reason, 'connect-failed');
      assert.match(record.error ?? '', /a bug in the dialer/);
    } finally {
      await proxy.close();
    }
  });

  test('0x04 host unreachable for a name the resolver cannot resolve', async () => {
    const resolver: Resolver = { resolve: () => Promise.reject(errno('ENOTFOUND')) };
    const proxy = await startProxy({ resolver });
    try {
      const { reply, record } = await socks5Attempt(proxy, connectRequestByName('no-such-host.test', 80));
      assert.equal(reply[1], 0x04);
      assert.equal(record.requested, 'no-such-host.test:80');
    } finally {
      await proxy.close();
    }
  });

  test('0x04 for a name that resolves to no address', async () => {
    const proxy = await startProxy({ resolver: { resolve: async () => [] } });
    try {
      const { reply } = await socks5Attempt(proxy, connectRequestByName('empty.test', 80));
      assert.equal(reply[1], 0x04);
    } finally {
      await proxy.close();
    }
  });

  test('0x06 when the connect timeout passes (resolver never answers)', async () => {
    const resolver: Resolver = { resolve: () => new Promise(() => {}) };
    const proxy = await startProxy({ resolver, timeouts: { connect: 150 } });
    try {
      const { reply, record } = await socks5Attempt(proxy, connectRequestByName('slow.test', 80));
      assert.equal(reply[1], 0x06);
      assert.match(record.error ?? '', /timed out after 150 ms/);
    } finally {
      await proxy.close();
    }
  });

  test('0x01 general failure for an error without an errno', async () => {
    const proxy = await startProxy({ dialer: failingDialer(new Error('something odd')) });
    try {
      const { reply, record } = await socks5Attempt(proxy, connectRequest('192.0.2.1', 80));
      assert.equal(reply[1], 0x01);
      assert.equal(record.error, 'something odd');
    } finally {
      await proxy.close();
    }
  });

  for (const [name, command] of [['unknown command 0x00', 0], ['unknown command 0x09', 9]] as const) {
    test(`0x07 command not supported: ${name}`, async () => {
      const proxy = await startProxy();
      try {
        const { reply, record } = await socks5Attempt(proxy, connectRequest('127.0.0.1', 80, command));
        assert.deepEqual(reply, hex('05 07 00 01 00000000 0000'));
        assert.equal(record.reason, 'command-not-supported');
      } finally {
        await proxy.close();
      }
    });
  }

  test('0x08 address type not supported', async () => {
    const proxy = await startProxy();
    try {
      const { reply, record } = await socks5Attempt(proxy, hex('05 01 00 05 7f000001 0050'));
      assert.equal(reply[1], 0x08);
      assert.equal(record.reason, 'protocol-error');
      assert.match(record.error ?? '', /address type 0x05/);
    } finally {
      await proxy.close();
    }
  });
});

describe('SOCKS5 success reply', () => {
  let proxy: RunningProxy;
  let echo: Fixture;
  before(async () => {
    echo = await startEchoServer();
    proxy = await startProxy();
  });
  after(async () => {
    await proxy.close();
    await echo.close();
  });

  test('carries the outbound socket\'s real local address and port', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 01 00');
    await client.read(2);
    client.write(connectRequest('127.0.0.1', echo.port));
    const reply = await client.read(10);
    assert.deepEqual(reply.subarray(0, 4), hex('05 00 00 01'));
    assert.equal(reply.subarray(4, 8).join('.'), '127.0.0.1');
    const boundPort = reply.readUInt16BE(8);
    assert.notEqual(boundPort, 0);
    client.socket.end();
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reply, 0);
    assert.equal(record.connected, `127.0.0.1:${echo.port}`);
  });
});

describe('SOCKS4 replies', () => {
  test('0x5B when the connection is refused', async () => {
    const proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    try {
      const port = await closedPort();
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.from([4, 1, port >> 8, port & 0xff, 127, 0, 0, 1, 0]));
      const reply = await client.read(8);
      assert.equal(reply[0], 0x00);
      assert.equal(reply[1], 0x5b);
      const record = await proxy.record();
      assert.equal(record.version, 4);
      assert.equal(record.reply, 0x5b);
      assert.equal(record.reason, 'connect-failed');
    } finally {
      await proxy.close();
    }
  });

  test('0x5B for an unknown SOCKS4 command', async () => {
    const proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    try {
      const client = await RawClient.connect(proxy.port);
      client.write(hex('04 03 0050 7f000001 00'));
      assert.equal((await client.read(8))[1], 0x5b);
      assert.equal((await proxy.record()).reason, 'command-not-supported');
    } finally {
      await proxy.close();
    }
  });
});
