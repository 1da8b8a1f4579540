/**
 * `socksgate passwd FILE USER`: the password from stdin (not a terminal), the
 * file it writes, and that file used by the daemon for SOCKS5 userpass.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import bcrypt from 'bcryptjs';
import { parseUsersFile } from '../../src/auth/users.js';
import { startEchoServer, type Fixture } from '../helpers/server.js';
import { CLI, closed, echo, lines, runCli, socksConnect, startDaemon, tempDir } from './helpers.js';

const BCRYPT_LINE = /^([^:\s]+):(\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53})$/;

function setPassword(file: string, user: string, password: string, ...extra: string[]) {
  return runCli(['passwd', file, user, '--cost', '4', ...extra], { input: `${password}\n` });
}

const isRoot = process.getuid?.() === 0;
/** Who the permission tests run the CLI as: nobody when the tests run as root (root may write anywhere). */
const unprivileged = isRoot ? { uid: 65534, gid: 65534 } : {};

/** One line `socksgate passwd: …` on stderr, no stack trace. */
function assertOneLine(stderr: string, pattern: RegExp): void {
  assert.match(stderr, pattern);
  assert.equal(stderr.trimEnd().split('\n').length, 1, `one line: ${stderr}`);
  assert.match(stderr, /^socksgate passwd: /);
}

/** `socksgate passwd` with its stdin left open: the test says when the password comes. */
function startPasswd(args: readonly string[]): { child: ChildProcess; done: Promise<{ code: number | null; stderr: string }> } {
  const child = spawn(process.execPath, [CLI, 'passwd', ...args], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
  child.stdin!.on('error', () => {});
  const done = new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
  return { child, done };
}

/** name → hash, checking that every line is a `name:bcrypt` line. */
function readUsers(file: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const line of lines(readFileSync(file, 'utf8'))) {
    const m = BCRYPT_LINE.exec(line);
    assert.ok(m, `not a name:bcrypt line: ${JSON.stringify(line)}`);
    assert.ok(!users.has(m[1]!), `user ${m[1]} appears twice`);
    users.set(m[1]!, m[2]!);
  }
  return users;
}

describe('socksgate passwd', () => {
  let dir: ReturnType<typeof tempDir>;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('writes a USER:$2… bcrypt line from the password on stdin', async () => {
    const file = dir.file('create.users');
    const r = await setPassword(file, 'alice', 'correct horse');
    assert.equal(r.code, 0, r.stderr);
    const text = readFileSync(file, 'utf8');
    assert.match(text, /^alice:\$2[abxy]\$04\$/);
    const users = readUsers(file);
    assert.deepEqual([...users.keys()], ['alice']);
    assert.ok(bcrypt.compareSync('correct horse', users.get('alice')!), 'the hash verifies the password');
    assert.ok(!text.includes('correct horse'), 'the password is not in the file');
    assert.ok(!r.stdout.toString().includes('correct horse') && !r.stderr.includes('correct horse'));
  });

  it('creates the file readable by its owner only', { skip: process.platform === 'win32' }, async () => {
    const file = dir.file('mode.users');
    const r = await setPassword(file, 'alice', 'pw');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(file).mode & 0o077, 0, `mode ${(statSync(file).mode & 0o777).toString(8)}`);
  });

  it('replaces the line of an existing user, adds a second user, and --delete removes one, saying each change on stderr', async () => {
    const file = dir.file('edit.users');
    assert.equal((await setPassword(file, 'alice', 'first-secret')).code, 0);
    const firstHash = readUsers(file).get('alice')!;

    const again = await setPassword(file, 'alice', 'second-secret');
    assert.equal(again.code, 0, again.stderr);
    let users = readUsers(file);
    assert.deepEqual([...users.keys()], ['alice'], 'one line for alice');
    assert.notEqual(users.get('alice'), firstHash);
    assert.ok(bcrypt.compareSync('second-secret', users.get('alice')!));
    assert.ok(!bcrypt.compareSync('first-secret', users.get('alice')!));

    const bob = await setPassword(file, 'bob', 'bobs-secret');
    assert.equal(bob.code, 0, bob.stderr);
    assert.equal(bob.stderr, `socksgate passwd: bob's password is set in ${file}; a running socksgate reads the file on SIGHUP\n`);
    users = readUsers(file);
    assert.deepEqual([...users.keys()].sort(), ['alice', 'bob']);
    assert.ok(bcrypt.compareSync('second-secret', users.get('alice')!), 'alice untouched by adding bob');
    assert.ok(bcrypt.compareSync('bobs-secret', users.get('bob')!));

    const del = await runCli(['passwd', file, 'alice', '--delete']);
    assert.equal(del.code, 0, del.stderr);
    assert.equal(del.stderr, `socksgate passwd: alice is removed from ${file}; a running socksgate reads the file on SIGHUP\n`);
    users = readUsers(file);
    assert.deepEqual([...users.keys()], ['bob']);
    assert.ok(bcrypt.compareSync('bobs-secret', users.get('bob')!));

    const text = readFileSync(file, 'utf8');
    for (const secret of ['first-secret', 'second-secret', 'bobs-secret']) assert.ok(!text.includes(secret), secret);
    // No temporary files left behind next to it.
    assert.deepEqual(readdirSync(dir.path).filter((n) => n.startsWith('edit.users')), ['edit.users']);
  });

  it('does not confuse a user with another whose name starts the same', async () => {
    const file = dir.file('prefix.users');
    assert.equal((await setPassword(file, 'al', 'pw-al')).code, 0);
    assert.equal((await setPassword(file, 'alice', 'pw-alice')).code, 0);
    assert.equal((await runCli(['passwd', file, 'al', '--delete'])).code, 0);
    assert.deepEqual([...readUsers(file).keys()], ['alice']);
  });

  it('--delete of a user that is not there fails and leaves the file alone', async () => {
    const file = dir.file('missing-user.users');
    assert.equal((await setPassword(file, 'alice', 'pw')).code, 0);
    const before = readFileSync(file, 'utf8');
    const r = await runCli(['passwd', file, 'nobody', '--delete']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /nobody/);
    assert.equal(readFileSync(file, 'utf8'), before);
  });

  it('never writes through a link planted where the temporary file would go', { skip: process.platform === 'win32' }, async () => {
    const file = dir.file('planted.users');
    const victim = dir.file('planted-victim');
    writeFileSync(victim, 'not yours\n');
    const { child, done } = startPasswd([file, 'alice', '--cost', '4']);
    // The name passwd used to write to, ${file}.${pid}.tmp, is known once it runs.
    symlinkSync(victim, `${file}.${child.pid}.tmp`);
    child.stdin!.end('pw\n');
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(victim, 'utf8'), 'not yours\n', 'the link target is untouched');
    assert.ok(lstatSync(file).isFile(), 'the users file is a file of its own, not the planted link');
    assert.deepEqual([...readUsers(file).keys()], ['alice']);
    assert.ok(lstatSync(`${file}.${child.pid}.tmp`).isSymbolicLink(), 'the planted link is left alone');
  });

  it('reads the file after the password: a change made while it waited is kept', async () => {
    const file = dir.file('concurrent.users');
    writeFileSync(file, `alice:${bcrypt.hashSync('alice-pw', 4)}\n`);
    const { child, done } = startPasswd([file, 'carol', '--cost', '4']);
    // Once passwd has taken more than a pipe's worth of stdin it is reading the
    // password: whatever it read of the file before that is stale from here.
    await new Promise<void>((resolve, reject) => {
      child.stdin!.write(`carol-pw\n${'x'.repeat(4 << 20)}`, (err) => (err ? reject(err) : resolve()));
    });
    writeFileSync(file, `bob:${bcrypt.hashSync('bob-pw', 4)}\n`, { flag: 'a' });
    child.stdin!.end();
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    const users = readUsers(file);
    assert.deepEqual([...users.keys()].sort(), ['alice', 'bob', 'carol'], 'bob, added meanwhile, is still there');
    assert.ok(bcrypt.compareSync('carol-pw', users.get('carol')!));
  });

  it('waits while another passwd holds FILE.lock, then makes its change (no lost update)', async () => {
    const file = dir.file('locked.users');
    writeFileSync(file, `alice:${bcrypt.hashSync('alice-pw', 4)}\n`);
    // Another passwd in the middle of its change: the lock names a running process (this one).
    writeFileSync(`${file}.lock`, `${process.pid}\n`);
    const { child, done } = startPasswd([file, 'bob', '--cost', '4']);
    child.stdin!.end('bob-pw\n');
    const early = await Promise.race([done, delay(1500).then(() => null)]);
    assert.equal(early, null, `passwd went on while the file was locked: ${early?.stderr}`);
    assert.deepEqual([...readUsers(file).keys()], ['alice'], 'nothing written while locked');
    // The other passwd replaces the file and lets go: this one reads the new file.
    writeFileSync(file, `alice:${bcrypt.hashSync('alice-pw', 4)}\ncarol:${bcrypt.hashSync('carol-pw', 4)}\n`);
    rmSync(`${file}.lock`);
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual([...readUsers(file).keys()], ['alice', 'carol', 'bob'], 'the other change is kept');
    assert.equal(existsSync(`${file}.lock`), false, 'its own lock is gone');
  });

  it('a lock left by a passwd that was killed: refused after waiting, naming the lock and that its process is gone', async () => {
    const file = dir.file('stale-lock.users');
    const before = `alice:${bcrypt.hashSync('alice-pw', 4)}\n`;
    writeFileSync(file, before);
    const gone = spawn(process.execPath, ['-e', '']);
    await once(gone, 'exit');
    writeFileSync(`${file}.lock`, `${gone.pid}\n`);
    const r = await setPassword(file, 'bob', 'bob-pw');
    assert.equal(r.code, 2);
    assertOneLine(r.stderr, new RegExp(`cannot change .*stale-lock\\.users: .*stale-lock\\.users\\.lock is held by process ${gone.pid}, which is no longer running: remove it`));
    assert.equal(readFileSync(file, 'utf8'), before, 'the file is unchanged');
    assert.ok(existsSync(`${file}.lock`), 'another run\'s lock is not removed by guesswork');
  });

  it('a lock naming no process (empty, or not a pid): refused after waiting, and left', async () => {
    const file = dir.file('odd-lock.users');
    writeFileSync(file, '');
    writeFileSync(`${file}.lock`, 'not a pid\n');
    const r = await setPassword(file, 'bob', 'bob-pw');
    assert.equal(r.code, 2);
    assertOneLine(r.stderr, /odd-lock\.users\.lock is held, naming no process: remove it if no passwd is running$/m);
    assert.equal(readFileSync(file, 'utf8'), '', 'the file is unchanged');
    assert.ok(existsSync(`${file}.lock`));
  });

  it('finds a user as the daemon reads the file: past leading spaces, a tab, a BOM', async () => {
    const hash = (pw: string) => bcrypt.hashSync(pw, 4);
    const file = dir.file('indented.users');
    writeFileSync(file, `\uFEFFalice:${hash('a')}\n  bob:${hash('b')}\n\tcarol:${hash('c')}\n`);
    const del = await runCli(['passwd', file, 'bob', '--delete']);
    assert.equal(del.code, 0, del.stderr);
    for (const [user, pw] of [['carol', 'carol-new'], ['alice', 'alice-new']] as const) {
      const r = await setPassword(file, user, pw);
      assert.equal(r.code, 0, r.stderr);
    }
    const text = readFileSync(file, 'utf8');
    assert.ok(text.startsWith('\uFEFFalice:'), `the BOM stays, alice keeps her place: ${JSON.stringify(text)}`);
    assert.equal(lines(text).length, 2, `one line each for alice and carol: ${JSON.stringify(text)}`);
    const users = parseUsersFile(text);
    assert.deepEqual([...users.keys()], ['alice', 'carol']);
    for (const [user, pw] of [['alice', 'alice-new'], ['carol', 'carol-new']] as const) {
      const secret = users.get(user);
      assert.ok(secret?.kind === 'bcrypt' && bcrypt.compareSync(pw, secret.hash), user);
    }
  });

  it('keeps comments, blank lines, the order and CRLF line ends', async () => {
    const hash = (pw: string) => bcrypt.hashSync(pw, 4);
    const file = dir.file('layout.users');
    const [a, b] = [hash('a'), hash('b')];
    writeFileSync(file, `# staff\r\n\r\nalice:${a}\r\n# contractors\r\nbob:${b}\r\n\r\n`);
    assert.equal((await setPassword(file, 'alice', 'alice-new')).code, 0);
    assert.equal((await setPassword(file, 'carol', 'carol-pw')).code, 0);
    assert.equal((await runCli(['passwd', file, 'bob', '--delete'])).code, 0);
    const text = readFileSync(file, 'utf8');
    const newHash = /^alice:(\S+)\r$/m.exec(text)?.[1];
    const carolHash = /^carol:(\S+)\r$/m.exec(text)?.[1];
    assert.ok(newHash && carolHash, JSON.stringify(text));
    assert.ok(bcrypt.compareSync('alice-new', newHash));
    assert.equal(text, `# staff\r\n\r\nalice:${newHash}\r\n# contractors\r\n\r\ncarol:${carolHash}\r\n`);

    const bare = dir.file('no-final-newline.users');
    writeFileSync(bare, `alice:${a}`);
    assert.equal((await setPassword(bare, 'bob', 'bob-pw')).code, 0);
    assert.match(readFileSync(bare, 'utf8'), new RegExp(`^alice:${a.replace(/[$.]/g, '\\$&')}\nbob:\\S+\n$`));
  });

  it('refuses a password over 72 bytes (bcrypt would check only its first 72) and writes nothing', async () => {
    const file = dir.file('long.users');
    for (const password of ['a'.repeat(73), 'é'.repeat(37)]) { // 73 and 74 bytes
      const r = await setPassword(file, 'alice', password);
      assert.equal(r.code, 2, r.stderr);
      assertOneLine(r.stderr, /password longer than 72 bytes: bcrypt would check only the first 72/);
      assert.equal(existsSync(file), false);
    }
  });

  it('refuses an empty password and writes nothing', async () => {
    const file = dir.file('empty.users');
    const r = await runCli(['passwd', file, 'alice', '--cost', '4'], { input: '' });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /empty password/);
    assert.equal(existsSync(file), false);
  });

  it('refuses to rewrite a users file with a malformed line', async () => {
    const file = dir.file('malformed.users');
    writeFileSync(file, 'garbage line\n');
    const r = await setPassword(file, 'alice', 'pw');
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.includes(`${file}:1`), r.stderr);
    assert.equal(readFileSync(file, 'utf8'), 'garbage line\n');
  });

  it('repairs a user whose $2x$ line the daemon refuses (replace or delete), and still refuses other bad lines', async () => {
    const x = `$2x$${bcrypt.hashSync('old', 4).slice(4)}`;
    const bob = `bob:${bcrypt.hashSync('bob-pw', 4)}`;
    const file = dir.file('2x.users');
    writeFileSync(file, `alice:${x}\n${bob}\n`);
    assert.throws(() => parseUsersFile(readFileSync(file, 'utf8')), /\$2x\$/);

    const other = await setPassword(file, 'dave', 'pw');
    assert.equal(other.code, 2, 'another user: the $2x$ line still refuses');
    assert.ok(other.stderr.includes(`${file}:1: $2x$ hashes are not supported`), other.stderr);

    const replaced = await setPassword(file, 'alice', 'alice-new');
    assert.equal(replaced.code, 0, replaced.stderr);
    const text = readFileSync(file, 'utf8');
    const users = parseUsersFile(text, file); // the daemon reads it now
    assert.deepEqual([...users.keys()], ['alice', 'bob']);
    const alice = users.get('alice');
    assert.ok(alice?.kind === 'bcrypt' && bcrypt.compareSync('alice-new', alice.hash));
    assert.ok(text.endsWith(`\n${bob}\n`), 'bob untouched');

    const gone = dir.file('2x-delete.users');
    writeFileSync(gone, `${bob}\ncarol:${x}\n`);
    const deleted = await runCli(['passwd', gone, 'carol', '--delete']);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(readFileSync(gone, 'utf8'), `${bob}\n`);

    const broken = dir.file('2x-and-garbage.users');
    writeFileSync(broken, `alice:${x}\ngarbage line\n`);
    const r = await setPassword(broken, 'alice', 'pw');
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes(`${broken}:2: expected`), r.stderr);
    assert.equal(readFileSync(broken, 'utf8'), `alice:${x}\ngarbage line\n`);
  });

  it('repairs a user whose $2$ line (the original bcrypt) the daemon refuses, and still refuses it for another user', async () => {
    const original = `$2$${bcrypt.hashSync('old', 4).slice(4)}`;
    const bob = `bob:${bcrypt.hashSync('bob-pw', 4)}`;
    const file = dir.file('2.users');
    writeFileSync(file, `alice:${original}\n${bob}\n`);

    const other = await setPassword(file, 'dave', 'pw');
    assert.equal(other.code, 2, 'another user: the $2$ line still refuses');
    assert.ok(other.stderr.includes(`${file}:1: $2$ hashes (the original bcrypt, before $2a$) are not supported`), other.stderr);
    assert.equal(readFileSync(file, 'utf8'), `alice:${original}\n${bob}\n`);

    const replaced = await setPassword(file, 'alice', 'alice-new');
    assert.equal(replaced.code, 0, replaced.stderr);
    const users = parseUsersFile(readFileSync(file, 'utf8'), file); // the daemon reads it now
    assert.deepEqual([...users.keys()], ['alice', 'bob']);
    const alice = users.get('alice');
    assert.ok(alice?.kind === 'bcrypt' && bcrypt.compareSync('alice-new', alice.hash));

    const gone = dir.file('2-delete.users');
    writeFileSync(gone, `${bob}\ncarol:${original}\n`);
    const deleted = await runCli(['passwd', gone, 'carol', '--delete']);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(readFileSync(gone, 'utf8'), `${bob}\n`);
  });

  it('rejects a bad --cost and a user name with a colon', async () => {
    const file = dir.file('bad-args.users');
    const cost = await runCli(['passwd', file, 'alice', '--cost', '3'], { input: 'pw\n' });
    assert.notEqual(cost.code, 0);
    assert.match(cost.stderr, /--cost/);
    const colon = await runCli(['passwd', file, 'a:b', '--cost', '4'], { input: 'pw\n' });
    assert.notEqual(colon.code, 0);
    assert.match(colon.stderr, /":"/);
    assert.equal(existsSync(file), false);
  });

  it('refuses an unknown option or a negative --cost in one line with a hint, not the usage after it', async () => {
    const file = dir.file('option-args.users');
    for (const [args, problem] of [
      [['--foo'], /^socksgate passwd: Unknown option '--foo'.* \(see socksgate --help\)\n$/],
      [['--cost', '-1'], /^socksgate passwd: --cost -1: negative values are not accepted \(see socksgate --help\)\n$/],
    ] as const) {
      const r = await runCli(['passwd', file, 'alice', ...args], { input: 'pw\n' });
      assert.equal(r.code, 2, args.join(' '));
      assertOneLine(r.stderr, problem);
    }
    assert.equal(existsSync(file), false);
  });
});

describe('socksgate passwd: user names', () => {
  let dir: ReturnType<typeof tempDir>;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('refuses a name that could never log in: one line, exit 2, nothing written', async () => {
    const file = dir.file('refused.users');
    for (const [name, why] of [
      ['#alice', /may not start with "#"/],
      ['a'.repeat(256), /longer than 255 bytes/],
      ['é'.repeat(128), /longer than 255 bytes/], // 256 bytes in UTF-8
      ['al ice', /":" or spaces/],
      ['a:b', /":" or spaces/],
    ] as const) {
      const r = await setPassword(file, name, 'pw');
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assertOneLine(r.stderr, why);
      assert.equal(existsSync(file), false, name);
    }
  });

  it('every name it accepts reads back from the file as that name', async () => {
    const file = dir.file('accepted.users');
    const names = ['a'.repeat(255), 'é'.repeat(127), 'x#y', 'ü', 'a.b@example.com', '$2b$'];
    for (const name of names) {
      const r = await setPassword(file, name, 'pw');
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    }
    assert.deepEqual([...parseUsersFile(readFileSync(file, 'utf8')).keys()], names);
  });
});

describe('socksgate passwd: file errors', { skip: process.platform === 'win32' }, () => {
  let dir: ReturnType<typeof tempDir>;
  before(() => {
    dir = tempDir();
    chmodSync(dir.path, 0o755); // the unprivileged runs reach their files through it
  });
  after(() => dir.remove());

  it('a directory given as the file: one line, exit 2', async () => {
    const file = dir.file('a-directory');
    mkdirSync(file);
    const r = await setPassword(file, 'alice', 'pw');
    assert.equal(r.code, 2, r.stderr);
    assertOneLine(r.stderr, new RegExp(`cannot read ${file}: EISDIR`));
    const del = await runCli(['passwd', file, 'alice', '--delete']);
    assert.equal(del.code, 2, del.stderr);
    assertOneLine(del.stderr, /: EISDIR$/m);
  });

  it('a missing directory: one line, exit 2, and --delete of a missing file says so', async () => {
    const file = dir.file('missing/users');
    const r = await setPassword(file, 'alice', 'pw');
    assert.equal(r.code, 2, r.stderr);
    assertOneLine(r.stderr, new RegExp(`cannot write ${file}: ENOENT`));
    const del = await runCli(['passwd', dir.file('absent.users'), 'alice', '--delete']);
    assert.equal(del.code, 2, del.stderr);
    assertOneLine(del.stderr, /cannot read .*absent\.users: ENOENT/);
  });

  it('an unwritable directory or an unreadable file: one line, exit 2, nothing changed', async () => {
    const locked = dir.file('locked');
    mkdirSync(locked, { mode: 0o555 });
    chmodSync(locked, 0o555);
    const file = join(locked, 'users');
    const r = await runCli(['passwd', file, 'alice', '--cost', '4'], { input: 'pw\n', ...unprivileged });
    assert.equal(r.code, 2, r.stderr);
    assertOneLine(r.stderr, new RegExp(`cannot write ${file}: EACCES`));
    assert.equal(existsSync(file), false);

    const secret = dir.file('unreadable.users');
    writeFileSync(secret, '# nothing yet\n', { mode: 0o000 });
    chmodSync(secret, 0o000);
    const read = await runCli(['passwd', secret, 'alice', '--cost', '4'], { input: 'pw\n', ...unprivileged });
    assert.equal(read.code, 2, read.stderr);
    assertOneLine(read.stderr, new RegExp(`cannot read ${secret}: EACCES`));
    chmodSync(secret, 0o600);
    assert.equal(readFileSync(secret, 'utf8'), '# nothing yet\n');
  });
});

describe('socksgate passwd: the file it replaces', { skip: process.platform === 'win32' }, () => {
  let dir: ReturnType<typeof tempDir>;
  const aliceLine = () => `alice:${bcrypt.hashSync('alice-pw', 4)}\n`;
  before(() => {
    dir = tempDir();
    chmodSync(dir.path, 0o755); // the unprivileged run reaches its files through it
  });
  after(() => dir.remove());

  it('keeps the mode of the file it replaces, and makes a new one 0600', async () => {
    const file = dir.file('mode.users');
    writeFileSync(file, aliceLine());
    chmodSync(file, 0o640);
    assert.equal((await setPassword(file, 'bob', 'pw')).code, 0);
    assert.equal(statSync(file).mode & 0o7777, 0o640, 'after a change');
    assert.equal((await runCli(['passwd', file, 'alice', '--delete'])).code, 0);
    assert.equal(statSync(file).mode & 0o7777, 0o640, 'after a delete');

    const fresh = dir.file('fresh.users');
    assert.equal((await setPassword(fresh, 'alice', 'pw')).code, 0);
    assert.equal(statSync(fresh).mode & 0o7777, 0o600);
  });

  it('keeps the owner and group of the file it replaces', { skip: !isRoot && 'needs root (chown)' }, async () => {
    const file = dir.file('owned.users');
    writeFileSync(file, aliceLine());
    chownSync(file, 65534, 65534);
    chmodSync(file, 0o640);
    assert.equal((await setPassword(file, 'bob', 'pw')).code, 0);
    const st = statSync(file);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [65534, 65534, 0o640]);
    assert.deepEqual([...readUsers(file).keys()], ['alice', 'bob']);
  });

  it('refuses, and leaves the file and no temporary file, when it cannot keep the owner', { skip: !isRoot && 'needs root (a file owned by someone else)' }, async () => {
    const shared = dir.file('shared');
    mkdirSync(shared);
    chmodSync(shared, 0o777); // nobody may make files here and rename over root's
    const file = join(shared, 'users');
    const before = aliceLine();
    writeFileSync(file, before);
    chmodSync(file, 0o644);
    const r = await runCli(['passwd', file, 'bob', '--cost', '4'], { input: 'pw\n', ...unprivileged });
    assert.equal(r.code, 2, r.stderr);
    assertOneLine(r.stderr, new RegExp(`cannot keep the owner of ${file} \\(uid 0, gid 0\\): EPERM`));
    const st = statSync(file);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [0, 0, 0o644]);
    assert.equal(readFileSync(file, 'utf8'), before);
    assert.deepEqual(readdirSync(shared), ['users'], 'no temporary file left');
  });

  it('updates the file a symbolic link names, and the link stays', async () => {
    mkdirSync(dir.file('etc'));
    const real = dir.file('etc/users');
    writeFileSync(real, aliceLine());
    chmodSync(real, 0o640);
    const link = dir.file('users-link');
    symlinkSync('etc/users', link);
    assert.equal((await setPassword(link, 'bob', 'pw')).code, 0);
    assert.equal((await runCli(['passwd', link, 'alice', '--delete'])).code, 0);
    assert.ok(lstatSync(link).isSymbolicLink(), 'still a link');
    assert.equal(readlinkSync(link), 'etc/users');
    assert.deepEqual([...readUsers(real).keys()], ['bob']);
    assert.equal(statSync(real).mode & 0o7777, 0o640);
    assert.deepEqual(readdirSync(dir.file('etc')), ['users'], 'no temporary file left beside it');

    const dangling = dir.file('dangling-link');
    symlinkSync('etc/nothing', dangling);
    const r = await setPassword(dangling, 'bob', 'pw');
    assert.equal(r.code, 2);
    assertOneLine(r.stderr, /cannot follow the symbolic link .*dangling-link: ENOENT/);
    assert.ok(lstatSync(dangling).isSymbolicLink());
  });

  it('refuses to replace what is not a regular file', async () => {
    const fifo = dir.file('a-fifo');
    execFileSync('mkfifo', [fifo]);
    const r = await setPassword(fifo, 'alice', 'pw');
    assert.equal(r.code, 2, r.stderr);
    assertOneLine(r.stderr, /not a regular file/);
    assert.ok(lstatSync(fifo).isFIFO());
  });
});

describe('a users file written by socksgate passwd, used by the daemon', () => {
  let dir: ReturnType<typeof tempDir>;
  let echoServer: Fixture;
  let file: string;

  before(async () => {
    dir = tempDir();
    echoServer = await startEchoServer();
    file = dir.file('daemon.users');
    for (const [user, password] of [['alice', 'alice-pw'], ['bob', 'bob-pw'], ['carol', 'carol-pw']] as const) {
      const r = await setPassword(file, user, password);
      assert.equal(r.code, 0, r.stderr);
    }
    const del = await runCli(['passwd', file, 'carol', '--delete']);
    assert.equal(del.code, 0, del.stderr);
  });
  after(async () => {
    await echoServer?.close();
    dir?.remove();
  });

  it('authenticates its users, refuses a wrong password, a deleted user, and no credentials', async () => {
    const { daemon, port } = await startDaemon(['--users-file', file, '--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      for (const [user, password] of [['alice', 'alice-pw'], ['bob', 'bob-pw']] as const) {
        const socket = await socksConnect(port, echoServer.port, { user, password });
        assert.equal(await echo(socket, `hello ${user}`), `hello ${user}`);
        socket.end();
        await closed(socket);
      }

      await assert.rejects(socksConnect(port, echoServer.port, { user: 'alice', password: 'bob-pw' }), 'wrong password');
      await assert.rejects(socksConnect(port, echoServer.port, { user: 'carol', password: 'carol-pw' }), 'deleted user');
      await assert.rejects(socksConnect(port, echoServer.port), 'no credentials');

      const refused = await daemon.waitFor(
        (l) => l.event === 'session' && l.reason === 'auth-failed' && l.user === 'alice',
        'the auth-failed line for alice',
      );
      assert.equal(refused.level, 40, 'refusals are warnings');
      await daemon.waitFor((l) => l.event === 'session' && l.reason === 'auth-failed' && l.user === 'carol', 'carol refused');
      await daemon.waitFor((l) => l.event === 'session' && l.reason === 'no-acceptable-method', 'no-auth refused');
      for (const user of ['alice', 'bob']) {
        const ok = await daemon.waitFor(
          (l) => l.event === 'session' && l.user === user && l.reason !== 'auth-failed',
          `${user}'s access line`,
        );
        assert.equal(ok.authMethod, 'userpass');
        assert.equal(ok.reply, 0);
      }

      daemon.signal('SIGTERM');
      const exit = await daemon.waitExit();
      assert.equal(exit.code, 0, daemon.describe());
      const output = daemon.stdoutLines.join('\n') + daemon.stderr;
      for (const secret of ['alice-pw', 'bob-pw', 'carol-pw']) assert.ok(!output.includes(secret), `${secret} in the logs`);
    } finally {
      await daemon.kill();
    }
  });
});
