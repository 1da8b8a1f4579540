/**
 * curl through a real socksgate: SOCKS4, SOCKS4a, SOCKS5 (local and remote
 * name resolution), SOCKS5 username/password, and the refusals curl must see
 * as failures. Each test checks curl's exit code and output and the proxy's
 * own record of the session.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type Fixture, type RunningProxy, startHttpServer, startProxy } from '../helpers/server.js';
import { ALICE, SOCKS4_GRANTED, SOCKS4_REJECTED, TEST_TIMEOUT_MS, USERPASS_ONLY, curl, fields, forPort, recordsFrom } from './helpers.js';

const BODY4 = 'hello over IPv4';
const BODY6 = 'hello over IPv6';
/** curl's exit code for "the proxy refused or failed" (CURLE_PROXY, curl >= 7.73). */
const CURLE_PROXY = 97;

const opts = { timeout: TEST_TIMEOUT_MS };

describe('curl through socksgate without authentication', opts, () => {
  let proxy: RunningProxy;
  let http4: Fixture;
  let http6: Fixture;
  let big: Fixture;
  const bigBody = 'socksgate-'.repeat(100_000); // 1,000,000 bytes

  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    http4 = await startHttpServer(BODY4);
    http6 = await startHttpServer(BODY6, '::1');
    big = await startHttpServer(bigBody);
  });

  after(async () => {
    await proxy?.close();
    await http4?.close();
    await http6?.close();
    await big?.close();
  });

  it('--socks4 to an IPv4 destination', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks4', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http4.port}/`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.toString(), BODY4);
    const rec = await next(forPort(http4.port));
    assert.deepStrictEqual(fields(rec), {
      version: 4,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `127.0.0.1:${http4.port}`,
      connected: `127.0.0.1:${http4.port}`,
      reply: SOCKS4_GRANTED,
      reason: 'client-closed',
      error: null,
    });
    assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
    assert.ok(rec.bytesDown > BODY4.length, `bytesDown ${rec.bytesDown}`);
  });

  it('--socks4a sends the name "localhost" and the proxy resolves it', async () => {
    // A distinct fixture so this record cannot be confused with another test's.
    const http = await startHttpServer(BODY4);
    try {
      const next = recordsFrom(proxy);
      const result = await curl(['--socks4a', `127.0.0.1:${proxy.port}`, `http://localhost:${http.port}/`]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), BODY4);
      const rec = await next(forPort(http.port));
      assert.deepStrictEqual(fields(rec), {
        version: 4,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `localhost:${http.port}`,
        connected: `127.0.0.1:${http.port}`,
        reply: SOCKS4_GRANTED,
        reason: 'client-closed',
        error: null,
      });
      assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
      assert.ok(rec.bytesDown > BODY4.length, `bytesDown ${rec.bytesDown}`);
    } finally {
      await http.close();
    }
  });

  it('--socks5 to an IPv4 destination', async () => {
    const http = await startHttpServer(BODY4);
    try {
      const next = recordsFrom(proxy);
      const result = await curl(['--socks5', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http.port}/`]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), BODY4);
      const rec = await next(forPort(http.port));
      assert.deepStrictEqual(fields(rec), {
        version: 5,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `127.0.0.1:${http.port}`,
        connected: `127.0.0.1:${http.port}`,
        reply: 0,
        reason: 'client-closed',
        error: null,
      });
      assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
      assert.ok(rec.bytesDown > BODY4.length, `bytesDown ${rec.bytesDown}`);
    } finally {
      await http.close();
    }
  });

  it('--socks5 to an IPv6 destination [::1]', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks5', `127.0.0.1:${proxy.port}`, `http://[::1]:${http6.port}/`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.toString(), BODY6);
    const rec = await next(forPort(http6.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'none',
      user: null,
      command: 'connect',
      requested: `[::1]:${http6.port}`,
      connected: `[::1]:${http6.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
    assert.ok(rec.bytesDown > BODY6.length, `bytesDown ${rec.bytesDown}`);
  });

  it('--socks5-hostname sends the name "localhost" and the proxy resolves it', async () => {
    const http = await startHttpServer(BODY4);
    try {
      const next = recordsFrom(proxy);
      const result = await curl(['--socks5-hostname', `127.0.0.1:${proxy.port}`, `http://localhost:${http.port}/`]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), BODY4);
      const rec = await next(forPort(http.port));
      assert.deepStrictEqual(fields(rec), {
        version: 5,
        authMethod: 'none',
        user: null,
        command: 'connect',
        requested: `localhost:${http.port}`,
        connected: `127.0.0.1:${http.port}`,
        reply: 0,
        reason: 'client-closed',
        error: null,
      });
      assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
      assert.ok(rec.bytesDown > BODY4.length, `bytesDown ${rec.bytesDown}`);
    } finally {
      await http.close();
    }
  });

  it('--socks5-hostname with an IPv6 literal destination', async () => {
    const http = await startHttpServer(BODY6, '::1');
    try {
      const next = recordsFrom(proxy);
      const result = await curl(['--socks5-hostname', `127.0.0.1:${proxy.port}`, `http://[::1]:${http.port}/`]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout.toString(), BODY6);
      const rec = await next(forPort(http.port));
      assert.equal(rec.requested, `[::1]:${http.port}`);
      assert.equal(rec.connected, `[::1]:${http.port}`);
      assert.equal(rec.reply, 0);
      assert.equal(rec.reason, 'client-closed');
    } finally {
      await http.close();
    }
  });

  it('a 1 MB response arrives intact and is counted', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks5-hostname', `127.0.0.1:${proxy.port}`, `http://localhost:${big.port}/`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.length, bigBody.length);
    assert.ok(result.stdout.equals(Buffer.from(bigBody)), 'body differs');
    const rec = await next(forPort(big.port));
    assert.equal(rec.reply, 0);
    assert.equal(rec.reason, 'client-closed');
    assert.ok(rec.bytesDown > bigBody.length, `bytesDown ${rec.bytesDown} must count the whole body`);
  });
});

describe('curl through socksgate with username/password', opts, () => {
  let proxy: RunningProxy;
  let http: Fixture;

  before(async () => {
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      auth: USERPASS_ONLY,
    });
    http = await startHttpServer(BODY4);
  });

  after(async () => {
    await proxy?.close();
    await http?.close();
  });

  it('socks5h://alice:s3cret@ authenticates and relays', async () => {
    const next = recordsFrom(proxy);
    const url = `socks5h://${ALICE.name}:${ALICE.password}@127.0.0.1:${proxy.port}`;
    const result = await curl(['-x', url, `http://localhost:${http.port}/`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.toString(), BODY4);
    const rec = await next(forPort(http.port));
    assert.deepStrictEqual(fields(rec), {
      version: 5,
      authMethod: 'userpass',
      user: 'alice',
      command: 'connect',
      requested: `localhost:${http.port}`,
      connected: `127.0.0.1:${http.port}`,
      reply: 0,
      reason: 'client-closed',
      error: null,
    });
    assert.ok(rec.bytesUp > 0, `bytesUp ${rec.bytesUp}`);
    assert.ok(rec.bytesDown > BODY4.length, `bytesDown ${rec.bytesDown}`);
  });

  it('a wrong password makes curl fail, recorded as auth-failed', async () => {
    const next = recordsFrom(proxy);
    const url = `socks5h://${ALICE.name}:wrong-password@127.0.0.1:${proxy.port}`;
    const result = await curl(['-x', url, `http://localhost:${http.port}/`]);
    assert.equal(result.code, CURLE_PROXY, result.stderr);
    assert.equal(result.stdout.length, 0);
    const rec = await next((r) => r.reason === 'auth-failed');
    const { error, ...rest } = fields(rec);
    assert.deepStrictEqual(rest, {
      version: 5,
      authMethod: 'userpass',
      user: 'alice',
      command: null,
      requested: null,
      connected: null,
      reply: null,
      reason: 'auth-failed',
    });
    assert.ok(error, 'an auth failure names its cause');
    assert.ok(!error.includes('wrong-password'), `the record must not contain the password: ${error}`);
    assert.equal(rec.bytesUp, 0);
    assert.equal(rec.bytesDown, 0);
  });

  it('--socks5 without credentials is refused: no acceptable method', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks5', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http.port}/`]);
    assert.equal(result.code, CURLE_PROXY, result.stderr);
    assert.equal(result.stdout.length, 0);
    const rec = await next((r) => r.reason === 'no-acceptable-method');
    assert.equal(rec.version, 5);
    assert.equal(rec.requested, null);
    assert.equal(rec.connected, null);
  });

  it('--socks4 is refused when authentication is required, even with socks4 on', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks4', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http.port}/`]);
    assert.equal(result.code, CURLE_PROXY, result.stderr);
    assert.equal(result.stdout.length, 0);
    const rec = await next((r) => r.version === 4);
    const { error, ...rest } = fields(rec);
    assert.deepStrictEqual(rest, {
      version: 4,
      authMethod: null,
      user: null,
      command: null,
      requested: null,
      connected: null,
      reply: SOCKS4_REJECTED,
      reason: 'not-allowed',
    });
    assert.match(error ?? '', /auth/i);
  });
});

describe('curl --socks4 against a listener with SOCKS4 off', opts, () => {
  let proxy: RunningProxy;
  let http: Fixture;

  before(async () => {
    proxy = await startProxy(); // socks4 defaults to off
    http = await startHttpServer(BODY4);
  });

  after(async () => {
    await proxy?.close();
    await http?.close();
  });

  it('fails, recorded as not-allowed with reply 0x5b', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks4', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http.port}/`]);
    assert.equal(result.code, CURLE_PROXY, result.stderr);
    assert.equal(result.stdout.length, 0);
    const rec = await next();
    const { error, ...rest } = fields(rec);
    assert.deepStrictEqual(rest, {
      version: 4,
      authMethod: null,
      user: null,
      command: null,
      requested: null,
      connected: null,
      reply: SOCKS4_REJECTED,
      reason: 'not-allowed',
    });
    assert.match(error ?? '', /SOCKS4/);
  });

  it('--socks5 on the same listener still works', async () => {
    const next = recordsFrom(proxy);
    const result = await curl(['--socks5', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${http.port}/`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.toString(), BODY4);
    const rec = await next(forPort(http.port));
    assert.equal(rec.version, 5);
    assert.equal(rec.reply, 0);
    assert.equal(rec.reason, 'client-closed');
  });
});
