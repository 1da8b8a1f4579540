/** The access log: a subscriber that turns session records into JSON lines. */
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { test } from 'node:test';
import { attachLogger, createLogger } from '../../src/index.js';
import { STDOUT_BATCHING } from '../../src/observe/log.js';
import { RawClient, hex } from '../helpers/raw.js';
import { startProxy } from '../helpers/server.js';

test('a refused session leaves a warn line with every access field, naming the cause', async () => {
  const out = new PassThrough();
  const lines: Array<Record<string, unknown>> = [];
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
  });
  const proxy = await startProxy();
  const log = createLogger({ level: 'info', format: 'json', destination: out });
  attachLogger(proxy.server, log);
  try {
    const client = await RawClient.connect(proxy.port);
    client.write(hex('05 00'));
    await client.readToEnd();
    await proxy.record();
    await new Promise<void>((resolve) => log.flush(() => resolve()));
    await new Promise((resolve) => setImmediate(resolve));
    const session = lines.find((l) => l.event === 'session');
    assert.ok(session, JSON.stringify(lines));
    assert.equal(session.level, 40, 'warn');
    assert.equal(session.reason, 'protocol-error');
    assert.match(String(session.msg), /bad SOCKS5 greeting: SOCKS5 greeting offers zero methods/);
    for (const key of ['id', 'listener', 'clientAddress', 'clientPort', 'version', 'authMethod', 'user', 'command', 'requested', 'connected', 'reply', 'bytesUp', 'bytesDown', 'durationMs', 'reason', 'error']) {
      assert.ok(key in session, `access line has ${key}`);
    }
  } finally {
    await proxy.close();
  }
});

test('stdout batching writes whole lines, at most PIPE_BUF bytes each, so workers sharing a pipe never split a line', async () => {
  // sonic-boom (pino's destination) writes through the fs module object: see
  // what reaches fs.write when the stdout options are used on a temporary file.
  const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-log-'));
  const path = join(dir, 'out.log');
  const fd = openSync(path, 'w');
  const writes: string[] = [];
  const realWrite = fs.write;
  (fs as { write: unknown }).write = (target: number, data: unknown, ...rest: unknown[]) => {
    if (target === fd) writes.push(Buffer.isBuffer(data) ? data.toString() : String(data));
    return (realWrite as (...args: unknown[]) => void)(target, data, ...rest);
  };
  try {
    const destination = pino.destination({ dest: fd, ...STDOUT_BATCHING });
    const log = pino({ base: undefined }, destination);
    for (let i = 0; i < 500; i++) log.info({ event: 'session', id: i, requested: 'x'.repeat(300) }, 'session');
    await new Promise<void>((resolve) => {
      destination.once('close', () => resolve());
      destination.end(); // writes what is left, then closes the file
    });
    assert.ok(writes.length > 10, `batched into ${writes.length} writes`);
    for (const chunk of writes) {
      assert.ok(Buffer.byteLength(chunk) <= 4096, `a write of ${Buffer.byteLength(chunk)} bytes`);
      assert.ok(chunk.endsWith('\n'), 'a write ends at a line boundary');
    }
    const lines = readFileSync(path, 'utf8').split('\n').filter(Boolean);
    assert.equal(lines.length, 500);
    assert.deepEqual(lines.map((l) => (JSON.parse(l) as { id: number }).id), [...Array(500).keys()]);
  } finally {
    (fs as { write: unknown }).write = realWrite;
    rmSync(dir, { recursive: true, force: true });
  }
});
