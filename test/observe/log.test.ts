/** The access log: a subscriber that turns session records into JSON lines. */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { attachLogger, createLogger } from '../../src/index.js';
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
