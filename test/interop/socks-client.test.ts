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
import type { SessionRecord } from '../../src/index.js';
import {
  ALICE,
  SOCKS4_REJECTED,
  TEST_TIMEOUT_MS,
  USERPASS_ONLY,
  assertEchoCounted,
  fields,
  forPort,
  payload,
  recordsFrom,
  relayedConnect,
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

/**
 * Echoes SIZE random bytes through `via` (the client's view of `proxy`) to
 * host:port, asserts they came back unchanged, and returns the session's record.
 */
async function relayThrough(proxy: RunningProxy, via: Proxy, host: string, port: number): Promise<SessionRecord> {
  const next = recordsFrom(proxy);
  const { sent, received } = await echoThrough(via, host, port);
  assertSame(sent, received);
  return next(forPort(port));
}

/**
 * Asserts that connecting through `via` to 127.0.0.1:port is rejected with an
 * error matching `expected`, and returns the first record `match` takes.
 */
async function refusedThrough(
  proxy: RunningProxy,
  via: Proxy,
  port: number,
  expected: RegExp,
  match?: (r: SessionRecord) => boolean,
): Promise<SessionRecord> {
  const next = recordsFrom(proxy);
  await assert.rejects(echoThrough(via, '127.0.0.1', port), expected);
  return next(match);
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

  /**
   * Sessions checked in full: the client's proxy type (and user id), the
   * destination it asks for, and the echo that answers; the record names
   * hosts as it writes them (IPv6 in brackets).
   */
  const RELAYED: readonly {
    name: string;
    version: 4 | 5;
    userId?: string;
    host: string;
    echo: 'echo4' | 'echo6';
    requestedHost: string;
    connectedHost: string;
  }[] = [
    {
      name: 'SOCKS5 to an IPv4 destination',
      version: 5,
      host: '127.0.0.1',
      echo: 'echo4',
      requestedHost: '127.0.0.1',
      connectedHost: '127.0.0.1',
    },
    {
      name: 'SOCKS5 to an IPv6 destination [::1]',
      version: 5,
      host: '::1',
      echo: 'echo6',
      requestedHost: '[::1]',
      connectedHost: '[::1]',
    },
    {
      name: 'SOCKS5 to a host name, resolved by the proxy',
      version: 5,
      host: 'localhost',
      echo: 'echo4',
      requestedHost: 'localhost',
      connectedHost: '127.0.0.1',
    },
    {
      name: 'SOCKS4 to an IPv4 destination, with a user id',
      version: 4,
      userId: 'bob',
      host: '127.0.0.1',
      echo: 'echo4',
      requestedHost: '127.0.0.1',
      connectedHost: '127.0.0.1',
    },
    {
      name: 'SOCKS4a: a host name with type 4, resolved by the proxy',
      version: 4,
      host: 'localhost',
      echo: 'echo4',
      requestedHost: 'localhost',
      connectedHost: '127.0.0.1',
    },
  ];

  for (const c of RELAYED) {
    it(c.name, async () => {
      const port = (c.echo === 'echo6' ? echo6 : echo4).port;
      const via = c.version === 4 ? socks4 : socks5;
      const rec = await relayThrough(proxy, c.userId === undefined ? via : { ...via, userId: c.userId }, c.host, port);
      const auth = { authMethod: 'none' as const, user: c.userId ?? null };
      assert.deepStrictEqual(fields(rec), relayedConnect(c.version, `${c.requestedHost}:${port}`, `${c.connectedHost}:${port}`, auth));
      assertEchoCounted(rec, SIZE);
    });
  }

  it('SOCKS5 to a closed port rejects with "connection refused" (reply 5)', async () => {
    const port = await closedPort();
    const rec = await refusedThrough(proxy, socks5, port, /ConnectionRefused/, forPort(port));
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
    const rec = await refusedThrough(proxy, socks4, port, /Socks4 Proxy rejected connection/, forPort(port));
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
    const rec = await relayThrough(proxy, proxyAs(ALICE.name, ALICE.password), '127.0.0.1', echo.port);
    const target = `127.0.0.1:${echo.port}`;
    assert.deepStrictEqual(fields(rec), relayedConnect(5, target, target, { authMethod: 'userpass', user: 'alice' }));
    assertEchoCounted(rec, SIZE);
  });

  it('SOCKS5 with a wrong password rejects, recorded as auth-failed', async () => {
    const rec = await refusedThrough(proxy, proxyAs(ALICE.name, 'nope'), echo.port, /Socks5 Authentication failed/i);
    assert.equal(rec.reason, 'auth-failed');
    assert.equal(rec.authMethod, 'userpass');
    assert.equal(rec.user, 'alice');
    assert.equal(rec.requested, null);
    assert.equal(rec.bytesUp, 0);
  });

  it('SOCKS5 without credentials (offers only "none") rejects: no acceptable method', async () => {
    const rec = await refusedThrough(proxy, proxyAs(), echo.port, /no accepted authentication type/);
    assert.equal(rec.version, 5);
    assert.equal(rec.reason, 'no-acceptable-method');
    assert.equal(rec.authMethod, null);
    assert.equal(rec.requested, null);
  });

  it('SOCKS4 is refused when authentication is required', async () => {
    const rec = await refusedThrough(proxy, proxyAs(undefined, undefined, 4), echo.port, /Socks4 Proxy rejected connection/);
    assert.equal(rec.version, 4);
    assert.equal(rec.reason, 'not-allowed');
    assert.equal(rec.reply, SOCKS4_REJECTED);
    assert.equal(rec.requested, null);
  });
});
