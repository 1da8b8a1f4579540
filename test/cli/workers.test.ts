/** `--workers N`: several processes share the port; stop and logs stay whole. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type Socket, connect, createServer } from 'node:net';
import { describe, it } from 'node:test';
import { RawClient } from '../helpers/raw.js';
import { run } from '../helpers/run.js';
import { closedPort, startEchoServer } from '../helpers/server.js';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { DEFAULT_TIMEOUT_MS, Daemon, closed as closedSocket, echo, hupOnceCaught, readBytes, socksConnect, startDaemon, stderrMatches, tempDir } from './helpers.js';

/** Opens sessions one after another until both `pids` served one (bounded); the pids that served. */
async function serveUntilBoth(daemon: Daemon, port: number, targetPort: number, pids: ReadonlySet<unknown>): Promise<Set<unknown>> {
  const servedBy = new Set<unknown>();
  for (let i = 0; i < 200 && servedBy.size < pids.size; i++) {
    const socket = await socksConnect(port, targetPort);
    const clientPort = socket.localPort;
    assert.equal(await echo(socket, `hello ${i}`), `hello ${i}`);
    socket.end();
    await once(socket, 'close');
    const line = await daemon.waitFor((l) => l.event === 'session' && l.clientPort === clientPort, `the access line of session ${i + 1}`);
    servedBy.add(line.pid);
  }
  return servedBy;
}

/** The replacement worker serves beside the survivor; then SIGTERM stops both with exit 0. */
async function servesBesideThenStops(daemon: Daemon, port: number, targetPort: number, survivor: number, replacement: number): Promise<void> {
  const servedBy = await serveUntilBoth(daemon, port, targetPort, new Set([survivor, replacement]));
  assert.ok(servedBy.has(replacement), 'the replacement serves');
  daemon.signal('SIGTERM');
  assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
}

/**
 * `count` SOCKS5 BINDs open at once: every announced port differs, the
 * application server's connection to each port reaches that session (second
 * reply, then bytes both ways). Returns the pids that served them.
 */
async function concurrentBinds(daemon: Daemon, port: number, count: number, round: number): Promise<Set<unknown>> {
  const clients = await Promise.all(Array.from({ length: count }, () => RawClient.connect(port)));
  const apps: Socket[] = [];
  try {
    const announced = await Promise.all(clients.map(async (client) => {
      client.write('05 01 00  05 02 00 01 7f 00 00 01 00 00');
      assert.deepEqual([...await client.read(2)], [5, 0]);
      const reply = await client.read(10);
      assert.equal(reply[1], 0, `first BIND reply ${reply.toString('hex')}`);
      return reply.readUInt16BE(8);
    }));
    assert.equal(new Set(announced).size, count, `round ${round}: each BIND its own port: ${announced.join(', ')}`);
    for (const [i, client] of clients.entries()) {
      const app = connect({ host: '127.0.0.1', port: announced[i]! });
      app.on('error', () => {});
      apps.push(app);
      await once(app, 'connect');
      const second = await client.read(10);
      assert.equal(second[1], 0, `second BIND reply ${second.toString('hex')}`);
      assert.equal(second.readUInt16BE(8), app.localPort, 'the second reply names this session\'s peer');
      app.write(`app ${i}`);
      assert.equal((await client.read(`app ${i}`.length)).toString(), `app ${i}`);
      client.write(Buffer.from(`client ${i}`));
      assert.equal((await readBytes(app, `client ${i}`.length)).toString(), `client ${i}`);
    }
  } finally {
    for (const socket of apps) socket.destroy();
    for (const client of clients) client.destroy();
  }
  const pids = new Set<unknown>();
  for (const client of clients) {
    const line = await daemon.waitFor((l) => l.event === 'session' && l.clientPort === client.localPort, `the access line of BIND ${client.localPort}`);
    assert.equal(line.command, 'bind');
    pids.add(line.pid);
  }
  return pids;
}

/** Resolves once `pid` has `count` child processes (polled every 5 ms); rejects after `timeoutMs`. */
async function childrenOf(pid: number, count: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  const parentOf = (entry: string): number => {
    try {
      return Number(readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
    } catch {
      return -1; // gone meanwhile, or not a process
    }
  };
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const children = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry) && parentOf(entry) === pid);
    if (children.length >= count) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`process ${pid} had fewer than ${count} children after ${timeoutMs} ms`);
}

/** Resolves once both workers logged `started` (bounded). */
async function bothWorkersStarted(daemon: Daemon): Promise<void> {
  await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'started').length >= 2, 'both workers started');
}

/** `count` sessions through the proxy, open at once, each shown relaying by an echo. */
async function echoingSessions(port: number, targetPort: number, count: number): Promise<Socket[]> {
  const sessions = await Promise.all(Array.from({ length: count }, () => socksConnect(port, targetPort)));
  for (const [i, socket] of sessions.entries()) assert.equal(await echo(socket, `s${i}`), `s${i}`);
  return sessions;
}

describe('socksgate --workers 2', () => {
  // Native handshakes (the default with the addon): each worker's addon accepts
  // on a SO_REUSEPORT socket of its own. Node handshakes: the cluster primary
  // accepts and hands connections round.
  for (const [engine, args] of [['native', []], ['node', ['--handshake-engine', 'node']]] as const) {
    it(`${engine} handshakes: serves from two processes on one port, logs which one served, and stops both on SIGTERM with exit 0`, async () => {
      const target = await startEchoServer();
      const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', '--busy-poll', '20', ...args]);
      try {
        const started = await Promise.all([0, 1].map((n) =>
          daemon.waitFor((l) => l.event === 'started' && daemon.logs.filter((x) => x.event === 'started').length > n, `worker ${n + 1} started`)));
        const workerPids = new Set(daemon.logs.filter((l) => l.event === 'started').map((l) => l.pid));
        assert.equal(workerPids.size, 2, 'two worker processes');
        assert.ok(started.every((l) => l.worker === true));
        assert.ok(started.every((l) => l.handshakes === engine), `each worker runs ${engine} handshakes`);
        assert.ok(started.every((l) => l.busyPoll === 20), 'each worker\'s relay thread polls as the flag says');
        assert.ok(!workerPids.has(daemon.child.pid), 'the primary only supervises');
        for (const raw of daemon.stdoutLines.filter((l) => l.includes('"event":"started"'))) {
          assert.equal(raw.split('"pid":').length, 2, `one pid field: ${raw}`);
        }
        const listeners = daemon.logs.filter((l) => l.event === 'listening').map((l) => l.listener);
        assert.deepEqual(listeners, [`127.0.0.1:${port}`, `127.0.0.1:${port}`], 'both workers on the one port');

        const servedBy = await serveUntilBoth(daemon, port, target.port, workerPids);
        assert.equal(servedBy.size, 2, 'connections were shared between the workers');
        for (const pid of servedBy) assert.ok(workerPids.has(pid));

        daemon.signal('SIGTERM');
        const exit = await daemon.waitExit();
        assert.deepEqual(exit, { code: 0, signal: null });
        assert.equal(daemon.logs.filter((l) => l.event === 'stopped').length, 2, 'each worker drained and stopped');
      } finally {
        await daemon.kill();
        await target.close();
      }
    });
  }

  it('a replacement worker that cannot start (config broken since) is retried with a growing delay; the other keeps serving', async () => {
    const target = await startEchoServer();
    const dir = tempDir();
    const config = dir.file('socksgate.yaml');
    const good = 'listen:\n  - { address: 127.0.0.1, port: 0 }\nlog: { format: json }\n';
    writeFileSync(config, good);
    const { daemon, port } = await startDaemon(['--config', config, '--workers', '2']);
    try {
      await bothWorkersStarted(daemon);
      const pids = daemon.logs.filter((l) => l.event === 'started').map((l) => Number(l.pid));
      writeFileSync(config, 'listen: [\n'); // broken from now on
      process.kill(pids[0]!, 'SIGKILL');
      await stderrMatches(daemon, new RegExp(`worker ${pids[0]} exited \\(SIGKILL\\); starting another`), 'the crash to be noticed');
      await stderrMatches(daemon, /exited before listening \(code 2\); retrying in 2 s/, 'the failed replacement and its backoff');
      const socket = await socksConnect(port, target.port); // the surviving worker serves meanwhile
      assert.equal(await echo(socket, 'still serving'), 'still serving');
      socket.destroy();
      writeFileSync(config, good);
      const replacement = await daemon.waitFor((l) => l.event === 'started' && !pids.includes(Number(l.pid)), 'a replacement worker once the file is fixed');
      assert.equal(replacement.worker, true);
      // It listens on the port the primary reserved, beside the surviving worker.
      await servesBesideThenStops(daemon, port, target.port, pids[1]!, Number(replacement.pid));
    } finally {
      await daemon.kill();
      await target.close();
      dir.remove();
    }
  });

  it('BIND: sessions in different workers get ports of their own, and each inbound connection reaches its own session', async () => {
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
    try {
      await bothWorkersStarted(daemon);
      // Which worker takes a connection is the kernel's choice: rounds of
      // concurrent BINDs until one round had both (bounded).
      let workersInARound = 0;
      for (let round = 0; round < 5 && workersInARound < 2; round++) {
        const pids = await concurrentBinds(daemon, port, 6, round);
        workersInARound = pids.size;
      }
      assert.equal(workersInARound, 2, 'a round of BINDs was served by both workers');
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    } finally {
      await daemon.kill();
    }
  });

  it('a replacement worker started after the config file changed restart keys keeps the running values, says so, and serves beside the other', async () => {
    const target = await startEchoServer();
    const dir = tempDir();
    const config = dir.file('socksgate.yaml');
    writeFileSync(config, 'listen:\n  - { address: 127.0.0.1, port: 0 }\nlog: { format: json }\n');
    const { daemon, port } = await startDaemon(['--config', config, '--workers', '2']);
    try {
      await bothWorkersStarted(daemon);
      const pids = daemon.logs.filter((l) => l.event === 'started').map((l) => Number(l.pid));
      const elsewhere = await closedPort();
      // Each would need a restart: another port, Node handshakes (which could
      // not share the reserved port), another log format (lines this test could not read).
      writeFileSync(config, `listen:\n  - { address: 127.0.0.1, port: ${elsewhere} }\nhandshake: { engine: node }\nlog: { format: pretty }\n`);
      process.kill(pids[0]!, 'SIGKILL');
      const replacement = await daemon.waitFor((l) => l.event === 'started' && !pids.includes(Number(l.pid)), 'a replacement worker');
      const pid = Number(replacement.pid);
      assert.equal(replacement.handshakes, 'native', 'the running handshake engine');
      const notice = daemon.logs.find((l) => l.event === 'restart-needed' && Number(l.pid) === pid);
      assert.deepEqual(notice?.needsRestart, ['listen', 'handshake.engine', 'log.format'], 'the replacement names what it set aside');
      const listening = daemon.logs.filter((l) => l.event === 'listening' && Number(l.pid) === pid).map((l) => l.listener);
      assert.deepEqual(listening, [`127.0.0.1:${port}`], 'the running port, not the file\'s');
      await servesBesideThenStops(daemon, port, target.port, pids[1]!, pid);
    } finally {
      await daemon.kill();
      await target.close();
      dir.remove();
    }
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} while the workers are still starting stops them all with exit 0`, async () => {
      const daemon = new Daemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
      try {
        // The primary forks only once its own handlers are in place; a worker
        // takes far longer to load than this poll's step, so the signal it
        // passes on reaches workers that have no handlers of their own yet.
        await childrenOf(daemon.child.pid!, 2);
        daemon.signal(signal);
        assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
        assert.doesNotMatch(daemon.stderr, /while stopping/);
      } finally {
        await daemon.kill();
      }
    });
  }

  it('a second SIGTERM while draining: every worker cuts its sessions, writes a forced line and every access line, and exits 1', async () => {
    const target = await startEchoServer();
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', '--shutdown-grace', '60s']);
    try {
      await bothWorkersStarted(daemon);
      const sessions = await echoingSessions(port, target.port, 8);
      daemon.signal('SIGTERM');
      await daemon.waitFor((l) => l.event === 'draining' && daemon.logs.filter((x) => x.event === 'draining').length >= 2, 'both workers draining');
      // Half of them end now, during the drain: a worker holds their lines in its batch for up to a second.
      const ended = sessions.slice(0, 4);
      const endedPorts = ended.map((socket) => socket.localPort);
      const cutPorts = sessions.slice(4).map((socket) => socket.localPort);
      for (const socket of ended) socket.end();
      await Promise.all(ended.map((socket) => closedSocket(socket)));
      await new Promise((resolve) => setTimeout(resolve, 100)); // the proxy records a session as it closes it
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 1, signal: null }, daemon.describe());
      for (const clientPort of endedPorts) {
        assert.ok(daemon.logs.some((l) => l.event === 'session' && l.clientPort === clientPort), `the access line of ${clientPort} was written`);
      }
      const forced = daemon.logs.filter((l) => l.event === 'forced');
      assert.ok(forced.length > 0, 'a worker said it was forced');
      // Each worker that had some of the four still open says how many it cut.
      assert.equal(forced.reduce((sum, l) => sum + (l.sessions as number), 0), 4, daemon.describe());
      // And writes their access lines: cut by the stop, as at the end of a grace.
      const cut = daemon.sessions().filter((l) => cutPorts.includes(l.clientPort as number));
      assert.deepEqual(cut.map((l) => l.reason), ['shutdown', 'shutdown', 'shutdown', 'shutdown'], daemon.describe());
      assert.doesNotMatch(daemon.stderr, /SIGKILL|killing/);
      for (const socket of sessions) socket.destroy();
    } finally {
      await daemon.kill();
      await target.close();
    }
  });

  it('one SIGTERM to the whole process group (Ctrl-C, systemd) is one stop: the workers drain for the grace and exit 0', async () => {
    const target = await startEchoServer();
    const daemon = new Daemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', '--shutdown-grace', '1s'], undefined, { detached: true });
    try {
      const port = await daemon.port();
      await bothWorkersStarted(daemon);
      // Open sessions on both workers: each must drain, not be cut off.
      const sessions = await echoingSessions(port, target.port, 8);
      const clientPorts = sessions.map((socket) => socket.localPort);
      daemon.signalGroup('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      assert.equal(daemon.logs.filter((l) => l.event === 'forced').length, 0, `no worker took it for a second signal\n${daemon.describe()}`);
      const ended = daemon.sessions().filter((l) => clientPorts.includes(l.clientPort as number));
      assert.equal(ended.length, sessions.length, `every open session has its access line\n${daemon.describe()}`);
      assert.ok(ended.every((l) => l.reason === 'shutdown'), `each was ended by the stop after its grace: ${ended.map((l) => l.reason).join(', ')}`);
      for (const socket of sessions) socket.destroy();
    } finally {
      await daemon.kill();
      await target.close();
    }
  });

  it('one SIGHUP to the whole process group is one reload per worker (each also gets it from the kernel, and ignores that one)', async () => {
    const daemon = new Daemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', '--log-level', 'debug'], undefined, { detached: true });
    try {
      await daemon.port();
      await bothWorkersStarted(daemon);
      daemon.signalGroup('SIGHUP');
      await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'reloaded').length >= 2, 'both workers reloaded');
      await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'reload-ignored').length >= 2, 'both workers ignored the kernel\'s SIGHUP');
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      // A second reload from the kernel's copy would have come before the stop, or been a reload-ignored at warn while stopping.
      const reloaded = daemon.logs.filter((l) => l.event === 'reloaded');
      assert.equal(reloaded.length, 2, `one reload per worker\n${daemon.describe()}`);
      assert.equal(new Set(reloaded.map((l) => l.pid)).size, 2);
      assert.equal(daemon.logs.filter((l) => l.event === 'reload-ignored').length, 2, daemon.describe());
    } finally {
      await daemon.kill();
    }
  });

  it('the supervisor is named socksgate and its workers socksgate worker, so the README\'s kill -HUP "$(pidof socksgate)" signals the supervisor alone', async () => {
    const { daemon } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
    try {
      await bothWorkersStarted(daemon);
      const comm = (pid: unknown) => readFileSync(`/proc/${String(pid)}/comm`, 'utf8').trim();
      assert.equal(comm(daemon.child.pid), 'socksgate');
      const workers = daemon.logs.filter((l) => l.event === 'started').map((l) => l.pid);
      for (const pid of workers) assert.equal(comm(pid), 'socksgate worke', 'the kernel keeps 15 characters of "socksgate worker"');
      const named = (await run('pidof', ['socksgate'])).stdout.toString().trim().split(/\s+/).map(Number);
      assert.ok(named.includes(daemon.child.pid!), `pidof socksgate: ${named.join(' ')}`);
      for (const pid of workers) assert.ok(!named.includes(pid as number), `worker ${String(pid)} is not named socksgate`);
    } finally {
      await daemon.kill();
    }
  });

  it('a SIGHUP while the supervisor starts: the workers reload once they listen', async () => {
    const daemon = new Daemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
    try {
      await hupOnceCaught(daemon);
      await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'reloaded').length >= 2, 'both workers reloaded');
      // Nearly always it lands while the supervisor loads; on a machine slow enough to
      // deliver it after the supervisor took over, the supervisor passes it on itself.
      assert.match(daemon.stderr, /SIGHUP arrived while starting|SIGHUP: asking 2 workers to reload/);
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    } finally {
      await daemon.kill();
    }
  });

  it('stdout\'s reader stalls: a stop still ends within the grace and the 2 s the log may take, after one worker exited first', async () => {
    const target = await startEchoServer();
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', '--shutdown-grace', '1s']);
    try {
      await bothWorkersStarted(daemon);
      daemon.child.stdout!.pause(); // the reader stalls from here on
      // Enough access lines to fill the pipe (64 KiB) many times over.
      for (let round = 0; round < 40; round++) {
        await Promise.all(Array.from({ length: 25 }, async () => {
          const socket = await socksConnect(port, target.port);
          socket.end();
          await closedSocket(socket);
        }));
      }
      // One session stays open, on one worker: the other, idle, exits first when asked to stop.
      const held = await socksConnect(port, target.port);
      assert.equal(await echo(held, 'held'), 'held');
      daemon.signal('SIGTERM');
      // Without a bound the worker left behind blocks in write(2) for good: the stop must not wait for the reader.
      const exit = await daemon.waitExit(20_000);
      assert.deepEqual(exit, { code: 0, signal: null });
      held.destroy();
    } finally {
      daemon.child.stdout!.resume();
      await daemon.kill();
      await target.close();
    }
  });

  it('a second socksgate with workers on the same port refuses to start (SO_REUSEPORT would have let it take part of the connections)', async () => {
    const { daemon: first, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
    const second = new Daemon(['--listen', `127.0.0.1:${port}`, '--workers', '2', '--log-format', 'json']);
    try {
      await bothWorkersStarted(first);
      const exit = await second.waitExit();
      assert.equal(exit.code, 1, second.describe());
      assert.match(second.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`));
      assert.equal(second.logs.some((l) => l.event === 'started'), false, 'no worker of the second started');
    } finally {
      await second.kill();
      await first.kill();
    }
  });

  it('exits non-zero when the workers cannot listen', async () => {
    const holder = createServer();
    holder.listen(0, '127.0.0.1');
    await once(holder, 'listening');
    const { port } = holder.address() as { port: number };
    const daemon = new Daemon(['--listen', `127.0.0.1:${port}`, '--workers', '2']);
    try {
      const exit = await daemon.waitExit();
      assert.notEqual(exit.code, 0);
      assert.match(daemon.stderr, /address already in use/);
    } finally {
      await daemon.kill();
      holder.close();
    }
  });
});
