/** Method negotiation and RFC 1929 username/password, byte by byte. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { UserStore, UsersFileError, createServer, parseUsersFile } from '../../src/index.js';
import { bcryptCompare, bcryptHash, passwordChecks } from '../../src/auth/bcrypt.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, startEchoServer, startProxy, untilNoPasswordCheckRuns } from '../helpers/server.js';
import { ENGINES, startEngineProxy } from './native-helpers.js';

function credentials(user: string, pass: string): Buffer {
  return Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([pass.length]), Buffer.from(pass)]);
}

describe('username/password', () => {
  let proxy: RunningProxy;
  let echo: Fixture;
  before(async () => {
    echo = await startEchoServer();
    proxy = await startProxy({
      auth: { methods: ['userpass'], users: [{ name: 'alice', password: 's3cret' }, { name: 'bob', password: bcrypt.hashSync('hunter2', 4) }] },
    });
  });
  after(async () => {
    await proxy.close();
    await echo.close();
  });

  test('a wrong password gets status 0x01, then the server closes', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 01 02');
    assert.deepEqual(await client.read(2), hex('05 02'));
    client.write(credentials('alice', 'not-her-pass'));
    assert.deepEqual(await client.read(2), hex('01 01'));
    assert.equal(await client.ended, 'end');
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'auth-failed');
    assert.equal(record.user, 'alice');
    assert.match(record.error ?? '', /alice/);
    assert.doesNotMatch(JSON.stringify(record), /not-her-pass/, 'the password never reaches the record');
  });

  test('an unknown user is refused the same way', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 01 02');
    await client.read(2);
    client.write(credentials('mallory', 's3cret'));
    assert.deepEqual(await client.read(2), hex('01 01'));
    assert.equal(await client.ended, 'end');
  });

  for (const [user, pass] of [['alice', 's3cret'], ['bob', 'hunter2']] as const) {
    test(`${user} (${user === 'bob' ? 'bcrypt hash' : 'plain'} password) connects; greeting, credentials and request pipelined in one write`, async () => {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 02 00 02'), credentials(user, pass), connectRequest('127.0.0.1', echo.port), Buffer.from('ping')]));
      assert.deepEqual(await client.read(2), hex('05 02'), 'userpass chosen over none: the server does not accept none');
      assert.deepEqual(await client.read(2), hex('01 00'));
      assert.equal((await client.read(10))[1], 0x00);
      assert.equal((await client.read(4)).toString(), 'ping');
      client.socket.end();
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.user, user);
      assert.equal(record.authMethod, 'userpass');
      assert.equal(record.bytesUp, 4);
      assert.equal(record.bytesDown, 4);
    });
  }

  test('a client offering only no-auth gets 0xFF, then the server closes', async () => {
    const client = await RawClient.connect(proxy.port);
    client.write('05 01 00');
    assert.deepEqual(await client.read(2), hex('05 ff'));
    assert.equal(await client.ended, 'end');
    const record = await proxy.record((r) => r.clientPort === client.localPort);
    assert.equal(record.reason, 'no-acceptable-method');
    assert.match(record.error ?? '', /0x00/);
  });
});

describe('method preference', () => {
  test('with methods [userpass, none], a client offering both is asked for credentials', async () => {
    const proxy = await startProxy({ auth: { methods: ['userpass', 'none'], users: [{ name: 'a', password: 'b' }] } });
    try {
      const client = await RawClient.connect(proxy.port);
      client.write('05 02 00 02');
      assert.deepEqual(await client.read(2), hex('05 02'));
      client.destroy();
      const other = await RawClient.connect(proxy.port);
      other.write('05 01 00');
      assert.deepEqual(await other.read(2), hex('05 00'), 'a client without credentials may still use none');
      other.destroy();
    } finally {
      await proxy.close();
    }
  });

  test('a no-auth server refuses a client that offers only userpass', async () => {
    const proxy = await startProxy();
    try {
      const client = await RawClient.connect(proxy.port);
      client.write('05 01 02');
      assert.deepEqual(await client.read(2), hex('05 ff'));
    } finally {
      await proxy.close();
    }
  });
});

describe('users file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-users-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('parses name:hash lines, skipping comments and blanks; $2y$ hashes verify', async () => {
    const hash = bcrypt.hashSync('pw', 4).replace(/^\$2[ab]\$/, '$2y$');
    const users = parseUsersFile(`# staff\n\ncarol:${hash}\n`);
    assert.deepEqual([...users.keys()], ['carol']);
    const store = new UserStore(users);
    assert.equal(await store.verify('carol', 'pw'), true);
    assert.equal(await store.verify('carol', 'pw'), true, 'second check (cached) agrees');
    assert.equal(await store.verify('carol', 'PW'), false);
    assert.equal(await store.verify('dave', 'pw'), false);
  });

  test('a malformed line names the file and line', () => {
    assert.throws(() => parseUsersFile('ok:$2b$04$abcdefghijklmnopqrstuuOm1kq1CtQMbLQ3e4YaJxXqR8OiSvK/6\nbroken line\n', 'users.txt'), /users.txt:2/);
  });

  test('an unreadable users file fails createServer with UsersFileError', () => {
    const missing = join(dir, 'missing');
    assert.throws(
      () => createServer({ auth: { methods: ['userpass'], usersFile: missing } }),
      (err: unknown) => err instanceof UsersFileError && err.message.includes(missing) && err.message.includes('ENOENT'),
    );
  });

  test('a users file serves authentication', async () => {
    const file = join(dir, 'users');
    writeFileSync(file, `erin:${bcrypt.hashSync('letmein', 4)}\n`);
    const proxy = await startProxy({ auth: { methods: ['userpass'], usersFile: file } });
    try {
      const client = await RawClient.connect(proxy.port);
      client.write('05 01 02');
      await client.read(2);
      client.write(credentials('erin', 'letmein'));
      assert.deepEqual(await client.read(2), hex('01 00'));
      client.destroy();
    } finally {
      await proxy.close();
    }
  });
});

/**
 * A session that ends while its password check waits for a turn drops the
 * check, on either handshake engine: a flood of connections that time out
 * must not leave checks behind that delay later logins.
 */
for (const engine of ENGINES) {
  describe(`password checks of sessions that are gone (${engine} handshakes)`, () => {
    test('sessions that time out while their checks wait drop them: they never run', async () => {
      await untilNoPasswordCheckRuns();
      const proxy = await startEngineProxy(engine, {
        auth: { methods: ['userpass'], users: [{ name: 'erin', password: bcrypt.hashSync('pw', 4) }] },
        timeouts: { handshake: 300 },
      });
      try {
        await untilNoPasswordCheckRuns(); // the store's hash for unknown names
        // Two slow checks take both turns, so the sessions' checks wait.
        const slow = await bcryptHash('pw', 13);
        const busy = [bcryptCompare('x', slow), bcryptCompare('x', slow)];
        const { cancelled } = passwordChecks();
        const clients = await Promise.all(Array.from({ length: 4 }, () => RawClient.connect(proxy.port)));
        clients.forEach((client, i) => client.write(Buffer.concat([hex('05 01 02'), credentials('erin', `guess${i}`)])));
        const records = await Promise.all(clients.map((client) => proxy.record((r) => r.clientPort === client.localPort)));
        assert.deepEqual(records.map((r) => r.reason), Array(4).fill('handshake-timeout'));
        assert.equal(passwordChecks().cancelled - cancelled, 4, 'all four waiting checks were dropped');
        await Promise.all(busy);
        assert.equal(passwordChecks().waiting, 0);
      } finally {
        await proxy.close();
      }
    });
  });
}

/**
 * An authenticator of the library's own (createServer's `authenticator`):
 * userpass needs no users in the configuration then, and a check that fails,
 * by a rejection or by a synchronous throw (from a verify() that is not an
 * async function), refuses the client with status 0x01 and names the
 * failure, on either handshake engine.
 */
for (const engine of ENGINES) {
  describe(`an authenticator of the library's own (${engine} handshakes)`, () => {
    const authenticator = {
      verify(user: string, password: string): Promise<boolean> {
        if (user === 'throws') throw new Error('user database unreachable');
        if (user === 'rejects') return Promise.reject(new Error('user database timed out'));
        return Promise.resolve(user === 'carol' && password === 'pw');
      },
    };
    let proxy: RunningProxy;
    let echo: Fixture;
    before(async () => {
      echo = await startEchoServer();
      proxy = await startEngineProxy(engine, { auth: { methods: ['userpass'] }, authenticator });
    });
    after(async () => {
      await proxy.close();
      await echo.close();
    });

    test('userpass needs no users in the configuration: the right password connects, a reload without users is taken', async () => {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 02'), credentials('carol', 'pw'), connectRequest('127.0.0.1', echo.port)]));
      assert.deepEqual((await client.read(14)).subarray(0, 6), hex('05 02 01 00 05 00'));
      client.socket.destroy();
      const { changed } = proxy.server.reload({ listen: [{ address: '127.0.0.1', port: proxy.port }], auth: { methods: ['userpass'] }, timeouts: { handshake: '9s' } });
      assert.deepEqual(changed, ['timeouts.handshake']);
      assert.throws(() => createServer({ auth: { methods: ['userpass'] } }), /userpass needs auth\.users or auth\.usersFile/, 'without one, users are still needed');
    });

    for (const [user, cause] of [['throws', 'user database unreachable'], ['rejects', 'user database timed out']] as const) {
      test(`a check that ${user === 'throws' ? 'throws synchronously' : 'rejects'} refuses with status 0x01 and names the failure`, async () => {
        const client = await RawClient.connect(proxy.port);
        client.write(Buffer.concat([hex('05 01 02'), credentials(user, 'pw')]));
        assert.deepEqual(await client.read(4), hex('05 02 01 01'));
        assert.equal(await client.ended, 'end');
        const record = await proxy.record((r) => r.clientPort === client.localPort);
        assert.equal(record.reason, 'auth-failed');
        assert.equal(record.user, user);
        assert.equal(record.error, `authenticator failed: ${cause}`);
      });
    }
  });
}
