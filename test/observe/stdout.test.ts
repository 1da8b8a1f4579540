/**
 * stdout that cannot take the log: a reader that stalls, a full disk, a
 * reader that never reads again. The proxy keeps serving, holds a bounded
 * backlog, counts what it drops, and still stops on SIGTERM.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CLI, DEFAULT_TIMEOUT_MS, echo, socksConnect, tryConnect, withTimeout } from '../cli/helpers.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { closedPort, startEchoServer, startTcpServer } from '../helpers/server.js';
import { FIXTURE_BACKLOG_BYTES, type StallReport } from './stdout-fixture.js';

describe('the log on a stdout that cannot take it', () => {
  it('a reader that stalls: the backlog stays bounded, newer lines are dropped and counted, and a log-resumed line says how many once it reads again', async () => {
    const fixture = new URL('./stdout-fixture.js', import.meta.url).pathname;
    const child = spawn(process.execPath, [fixture], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, SOCKSGATE_STDOUT_FIXTURE: 'stall' },
    });
    try {
      child.stdout!.pause(); // the reader stalls
      const [report] = await withTimeout(once(child, 'message'), 30_000, 'the fixture\'s report') as [StallReport];
      assert.ok(report.dropped > 0, `a ${FIXTURE_BACKLOG_BYTES}-byte backlog drops lines (wrote ${report.written}, dropped ${report.dropped})`);

      const lines: Record<string, unknown>[] = [];
      await withTimeout(new Promise<void>((resolve) => {
        let partial = '';
        child.stdout!.setEncoding('utf8');
        child.stdout!.on('data', (chunk: string) => {
          const parts = (partial + chunk).split('\n');
          partial = parts.pop()!;
          for (const part of parts) lines.push(JSON.parse(part) as Record<string, unknown>);
          if (lines.some((line) => line.event === 'log-resumed')) resolve();
        });
        child.stdout!.resume(); // after pause(), a 'data' listener alone does not
      }), DEFAULT_TIMEOUT_MS, 'the log-resumed line');

      const numbered = lines.filter((line) => line.event === 'line').map((line) => Number(line.n));
      assert.equal(numbered.length, report.written - report.dropped, 'every line not dropped arrives, whole');
      assert.deepEqual(numbered, [...numbered].sort((a, b) => a - b), 'in order');
      const resumed = lines.find((line) => line.event === 'log-resumed')!;
      assert.equal(resumed.level, 40, 'at warn');
      assert.equal(resumed.dropped, report.dropped, 'it counts the dropped lines');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a full disk (/dev/full): the daemon keeps serving, says so once on stderr, and stops on SIGTERM with exit 0', async () => {
    const target = await startEchoServer();
    const full = openSync('/dev/full', 'w');
    const port = await closedPort();
    const daemon = startCli(port, full);
    try {
      await untilListening(port, daemon);
      for (let i = 0; i < 3; i++) {
        const socket = await socksConnect(port, target.port);
        assert.equal(await echo(socket, `hello ${i}`), `hello ${i}`);
        socket.destroy();
      }
      await withTimeout(untilStderr(daemon, /the log cannot be written to stdout \(ENOSPC/), DEFAULT_TIMEOUT_MS, 'the note on stderr');
      const exit = once(daemon.child, 'exit');
      daemon.child.kill('SIGTERM');
      assert.deepEqual(await withTimeout(exit, DEFAULT_TIMEOUT_MS, 'the daemon to exit'), [0, null], daemon.stderr());
      assert.equal(daemon.stderr().match(/cannot be written/g)?.length, 1, 'said once');
    } finally {
      daemon.child.kill('SIGKILL');
      closeSync(full);
      await target.close();
    }
  });

  it('a pipe whose reader never reads: SIGTERM still stops the daemon with exit 0', async () => {
    const target = await startTcpServer((socket) => socket.end());
    const dir = mkdtempSync(join(tmpdir(), 'socksgate-stdout-'));
    const fifo = join(dir, 'log');
    execFileSync('mkfifo', [fifo]);
    const pipe = openSync(fifo, 'r+'); // holds the reading end open, and never reads
    const port = await closedPort();
    const daemon = startCli(port, pipe);
    try {
      await untilListening(port, daemon);
      // Far more access lines than a pipe holds (64 KiB).
      const request = Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]);
      let started = 0;
      const lane = async () => {
        while (started < 600) {
          started++;
          const client = await RawClient.connect(port);
          client.write(request);
          await client.readToEnd(); // the target closes at once, and so the session ends
        }
      };
      await Promise.all(Array.from({ length: 8 }, lane));
      const exit = once(daemon.child, 'exit');
      daemon.child.kill('SIGTERM');
      assert.deepEqual(await withTimeout(exit, DEFAULT_TIMEOUT_MS, 'the daemon to exit'), [0, null], daemon.stderr());
    } finally {
      daemon.child.kill('SIGKILL');
      closeSync(pipe);
      rmSync(dir, { recursive: true, force: true });
      await target.close();
    }
  });
});

/** The daemon on 127.0.0.1:port with stdout to `stdoutFd`. */
function startCli(port: number, stdoutFd: number): { child: ChildProcess; stderr(): string } {
  const child = spawn(process.execPath, [CLI, '--listen', `127.0.0.1:${port}`, '--log-format', 'json'], { stdio: ['ignore', stdoutFd, 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => { stderr += chunk; });
  return { child, stderr: () => stderr };
}

/** Resolves once the port takes connections (its log cannot say so: stdout is the subject). */
async function untilListening(port: number, daemon: { child: ChildProcess; stderr(): string }): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await tryConnect(port) === 'connected') return;
    if (daemon.child.exitCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`the daemon did not listen on ${port}\n${daemon.stderr()}`);
}

function untilStderr(daemon: { child: ChildProcess; stderr(): string }, pattern: RegExp): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (!pattern.test(daemon.stderr())) return;
      daemon.child.stderr!.off('data', check);
      resolve();
    };
    daemon.child.stderr!.on('data', check);
    check();
  });
}
