/**
 * Password checks off the event loop: the native binding on the thread pool,
 * at most two at once, a bounded queue, bcryptjs where the binding is missing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import bcryptjs from 'bcryptjs';
import { bcryptCompare, bcryptHash, passwordChecks } from '../../src/auth/bcrypt.js';
import { ConfigError, UserStore, createServer, hashPassword, parseUsersFile } from '../../src/index.js';
import { storedSecret } from '../../src/auth/users.js';
import { untilNoPasswordCheckRuns } from '../helpers/server.js';

const BCRYPT_MODULE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'auth', 'bcrypt.js');
const USERS_MODULE = join(dirname(BCRYPT_MODULE), 'users.js');

/** Turns of the event loop (setImmediate callbacks) while `work` runs. */
async function loopTurnsDuring(work: Promise<unknown>): Promise<number> {
  let turns = 0;
  let done = false;
  void work.finally(() => { done = true; });
  while (!done) {
    await new Promise<void>((resolve) => setImmediate(resolve));
    turns++;
  }
  return turns;
}

describe('bcrypt checks', () => {
  test('the native binding is installed here and checks the passwords', () => {
    assert.equal(passwordChecks().engine, 'native', 'npm install should have brought the prebuilt bcrypt binding');
  });

  test('hashes from either implementation verify with the other', async () => {
    const ours = await bcryptHash('pässwörd', 4);
    assert.equal(bcryptjs.compareSync('pässwörd', ours), true);
    assert.equal(await bcryptCompare('pässwörd', bcryptjs.hashSync('pässwörd', 4)), true);
    assert.equal(await bcryptCompare('passwörd', ours), false);
  });

  test('$2y$ hashes (htpasswd -B) verify: the same algorithm as $2b$', async () => {
    const y = (await bcryptHash('pw', 4)).replace(/^\$2b\$/, '$2y$');
    assert.match(y, /^\$2y\$/);
    assert.equal(await bcryptCompare('pw', y), true);
    assert.equal(await bcryptCompare('pW', y), false);
  });

  test('a check leaves the event loop free: it turns many times during one check at cost 12', async () => {
    const hash = bcryptjs.hashSync('pw', 12);
    // bcryptjs on the main thread yields only between chunks of about 100 ms
    // (a handful of turns); on the thread pool the loop keeps turning.
    const turns = await loopTurnsDuring(bcryptCompare('wrong', hash));
    assert.ok(turns >= 50, `the event loop turned only ${turns} times`);
  });

  test('at most two checks run at once; the rest wait their turn and all finish', async () => {
    const hash = await bcryptHash('pw', 6);
    const checks = Array.from({ length: 6 }, (_, i) => bcryptCompare(i === 3 ? 'pw' : `no${i}`, hash));
    const { total, cancelled, ...now } = passwordChecks();
    assert.deepEqual(now, { engine: 'native', running: 2, waiting: 4 });
    assert.deepEqual(await Promise.all(checks), [false, false, false, true, false, false]);
    assert.deepEqual({ ...passwordChecks() }, { engine: 'native', running: 0, waiting: 0, total, cancelled });
  });

  test('past 1,024 waiting checks a check fails at once, naming why; the queued ones still finish', async () => {
    const hash = await bcryptHash('pw', 4);
    const queued = Array.from({ length: 2 + 1024 }, () => bcryptCompare('pw', hash));
    await assert.rejects(bcryptCompare('pw', hash), /too many password checks waiting \(1024\)/);
    assert.equal((await Promise.all(queued)).every(Boolean), true);
  });

  test('clients take turns: a login waits for one check per busy client, not for another client\'s whole flood', async () => {
    // The flood's checks are slow and the login's is quick, so finishing order
    // shows starting order despite two threads: the login starts as soon as a
    // slot frees after the flood's next check, so it finishes third.
    const slow = await bcryptHash('pw', 10);
    const quick = await bcryptHash('pw', 4);
    const finished: string[] = [];
    const check = (client: string, hash: string, i: number) => bcryptCompare(`guess${i}`, hash, { client }).then(() => finished.push(`${client}#${i}`));
    const flood = Array.from({ length: 8 }, (_, i) => check('192.0.2.66', slow, i));
    const login = check('192.0.2.7', quick, 0);
    await Promise.all([...flood, login]);
    // In one line it would have been the ninth to start and to finish.
    assert.ok(finished.indexOf('192.0.2.7#0') <= 3, `the login finished ${finished.indexOf('192.0.2.7#0') + 1}th of 9: ${finished.join(' ')}`);
  });

  test('one client may have 64 checks waiting; past that its checks fail at once while other clients still queue', async () => {
    const hash = await bcryptHash('pw', 4);
    const client = '2001:db8:0:1::5';
    const queued = Array.from({ length: 2 + 64 }, () => bcryptCompare('pw', hash, { client }));
    assert.equal(passwordChecks().waiting, 64);
    // Its neighbours in the same /64 share its line; the next /64 has its own.
    await assert.rejects(bcryptCompare('pw', hash, { client: '2001:db8:0:1::6' }), /too many password checks waiting from 2001:db8:0:1::\/64 \(64\)/);
    const other = bcryptCompare('pw', hash, { client: '2001:db8:0:2::5' });
    const v4 = bcryptCompare('pw', hash, { client: '198.51.100.1' });
    assert.equal(passwordChecks().waiting, 66);
    assert.equal((await Promise.all([...queued, other, v4])).every(Boolean), true);
  });

  test('a waiting check whose session is gone is dropped; the rest run', async () => {
    const hash = await bcryptHash('pw', 6);
    const { cancelled } = passwordChecks();
    const sessions = Array.from({ length: 6 }, () => new AbortController());
    const checks = sessions.map((session, i) => bcryptCompare(i === 5 ? 'pw' : 'no', hash, { client: '192.0.2.1', signal: session.signal }));
    const reason = new Error('session closed');
    for (const i of [2, 3]) sessions[i]!.abort(reason);
    sessions[0]!.abort(reason); // running already: it finishes and answers
    assert.equal(passwordChecks().waiting, 2);
    const settled = await Promise.allSettled(checks);
    assert.deepEqual(settled.map((s) => (s.status === 'fulfilled' ? s.value : (s.reason as Error).message)), [false, false, 'session closed', 'session closed', false, true]);
    assert.equal(passwordChecks().cancelled, cancelled + 2);
    await assert.rejects(bcryptCompare('pw', hash, { signal: AbortSignal.abort(reason) }), /session closed/, 'a session already gone does not queue at all');
  });

  test('SOCKSGATE_BCRYPT=bcryptjs (or a platform without the binding) falls back to bcryptjs, which reads the same hashes', () => {
    const hash = bcryptjs.hashSync('pw', 4).replace(/^\$2[ab]\$/, '$2y$');
    const script = `
      const { bcryptCompare, passwordChecks } = await import(${JSON.stringify(BCRYPT_MODULE)});
      console.log(JSON.stringify([passwordChecks().engine, await bcryptCompare('pw', ${JSON.stringify(hash)}), await bcryptCompare('pW', ${JSON.stringify(hash)})]));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, SOCKSGATE_BCRYPT: 'bcryptjs' } });
    assert.deepEqual(JSON.parse(out.toString()), ['bcryptjs', true, false]);
  });
});

describe('hashPassword', () => {
  test('writes a hash the users file reads, at the cost asked for', async () => {
    const hash = await hashPassword('pw', 4);
    assert.match(hash, /^\$2b\$04\$/);
    const alice = parseUsersFile(`alice:${hash}\n`).get('alice');
    assert.ok(alice?.kind === 'bcrypt' && await bcryptCompare('pw', alice.hash));
  });

  test('rejects a cost that is not an integer from 4 to 15 with a RangeError naming the range, and starts no hash', async () => {
    // 3 first: before, it gave a cost-04 hash at once, so the test failed
    // there rather than start -1 (never finishes) or 31 (more than a day).
    for (const cost of [3, 16, 3.5, NaN, 0, -1, Infinity, 31]) {
      const before = passwordChecks().total;
      await assert.rejects(hashPassword('pw', cost), (err: unknown) => {
        assert.ok(err instanceof RangeError, `cost ${cost}: ${String(err)}`);
        assert.equal(err.message, `cost must be an integer from 4 to 15, got ${cost}`);
        return true;
      }, `cost ${cost}`);
      assert.equal(passwordChecks().total, before, `cost ${cost}: no bcrypt run started`);
    }
  });
});

describe('bcrypt\'s 72 bytes', () => {
  const long = `${'A'.repeat(72)}-tail`;

  test('hashPassword refuses a password over 72 bytes of UTF-8 (bcrypt would check only its first 72), and takes 72', async () => {
    for (const password of [long, 'é'.repeat(37)]) { // 77 and 74 bytes
      await assert.rejects(hashPassword(password, 4), (err: unknown) => err instanceof RangeError && /longer than 72 bytes: bcrypt would check only the first 72/.test(err.message));
    }
    assert.match(await hashPassword('A'.repeat(72), 4), /^\$2b\$04\$/);
  });

  test('a password over 72 bytes is never accepted against a hash, whatever its first 72 are', async () => {
    // A hash made elsewhere from the long password: bcrypt itself keeps only the first 72 bytes.
    // Cost 7 here and below: other tests count the hashes stores make for unknown names at 4 and 5.
    const store = new UserStore(parseUsersFile(`alice:${bcryptjs.hashSync(long, 7)}\nbob:${bcryptjs.hashSync('A'.repeat(72), 7)}\n`));
    assert.equal(await bcryptCompare(`${'A'.repeat(72)}-other`, bcryptjs.hashSync(long, 4)), true, 'bcrypt alone: any tail passes');
    const context = { clientAddress: '127.0.0.1', signal: new AbortController().signal };
    assert.equal(await store.verify('alice', long, context), false, 'the long password itself');
    assert.equal(await store.verify('alice', `${'A'.repeat(72)}-other`, context), false, 'another tail');
    assert.equal(await store.verify('bob', `${'A'.repeat(72)}x`, context), false, 'the 72-byte password and one more byte');
    assert.equal(await store.verify('bob', 'A'.repeat(72), context), true, 'exactly 72 bytes');
  });
});

describe('remembered passwords', () => {
  test('a NUL in a name or password does not let one user\'s remembered password pass for another ("bob"/"p\\0q" against "bob\\0p"/"q")', async () => {
    const store = new UserStore(new Map([
      ['bob', storedSecret(await hashPassword('p\0q', 7))],
      ['bob\0p', storedSecret(await hashPassword('other', 7))],
    ]));
    const context = { clientAddress: '127.0.0.1', signal: new AbortController().signal };
    assert.equal(await store.verify('bob', 'p\0q', context), true);
    assert.equal(await store.verify('bob\0p', 'q', context), false);
  });
});

describe('users file hash variants', () => {
  test('a $2x$ line is refused when the file loads, naming the line and what to do', () => {
    const hash = bcryptjs.hashSync('pw', 4).replace(/^\$2[ab]\$/, '$2x$');
    assert.throws(() => parseUsersFile(`ok:${bcryptjs.hashSync('pw', 4)}\nold:${hash}\n`, 'users.txt'), /users\.txt:2: \$2x\$ hashes are not supported; hash the password again/);
  });

  test('a $2$ line (the original bcrypt, no variant letter) is refused when the file loads, naming the line and what to do', () => {
    const ok = `ok:${bcryptjs.hashSync('pw', 4)}`;
    const original = `$2$${bcryptjs.hashSync('pw', 4).slice(4)}`; // $2$04$ and 53 characters
    for (const hash of [original, '$2$', '$2$whatever']) {
      assert.throws(
        () => parseUsersFile(`${ok}\nold:${hash}\n`, 'users.txt'),
        /^UsersFileError: users\.txt:2: \$2\$ hashes \(the original bcrypt, before \$2a\$\) are not supported; hash the password again \(socksgate passwd\)$/,
        hash,
      );
    }
  });

  test('a line whose cost bcrypt has not, or one too slow to check, is refused when the file loads, naming the line and why', () => {
    const tail = bcryptjs.hashSync('pw', 4).slice(7);
    const file = (cost: string) => `ok:${bcryptjs.hashSync('pw', 4)}\nslow:$2b$${cost}$${tail}\n`;
    assert.throws(() => parseUsersFile(file('99'), 'users.txt'), /^UsersFileError: users\.txt:2: not a valid bcrypt hash: cost 99 is not one bcrypt has \(04 to 31\)$/);
    assert.throws(() => parseUsersFile(file('03'), 'users.txt'), /users\.txt:2: not a valid bcrypt hash: cost 03 is not one/);
    for (const cost of ['16', '20', '31']) {
      assert.throws(() => parseUsersFile(file(cost), 'users.txt'), new RegExp(`users\\.txt:2: bcrypt cost ${cost} is too slow to check \\(at most 15\\): .*a few wrong guesses would hold every login`));
    }
    assert.deepEqual([...parseUsersFile(file('15')).keys()], ['ok', 'slow']);
  });

  test('a store of the library\'s own with hashes above cost 15 makes its unknown-name hash at 15: an unknown name is answered and the process exits', () => {
    // In a child process, bounded: before, the store started a cost-31 hash
    // (more than a day) at once, and the exit waited for it on the thread pool.
    const users = new Map([['slow', { kind: 'bcrypt', hash: `$2b$31$${bcryptjs.hashSync('pw', 4).slice(7)}` }]]);
    const script = `
      const { UserStore } = await import(${JSON.stringify(USERS_MODULE)});
      const store = new UserStore(new Map(${JSON.stringify([...users])}));
      console.log(JSON.stringify(await store.verify('nobody', 'pw')));
      process.exit(0);`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000, killSignal: 'SIGKILL' });
    assert.equal(JSON.parse(out.toString()), false);
  });

  test('a $2x$ hash as a config password is refused too, instead of becoming the password itself', () => {
    const hash = bcryptjs.hashSync('pw', 4).replace(/^\$2[ab]\$/, '$2x$');
    assert.throws(
      () => createServer({ auth: { methods: ['userpass'], users: [{ name: 'old', password: hash }] } }),
      (err: unknown) => err instanceof ConfigError && /auth\.users\[0\]\.password.*\$2x\$ hashes are not supported/s.test(`${err.problems.join('\n')}`),
    );
  });

  test('a $2$ hash (the original bcrypt, no variant letter) as a config password is refused, instead of becoming the password itself', () => {
    const original = `$2$${bcryptjs.hashSync('pw', 4).slice(4)}`;
    for (const password of [original, '$2$10$whatever', '$2$']) {
      assert.throws(
        () => createServer({ auth: { methods: ['userpass'], users: [{ name: 'old', password }] } }),
        (err: unknown) => err instanceof ConfigError && err.problems.length === 1
          && /^auth\.users\[0\]\.password: \$2\$ hashes \(the original bcrypt, before \$2a\$\) are not supported; hash the password again \(socksgate passwd\) \(a password beginning like a bcrypt hash is not taken as plain text\)$/.test(err.problems[0]!),
        password,
      );
    }
  });

  test('a config password that begins like a bcrypt hash but is not a valid one is refused, naming the problem, instead of becoming the password itself', () => {
    const hash = bcryptjs.hashSync('pw', 4);
    const refused = (password: string, problem: RegExp) => assert.throws(
      () => createServer({ auth: { methods: ['userpass'], users: [{ name: 'ok', password: 'plain' }, { name: 'bad', password }] } }),
      (err: unknown) => err instanceof ConfigError && err.problems.length === 1 && problem.test(err.problems[0]!),
      `${JSON.stringify(password)} should be refused with ${problem}`,
    );
    const invalid = (why: string) => new RegExp(`^auth\\.users\\[1\\]\\.password: not a valid bcrypt hash: ${why}.*not taken as plain text`);
    refused(hash.slice(0, 59), invalid('it has 59 characters, not 60'));
    refused(`${hash}x`, invalid('it has 61 characters, not 60'));
    refused(`${hash} `, invalid('character 61 \\(whitespace\\) is not one of \\./A-Za-z0-9'));
    refused(`${hash.slice(0, 30)}!${hash.slice(31)}`, invalid('character 31 is not one of'));
    refused(`$2c$${hash.slice(4)}`, invalid('\\$2c\\$ is not a variant socksgate reads'));
    refused(`$2B$${hash.slice(4)}`, invalid('\\$2B\\$ is not a variant'));
    refused(`$2b$4$${hash.slice(7)}`, invalid('the cost after the variant must be two digits'));
    refused(`$2b$99$${hash.slice(7)}`, invalid('cost 99 is not one bcrypt has'));
    refused(`$2b$16$${hash.slice(7)}`, /^auth\.users\[1\]\.password: bcrypt cost 16 is too slow to check \(at most 15\)/);
    // What does not begin with $2, a letter and $ (or $2$) is a plain password, as before.
    for (const plain of ['x$2b$04$', 'x$2$04$', '$2b', '$2', '$22$04$abc', '$3b$04$abc']) {
      assert.doesNotThrow(() => createServer({ auth: { methods: ['userpass'], users: [{ name: 'p', password: plain }] } }), plain);
    }
  });

  test('a store makes its unknown-name hash when it is built, at its users\' cost: the first unknown name pays one check, not two', async () => {
    const before = passwordChecks().total;
    const store = new UserStore(parseUsersFile(`a:${bcryptjs.hashSync('pw', 5)}\nb:${bcryptjs.hashSync('pw', 5)}\nc:${bcryptjs.hashSync('pw', 4)}\n`));
    assert.equal(passwordChecks().total, before + 1, 'the hash for unknown names is under way');
    new UserStore(parseUsersFile(`d:${bcryptjs.hashSync('pw', 5)}\n`));
    assert.equal(passwordChecks().total, before + 1, 'a second store at the same cost shares it');
    new UserStore(parseUsersFile(`e:${bcryptjs.hashSync('pw', 4)}\n`));
    assert.equal(passwordChecks().total, before + 2, 'a store whose users have another cost makes its own');
    await untilNoPasswordCheckRuns();
    assert.equal(await store.verify('nobody', 'pw'), false);
    assert.equal(passwordChecks().total, before + 3, 'one check for the unknown name');
  });

  test('sessions sharing one check: it is dropped only when every one of them is gone', async () => {
    const store = new UserStore(parseUsersFile(`dave:${bcryptjs.hashSync('pw', 6)}\n`));
    const slow = bcryptjs.hashSync('pw', 12);
    await untilNoPasswordCheckRuns(); // the store's hash for unknown names is made
    const busy = [bcryptCompare('x', slow), bcryptCompare('x', slow)]; // both slots taken: the checks below wait
    const [first, second, third, fourth] = Array.from({ length: 4 }, () => new AbortController());
    const context = (c: AbortController) => ({ clientAddress: '192.0.2.9', signal: c.signal });
    const verdicts = [
      store.verify('dave', 'pw', context(first!)),
      store.verify('dave', 'pw', context(second!)),
      store.verify('dave', 'nope', context(third!)),
      store.verify('dave', 'nope', context(fourth!)),
    ];
    const settled = Promise.allSettled(verdicts);
    const { cancelled } = passwordChecks();
    first!.abort(new Error('first gone'));
    third!.abort(new Error('third gone'));
    assert.equal(passwordChecks().cancelled, cancelled, 'the second and fourth sessions still wait for their checks');
    fourth!.abort(new Error('fourth gone'));
    assert.equal(passwordChecks().cancelled, cancelled + 1);
    assert.equal(passwordChecks().waiting, 1, 'the shared check for dave:pw still waits');
    const outcome = (await settled).map((s) => (s.status === 'fulfilled' ? s.value : (s.reason as Error).message));
    assert.deepEqual(outcome, ['first gone', true, 'third gone', 'fourth gone'], 'a session that left hears at once; the one that stayed gets the verdict');
    assert.equal(await store.verify('dave', 'nope', context(new AbortController())), false, 'a newcomer after the drop gets its own check');
    await Promise.all(busy);
  });

  test('many wrong passwords for an unknown user all get an answer (each pays a full check)', async () => {
    const store = new UserStore(parseUsersFile(`carol:${bcryptjs.hashSync('pw', 4)}\n`));
    const verdicts = await Promise.all(Array.from({ length: 5 }, (_, i) => store.verify(`nobody${i}`, 'pw')));
    assert.deepEqual(verdicts, [false, false, false, false, false]);
    assert.equal(await store.verify('carol', 'pw'), true);
  });
});
