/**
 * `socksgate passwd FILE USER`: adds or replaces a user's bcrypt hash in a
 * users file. The password comes from a prompt (echo off) on a terminal, or
 * from the first line of stdin otherwise — never from argv, where `ps` and
 * shell history would show it.
 */
import { randomBytes } from 'node:crypto';
import {
  type Stats, accessSync, closeSync, constants, fchmodSync, fchownSync, fstatSync, fsyncSync, lstatSync, openSync, readFileSync,
  realpathSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { HELP_HINT, type OptionValues, argsProblem } from '../cli-args.js';
import { MAX_COST, MIN_BCRYPT_COST, isUsableCost, tooLongForBcrypt } from './hash-format.js';
import { TOO_LONG_FOR_BCRYPT, hashPassword, parseUsersFile, usersFileLine } from './users.js';

const USAGE = 'usage: socksgate passwd FILE USER [--delete] [--cost N]  (password from a prompt or stdin)';

const PASSWD_OPTIONS = { delete: { type: 'boolean' }, cost: { type: 'string' } } as const;
const PASSWD_OPTION_VALUES: OptionValues = { numeric: new Set(['cost']), secret: new Set() };

export async function runPasswd(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: PASSWD_OPTIONS,
    });
  } catch (err) {
    return fail(`${argsProblem(err, argv, PASSWD_OPTIONS, PASSWD_OPTION_VALUES)} ${HELP_HINT}`);
  }
  const [file, user, ...extra] = parsed.positionals;
  if (!file || !user || extra.length > 0) return fail(USAGE);
  const problem = nameProblem(user);
  if (problem) return fail(problem);
  const cost = Number(parsed.values.cost ?? 10);
  if (!isUsableCost(cost)) return fail(`--cost must be an integer from ${MIN_BCRYPT_COST} to ${MAX_COST}`);

  try {
    return await update(file, user, cost, parsed.values.delete === true);
  } catch (err) {
    if (err instanceof PasswdError) return fail(err.message);
    throw err;
  }
}

async function update(file: string, user: string, cost: number, remove: boolean): Promise<number> {
  if (remove) {
    await whileLocked(file, () => write(file, edited(file, user, null)));
    return done(`${user} is removed from ${file}`);
  }
  // Refuse a file we could not rewrite before asking for the password...
  edited(file, user, `${user}:`);
  let password: string;
  try {
    password = await readPassword();
  } catch (err) {
    return fail((err as Error).message);
  }
  if (password === '') return fail('empty password refused');
  if (tooLongForBcrypt(password)) return fail(TOO_LONG_FOR_BCRYPT);
  const line = `${user}:${await hashPassword(password, cost)}`;
  // ...and read it again now: the prompt may have waited while someone else changed it.
  await whileLocked(file, () => write(file, edited(file, user, line)));
  return done(`${user}'s password is set in ${file}`);
}

/** The users file as read: where it really is, its owner and mode (null when there is no file yet), its text. */
interface Snapshot {
  readonly target: string;
  readonly stat: Stats | null;
  readonly text: string;
}

/**
 * The file's text with `user`'s line replaced by `line` (or removed, when
 * null); it must read back. Lines are matched as parseUsersFile reads them
 * (trimmed, a BOM too). Everything else stays as it was: blank lines,
 * comments, the order (a replaced user keeps its place; a new one comes
 * last), a BOM, and each line's end; a new line ends as the file's first
 * line does (LF in a new file). Further lines of the same user are removed.
 */
function edited(file: string, user: string, line: string | null): Snapshot {
  const { target, stat, text } = read(file);
  if (!stat && line === null) throw new PasswdError(`cannot read ${file}: ENOENT`);
  checkWritableDirectory(target, file);
  const bom = text.startsWith('\uFEFF') ? '\uFEFF' : '';
  const lines = splitLines(text.slice(bom.length));
  const mine = lines.map((l) => usersFileLine(l.text)?.name === user);
  // Refuse to rewrite a file we cannot read back, but for the user's own
  // lines, which go: that is how a $2x$ or $2$ hash (or a broken one) is repaired.
  try {
    parseUsersFile(lines.map((l, i) => (mine[i] ? '' : l.text)).join('\n'), file);
  } catch (err) {
    throw new PasswdError((err as Error).message);
  }
  const first = mine.indexOf(true);
  if (line === null && first < 0) throw new PasswdError(`no user ${user} in ${file}`);
  const kept: Line[] = [];
  lines.forEach((l, i) => {
    if (i === first && line !== null) kept.push({ text: line, end: l.end });
    else if (!mine[i]) kept.push(l);
  });
  if (line !== null && first < 0) {
    const end = lines.find((l) => l.end !== '')?.end ?? '\n';
    const last = kept.at(-1);
    if (last && last.end === '') kept[kept.length - 1] = { text: last.text, end };
    kept.push({ text: line, end });
  }
  return { target, stat, text: bom + kept.map((l) => l.text + l.end).join('') };
}

/** A line of the file and its end: '\r\n', '\n', or '' (a last line without one). */
interface Line {
  readonly text: string;
  readonly end: string;
}

function splitLines(text: string): Line[] {
  if (text === '') return [];
  return text.split(/(?<=\n)/).map((raw) => {
    const end = /\r?\n$/.exec(raw)?.[0] ?? '';
    return { text: raw.slice(0, raw.length - end.length), end };
  });
}

/**
 * Why `user` could never log in from the users file, or null. A line
 * `user:hash` must read back as that user (parseUsersFile trims the line,
 * takes a line starting with # as a comment, and the name ends at the first
 * colon); a SOCKS5 client can send at most 255 bytes of name (RFC 1929).
 */
function nameProblem(user: string): string | null {
  if (user.includes(':') || /\s/.test(user)) return `user name may not contain ":" or spaces: ${user}`;
  if (user.startsWith('#')) return `user name may not start with "#" (the line would be a comment): ${user}`;
  if (Buffer.byteLength(user) > 255) return 'user name longer than 255 bytes (SOCKS5 cannot carry it)';
  if (usersFileLine(`${user}:`)?.name !== user) return `user name would not read back from the users file: ${user}`;
  return null;
}

/**
 * Reads the users file. A symbolic link is followed to the file it names
 * (realpath), which is the one rewritten: the link stays a link.
 */
function read(file: string): Snapshot {
  const target = resolveLink(file);
  let stat: Stats;
  try {
    stat = statSync(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { target, stat: null, text: '' };
    throw fsError('read', file, err);
  }
  if (stat.isDirectory()) throw new PasswdError(`cannot read ${file}: EISDIR`);
  if (!stat.isFile()) throw new PasswdError(`cannot rewrite ${file}: not a regular file`);
  try {
    return { target, stat, text: readFileSync(target, 'utf8') };
  } catch (err) {
    throw fsError('read', file, err);
  }
}

/** Where `file` really is: itself when it does not exist yet. */
function resolveLink(file: string): string {
  try {
    return realpathSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fsError('read', file, err);
  }
  let dangling = false;
  try {
    dangling = lstatSync(file).isSymbolicLink();
  } catch {
    // no file and no link: a new file
  }
  if (dangling) throw new PasswdError(`cannot follow the symbolic link ${file}: ENOENT`);
  return file;
}

/** A file can be made beside `target` (fails before the prompt on a missing or unwritable directory). */
function checkWritableDirectory(target: string, file: string): void {
  try {
    accessSync(dirname(target), constants.W_OK | constants.X_OK);
  } catch (err) {
    throw fsError('write', file, err);
  }
}

/** How long passwd waits for another passwd's lock on the same file, and how often it looks. */
const LOCK_WAIT_MS = 5000;
const LOCK_RETRY_MS = 20;

/**
 * Runs `change` (read, edit, replace the file) holding FILE.lock, made with
 * O_EXCL beside the file: two passwd runs on one file each read it, edit it
 * and rename their version over it, and without the lock the second rename
 * would drop the first one's change. The lock is held for milliseconds (no
 * prompt, no hashing inside), so a lock that stays past LOCK_WAIT_MS is one
 * a passwd left behind when it was killed: passwd then says so, naming the
 * lock and whether the process that made it still runs, rather than guess
 * and remove another run's lock.
 */
async function whileLocked(file: string, change: () => void): Promise<void> {
  const lock = `${resolveLink(file)}.lock`;
  const giveUpAt = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError('write', file, err);
    }
    if (Date.now() >= giveUpAt) throw new PasswdError(`cannot change ${file}: ${lock} ${lockHolder(lock)}`);
    await delay(LOCK_RETRY_MS);
  }
  try {
    change();
  } finally {
    rmSync(lock, { force: true });
  }
}

/** Who holds a lock (passwd writes its pid in it), and what to do about it. */
function lockHolder(lock: string): string {
  let pid = Number.NaN;
  try {
    pid = Number.parseInt(readFileSync(lock, 'utf8'), 10);
  } catch {
    // gone meanwhile, or unreadable
  }
  if (!Number.isInteger(pid) || pid <= 0) return 'is held, naming no process: remove it if no passwd is running';
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return `is held by process ${pid}, which is no longer running: remove it`;
  }
  return `is held by process ${pid}, still running: try again once it is done`;
}

/**
 * Replaces the file with the new text in one rename. The temporary file
 * beside it has a random name and is made with O_EXCL ('wx'): a name planted
 * there, a symbolic link above all, is never written through. It gets the
 * owner, group and mode of the file it replaces (a new file: 0600), and it is
 * removed when anything fails.
 */
function write(file: string, { target, stat, text }: Snapshot): void {
  const temp = `${target}.${randomBytes(8).toString('hex')}.tmp`;
  let fd: number | undefined;
  try {
    fd = openSync(temp, 'wx', 0o600);
  } catch (err) {
    throw fsError('write', file, err);
  }
  try {
    writeFileSync(fd, text);
    keepOwnerAndMode(fd, file, stat);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(temp, target);
  } catch (err) {
    if (fd !== undefined) closeQuietly(fd);
    rmSync(temp, { force: true });
    throw err instanceof PasswdError ? err : fsError('write', file, err);
  }
  syncDirectory(dirname(target));
}

/**
 * Gives the new file the old one's owner, group and mode. Changing the owner
 * takes root (the group, membership of it): when that fails the file is not
 * replaced, since the daemon reading it as that owner or group might no
 * longer be able to. When they are the same already (the file's owner runs
 * passwd), nothing needs root.
 */
function keepOwnerAndMode(fd: number, file: string, stat: Stats | null): void {
  if (!stat) {
    fchmodSync(fd, 0o600); // exactly, whatever the umask
    return;
  }
  const made = fstatSync(fd);
  if (made.uid !== stat.uid || made.gid !== stat.gid) {
    try {
      fchownSync(fd, stat.uid, stat.gid);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      throw new PasswdError(`cannot keep the owner of ${file} (uid ${stat.uid}, gid ${stat.gid}): ${code}`);
    }
  }
  fchmodSync(fd, stat.mode & 0o7777); // after fchown, which may clear set-id bits
}

/** Makes the rename durable; a file system that cannot sync a directory is no reason to fail. */
function syncDirectory(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // best effort
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // the write's error is the one to report
  }
}

async function readPassword(): Promise<string> {
  if (process.stdin.isTTY) {
    const first = await prompt('Password: ');
    const second = await prompt('Again: ');
    if (first !== second) throw new Error('passwords do not match');
    return first;
  }
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

/** Reads one line from the terminal without echoing it. */
function prompt(question: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(question);
    stdin.setRawMode(true);
    stdin.resume();
    let text = '';
    const onData = (data: Buffer) => {
      for (const char of data.toString('utf8')) {
        if (char === '\r' || char === '\n') return done();
        if (char === '\u0003') return done(new Error('interrupted'));
        if (char === '\u007f' || char === '\b') text = text.slice(0, -1);
        else text += char;
      }
    };
    const done = (err?: Error) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(text);
    };
    stdin.on('data', onData);
  });
}

/** A refusal told in one line (exit 2), not a stack trace. */
class PasswdError extends Error {}

/** A file system error as one line, `cannot read FILE: EACCES`; anything else (a bug) as it is. */
function fsError(action: 'read' | 'write', file: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? new PasswdError(`cannot ${action} ${file}: ${code}`) : (err as Error);
}

/** Says what changed, on stderr as htpasswd does, and that the daemon does not know yet: exit 0. */
function done(change: string): number {
  process.stderr.write(`socksgate passwd: ${change}; a running socksgate reads the file on SIGHUP\n`);
  return 0;
}

function fail(message: string): number {
  process.stderr.write(`socksgate passwd: ${message}\n`);
  return 2;
}
