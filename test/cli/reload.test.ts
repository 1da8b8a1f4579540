/**
 * SIGHUP: the daemon reads its config file (and users file) again and new
 * connections follow it, while connections already open keep working; a
 * broken file changes nothing; with workers, every worker reloads.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, renameSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../../src/auth/users.js';
import { type Fixture, closedPort, startEchoServer, until } from '../helpers/server.js';
import { DEFAULT_TIMEOUT_MS, Daemon, type LogLine, closed, echo, hupOnceCaught, socksConnect, startDaemon, tempDir, withTimeout } from './helpers.js';

/** A config file: loopback port 0, and optionally rules. */
function config(rules = ''): string {
  return `listen:\n  - { address: 127.0.0.1, port: 0 }\nlog: { format: json }\n${rules}`;
}

/** Rules denying `port`, allowing everything else. */
function denyPort(port: number): string {
  return `rules:\n  - name: no-echo\n    deny: { to: { ports: [${port}] } }\n  - name: rest\n    allow: {}\n`;
}

/** The n-th (1-based) log line with `event`, waited for. */
function nth(daemon: Daemon, event: string, n: number, what = `${event} line #${n}`): Promise<LogLine> {
  return daemon.waitFor(() => daemon.logs.filter((l) => l.event === event).length >= n, what)
    .then(() => daemon.logs.filter((l) => l.event === event)[n - 1]!);
}

async function expectRefusedByRule(proxyPort: number, targetPort: number): Promise<void> {
  await assert.rejects(socksConnect(proxyPort, targetPort), /NotAllowed/);
}

async function expectServed(proxyPort: number, targetPort: number, text: string): Promise<void> {
  const socket = await socksConnect(proxyPort, targetPort);
  assert.equal(await echo(socket, text), text);
  socket.end();
  await closed(socket);
}

describe('socksgate reload on SIGHUP', () => {
  let target: Fixture;
  let other: Fixture;
  before(async () => {
    target = await startEchoServer();
    other = await startEchoServer();
  });
  after(async () => {
    await target.close();
    await other.close();
  });

  it('applies a new rule to new connections, keeps an open one relaying, and survives a broken file', async () => {
    const dir = tempDir();
    const file = dir.file('socksgate.yaml');
    writeFileSync(file, config());
    const { daemon, port } = await startDaemon(['--config', file]);
    let open: Socket | undefined;
    try {
      open = await socksConnect(port, target.port);
      assert.equal(await echo(open, 'before'), 'before');

      writeFileSync(file, config(denyPort(target.port)));
      daemon.signal('SIGHUP');
      const reloaded = await nth(daemon, 'reloaded', 1);
      assert.equal(reloaded.level, 30);
      assert.deepEqual(reloaded.changed, ['rules']);
      assert.deepEqual(reloaded.needsRestart, []);
      assert.match(String(reloaded.msg), /^reloaded: /);

      await expectRefusedByRule(port, target.port);
      const denied = await daemon.waitFor((l) => l.event === 'session' && l.reason === 'not-allowed', 'the refusal line');
      assert.equal(denied.rule, 'no-echo');
      await expectServed(port, other.port, 'other destinations still allowed');
      assert.equal(await echo(open, 'after'), 'after', 'the connection opened before the reload keeps relaying');

      // A broken file: one error line naming the key path, and the running configuration stays.
      writeFileSync(file, `${config(denyPort(target.port))}timeouts: { connect: soon }\n`);
      daemon.signal('SIGHUP');
      const failed = await nth(daemon, 'reload-failed', 1);
      assert.equal(failed.level, 50);
      assert.match(String(failed.msg), /^reload failed/);
      assert.ok((failed.problems as string[]).some((p) => p.startsWith('timeouts.connect: ')), JSON.stringify(failed));
      assert.equal(daemon.logs.filter((l) => l.event === 'reloaded').length, 1);
      await expectRefusedByRule(port, target.port);
      await expectServed(port, other.port, 'still serving');
      assert.equal(await echo(open, 'still open'), 'still open');

      // A YAML syntax error is reported the same way.
      writeFileSync(file, 'listen: [\n');
      daemon.signal('SIGHUP');
      const unparsable = await nth(daemon, 'reload-failed', 2);
      assert.ok((unparsable.problems as string[]).some((p) => p.startsWith(file)), JSON.stringify(unparsable));
      await expectServed(port, other.port, 'serving after a syntax error');

      open.end();
      await closed(open);
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      const first = daemon.sessions().find((l) => l.bytesUp === 'before'.length + 'after'.length + 'still open'.length);
      assert.ok(first, `the open connection's access line\n${daemon.describe()}`);
      assert.equal(first.reason, 'client-closed');
    } finally {
      open?.destroy();
      await daemon.kill();
      dir.remove();
    }
  });

  it('without --config, SIGHUP reads the --users-file again', async () => {
    const dir = tempDir();
    const users = dir.file('users');
    writeFileSync(users, `alice:${await hashPassword('first', 4)}\n`);
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--users-file', users, '--log-format', 'json']);
    try {
      const alice = (password: string) => ({ user: 'alice', password });
      const s = await socksConnect(port, target.port, alice('first'));
      s.end();
      await closed(s);

      writeFileSync(users, `alice:${await hashPassword('second', 4)}\n`);
      daemon.signal('SIGHUP');
      const reloaded = await nth(daemon, 'reloaded', 1);
      assert.deepEqual(reloaded.changed, ['auth.usersFile']);

      await assert.rejects(socksConnect(port, target.port, alice('first')), /Authentication failed/);
      const t = await socksConnect(port, target.port, alice('second'));
      assert.equal(await echo(t, 'new password'), 'new password');
      t.end();
      await closed(t);

      daemon.signal('SIGTERM');
      assert.equal((await daemon.waitExit()).code, 0, daemon.describe());
    } finally {
      await daemon.kill();
      dir.remove();
    }
  });

  it('a SIGHUP while the daemon starts is deferred: reload-deferred once it listens, then the outcome', async () => {
    const daemon = new Daemon(['--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      await hupOnceCaught(daemon);
      await daemon.waitFor((l) => l.event === 'reloaded', 'the deferred reload');
      const events = daemon.logs.map((l) => l.event);
      // Nearly always it lands while socksgate loads; on a slow machine it may come after the start.
      if (events.includes('reload-deferred')) assert.ok(events.indexOf('reload-deferred') > events.indexOf('started'), `deferred until it listened: ${events.join(', ')}`);
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    } finally {
      await daemon.kill();
    }
  });

  it('with --workers 2, SIGHUP to the primary reloads every worker; each logs its outcome with its pid', async () => {
    const dir = tempDir();
    const file = dir.file('socksgate.yaml');
    writeFileSync(file, config());
    const { daemon, port } = await startDaemon(['--config', file, '--workers', '2']);
    let open: Socket | undefined;
    try {
      await nth(daemon, 'started', 2, 'both workers started');
      const workerPids = new Set(daemon.logs.filter((l) => l.event === 'started').map((l) => l.pid));
      assert.equal(workerPids.size, 2);
      open = await socksConnect(port, target.port);
      assert.equal(await echo(open, 'before'), 'before');

      writeFileSync(file, config(denyPort(target.port)));
      daemon.signal('SIGHUP');
      await nth(daemon, 'reloaded', 2, 'a reloaded line from each worker');
      const reloaded = daemon.logs.filter((l) => l.event === 'reloaded');
      assert.deepEqual(new Set(reloaded.map((l) => l.pid)), workerPids, 'one line per worker, each with its pid');
      for (const line of reloaded) assert.deepEqual(line.changed, ['rules']);
      assert.equal(daemon.exitStatus, null, 'the primary survives SIGHUP');

      // New connections land on either worker (the kernel picks, by address): every one is refused.
      const refusals = () => daemon.sessions().filter((l) => l.reason === 'not-allowed');
      const refusedBy = new Set<unknown>();
      for (let i = 0; i < 200 && refusedBy.size < 2; i++) {
        await expectRefusedByRule(port, target.port);
        await daemon.waitFor(() => refusals().length > i, `refusal line ${i + 1}`);
        refusedBy.add(refusals()[i]!.pid);
      }
      assert.deepEqual(refusedBy, workerPids, 'both workers applied the rule');
      assert.equal(await echo(open, 'after'), 'after', 'the connection opened before the reload keeps relaying');

      // A broken file: each worker says so and keeps serving with what it had.
      writeFileSync(file, `${config()}rules: nope\n`);
      daemon.signal('SIGHUP');
      await nth(daemon, 'reload-failed', 2, 'a reload-failed line from each worker');
      const failed = daemon.logs.filter((l) => l.event === 'reload-failed');
      assert.deepEqual(new Set(failed.map((l) => l.pid)), workerPids);
      for (let i = 0; i < 4; i++) await expectRefusedByRule(port, target.port);
      for (let i = 0; i < 4; i++) await expectServed(port, other.port, `other ${i}`);

      open.end();
      await closed(open);
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      assert.equal(daemon.logs.filter((l) => l.event === 'stopped').length, 2);
    } finally {
      open?.destroy();
      await daemon.kill();
      dir.remove();
    }
  });
});

describe('--log-file', () => {
  /** The JSON lines of `path` (none while it does not exist). */
  function linesOf(path: string): LogLine[] {
    if (!existsSync(path)) return [];
    return readFileSync(path, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as LogLine);
  }

  /** Polls until `path` has a line matching `match` (bounded). */
  async function untilLine(path: string, match: (l: LogLine) => boolean, what: string): Promise<void> {
    await withTimeout(until(() => linesOf(path).some(match)), DEFAULT_TIMEOUT_MS, `${what} in ${path}`);
  }

  it('writes the log to the file; after a rotation by rename, SIGHUP opens a new one under the name; a truncation (copytruncate) leaves no hole', async () => {
    const dir = tempDir();
    const target = await startEchoServer();
    const port = await closedPort();
    const file = dir.file('access.log');
    const daemon = new Daemon(['--listen', `127.0.0.1:${port}`, '--log-file', file, '--log-format', 'json']);
    const session = async (text: string) => {
      const socket = await socksConnect(port, target.port);
      const clientPort = socket.localPort;
      assert.equal(await echo(socket, text), text);
      socket.end();
      await closed(socket);
      return clientPort;
    };
    try {
      await untilLine(file, (l) => l.event === 'started', 'the started line');
      assert.deepEqual(daemon.stdoutLines, [], 'nothing on stdout');
      assert.equal(statSync(file).mode & 0o777, 0o640);
      const first = await session('before');
      await untilLine(file, (l) => l.clientPort === first, 'the first access line');
      renameSync(file, `${file}.1`);
      daemon.signal('SIGHUP');
      await untilLine(file, (l) => l.event === 'reloaded', 'the reloaded line, in a new file');
      const second = await session('after the rename');
      await untilLine(file, (l) => l.clientPort === second, 'the second access line');
      truncateSync(file, 0);
      const third = await session('after the truncation');
      await untilLine(file, (l) => l.clientPort === third, 'the third access line');
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      const rotated = linesOf(`${file}.1`);
      assert.deepEqual(rotated.filter((l) => l.event === 'session').map((l) => l.clientPort), [first], 'the rotated file has the first session only');
      assert.equal(readFileSync(file)[0], '{'.charCodeAt(0), 'no NUL bytes where the truncated lines were');
      assert.deepEqual(linesOf(file).filter((l) => l.event === 'session').map((l) => l.clientPort), [third]);
      assert.ok(linesOf(file).some((l) => l.event === 'stopped'));
    } finally {
      await daemon.kill();
      await target.close();
      dir.remove();
    }
  });

  it('a relative log.file in the config file names a file beside it, not in the daemon\'s working directory', async () => {
    const dir = tempDir();
    const port = await closedPort();
    const file = dir.file('socksgate.yaml');
    writeFileSync(file, `listen:\n  - { address: 127.0.0.1, port: ${port} }\nlog: { file: ./access.log }\n`);
    const daemon = new Daemon(['--config', file]);
    try {
      await untilLine(dir.file('access.log'), (l) => l.event === 'started', 'the started line');
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
    } finally {
      await daemon.kill();
      dir.remove();
    }
  });

  it('a log file that cannot be opened: exit 2 naming it; format pretty with a file is refused', async () => {
    const dir = tempDir();
    try {
      const missing = dir.file('no/such/dir/access.log');
      const daemon = new Daemon(['--listen', '127.0.0.1:0', '--log-file', missing]);
      assert.deepEqual(await daemon.waitExit(), { code: 2, signal: null });
      assert.match(daemon.stderr, new RegExp(`socksgate: cannot open the log file: ENOENT: no such file or directory, open '${missing}'`));
      const pretty = new Daemon(['--check', '--log-file', dir.file('a.log'), '--log-format', 'pretty']);
      assert.equal((await pretty.waitExit()).code, 2);
      assert.match(pretty.stderr, /log\.format: pretty is for a terminal: log\.file takes JSON lines/);
    } finally {
      dir.remove();
    }
  });
});
