/**
 * The daemon's life as a child process: serving, graceful shutdown on
 * SIGTERM/SIGINT, a port in use, log levels, and the README's default.
 */
import { after, before, describe, it } from 'node:test';
import { chmodSync, writeFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, type Socket, connect, createServer as createNetServer } from 'node:net';
import { run } from '../helpers/run.js';
import { type Fixture, closedPort, startEchoServer, startHttpServer, startTcpServer } from '../helpers/server.js';
import {
  CLI,
  DEFAULT_TIMEOUT_MS,
  Daemon,
  type LogLine,
  canBind,
  closed,
  echo,
  envWithoutProxies,
  lines,
  readBytes,
  socksConnect,
  startDaemon,
  stderrMatches,
  tempDir,
  tryConnect,
  withTimeout,
} from './helpers.js';

const ACCESS_FIELDS = [
  'id', 'listener', 'clientAddress', 'clientPort', 'version', 'authMethod', 'user', 'command',
  'requested', 'connected', 'reply', 'bytesUp', 'bytesDown', 'durationMs', 'reason',
] as const;

describe('socksgate daemon lifecycle', () => {
  let echoServer: Fixture;
  before(async () => {
    echoServer = await startEchoServer();
  });
  after(async () => {
    await echoServer?.close();
  });

  it('logs "listening" with the real port and serves a SOCKS5 CONNECT', async () => {
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      const listening = daemon.logs.find((l) => l.event === 'listening')!;
      assert.equal(listening.listener, `127.0.0.1:${port}`);
      assert.equal(listening.level, 30);
      const socket = await socksConnect(port, echoServer.port);
      assert.equal(await echo(socket, 'ping'), 'ping');
      socket.end();
      await closed(socket);
      const record = await daemon.waitFor((l) => l.event === 'session', 'the access line');
      assert.equal(record.reason, 'client-closed');
      assert.equal(record.requested, `127.0.0.1:${echoServer.port}`);
      daemon.signal('SIGTERM');
      assert.equal((await daemon.waitExit()).code, 0, daemon.describe());
    } finally {
      await daemon.kill();
    }
  });

  it('on SIGTERM stops accepting, lets an open session finish within the grace, then exits 0', async () => {
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--shutdown-grace', '5s']);
    let socket: Socket | undefined;
    try {
      socket = await socksConnect(port, echoServer.port);
      const clientPort = socket.localPort;
      assert.equal(await echo(socket, 'ping'), 'ping');

      daemon.signal('SIGTERM');
      const stopping = await daemon.waitFor((l) => l.event === 'stopping', 'the "stopping" line');
      assert.equal(stopping.signal, 'SIGTERM');
      const draining = await daemon.waitFor((l) => l.event === 'draining', 'the "draining" line');
      assert.equal(draining.sessions, 1);
      assert.equal(draining.graceMs, 5000);

      // No new connections…
      assert.equal(await tryConnect(port), 'ECONNREFUSED');
      // …but the open session keeps relaying, and the daemon keeps running.
      assert.equal(await echo(socket, 'still here'), 'still here');
      assert.equal(daemon.exitStatus, null, 'the daemon waits for the open session');
      assert.equal(daemon.logs.some((l) => l.event === 'stopped'), false);

      socket.end();
      await closed(socket);
      const exit = await daemon.waitExit();
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.describe());

      const sessions = daemon.sessions();
      assert.equal(sessions.length, 1, daemon.describe());
      const record = sessions[0]!;
      for (const field of ACCESS_FIELDS) assert.ok(field in record, `access line has ${field}`);
      assert.equal(record.level, 30);
      assert.equal(typeof record.id, 'number');
      assert.equal(record.listener, `127.0.0.1:${port}`);
      assert.equal(record.clientAddress, '127.0.0.1');
      assert.equal(record.clientPort, clientPort);
      assert.equal(record.version, 5);
      assert.equal(record.authMethod, 'none');
      assert.equal(record.user, null);
      assert.equal(record.command, 'connect');
      assert.equal(record.requested, `127.0.0.1:${echoServer.port}`);
      assert.equal(record.connected, `127.0.0.1:${echoServer.port}`);
      assert.equal(record.reply, 0);
      assert.equal(record.bytesUp, 'ping'.length + 'still here'.length);
      assert.equal(record.bytesDown, 'ping'.length + 'still here'.length);
      assert.equal(typeof record.durationMs, 'number');
      assert.ok((record.durationMs as number) >= 0);
      assert.equal(record.reason, 'client-closed');

      const events = daemon.logs.map((l) => l.event);
      const order = ['listening', 'started', 'stopping', 'draining', 'session', 'stopped'].map((e) => events.indexOf(e));
      assert.ok(order.every((i) => i >= 0), `events: ${events.join(',')}`);
      assert.deepEqual([...order].sort((a, b) => a - b), order, `events in order: ${events.join(',')}`);
      assert.equal(daemon.stderr, '');
    } finally {
      socket?.destroy();
      await daemon.kill();
    }
  });

  it('on SIGINT closes a session that never ends once the grace is over, and exits 0', async () => {
    // A destination that accepts and then says nothing, forever.
    const silent = await startTcpServer(() => {});
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--shutdown-grace', '300ms']);
    let socket: Socket | undefined;
    try {
      socket = await socksConnect(port, silent.port);
      socket.write('hello?');
      const socketClosed = closed(socket);

      const signalledAt = Date.now();
      daemon.signal('SIGINT');
      const draining = await daemon.waitFor((l) => l.event === 'draining', 'the "draining" line');
      assert.equal(draining.graceMs, 300);
      assert.equal(draining.sessions, 1);
      const exit = await daemon.waitExit();
      const elapsed = Date.now() - signalledAt;
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.describe());
      assert.ok(elapsed >= 250, `exited after ${elapsed} ms, before the grace was over`);
      assert.ok(elapsed < 5000, `exited after ${elapsed} ms: the grace was not applied`);
      await socketClosed; // the daemon closed the client's connection

      const stopping = daemon.logs.find((l) => l.event === 'stopping');
      assert.equal(stopping?.signal, 'SIGINT');
      assert.ok(daemon.logs.some((l) => l.event === 'stopped'), daemon.describe());
      const sessions = daemon.sessions();
      assert.equal(sessions.length, 1, daemon.describe());
      assert.equal(sessions[0]!.reason, 'shutdown');
      assert.equal(sessions[0]!.bytesUp, 'hello?'.length);
      assert.equal(sessions[0]!.bytesDown, 0);
    } finally {
      socket?.destroy();
      await daemon.kill();
      await silent.close();
    }
  });

  it('SIGUSR1 opens no inspector and SIGUSR2 does not end the daemon: each is ignored, said on stderr', async () => {
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
        daemon.signal(signal);
        await stderrMatches(daemon, new RegExp(`${signal} ignored`), `stderr says ${signal} was ignored`);
      }
      // Node's inspector says this on stderr when SIGUSR1 starts it.
      assert.doesNotMatch(daemon.stderr, /Debugger listening/);
      const socket = await socksConnect(port, echoServer.port);
      assert.equal(await echo(socket, 'still serving'), 'still serving');
      socket.destroy();
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
    } finally {
      await daemon.kill();
    }
  });

  it('a users file or a config file with plain passwords that others can read is said at warn, naming it and its mode; 0600 and 0640 are not', async () => {
    const dir = tempDir();
    try {
      const users = dir.file('users');
      writeFileSync(users, 'bob:$2b$04$abcdefghijklmnopqrstuuW7W1K7Oq5fRbTEUIf7IXOYdPSkqO2jK\n');
      const config = dir.file('socksgate.yaml');
      writeFileSync(config, `auth:\n  methods: [userpass]\n  usersFile: ${users}\n  users:\n    - { name: alice, password: s3cret }\n`);
      const warnings = async (usersMode: number, configMode: number) => {
        chmodSync(users, usersMode);
        chmodSync(config, configMode);
        const { daemon } = await startDaemon(['--config', config, '--listen', '127.0.0.1:0', '--log-format', 'json']);
        try {
          await daemon.waitFor((l) => l.event === 'started', 'started');
          return daemon.logs.filter((l) => l.event === 'secrets-readable').map((l) => ({ level: l.level, msg: l.msg }));
        } finally {
          await daemon.kill();
        }
      };
      assert.deepEqual(await warnings(0o644, 0o604), [
        { level: 40, msg: `users file ${users} is open to others (mode 0644): chmod 600 (or 640, for its group to read)` },
        { level: 40, msg: `config file with plain passwords ${config} is open to others (mode 0604): chmod 600 (or 640, for its group to read)` },
      ]);
      assert.deepEqual(await warnings(0o600, 0o640), []);
      assert.deepEqual(await warnings(0o620, 0o600), [
        { level: 40, msg: `users file ${users} is open to others (mode 0620): chmod 600 (or 640, for its group to read)` },
      ]);
    } finally {
      dir.remove();
    }
  });

  it('too few file descriptors to load its modules (ulimit -n 40): one line naming the cause and the limit, exit 1 (it was a stack)', async () => {
    const r = await run('bash', ['-c', `ulimit -n 40 && exec "${process.execPath}" "${CLI}" --check`]);
    assert.equal(r.code, 1, r.stderr.toString());
    assert.deepEqual(lines(r.stderr.toString()).map((l) => l.replace(/'[^']*'/, 'FILE')), [
      'socksgate: cannot load its modules: EMFILE: too many open files, open FILE (too few file descriptors: raise `ulimit -n`, or LimitNOFILE= in a systemd unit)',
    ]);
  });

  it('a port already in use gives one clear line on stderr, a start-failed line in the log, and a non-zero exit', async () => {
    const blocker = createNetServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const port = (blocker.address() as AddressInfo).port;
    const daemon = new Daemon(['--listen', `127.0.0.1:${port}`, '--log-format', 'json']);
    try {
      const exit = await daemon.waitExit();
      assert.notEqual(exit.code, 0, daemon.describe());
      assert.equal(exit.signal, null);
      const problems = lines(daemon.stderr);
      assert.equal(problems.length, 1, daemon.stderr);
      assert.match(problems[0]!, /address already in use/);
      assert.ok(problems[0]!.includes(`127.0.0.1:${port}`), problems[0]);
      assert.equal(daemon.logs.some((l) => l.event === 'listening' || l.event === 'started'), false);
      // The log says it too: read alone (a file), it showed a clean stop.
      const failed = daemon.logs.filter((l) => l.event === 'start-failed');
      assert.equal(failed.length, 1, daemon.describe());
      assert.equal(failed[0]!.level, 50);
      assert.equal(failed[0]!.problem, problems[0]!.replace(/^socksgate: /, ''));
    } finally {
      await daemon.kill();
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });

  it('--log-level warn suppresses the info access lines of normal sessions but keeps warnings', async () => {
    // At warn there is no "listening" line to wait for: pick a free port and
    // wait for the first connection the daemon accepts (bounded).
    const port = await closedPort();
    const daemon = new Daemon(['--listen', `127.0.0.1:${port}`, '--log-format', 'json', '--log-level', 'warn']);
    let socket: Socket | undefined;
    try {
      socket = await withTimeout(connectWhenUp(port, daemon), DEFAULT_TIMEOUT_MS, 'the daemon to accept connections');
      // That probe was a SOCKS4 request with SOCKS4 off: refused (CD 91), logged at warn.
      const reply = await readBytes(socket, 8);
      assert.equal(reply[1], 0x5b);
      socket.end();
      await closed(socket);
      const refused = await daemon.waitFor((l) => l.event === 'session' && l.reason === 'not-allowed', 'the warn line');
      assert.equal(refused.level, 40);

      const normal = await socksConnect(port, echoServer.port);
      assert.equal(await echo(normal, 'quiet'), 'quiet');
      normal.end();
      await closed(normal);
      // A second warning after the normal session: once it is logged, the normal one has closed too.
      const bad = connect({ host: '127.0.0.1', port });
      bad.on('error', () => {});
      bad.end(Buffer.from([0x47, 0x45, 0x54])); // "GET": not SOCKS
      await daemon.waitFor((l) => l.event === 'session' && l.reason === 'protocol-error', 'the protocol-error line');
      await closed(bad);

      daemon.signal('SIGTERM');
      assert.equal((await daemon.waitExit()).code, 0, daemon.describe());
      const infos = daemon.logs.filter((l) => l.level < 40);
      assert.deepEqual(infos, [], 'no info lines at --log-level warn');
      const sessions = daemon.sessions();
      assert.equal(sessions.length, 2, daemon.describe());
      assert.ok(sessions.every((l) => l.reason !== 'client-closed'), daemon.describe());
    } finally {
      socket?.destroy();
      await daemon.kill();
    }
  });

  it('--log-level info (the default) does log the access line of a normal session', async () => {
    // The counterpart of the test above, so that one cannot pass by logging nothing at all.
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json']);
    try {
      const normal = await socksConnect(port, echoServer.port);
      assert.equal(await echo(normal, 'loud'), 'loud');
      normal.end();
      await closed(normal);
      const line: LogLine = await daemon.waitFor((l) => l.event === 'session', 'the access line');
      assert.equal(line.level, 30);
      assert.equal(line.reason, 'client-closed');
      daemon.signal('SIGTERM');
      assert.equal((await daemon.waitExit()).code, 0);
    } finally {
      await daemon.kill();
    }
  });

  it('README default: no flags serves SOCKS5 on 127.0.0.1:1080 (curl --socks5-hostname)', async (t) => {
    if (!(await canBind(1080))) {
      t.skip('127.0.0.1:1080 is in use on this machine');
      return;
    }
    const curl = await run('curl', ['--version']).catch(() => null);
    if (!curl || curl.code !== 0) {
      t.skip('curl is not installed');
      return;
    }
    const http = await startHttpServer('hello through the default proxy');
    let daemon: Daemon | undefined;
    try {
      const started = await startDaemon([]);
      daemon = started.daemon;
      assert.equal(started.port, 1080);
      assert.equal(daemon.logs.find((l) => l.event === 'listening')?.listener, '127.0.0.1:1080');

      const r = await run(
        'curl',
        ['-sS', '--max-time', '10', '--socks5-hostname', '127.0.0.1:1080', `http://localhost:${http.port}/`],
        { env: envWithoutProxies(), timeoutMs: 15_000 },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.toString(), 'hello through the default proxy');
      // It went through the proxy, with the name resolved there.
      const record = await daemon.waitFor((l) => l.event === 'session', 'the access line of the curl request');
      assert.equal(record.requested, `localhost:${http.port}`);
      assert.equal(record.version, 5);

      daemon.signal('SIGTERM');
      const exit = await daemon.waitExit();
      assert.deepEqual(exit, { code: 0, signal: null }, daemon.describe());
    } finally {
      await daemon?.kill();
      await http.close();
    }
  });
});

/**
 * Connects to a daemon that is starting, retrying refused connections until
 * it accepts one; fails at once if the daemon exits. Sends a SOCKS4 request
 * (refused when SOCKS4 is off, which logs a warning).
 */
async function connectWhenUp(port: number, daemon: Daemon): Promise<Socket> {
  for (;;) {
    if (daemon.exitStatus) throw new Error(`daemon exited before accepting connections\n${daemon.describe()}`);
    const socket = await new Promise<Socket | null>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(null));
    });
    if (socket) {
      socket.on('error', () => {});
      socket.write(Buffer.from([0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0x00]));
      return socket;
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
