/**
 * A worker's restart settings travel from the primary in
 * SOCKSGATE_WORKER_START (src/workers.ts). A value the primary did not write
 * is refused with a line naming the variable and exit code 2, never a raw
 * SyntaxError, and never filled in with defaults (a worker on another port).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { WorkerStartError, parseStartSettings, workerStartEnv } from '../../src/workers.js';
import { restartSettings } from '../../src/config/restart.js';
import { createServer } from '../../src/server/server.js';
import { CLI, DEFAULT_TIMEOUT_MS, envWithoutProxies, withTimeout } from './helpers.js';

const VARIABLE = 'SOCKSGATE_WORKER_START';

describe('worker start settings', () => {
  it('reads back what the primary writes', () => {
    const settings = restartSettings(createServer({ listen: [{ address: '127.0.0.1', port: 1081 }], workers: 2 }).config);
    assert.deepEqual(parseStartSettings(workerStartEnv(settings)[VARIABLE]!), settings);
  });

  it('refuses text that is not JSON, not an object, or lacks a restart key, naming the variable', () => {
    assert.throws(() => parseStartSettings('{not json'), (err: Error) => err instanceof WorkerStartError && /SOCKSGATE_WORKER_START is not JSON/.test(err.message));
    for (const text of ['[1]', 'null', '"listen"', '3']) {
      assert.throws(() => parseStartSettings(text), (err: Error) => err instanceof WorkerStartError && /is not a JSON object/.test(err.message), text);
    }
    assert.throws(
      () => parseStartSettings('{"listen":[],"workers":2,"relay":{},"handshake":{"engine":"node"}}'),
      (err: Error) => err instanceof WorkerStartError && /has no relay\.engine, log\.format, log\.file;/.test(err.message),
    );
  });

  it('a worker given a malformed value exits 2 with that line before it listens', async () => {
    // fork gives the child an IPC channel, and NODE_UNIQUE_ID makes it a cluster worker.
    const child = fork(CLI, ['--listen', '127.0.0.1:0'], {
      env: { ...envWithoutProxies(), NODE_UNIQUE_ID: '1', [VARIABLE]: '{"listen":' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await withTimeout(new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c))), DEFAULT_TIMEOUT_MS, 'worker exit');
    assert.equal(code, 2);
    assert.match(stderr, /^socksgate: SOCKSGATE_WORKER_START is not JSON \(.*\); the primary sets it for its workers\n$/);
  });
});
