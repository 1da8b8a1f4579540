/** `--workers N`: several processes share the port; stop and logs stay whole. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { startEchoServer } from '../helpers/server.js';
import { writeFileSync } from 'node:fs';
import { DEFAULT_TIMEOUT_MS, Daemon, echo, socksConnect, startDaemon, tempDir, withTimeout } from './helpers.js';

/** Resolves once the daemon's stderr matches (bounded). */
function stderrMatches(daemon: Daemon, pattern: RegExp, what: string): Promise<void> {
  return withTimeout(new Promise<void>((resolve) => {
    const check = () => {
      if (!pattern.test(daemon.stderr)) return;
      daemon.child.stderr!.off('data', check);
      resolve();
    };
    daemon.child.stderr!.on('data', check);
    check();
  }), DEFAULT_TIMEOUT_MS, `${what}\n${daemon.describe()}`);
}

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

describe('socksgate --workers 2', () => {
  // Native handshakes (the default with the addon): each worker's addon accepts
  // on a SO_REUSEPORT socket of its own. Node handshakes: the cluster primary
  // accepts and hands connections round.
  for (const [engine, args] of [['native', []], ['node', ['--handshake-engine', 'node']]] as const) {
    it(`${engine} handshakes: serves from two processes on one port, logs which one served, and stops both on SIGTERM with exit 0`, async () => {
      const target = await startEchoServer();
      const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json', ...args]);
      try {
        const started = await Promise.all([0, 1].map((n) =>
          daemon.waitFor((l) => l.event === 'started' && daemon.logs.filter((x) => x.event === 'started').length > n, `worker ${n + 1} started`)));
        const workerPids = new Set(daemon.logs.filter((l) => l.event === 'started').map((l) => l.pid));
        assert.equal(workerPids.size, 2, 'two worker processes');
        assert.ok(started.every((l) => l.worker === true));
        assert.ok(started.every((l) => l.handshakes === engine), `each worker runs ${engine} handshakes`);
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
      await daemon.waitFor((l) => l.event === 'started' && daemon.logs.filter((x) => x.event === 'started').length >= 2, 'both workers started');
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
      const servedBy = await serveUntilBoth(daemon, port, target.port, new Set([pids[1], Number(replacement.pid)]));
      assert.ok(servedBy.has(Number(replacement.pid)), 'the replacement serves');
      daemon.signal('SIGTERM');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    } finally {
      await daemon.kill();
      await target.close();
      dir.remove();
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
