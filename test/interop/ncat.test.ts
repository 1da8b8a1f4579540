/**
 * ncat (nmap's netcat) through a real socksgate to a TCP echo server. ncat
 * sends its stdin, shuts down its write side at stdin EOF (half-close), the
 * echo server ends after echoing, and ncat exits: a clean run proves that
 * data and both FINs crossed the relay.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { SessionRecord } from '../../src/index.js';
import { type Fixture, type RunningProxy, startEchoServer, startProxy } from '../helpers/server.js';
import {
  ALICE,
  SOCKS4_GRANTED,
  TEST_TIMEOUT_MS,
  USERPASS_ONLY,
  assertEchoCounted,
  fields,
  forPort,
  ncat,
  payload,
  recordsFrom,
  relayedConnect,
} from './helpers.js';

const LINE = 'hello through socksgate\n';
const opts = { timeout: TEST_TIMEOUT_MS };

/**
 * Runs ncat through `proxy` with `args` (proxy type and options, then the
 * target host) to the echo's port, sending LINE; asserts ncat succeeded and
 * got LINE back, and returns the session's record.
 */
async function echoLine(proxy: RunningProxy, echo: Fixture, args: readonly string[]): Promise<SessionRecord> {
  const next = recordsFrom(proxy);
  const result = await ncat(['--proxy', `127.0.0.1:${proxy.port}`, ...args, String(echo.port)], LINE);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.toString(), LINE);
  return next(forPort(echo.port));
}

describe('ncat through socksgate without authentication', opts, () => {
  let proxy: RunningProxy;

  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
  });

  after(async () => {
    await proxy?.close();
  });

  /** Starts an echo fixture on `host`, runs `fn` with it, closes it. */
  async function withEcho(host: string, fn: (echo: Fixture) => Promise<void>): Promise<void> {
    const echo = await startEchoServer(host);
    try {
      await fn(echo);
    } finally {
      await echo.close();
    }
  }

  /**
   * Sessions checked in full: where the echo listens, ncat's arguments, and
   * the hosts the record names (IPv6 in brackets, as the record writes it).
   */
  const RELAYED: readonly {
    name: string;
    echoOn: string;
    args: readonly string[];
    version: 4 | 5;
    requestedHost: string;
    connectedHost: string;
  }[] = [
    {
      name: '--proxy-type socks4 to an IPv4 echo',
      echoOn: '127.0.0.1',
      args: ['--proxy-type', 'socks4', '127.0.0.1'],
      version: 4,
      requestedHost: '127.0.0.1',
      connectedHost: '127.0.0.1',
    },
    {
      name: '--proxy-type socks5 to an IPv4 echo',
      echoOn: '127.0.0.1',
      args: ['--proxy-type', 'socks5', '127.0.0.1'],
      version: 5,
      requestedHost: '127.0.0.1',
      connectedHost: '127.0.0.1',
    },
    {
      name: '--proxy-type socks5 to an IPv6 echo on [::1]',
      echoOn: '::1',
      args: ['--proxy-type', 'socks5', '::1'],
      version: 5,
      requestedHost: '[::1]',
      connectedHost: '[::1]',
    },
    {
      name: '--proxy-type socks5 by name "localhost", resolved by the proxy',
      echoOn: '127.0.0.1',
      args: ['--proxy-type', 'socks5', '--proxy-dns', 'remote', 'localhost'],
      version: 5,
      requestedHost: 'localhost',
      connectedHost: '127.0.0.1',
    },
  ];

  for (const c of RELAYED) {
    it(c.name, () =>
      withEcho(c.echoOn, async (echo) => {
        const rec = await echoLine(proxy, echo, c.args);
        const expected = relayedConnect(c.version, `${c.requestedHost}:${echo.port}`, `${c.connectedHost}:${echo.port}`);
        assert.deepStrictEqual(fields(rec), expected);
        assertEchoCounted(rec, LINE.length);
      }));
  }

  it('--proxy-type socks4 --proxy-dns remote sends "localhost" (SOCKS4a)', () =>
    withEcho('127.0.0.1', async (echo) => {
      const rec = await echoLine(proxy, echo, ['--proxy-type', 'socks4', '--proxy-dns', 'remote', 'localhost']);
      assert.equal(rec.version, 4);
      assert.equal(rec.requested, `localhost:${echo.port}`);
      assert.equal(rec.connected, `127.0.0.1:${echo.port}`);
      assert.equal(rec.reply, SOCKS4_GRANTED);
      assert.equal(rec.reason, 'client-closed');
      assertEchoCounted(rec, LINE.length);
    }));

  it('1 MiB of random bytes goes through and back unchanged', () =>
    withEcho('127.0.0.1', async (echo) => {
      const next = recordsFrom(proxy);
      const data = payload(1 << 20);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks5', '127.0.0.1', String(echo.port)],
        data,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.length, data.length);
      assert.ok(result.stdout.equals(data), 'echoed bytes differ from the bytes sent');
      const rec = await next(forPort(echo.port));
      assert.equal(rec.reason, 'client-closed');
      assertEchoCounted(rec, data.length);
    }));
});

describe('ncat through socksgate with username/password', opts, () => {
  let proxy: RunningProxy;
  let echo: Fixture;

  before(async () => {
    proxy = await startProxy({ auth: USERPASS_ONLY });
    echo = await startEchoServer();
  });

  after(async () => {
    await proxy?.close();
    await echo?.close();
  });

  it('--proxy-auth alice:s3cret authenticates and relays', async () => {
    const rec = await echoLine(proxy, echo, [
      '--proxy-type', 'socks5',
      '--proxy-auth', `${ALICE.name}:${ALICE.password}`,
      '127.0.0.1',
    ]);
    const target = `127.0.0.1:${echo.port}`;
    assert.deepStrictEqual(fields(rec), relayedConnect(5, target, target, { authMethod: 'userpass', user: 'alice' }));
    assertEchoCounted(rec, LINE.length);
  });

  it('a wrong --proxy-auth password fails, recorded as auth-failed', async () => {
    const next = recordsFrom(proxy);
    const result = await ncat(
      [
        '--proxy', `127.0.0.1:${proxy.port}`,
        '--proxy-type', 'socks5',
        '--proxy-auth', `${ALICE.name}:not-the-password`,
        '127.0.0.1', String(echo.port),
      ],
      LINE,
    );
    assert.notEqual(result.code, 0, 'ncat must fail');
    assert.equal(result.stdout.length, 0);
    const rec = await next((r) => r.reason === 'auth-failed');
    assert.equal(rec.user, 'alice');
    assert.equal(rec.requested, null);
    assert.equal(rec.bytesUp, 0);
  });
});
