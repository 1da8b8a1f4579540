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
import { UserStore, parseUsersFile } from '../../src/index.js';

const BCRYPT_MODULE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'auth', 'bcrypt.js');

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
    const { total, ...now } = passwordChecks();
    assert.deepEqual(now, { engine: 'native', running: 2, waiting: 4 });
    assert.deepEqual(await Promise.all(checks), [false, false, false, true, false, false]);
    assert.deepEqual({ ...passwordChecks() }, { engine: 'native', running: 0, waiting: 0, total });
  });

  test('past 1,024 waiting checks a check fails at once, naming why; the queued ones still finish', async () => {
    const hash = await bcryptHash('pw', 4);
    const queued = Array.from({ length: 2 + 1024 }, () => bcryptCompare('pw', hash));
    await assert.rejects(bcryptCompare('pw', hash), /too many password checks waiting \(1024\)/);
    assert.equal((await Promise.all(queued)).every(Boolean), true);
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

describe('users file hash variants', () => {
  test('a $2x$ line is refused when the file loads, naming the line and what to do', () => {
    const hash = bcryptjs.hashSync('pw', 4).replace(/^\$2[ab]\$/, '$2x$');
    assert.throws(() => parseUsersFile(`ok:${bcryptjs.hashSync('pw', 4)}\nold:${hash}\n`, 'users.txt'), /users\.txt:2: \$2x\$ hashes are not supported; hash the password again/);
  });

  test('a store makes its unknown-name hash when it is built, at its users\' cost: the first unknown name pays one check, not two', async () => {
    const before = passwordChecks().total;
    const store = new UserStore(parseUsersFile(`a:${bcryptjs.hashSync('pw', 5)}\nb:${bcryptjs.hashSync('pw', 5)}\nc:${bcryptjs.hashSync('pw', 4)}\n`));
    assert.equal(passwordChecks().total, before + 1, 'the hash for unknown names is under way');
    new UserStore(parseUsersFile(`d:${bcryptjs.hashSync('pw', 5)}\n`));
    assert.equal(passwordChecks().total, before + 1, 'a second store at the same cost shares it');
    new UserStore(parseUsersFile(`e:${bcryptjs.hashSync('pw', 4)}\n`));
    assert.equal(passwordChecks().total, before + 2, 'a store whose users have another cost makes its own');
    for (let i = 0; i < 10_000 && passwordChecks().running > 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(await store.verify('nobody', 'pw'), false);
    assert.equal(passwordChecks().total, before + 3, 'one check for the unknown name');
  });

  test('many wrong passwords for an unknown user all get an answer (each pays a full check)', async () => {
    const store = new UserStore(parseUsersFile(`carol:${bcryptjs.hashSync('pw', 4)}\n`));
    const verdicts = await Promise.all(Array.from({ length: 5 }, (_, i) => store.verify(`nobody${i}`, 'pw')));
    assert.deepEqual(verdicts, [false, false, false, false, false]);
    assert.equal(await store.verify('carol', 'pw'), true);
  });
});
