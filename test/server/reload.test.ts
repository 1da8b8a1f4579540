/**
 * `SocksServer.reload`: a new configuration applies to new sessions, the
 * sessions already running keep theirs, an invalid one changes nothing, and
 * what needs a restart is reported instead of applied.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { ConfigError, UsersFileError, createServer } from '../../src/index.js';
import type { ReloadResult } from '../../src/server/server.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, closedPort, startEchoServer, startProxy } from '../helpers/server.js';

/** SOCKS5 REP 0x02 "connection not allowed by ruleset", with the unspecified IPv4 bound address. */
const SOCKS5_NOT_ALLOWED = hex('05 02 00 01 00000000 0000');
const LOOPBACK_0 = [{ address: '127.0.0.1', port: 0 }];

function credentials(user: string, pass: string): Buffer {
  return Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([pass.length]), Buffer.from(pass)]);
}

/** A SOCKS5 CONNECT without authentication to 127.0.0.1:`port`; returns the client once the reply's first bytes are due. */
async function connectNoAuth(proxy: RunningProxy, port: number): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port);
  client.write('05 01 00');
  assert.deepEqual(await client.read(2), hex('05 00'));
  client.write(connectRequest('127.0.0.1', port));
  return client;
}

/** Reads a success reply and echoes `text` through the relay. */
async function expectRelaying(client: RawClient, text: string): Promise<void> {
  const reply = await client.read(10);
  assert.equal(reply[1], 0x00, `reply ${reply.toString('hex')}`);
  await expectEcho(client, text);
}

async function expectEcho(client: RawClient, text: string): Promise<void> {
  client.write(Buffer.from(text));
  assert.equal((await client.read(Buffer.byteLength(text))).toString(), text);
}

/** RFC 1929 login then CONNECT; resolves with the status byte (0 = accepted). A success relays a line before closing. */
async function login(proxy: RunningProxy, user: string, pass: string, port: number): Promise<number> {
  const client = await RawClient.connect(proxy.port);
  try {
    client.write('05 01 02');
    assert.deepEqual(await client.read(2), hex('05 02'));
    client.write(credentials(user, pass));
    const status = await client.read(2);
    assert.equal(status[0], 0x01);
    if (status[1] !== 0x00) {
      assert.equal(await client.ended, 'end');
      return status[1]!;
    }
    client.write(connectRequest('127.0.0.1', port));
    await expectRelaying(client, `hello ${user}\n`);
    return 0;
  } finally {
    client.socket.end();
  }
}

describe('SocksServer.reload', () => {
  let echo: Fixture;
  let dir: string;
  before(async () => {
    echo = await startEchoServer();
    dir = mkdtempSync(join(tmpdir(), 'socksgate-reload-'));
  });
  after(async () => {
    await echo.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a rule added by reload denies the next session (05 02) while a session relaying since before keeps relaying', async () => {
    const proxy = await startProxy();
    const reloads: ReloadResult[] = [];
    proxy.server.on('reload', (r) => reloads.push(r));
    try {
      const before = await connectNoAuth(proxy, echo.port);
      await expectRelaying(before, 'before the reload\n');

      const result = proxy.server.reload({
        listen: LOOPBACK_0,
        rules: [
          { name: 'no-echo', deny: { to: { ports: [echo.port] } } },
          { name: 'rest', allow: {} },
        ],
      });
      assert.deepEqual(result, { changed: ['rules'], needsRestart: [] });
      assert.deepEqual(reloads, [result], 'one reload event, with the result');
      assert.equal(proxy.server.config.rules.length, 2, 'config shows what new sessions use');

      const denied = await connectNoAuth(proxy, echo.port);
      assert.deepEqual(await denied.read(10), SOCKS5_NOT_ALLOWED);
      assert.equal(await denied.ended, 'end');
      const deniedRecord = await proxy.record((r) => r.clientPort === denied.localPort);
      assert.equal(deniedRecord.reason, 'not-allowed');
      assert.equal(deniedRecord.rule, 'no-echo');

      // The session from before the reload was not dropped and still relays both ways.
      await expectEcho(before, 'after the reload\n');
      assert.equal(before.socket.destroyed, false);
      before.socket.end();
      const record = await proxy.record((r) => r.clientPort === before.localPort);
      assert.equal(record.reason, 'client-closed');
      assert.equal(record.rule, null, 'decided before any rule existed');
      assert.equal(record.bytesDown, 'before the reload\nafter the reload\n'.length);
    } finally {
      await proxy.close();
    }
  });

  test('users added, removed, or given a new password by reload are honoured for new sessions', async () => {
    const bobOld = bcrypt.hashSync('hunter2', 4);
    const proxy = await startProxy({
      auth: { methods: ['userpass'], users: [{ name: 'alice', password: 's3cret' }, { name: 'bob', password: bobOld }] },
    });
    try {
      assert.equal(await login(proxy, 'alice', 's3cret', echo.port), 0);
      assert.equal(await login(proxy, 'bob', 'hunter2', echo.port), 0); // now in the verified cache
      assert.equal(await login(proxy, 'carol', 'c4rol', echo.port), 0x01);

      const result = proxy.server.reload({
        listen: LOOPBACK_0,
        auth: {
          methods: ['userpass'],
          users: [{ name: 'bob', password: bcrypt.hashSync('correct horse', 4) }, { name: 'carol', password: 'c4rol' }],
        },
      });
      assert.deepEqual(result, { changed: ['auth.users'], needsRestart: [] });

      assert.equal(await login(proxy, 'alice', 's3cret', echo.port), 0x01, 'alice was removed');
      assert.equal(await login(proxy, 'bob', 'hunter2', echo.port), 0x01, "bob's old password no longer works, cached or not");
      assert.equal(await login(proxy, 'bob', 'correct horse', echo.port), 0);
      assert.equal(await login(proxy, 'carol', 'c4rol', echo.port), 0, 'carol was added');
    } finally {
      await proxy.close();
    }
  });

  test('the users file is read again: a changed file applies to new sessions and is reported', async () => {
    const usersFile = join(dir, 'users');
    writeFileSync(usersFile, `dave:${bcrypt.hashSync('first', 4)}\n`);
    const input = { listen: LOOPBACK_0, auth: { methods: ['userpass' as const], usersFile } };
    const proxy = await startProxy(input);
    try {
      assert.equal(await login(proxy, 'dave', 'first', echo.port), 0);
      assert.deepEqual(proxy.server.reload(input), { changed: [], needsRestart: [] }, 'same file: nothing changed');
      assert.equal(await login(proxy, 'dave', 'first', echo.port), 0);

      writeFileSync(usersFile, `dave:${bcrypt.hashSync('second', 4)}\nerin:${bcrypt.hashSync('e', 4)}\n`);
      assert.deepEqual(proxy.server.reload(input), { changed: ['auth.usersFile'], needsRestart: [] });
      assert.equal(await login(proxy, 'dave', 'first', echo.port), 0x01);
      assert.equal(await login(proxy, 'dave', 'second', echo.port), 0);
      assert.equal(await login(proxy, 'erin', 'e', echo.port), 0);

      // A broken users file: the reload throws, and the users stay as they were.
      writeFileSync(usersFile, 'frank:not-a-hash\n');
      assert.throws(() => proxy.server.reload(input), (err: unknown) => err instanceof UsersFileError && /users:1/.test(err.message));
      assert.equal(await login(proxy, 'dave', 'second', echo.port), 0);
      assert.equal(await login(proxy, 'frank', 'not-a-hash', echo.port), 0x01);
    } finally {
      await proxy.close();
    }
  });

  test('an invalid configuration throws ConfigError naming the key paths and changes nothing', async () => {
    const proxy = await startProxy({ rules: [{ name: 'no-echo', deny: { to: { ports: [echo.port] } } }, { name: 'rest', allow: {} }] });
    let reloads = 0;
    proxy.server.on('reload', () => reloads++);
    try {
      const config = proxy.server.config;
      assert.throws(
        () => proxy.server.reload({
          listen: LOOPBACK_0,
          timeouts: { connect: 'soon' },
          rules: [{ name: 'half-a-rule' }],
        } as never),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError);
          assert.ok(err.problems.some((p) => p.startsWith('timeouts.connect: ')), err.problems.join('\n'));
          assert.ok(err.problems.includes('rules[0]: a rule needs allow or deny'), err.problems.join('\n'));
          return true;
        },
      );
      assert.equal(reloads, 0, 'no reload event for a failed reload');
      assert.equal(proxy.server.config, config, 'the same configuration object is in effect');

      // The old rule still decides.
      const denied = await connectNoAuth(proxy, echo.port);
      assert.deepEqual(await denied.read(10), SOCKS5_NOT_ALLOWED);
      assert.equal((await proxy.record((r) => r.clientPort === denied.localPort)).rule, 'no-echo');
    } finally {
      await proxy.close();
    }
  });

  test('listen changes are reported as needing a restart and not applied; the rest applies', async () => {
    const proxy = await startProxy();
    try {
      const otherPort = await closedPort();
      const result = proxy.server.reload({
        listen: [{ address: '127.0.0.1', port: otherPort }],
        relay: { engine: 'stream' },
        workers: 3,
        timeouts: { connect: '5s' },
      });
      assert.deepEqual(result.needsRestart, ['listen', 'workers', 'relay.engine']);
      assert.deepEqual(result.changed, ['timeouts.connect']);
      assert.equal(proxy.server.config.timeouts.connect, 5000);
      assert.deepEqual(proxy.server.config.listen, [{ address: '127.0.0.1', port: 0, socks4: false, backlog: 256 }]);
      assert.equal(proxy.server.config.workers, 'auto');
      assert.equal(proxy.server.addresses().length, 1);
      assert.equal(proxy.server.addresses()[0]!.port, proxy.port, 'still on the port it was bound to');

      // Still served where it was; nothing was bound on the new port.
      const client = await connectNoAuth(proxy, echo.port);
      await expectRelaying(client, 'same port\n');
      client.socket.end();
      await assert.rejects(RawClient.connect(otherPort), /ECONNREFUSED/);
    } finally {
      await proxy.close();
    }
  });

  test('the running listeners count: a reload cannot turn a non-loopback listener into an open proxy', () => {
    // Not listening: reload works on a server that has not bound yet, and this needs no 0.0.0.0 socket.
    const server = createServer({
      listen: [{ address: '0.0.0.0', port: 0 }],
      auth: { methods: ['userpass'], users: [{ name: 'alice', password: 's3cret' }] },
    });
    const config = server.config;
    assert.throws(
      () => server.reload({ listen: [{ address: '127.0.0.1', port: 0 }], auth: { methods: ['none'] } }),
      (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('listen[0].address: 0.0.0.0 is not loopback')),
    );
    assert.equal(server.config, config);
  });

  test('the options object given to createServer, collaborators and all, can be given again with new settings; another collaborator is refused', () => {
    const authenticator = { verify: async () => true };
    const options = { listen: LOOPBACK_0, auth: { methods: ['userpass' as const] }, authenticator, now: () => 0 };
    const server = createServer(options);
    assert.deepEqual(server.reload({ ...options, timeouts: { connect: 1234 } }).changed, ['timeouts.connect']);
    assert.equal(server.config.timeouts.connect, 1234);
    const config = server.config;
    assert.throws(
      () => server.reload({ ...options, timeouts: { connect: 99 }, authenticator: { verify: async () => false } }),
      (err: unknown) => err instanceof TypeError && /cannot replace the authenticator/.test(err.message),
    );
    assert.throws(() => server.reload({ ...options, now: Date.now }), /cannot replace the now/);
    assert.throws(() => createServer({ listen: LOOPBACK_0 }).reload({ dialer: { dial: () => Promise.reject(new Error('x')) } }), /cannot replace the dialer/);
    assert.equal(server.config, config, 'nothing changed');
  });
});
