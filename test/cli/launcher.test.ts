/**
 * bin/socksgate.cjs, the `socksgate` command and `npm start`: it gives libuv's
 * thread pool 16 threads unless the operator set UV_THREADPOOL_SIZE, before
 * the ES module loader starts the pool (which an ES module entry cannot do).
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Daemon } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const LAUNCHER = `${ROOT}bin/socksgate.cjs`;

/** The daemon's threads once it listens (libuv starts every pool thread at once). */
async function threadsOf(env: NodeJS.ProcessEnv, script = LAUNCHER): Promise<number> {
  const daemon = new Daemon(['--listen', '127.0.0.1:0', '--log-format', 'json'], env, { script });
  try {
    await daemon.port();
    return readdirSync(`/proc/${daemon.child.pid}/task`).length;
  } finally {
    daemon.signal('SIGTERM');
    await daemon.waitExit();
  }
}

function envWith(size: string | undefined): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.UV_THREADPOOL_SIZE;
  if (size !== undefined) env.UV_THREADPOOL_SIZE = size;
  return env;
}

describe('the socksgate command', () => {
  it('is bin/socksgate.cjs, for npm start too', () => {
    const manifest = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { bin: Record<string, string>; scripts: Record<string, string>; files: string[] };
    assert.equal(manifest.bin.socksgate, 'bin/socksgate.cjs');
    assert.equal(manifest.scripts.start, 'node bin/socksgate.cjs');
    assert.ok(manifest.files.includes('bin'), 'published');
  });

  it('runs libuv\'s thread pool with 16 threads unless UV_THREADPOOL_SIZE says otherwise', async () => {
    const launched = await threadsOf(envWith(undefined));
    const operatorSaid4 = await threadsOf(envWith('4'));
    const plainEntry = await threadsOf(envWith(undefined), fileURLToPath(new URL('../../src/cli.js', import.meta.url)));
    assert.equal(launched - operatorSaid4, 12, `16 pool threads, not 4 (${launched} threads against ${operatorSaid4})`);
    assert.equal(plainEntry, operatorSaid4, 'the ES module entry alone keeps Node\'s 4');
  });
});
