/**
 * The npm `socks` client (an independent SOCKS4/4a/5 implementation) through
 * a real socksgate to a TCP echo server: random bytes out, the same bytes
 * back, and the proxy's record of each session. Also the refusals the client
 * must see as rejected promises.
 *
 * Not covered here: a SOCKS5 client offering only username/password to a
 * no-auth-only server. The `socks` client always offers "no authentication"
 * (0x00) and cannot be made to leave it out; another test file covers that
 * with raw bytes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SocksClient, type SocksClientOptions } from 'socks';
import { type Fixture, type RunningProxy, closedPort, startEchoServer, startProxy } from '../helpers/server.js';
import {
  ALICE,
  SOCKS4_GRANTED,
  SOCKS4_REJECTED,
  TEST_TIMEOUT_MS,
  USERPASS_ONLY,
  fields,
  forPort,
  payload,
  recordsFrom,
  roundTrip,
} from './helpers.js';

const opts = { timeout: TEST_TIMEOUT_MS };
/** Big enough to span many chunks in both directions. */
const SIZE = 256 * 1024;

type Proxy = SocksClientOptions['proxy'];

/** Connects through the proxy, sends SIZE random bytes, and returns what came back. */
async function echoThrough(proxy: Proxy, host: string, port: number): Promise<{ sent: Buffer; received: Buffer }> {
  const { socket } = await SocksClient.createConnection({
    proxy,
    command: 'connect',
    destination: { host, port },
    timeout: 10_000,
  });
  try {
    const sent = payload(SIZE);
    const received = await roundTrip(socket, sent);
    return { sent, received };
  } finally {
    socket.destroy();
  }
}

/** Asserts the echo came back byte for byte (without dumping 256 KiB on failure). */
function assertSame(sent: Buffer, received: Buffer): void {
  assert.equal(received.length, sent.length, 'echoed length');
  assert.ok(received.equals(sent), 'echoed bytes differ from the bytes sent');
}

describe('npm socks client through socksgate without authentication', opts, () => {
  let proxy: RunningProxy;
  let echo4: Fixture;
  let echo6: Fixture;
  let socks5: Proxy;
  let socks4: Proxy;

  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    echo4 = await startEchoServer();
    echo6 = await startEchoServer('::1');
    socks5 = { host: '127.0.0.1', port: proxy.port, type: 5 };
    socks4 = { host: '127.0.0.1', port: proxy.port, type: 4 };
  });

  after(async () => {
    await proxy?.close();
    await echo4?.close();
    await echo6?.close();
  });

  it('SOCKS5 to an IPv4 destination', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough(socks5, '127.0.0.1', echo4.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo4.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `127.0.0.1:${echo4.port}`,
      connected: `127.0.0.1:${echo4.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS5 to an IPv6 destination [::1]', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough(socks5, '::1', echo6.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo6.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `[::1]:${echo6.port}`,
      connected: `[::1]:${echo6.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS5 to a host name, resolved by the proxy', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough(socks5, 'localhost', echo4.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo4.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `localhost:${echo4.port}`,
      connected: `127.0.0.1:${echo4.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS4 to an IPv4 destination, with a user id', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough({ ...socks4, userId: 'bob' }, '127.0.0.1', echo4.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo4.port));
    assert.deepStrictEqual(fields(rec), {
      version: 4,
      authMethod: 'none',
      user: 'bob',
      command: 'connect',
      requested: `127.0.0.1:${echo4.port}`,
      connected: `127.0.0.1:${echo4.port}`,
      reply: SOCKS4_GRANTED,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS4a: a host name with type 4, resolved by the proxy', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough(socks4, 'localhost', echo4.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo4.port));
    assert.deepStrictEqual(fields(rec), {
      version: 4,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `localhost:${echo4.port}`,
      connected: `127.0.0.1:${echo4.port}`,
      reply: SOCKS4_GRANTED,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS5 to a closed port rejects with "connection refused" (reply 5)', async () => {
    const port = await closedPort();
    const next = recordsFrom(proxy);
    await assert.rejects(
      SocksClient.createConnection({ proxy: socks5, command: 'connect', destination: { host: '127.0.0.1', port }, timeout: 10_000 }),
      /ConnectionRefused/,
    );
    const rec = await next(forPort(port));
    const { error, ...rest } = fields(rec);
    assert.deepStrictEqual(rest, {
      version: 5,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `127.0.0.1:${port}`,
      connected: null,
      reply: 5,
      reason: 'connect-failed',
    });
    assert.ok(error, 'a failed connect names its cause');
    assert.equal(rec.bytesUp, 0);
    assert.equal(rec.bytesDown, 0);
  });

  it('SOCKS4 to a closed port rejects with 0x5b', async () => {
    const port = await closedPort();
    const next = recordsFrom(proxy);
    await assert.rejects(
      SocksClient.createConnection({ proxy: socks4, command: 'connect', destination: { host: '127.0.0.1', port }, timeout: 10_000 }),
      /Socks4 Proxy rejected connection/,
    );
    const rec = await next(forPort(port));
    assert.equal(rec.version, 4);
    assert.equal(rec.reply, SOCKS4_REJECTED);
    assert.equal(rec.reason, 'connect-failed');
    assert.equal(rec.connected, null);
  });
});

describe('npm socks client through socksgate with username/password', opts, () => {
  let proxy: RunningProxy;
  let echo: Fixture;

  before(async () => {
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      auth: USERPASS_ONLY,
    });
    echo = await startEchoServer();
  });

  after(async () => {
    await proxy?.close();
    await echo?.close();
  });

  const proxyAs = (userId?: string, password?: string, type: 4 | 5 = 5): Proxy => ({
    host: '127.0.0.1',
    port: proxy.port,
    type,
    ...(userId !== undefined ? { userId } : {}),
    ...(password !== undefined ? { password } : {}),
  });

  it('SOCKS5 with the right password relays', async () => {
    const next = recordsFrom(proxy);
    const { sent, received } = await echoThrough(proxyAs(ALICE.name, ALICE.password), '127.0.0.1', echo.port);
    assertSame(sent, received);
    const rec = await next(forPort(echo.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'userpass',
      user: 'alice',
      command: 'connect',
      requested: `127.0.0.1:${echo.port}`,
      connected: `127.0.0.1:${echo.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.equal(rec.bytesUp, SIZE);
    assert.equal(rec.bytesDown, SIZE);
  });

  it('SOCKS5 with a wrong password rejects, recorded as auth-failed', async () => {
    const next = recordsFrom(proxy);
    await assert.rejects(
      echoThrough(proxyAs(ALICE.name, 'nope'), '127.0.0.1', echo.port),
      /Socks5 Authentication failed/i,
    );
    const rec = await next();
    assert.equal(rec.reason, 'auth-failed');
    assert.equal(rec.authMethod, 'userpass');
    assert.equal(rec.user, 'alice');
    assert.equal(rec.requested, null);
    assert.equal(rec.bytesUp, 0);
  });

  it('SOCKS5 without credentials (offers only "none") rejects: no acceptable method', async () => {
    const next = recordsFrom(proxy);
    await assert.rejects(
      echoThrough(proxyAs(), '127.0.0.1', echo.port),
      /no accepted authentication type/,
    );
    const rec = await next();
    assert.equal(rec.version, 5);
    assert.equal(rec.reason, 'no-acceptable-method');
    assert.equal(rec.authMethod, null);
    assert.equal(rec.requested, null);
  });

  it('SOCKS4 is refused when authentication is required', async () => {
    const next = recordsFrom(proxy);
    await assert.rejects(
      echoThrough(proxyAs(undefined, undefined, 4), '127.0.0.1', echo.port),
      /Socks4 Proxy rejected connection/,
    );
    const rec = await next();
    assert.equal(rec.version, 4);
    assert.equal(rec.reason, 'not-allowed');
    assert.equal(rec.reply, SOCKS4_REJECTED);
    assert.equal(rec.requested, null);
  });
});
