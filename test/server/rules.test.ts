/**
 * Request rules end to end: a real socksgate on loopback, raw SOCKS bytes
 * (and curl), the refusal each protocol gets, and the record and log line
 * naming the rule that decided.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { type Dialer, type Resolver, attachLogger, createDirectDialer, createLogger } from '../../src/index.js';
import { curl, recordsFrom, forPort } from '../interop/helpers.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, closedPort, startEchoServer, startHttpServer, startProxy } from '../helpers/server.js';

/** SOCKS5 REP 0x02 "connection not allowed by ruleset", with the unspecified IPv4 bound address. */
const SOCKS5_NOT_ALLOWED = hex('05 02 00 01 00000000 0000');
/** SOCKS4 CD 0x5B "request rejected or failed". */
const SOCKS4_REJECTED = hex('00 5b 0000 00000000');
/** curl's exit code for "the proxy refused or failed" (CURLE_PROXY, curl >= 7.73). */
const CURLE_PROXY = 97;

/** Every name resolves to 127.0.0.1, so allowed names reach the loopback fixtures. */
const loopbackResolver: Resolver = { resolve: async () => [{ address: '127.0.0.1', family: 4 }] };

/** A direct dialer that counts its dials: a denied request must never dial. */
function countingDialer(): Dialer & { dials: number } {
  const inner = createDirectDialer({ resolver: loopbackResolver });
  const dialer = {
    dials: 0,
    dial: (...args: Parameters<Dialer['dial']>) => {
      dialer.dials++;
      return inner.dial(...args);
    },
  };
  return dialer;
}

function credentials(user: string, pass: string): Buffer {
  return Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([pass.length]), Buffer.from(pass)]);
}

/** SOCKS4 (or SOCKS4a with `name`) CONNECT/BIND request bytes. */
function socks4Request(command: 1 | 2, ip: string, port: number, userId = '', name?: string): Buffer {
  const head = Buffer.from([4, command, port >> 8, port & 0xff, ...ip.split('.').map(Number)]);
  const tail = name === undefined ? [] : [Buffer.from(name, 'latin1'), Buffer.from([0])];
  return Buffer.concat([head, Buffer.from(userId, 'utf8'), Buffer.from([0]), ...tail]);
}

/** Greets without authentication, sends `request`, and returns the client. */
async function socks5(proxy: RunningProxy, request: Buffer, port = proxy.port): Promise<RawClient> {
  const client = await RawClient.connect(port);
  client.write('05 01 00');
  assert.deepEqual(await client.read(2), hex('05 00'));
  client.write(request);
  return client;
}

/** Expects the 0x02 refusal and a clean close; returns the session record. */
async function expectDenied(proxy: RunningProxy, client: RawClient) {
  assert.deepEqual(await client.read(10), SOCKS5_NOT_ALLOWED);
  assert.equal(await client.ended, 'end', 'a clean close after the refusal, not a reset');
  return proxy.record((r) => r.clientPort === client.localPort);
}

/** Expects a success reply, echoes a line through the relay, closes; returns the record. */
async function expectRelayed(proxy: RunningProxy, client: RawClient) {
  const reply = await client.read(10);
  assert.equal(reply[1], 0x00, `reply ${reply.toString('hex')}`);
  client.write(Buffer.from('ping\n'));
  assert.equal((await client.read(5)).toString(), 'ping\n');
  client.socket.end();
  await client.ended;
  return proxy.record((r) => r.clientPort === client.localPort);
}

describe('request rules on a SOCKS5 and SOCKS4 listener', () => {
  let echo: Fixture;
  let proxy: RunningProxy;
  let dialer: ReturnType<typeof countingDialer>;

  before(async () => {
    echo = await startEchoServer();
    dialer = countingDialer();
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      dialer,
      resolver: loopbackResolver,
      rules: [
        { name: 'no-smtp', deny: { to: { ports: [25, 465, '587'] } } },
        { name: 'no-blocked-names', deny: { to: { hosts: ['*.blocked.test'] } } },
        { name: 'no-bind-or-udp', deny: { commands: ['bind', 'udp'] } },
        { name: 'socks4-only-alice', allow: { users: ['alice', 'jörg'], to: { nets: ['127.0.0.0/8'], hosts: ['*.test', 'localhost'] } } },
        { name: 'loopback', allow: { from: { nets: ['127.0.0.0/8', '::1/128'] }, to: { nets: ['127.0.0.0/8'], hosts: ['*.test'] }, commands: ['connect'] } },
      ],
    });
  });
  after(async () => {
    await proxy.close();
    await echo.close();
  });

  test('a denied CONNECT gets 05 02, a clean close, no dial, and the record names the rule', async () => {
    const dials = dialer.dials;
    const record = await expectDenied(proxy, await socks5(proxy, connectRequest('127.0.0.1', 25)));
    assert.equal(dialer.dials, dials, 'a denied request never dials');
    assert.equal(record.rule, 'no-smtp');
    assert.equal(record.reason, 'not-allowed');
    assert.equal(record.reply, 0x02);
    assert.equal(record.command, 'connect');
    assert.equal(record.requested, '127.0.0.1:25');
    assert.equal(record.connected, null);
    assert.match(record.error ?? '', /denied by rule "no-smtp"/);
  });

  test('an allowed CONNECT relays, and the record names the rule that allowed it', async () => {
    const record = await expectRelayed(proxy, await socks5(proxy, connectRequest('127.0.0.1', echo.port)));
    assert.equal(record.rule, 'loopback');
    assert.equal(record.reply, 0);
    assert.equal(record.reason, 'client-closed');
    assert.equal(record.error, null);
    assert.equal(record.bytesUp, 5);
  });

  test('a domain destination is denied by a *.suffix host pattern, case-insensitively, before any lookup', async () => {
    for (const name of ['www.blocked.test', 'A.B.BLOCKED.Test']) {
      const record = await expectDenied(proxy, await socks5(proxy, connectRequestByName(name, echo.port)));
      assert.equal(record.rule, 'no-blocked-names', name);
      assert.equal(record.requested, `${name}:${echo.port}`);
    }
    // The bare suffix is not a subdomain of itself: it falls through to `loopback` and relays.
    const record = await expectRelayed(proxy, await socks5(proxy, connectRequestByName('blocked.test', echo.port)));
    assert.equal(record.rule, 'loopback');
  });

  test('a BIND and a UDP ASSOCIATE denied by `commands` get 05 02', async () => {
    const bind = await expectDenied(proxy, await socks5(proxy, connectRequest('127.0.0.1', echo.port, 2)));
    assert.equal(bind.command, 'bind');
    assert.equal(bind.rule, 'no-bind-or-udp');
    const udp = await expectDenied(proxy, await socks5(proxy, connectRequest('0.0.0.0', 0, 3)));
    assert.equal(udp.command, 'udp');
    assert.equal(udp.rule, 'no-bind-or-udp');
    assert.equal(udp.connected, null, 'no UDP relay was opened');
  });

  test('a SOCKS4 request denied by a rule gets 0x5B and a clean close', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write(socks4Request(1, '127.0.0.1', 25, 'alice'));
    assert.deepEqual(await client.read(8), SOCKS4_REJECTED);
    assert.equal(await client.ended, 'end');
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.version, 4);
    assert.equal(record.rule, 'no-smtp');
    assert.equal(record.reply, 0x5b);
    assert.equal(record.reason, 'not-allowed');
  });

  test('SOCKS4 and SOCKS4a match `users` on the USERID field, read as UTF-8 as RFC 1929 names are', async () => {
    for (const [userId, name] of [['alice', undefined], ['alice', 'echo.test'], ['jörg', undefined], ['jörg', 'echo.test']] as const) {
      const client = await RawClient.connect(proxy.port);
      client.write(socks4Request(2, name ? '0.0.0.1' : '127.0.0.1', echo.port, userId, name));
      // BIND is denied by no-bind-or-udp before alice's rule is reached: order matters.
      assert.deepEqual(await client.read(8), SOCKS4_REJECTED);
      assert.equal((await proxy.record((r) => r.clientPort === client.localPort)).rule, 'no-bind-or-udp');
      const connect = await RawClient.connect(proxy.port);
      connect.write(socks4Request(1, name ? '0.0.0.1' : '127.0.0.1', echo.port, userId, name));
      const reply = await connect.read(8);
      assert.equal(reply[1], 0x5a, `granted: ${reply.toString('hex')}`);
      connect.socket.end();
      await connect.ended;
      const record = await proxy.record((r) => r.clientPort === connect.localPort);
      assert.equal(record.user, userId);
      assert.equal(record.rule, 'socks4-only-alice');
    }
  });

  test('the access log line carries the rule name', async () => {
    const out = new PassThrough();
    const detach = attachLogger(proxy.server, createLogger({ level: 'info', format: 'json', destination: out }));
    try {
      const client = await socks5(proxy, connectRequest('127.0.0.1', 465));
      const line = once(out, 'data');
      await expectDenied(proxy, client);
      const entry = JSON.parse(String((await line)[0])) as Record<string, unknown>;
      assert.equal(entry.event, 'session');
      assert.equal(entry.level, 40, 'a denial is logged at warn');
      assert.equal(entry.rule, 'no-smtp');
      assert.equal(entry.reason, 'not-allowed');
      assert.match(String(entry.msg), /not-allowed: request denied by rule "no-smtp"/);
    } finally {
      detach();
    }
  });
});

describe('request rules: users, listeners, default-deny', () => {
  let echo: Fixture;
  before(async () => {
    echo = await startEchoServer();
  });
  after(() => echo.close());

  test('a rule on RFC 1929 users: alice relays, bob falls to default-deny', async () => {
    const proxy = await startProxy({
      auth: { methods: ['userpass'], users: [{ name: 'alice', password: 'a-pass' }, { name: 'bob', password: 'b-pass' }] },
      rules: [{ name: 'alice-only', allow: { users: ['alice'] } }],
    });
    try {
      const login = async (user: string, pass: string) => {
        const client = await RawClient.connect(proxy.port);
        client.write('05 01 02');
        assert.deepEqual(await client.read(2), hex('05 02'));
        client.write(credentials(user, pass));
        assert.deepEqual(await client.read(2), hex('01 00'));
        client.write(connectRequest('127.0.0.1', echo.port));
        return client;
      };
      const alice = await expectRelayed(proxy, await login('alice', 'a-pass'));
      assert.equal(alice.user, 'alice');
      assert.equal(alice.rule, 'alice-only');
      const bob = await expectDenied(proxy, await login('bob', 'b-pass'));
      assert.equal(bob.user, 'bob');
      assert.equal(bob.rule, 'default-deny');
      assert.equal(bob.reason, 'not-allowed');
      assert.match(bob.error ?? '', /no rule matched/);
    } finally {
      await proxy.close();
    }
  });

  test('a rule on listeners: the same request is allowed on one listener and denied on the other', async () => {
    const [open, closed] = [await closedPort(), await closedPort()];
    const proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: open }, { address: '127.0.0.1', port: closed }],
      rules: [{ name: 'first-listener', allow: { listeners: [`127.0.0.1:${open}`] } }],
    });
    try {
      const allowed = await expectRelayed(proxy, await socks5(proxy, connectRequest('127.0.0.1', echo.port), open));
      assert.equal(allowed.rule, 'first-listener');
      assert.equal(allowed.listener, `127.0.0.1:${open}`);
      const denied = await expectDenied(proxy, await socks5(proxy, connectRequest('127.0.0.1', echo.port), closed));
      assert.equal(denied.rule, 'default-deny');
    } finally {
      await proxy.close();
    }
  });

  test('without rules everything is allowed as before, and records carry rule: null', async () => {
    const proxy = await startProxy();
    try {
      const record = await expectRelayed(proxy, await socks5(proxy, connectRequest('127.0.0.1', echo.port)));
      assert.equal(record.rule, null);
      assert.ok('rule' in record);
    } finally {
      await proxy.close();
    }
  });
});

describe('request rules with curl', { timeout: 30_000 }, () => {
  let proxy: RunningProxy;
  let allowedHttp: Fixture;
  let deniedHttp: Fixture;

  before(async () => {
    allowedHttp = await startHttpServer('allowed by rule');
    deniedHttp = await startHttpServer('must not be served');
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      rules: [
        { name: 'no-denied-port', deny: { to: { ports: [deniedHttp.port] } } },
        { name: 'web', allow: { to: { hosts: ['localhost'], nets: ['127.0.0.0/8'] }, commands: ['connect'] } },
      ],
    });
  });
  after(async () => {
    await proxy?.close();
    await allowedHttp?.close();
    await deniedHttp?.close();
  });

  for (const option of ['--socks5-hostname', '--socks5', '--socks4a']) {
    test(`curl ${option} is refused for a denied destination and served for an allowed one`, async () => {
      const proxyArg = [option, `127.0.0.1:${proxy.port}`];
      // --socks5 resolves locally, where localhost may be ::1 first: name the address the fixtures listen on.
      const host = option === '--socks5' ? '127.0.0.1' : 'localhost';
      let next = recordsFrom(proxy);
      const refused = await curl([...proxyArg, `http://${host}:${deniedHttp.port}/`]);
      assert.equal(refused.code, CURLE_PROXY, refused.stderr);
      assert.equal(refused.stdout.length, 0);
      const denied = await next(forPort(deniedHttp.port));
      assert.equal(denied.rule, 'no-denied-port');
      assert.equal(denied.reason, 'not-allowed');
      assert.equal(denied.reply, option === '--socks4a' ? 0x5b : 0x02);

      next = recordsFrom(proxy);
      const served = await curl([...proxyArg, `http://${host}:${allowedHttp.port}/`]);
      assert.equal(served.code, 0, served.stderr);
      assert.equal(served.stdout.toString(), 'allowed by rule');
      const allowed = await next(forPort(allowedHttp.port));
      assert.equal(allowed.rule, 'web');
      assert.equal(allowed.reply, option === '--socks4a' ? 0x5a : 0);
    });
  }
});
