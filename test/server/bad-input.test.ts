/**
 * Bad input gets the protocol's refusal or a clean close and a record naming
 * the cause, and never disturbs other sessions: a session relaying through
 * the same server keeps working across every case below.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { SocksClient } from 'socks';
import type { Socket } from 'node:net';
import { type Dialer, type Resolver, createDirectDialer } from '../../src/index.js';
import { fraction, mostly } from '../helpers/arbitraries.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, recordsFrom, startEchoServer, startProxy, startTcpServer } from '../helpers/server.js';

/** Random requests must never reach beyond loopback: refuse every other destination. */
const direct = createDirectDialer();
const loopbackOnly: Dialer = {
  dial(target, options) {
    if (target.host !== '127.0.0.1') return Promise.reject(Object.assign(new Error('test: not loopback'), { code: 'ENETUNREACH' }));
    return direct.dial(target, options);
  },
};

/** Nor may a name be looked up in DNS (BIND resolves the peer's name it is given). */
const localhostOnly: Resolver = {
  resolve: async (hostname) => {
    if (hostname.toLowerCase() === 'localhost') return [{ address: '127.0.0.1', family: 4 }];
    throw Object.assign(new Error(`test: ${hostname} not looked up`), { code: 'ENOTFOUND' });
  },
};

const anyPort = fc.oneof(fc.constantFrom(0, 1, 65535), fc.integer({ min: 0, max: 65535 }));
/** Names for the proxy to try: none of them leaves the machine (see localhostOnly and loopbackOnly). */
const NAMES = ['localhost', '127.0.0.1', '', 'x.invalid', 'a'.repeat(255), 'LOCALHOST.', '[::1]', '-'];

/** A SOCKS4 or SOCKS4a request: any command, port, user id and name; terminators sometimes missing. */
const socks4Request = fc
  .record({
    command: mostly(1, 2, 3, 0, 0xff),
    port: anyPort,
    ip: fc.constantFrom([127, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 255]),
    userId: fc.string({ maxLength: 12 }).map((t) => t.replaceAll('\0', '')),
    name: fc.constantFrom(...NAMES),
    terminated: mostly(true, false),
  })
  .map(({ command, port, ip, userId, name, terminated }) => {
    const end = terminated ? [0] : [];
    const head = Buffer.from([4, command, port >> 8, port & 0xff, ...ip]);
    const socks4a = ip[0] === 0 && ip[1] === 0 && ip[2] === 0 && ip[3] !== 0;
    return Buffer.concat([head, Buffer.from(userId), Buffer.from([0]), ...(socks4a ? [Buffer.from(name), Buffer.from(end)] : [])]);
  });

/** A SOCKS5 greeting offering no authentication, then a request: any command, address type, address and port. */
const socks5Request = fc
  .record({
    command: mostly(1, 2, 3, 0, 4, 0xff),
    reserved: mostly(0, 1, 0xff),
    address: fc.oneof(
      fc.constantFrom([1, 127, 0, 0, 1], [1, 0, 0, 0, 0], [4, ...Array<number>(15).fill(0), 1], [4, ...Array<number>(16).fill(0)]),
      fc.constantFrom(...NAMES).map((name) => [3, Buffer.byteLength(name), ...Buffer.from(name)]),
      fc.constantFrom([2, 127, 0, 0, 1], [3, 0], [3, 255]),
    ),
    port: anyPort,
  })
  .map(({ command, reserved, address, port }) => Buffer.from([5, 1, 0, 5, command, reserved, ...address, port >> 8, port & 0xff]));

/** A request of either version, maybe followed by payload, maybe cut short. */
const structuredRequest = fc
  .record({
    request: fc.oneof(socks4Request, socks5Request),
    payload: fc.uint8Array({ maxLength: 32 }),
    cut: fc.option(fraction, { freq: 3 }),
  })
  .map(({ request, payload, cut }) => {
    const whole = Buffer.concat([request, payload]);
    return cut === null ? whole : whole.subarray(0, Math.floor(cut * whole.length));
  });

async function echoRoundTrip(socket: Socket, text: string): Promise<string> {
  const data = new Promise<string>((resolve) => {
    let got = '';
    const onData = (chunk: Buffer) => {
      got += chunk.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
  });
  socket.write(text);
  return data;
}

describe('bad input', () => {
  let proxy: RunningProxy;
  let echo: Fixture;
  let bystander: Socket;

  before(async () => {
    echo = await startEchoServer();
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      // A BIND among the random requests waits for its peer: the client's FIN is a
      // half-close there, so only the BIND timeout ends it.
      timeouts: { handshake: 300, bind: 300 },
      dialer: loopbackOnly,
      resolver: localhostOnly,
    });
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: proxy.port, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: echo.port },
    });
    bystander = socket;
    assert.equal(await echoRoundTrip(bystander, 'before'), 'before');
  });

  after(async () => {
    assert.equal(await echoRoundTrip(bystander, 'still here'), 'still here', 'the bystander session survived every case');
    bystander.destroy();
    await proxy.close();
    await echo.close();
  });

  /** Sends `bytes`, expects `reply` (or none) and a close, and returns the record. */
  async function expectRefusal(bytes: Buffer, reply: Buffer | null) {
    const next = recordsFrom(proxy);
    const client = await RawClient.connect(proxy.port);
    client.write(bytes);
    const rest = await client.readToEnd();
    assert.deepEqual(rest, reply ?? Buffer.alloc(0));
    return next((r) => r.clientPort === client.localPort);
  }

  test('garbage (an HTTP request) is closed without a reply', async () => {
    const record = await expectRefusal(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), null);
    assert.equal(record.reason, 'protocol-error');
    assert.match(record.error ?? '', /not SOCKS: first byte 0x47/);
  });

  test('a SOCKS5 greeting with zero methods is closed', async () => {
    const record = await expectRefusal(hex('05 00'), null);
    assert.equal(record.reason, 'protocol-error');
    assert.match(record.error ?? '', /zero methods/);
  });

  test('a truncated greeting followed by a close is logged as such', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 03 00');
    client.socket.end();
    assert.equal((await client.readToEnd()).length, 0);
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'client-gone');
    assert.match(record.error ?? '', /truncated SOCKS5 greeting \(3 bytes\)/);
  });

  test('a zero-length domain gets general failure 0x01', async () => {
    const record = await expectRefusal(Buffer.concat([hex('05 01 00'), hex('05 01 00 03 00 0050')]), hex('05 00 05 01 00 01 00000000 0000'));
    assert.equal(record.reason, 'protocol-error');
    assert.equal(record.reply, 0x01);
    assert.match(record.error ?? '', /zero-length domain/);
  });

  test('a request with a non-printable host name is refused', async () => {
    const record = await expectRefusal(hex('05 01 00  05 01 00 03 03 61 00 62 0050'), hex('05 00 05 01 00 01 00000000 0000'));
    assert.match(record.error ?? '', /non-printable byte 0x00/);
  });

  test('a host name with a backslash is refused before any rule or lookup (the resolver would read blocked.t\\101st as blocked.test)', async () => {
    const name = Buffer.from('blocked.t\\101st', 'latin1');
    const request = Buffer.concat([hex('05 01 00  05 01 00 03'), Buffer.of(name.length), name, hex('0050')]);
    const record = await expectRefusal(request, hex('05 00 05 01 00 01 00000000 0000'));
    assert.equal(record.reason, 'protocol-error');
    assert.match(record.error ?? '', /backslash, which the resolver would read as an escape/);
  });

  test('an oversized SOCKS4 USERID gets 0x5B as soon as the limit is passed', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write(Buffer.concat([hex('04 01 0050 7f000001'), Buffer.alloc(300, 0x61)])); // no NUL, and the client does not close
    assert.deepEqual(await client.read(8), hex('00 5b 0000 00000000'));
    assert.equal(await client.ended, 'end');
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'protocol-error');
    assert.match(record.error ?? '', /USERID longer than 255 bytes/);
  });

  test('a client that stalls mid-handshake is closed at the handshake timeout', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 01 00');
    assert.deepEqual(await client.read(2), hex('05 00'));
    client.write('05 01 00'); // half a request, then silence
    assert.equal((await client.readToEnd()).length, 0);
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'handshake-timeout');
    assert.match(record.error ?? '', /handshake timeout after 300 ms waiting for SOCKS5 request/);
  });

  test('a client that connects and sends nothing is closed at the handshake timeout', async () => {
    const client = await RawClient.connect(proxy.port);
    await client.readToEnd();
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'handshake-timeout');
    assert.match(record.error ?? '', /first byte/);
  });

  test('random bytes never crash the server: each connection is refused or closed, with a record', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 64 }), async (bytes) => {
        const next = recordsFrom(proxy);
        const client = await RawClient.connect(proxy.port);
        client.write(Buffer.from(bytes));
        client.socket.end();
        await client.readToEnd();
        const record = await next((r) => r.clientPort === client.localPort);
        assert.notEqual(record.error, null, 'every refusal names its cause');
      }),
      { numRuns: 60 },
    );
  });

  test('requests of both versions and every command with any fields: each ends with a record naming its cause, the server serves on', async () => {
    await fc.assert(
      fc.asyncProperty(structuredRequest, async (bytes) => {
        // Hundreds of clients: an earlier one's port may come back; only records from now on count.
        const next = recordsFrom(proxy);
        const client = await RawClient.connect(proxy.port);
        client.write(bytes);
        client.socket.end();
        await client.readToEnd();
        const record = await next((r) => r.clientPort === client.localPort);
        const relayed = record.reason === 'client-closed' || record.reason === 'destination-closed';
        assert.ok(relayed || record.error !== null, `a refusal names its cause (${record.reason})`);
      }),
      { numRuns: 200, includeErrorInReport: true },
    );
  });
});

describe('a client that resets mid-relay', () => {
  test('the destination sees a reset too, the record says client-error, and the server serves on', async () => {
    let destinationEnded: (how: string) => void = () => {};
    const destinationOutcome = new Promise<string>((resolve) => { destinationEnded = resolve; });
    const target = await startTcpServer((socket) => {
      socket.write('hello');
      socket.on('error', (err: NodeJS.ErrnoException) => destinationEnded(err.code ?? 'error'));
      socket.on('end', () => destinationEnded('end'));
    });
    const proxy = await startProxy();
    try {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
      await client.read(2 + 10);
      assert.equal((await client.read(5)).toString(), 'hello');
      client.socket.resetAndDestroy();
      assert.equal(await destinationOutcome, 'ECONNRESET', 'a reset, not a clean end, reaches the destination');
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.reason, 'client-error');
      assert.equal(record.bytesDown, 5);

      const next = await RawClient.connect(proxy.port);
      next.write('05 01 00');
      assert.deepEqual(await next.read(2), hex('05 00'));
      next.destroy();
    } finally {
      await proxy.close();
      await target.close();
    }
  });
});
