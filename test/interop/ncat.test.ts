/**
 * ncat (nmap's netcat) through a real socksgate to a TCP echo server. ncat
 * sends its stdin, shuts down its write side at stdin EOF (half-close), the
 * echo server ends after echoing, and ncat exits: a clean run proves that
 * data and both FINs crossed the relay.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type Fixture, type RunningProxy, startEchoServer, startProxy } from '../helpers/server.js';
import { ALICE, SOCKS4_GRANTED, TEST_TIMEOUT_MS, USERPASS_ONLY, fields, forPort, recordsFrom, ncat, payload } from './helpers.js';

const LINE = 'hello through socksgate\n';
const opts = { timeout: TEST_TIMEOUT_MS };

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

  it('--proxy-type socks4 to an IPv4 echo', () =>
    withEcho('127.0.0.1', async (echo) => {
      const next = recordsFrom(proxy);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks4', '127.0.0.1', String(echo.port)],
        LINE,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), LINE);
      const rec = await next(forPort(echo.port));
      assert.deepStrictEqual(fields(rec), {
        version: 4,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `127.0.0.1:${echo.port}`,
        connected: `127.0.0.1:${echo.port}`,
        reply: SOCKS4_GRANTED,
        reason: 'client-closed',
        error: null,
      });
      assert.equal(rec.bytesUp, LINE.length);
      assert.equal(rec.bytesDown, LINE.length);
    }));

  it('--proxy-type socks4 --proxy-dns remote sends "localhost" (SOCKS4a)', () =>
    withEcho('127.0.0.1', async (echo) => {
      const next = recordsFrom(proxy);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks4', '--proxy-dns', 'remote', 'localhost', String(echo.port)],
        LINE,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), LINE);
      const rec = await next(forPort(echo.port));
      assert.equal(rec.version, 4);
      assert.equal(rec.requested, `localhost:${echo.port}`);
      assert.equal(rec.connected, `127.0.0.1:${echo.port}`);
      assert.equal(rec.reply, SOCKS4_GRANTED);
      assert.equal(rec.reason, 'client-closed');
      assert.equal(rec.bytesUp, LINE.length);
      assert.equal(rec.bytesDown, LINE.length);
    }));

  it('--proxy-type socks5 to an IPv4 echo', () =>
    withEcho('127.0.0.1', async (echo) => {
      const next = recordsFrom(proxy);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks5', '127.0.0.1', String(echo.port)],
        LINE,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), LINE);
      const rec = await next(forPort(echo.port));
      assert.deepStrictEqual(fields(rec), {
        version: 5,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `127.0.0.1:${echo.port}`,
        connected: `127.0.0.1:${echo.port}`,
        reply: 0,
        reason: 'client-closed',
        error: null,
      });
      assert.equal(rec.bytesUp, LINE.length);
      assert.equal(rec.bytesDown, LINE.length);
    }));

  it('--proxy-type socks5 to an IPv6 echo on [::1]', () =>
    withEcho('::1', async (echo) => {
      const next = recordsFrom(proxy);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks5', '::1', String(echo.port)],
        LINE,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), LINE);
      const rec = await next(forPort(echo.port));
      assert.deepStrictEqual(fields(rec), {
        version: 5,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `[::1]:${echo.port}`,
        connected: `[::1]:${echo.port}`,
        reply: 0,
        reason: 'client-closed',
        error: null,
      });
      assert.equal(rec.bytesUp, LINE.length);
      assert.equal(rec.bytesDown, LINE.length);
    }));

  it('--proxy-type socks5 by name "localhost", resolved by the proxy', () =>
    withEcho('127.0.0.1', async (echo) => {
      const next = recordsFrom(proxy);
      const result = await ncat(
        ['--proxy', `127.0.0.1:${proxy.port}`, '--proxy-type', 'socks5', '--proxy-dns', 'remote', 'localhost', String(echo.port)],
        LINE,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), LINE);
      const rec = await next(forPort(echo.port));
      assert.deepStrictEqual(fields(rec), {
        version: 5,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `localhost:${echo.port}`,
        connected: `127.0.0.1:${echo.port}`,
        reply: 0,
        reason: 'client-closed',
        error: null,
      });
      assert.equal(rec.bytesUp, LINE.length);
      assert.equal(rec.bytesDown, LINE.length);
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
      assert.equal(rec.bytesUp, data.length);
      assert.equal(rec.bytesDown, data.length);
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
    const next = recordsFrom(proxy);
    const result = await ncat(
      [
        '--proxy', `127.0.0.1:${proxy.port}`,
        '--proxy-type', 'socks5',
        '--proxy-auth', `${ALICE.name}:${ALICE.password}`,
        '127.0.0.1', String(echo.port),
      ],
      LINE,
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.toString(), LINE);
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
    assert.equal(rec.bytesUp, LINE.length);
    assert.equal(rec.bytesDown, LINE.length);
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
