/** The access log: a subscriber that turns session records into JSON lines. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import pino, { type Logger } from 'pino';
import { test } from 'node:test';
import { attachLogger, createLogger } from '../../src/index.js';
import fc from 'fast-check';
import type { CloseReason, SessionRecord } from '../../src/observe/events.js';
import { flushLog, isoTime, sessionLine, sessionLineBound, sessionMessage, writeSessionLine } from '../../src/observe/log.js';
import { STDOUT_BATCHING, StdoutSink, isRegularFile } from '../../src/observe/stdout.js';
import { FileLines } from '../../src/observe/file-lines.js';
import { RawClient, hex } from '../helpers/raw.js';
import { anyText } from '../helpers/arbitraries.js';
import { CRASH_SESSIONS } from './crash-fixture.js';
import { startProxy } from '../helpers/server.js';

test('a refused session leaves a warn line with every access field, naming the cause', async () => {
  const { out, lines } = capture();
  const session = JSON.parse(await refusedSessionLine(createLogger({ level: 'info', format: 'json', destination: out }), lines)) as Record<string, unknown>;
  assert.equal(session.level, 40, 'warn');
  assert.equal(session.reason, 'protocol-error');
  assert.match(String(session.msg), /bad SOCKS5 greeting: SOCKS5 greeting offers zero methods/);
  for (const key of ['id', 'listener', 'clientAddress', 'clientPort', 'version', 'authMethod', 'user', 'command', 'requested', 'connected', 'reply', 'bytesUp', 'bytesDown', 'durationMs', 'reason', 'error']) {
    assert.ok(key in session, `access line has ${key}`);
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

/** Collects what a logger writes, line by line. */
function capture(): { out: PassThrough; lines: string[] } {
  const out = new PassThrough();
  const lines: string[] = [];
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line) lines.push(line);
  });
  return { out, lines };
}

const withoutTime = (line: string) => line.replace(/"time":"[^"]*"/, '"time":"T"');

const sampleRecord: SessionRecord = {
  id: 7, listener: '127.0.0.1:1080', clientAddress: '::1', clientPort: 40000, version: 5, authMethod: 'userpass',
  user: 'alice', command: 'connect', requested: 'example.com:443', connected: '[2001:db8::1]:443', reply: 0,
  bytesUp: 12, bytesDown: 3_000_000_000, relay: 'splice', datagramsUp: 0, datagramsDown: 0, datagramsDropped: 0, datagramsDenied: 0,
  startedAt: 1795394064052, durationMs: 112, reason: 'destination-closed', error: null, rule: 'office',
};

/*
 * pino writes a lone surrogate as it is, which becomes U+FFFD once the line is
 * UTF-8 encoded; sessionLine() escapes it (\udXXX) as JSON.stringify does, so
 * the log keeps what the client sent. With one in the record the lines are the
 * same JavaScript values once parsed, not the same bytes.
 */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** A FileLines whose writes are kept in memory: `text()` is everything written so far (flushed). */
function memoryFile(batchBytes?: number): { lines: FileLines; text(): string } {
  const chunks: Buffer[] = [];
  const lines = new FileLines({
    fd: -1,
    backlogBytes: 1 << 20,
    ...(batchBytes ? { batchBytes } : {}),
    writeSync: (_fd, buffer, offset, length) => {
      chunks.push(Buffer.from(buffer.subarray(offset, offset + length)));
      return length;
    },
  });
  return { lines, text: () => (lines.flush(), Buffer.concat(chunks.splice(0)).toString()) };
}

test('an access line is what pino writes for the same record, byte for byte, for any strings, numbers and bindings (lone surrogates: the same values); into a file\'s batch, the same bytes', () => {
  const text = fc.option(anyText(), { nil: null }); // control characters, quotes, astral planes, lone surrogates
  const number = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53 + 2));
  const reason = fc.oneof(fc.constantFrom('destination-closed', 'protocol-error'), anyText()) as fc.Arbitrary<CloseReason>;
  const bindings = fc.constantFrom({}, { pid: 4242 }, { host: 'h\u00e9 \ud83d\ude00' });
  const file = memoryFile();
  fc.assert(fc.property(text, text, text, number, number, reason, bindings, fc.nat(), (user, error, requested, bytesUp, durationMs, why, bound, id) => {
    const record = { ...sampleRecord, id, user, error, requested, bytesUp, durationMs, reason: why };
    let written = '';
    const log = pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, { write: (line: string) => { written = line; } }).child(bound);
    log.warn({ event: 'session', ...record }, sessionMessage(record));
    const serialisedBindings = (log as unknown as Record<symbol, string>)[pino.symbols.chindingsSym] ?? '';
    const line = sessionLine(40, serialisedBindings, record);
    if (!LONE_SURROGATE.test(written)) assert.equal(withoutTime(line), withoutTime(written));
    else assert.deepEqual(JSON.parse(withoutTime(line)), JSON.parse(withoutTime(written)));
    assert.equal(writeSessionLine(file.lines, 40, serialisedBindings, record), true);
    assert.equal(withoutTime(file.text()), withoutTime(line));
    // The room made for it: what follows the line's start ({"level":…,"event":"session") at most.
    const start = line.slice(0, line.indexOf(',"id":'));
    assert.ok(Buffer.byteLength(line) - Buffer.byteLength(start) <= sessionLineBound(record), 'within the bound');
  }), { numRuns: 500 });
});

test('the room made for an access line covers every text field at its longest (a control character escaped is 6 bytes)', () => {
  // Every field that holds text (or null) in a whole record: a field added to SessionRecord joins by itself.
  const fields = Object.entries(sampleRecord).filter(([, value]) => typeof value === 'string' || value === null).map(([field]) => field);
  assert.equal(fields.length, 11);
  for (const field of fields) {
    const record = { ...sampleRecord, [field]: '\u0000'.repeat(200) } as SessionRecord;
    const line = sessionLine(30, '', record);
    const start = line.slice(0, line.indexOf(',"id":'));
    assert.ok(Buffer.byteLength(line) - Buffer.byteLength(start) <= sessionLineBound(record), field);
  }
});

test('an access line that may not fit a file batch is not encoded there (the string path writes it, as it writes lines while the file fails)', () => {
  const file = memoryFile(4096);
  const long = { ...sampleRecord, error: 'e'.repeat(1000) }; // escaped, up to 6 bytes a character
  assert.equal(writeSessionLine(file.lines, 40, '', long), false);
  assert.equal(file.text(), '', 'nothing written');
  assert.equal(writeSessionLine(file.lines, 40, '', sampleRecord), true);
  assert.equal(withoutTime(file.text()), withoutTime(sessionLine(40, '', sampleRecord)));
});

test('log.file: access lines of real sessions (encoded into the file\'s batch) are what pino writes for their records, a worker\'s pid included', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-log-'));
  const path = join(dir, 'access.log');
  const log = createLogger({ level: 'info', format: 'json', file: path }).child({ pid: 4242 });
  const proxy = await startProxy({ auth: { methods: ['userpass'], users: [{ name: 'j\u00f6rg "\u2713"', password: 'pw' }] } });
  attachLogger(proxy.server, log);
  try {
    const refused = await RawClient.connect(proxy.port);
    refused.write(hex('05 00')); // a greeting offering no methods: a warn line
    await refused.readToEnd();
    const wrongPassword = await RawClient.connect(proxy.port);
    wrongPassword.write(hex('05 01 02'));
    await wrongPassword.read(2);
    const name = Buffer.from('j\u00f6rg "\u2713"');
    wrongPassword.write(Buffer.concat([Buffer.from([1, name.length]), name, hex('01'), Buffer.from('x')]));
    await wrongPassword.readToEnd();
    while (proxy.records.length < 2) await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    await flushLog(log, 1000);
    const lines = readFileSync(path, 'utf8').split('\n').filter((line) => line.includes('"event":"session"'));
    assert.equal(lines.length, 2);
    proxy.records.forEach((record, i) => {
      let expected = '';
      const reference = pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, { write: (line: string) => { expected = line; } }).child({ pid: 4242 });
      reference[record.reason === 'relay-error' ? 'error' : 'warn']({ event: 'session', ...record }, sessionMessage(record));
      assert.equal(withoutTime(`${lines[i]!}\n`), withoutTime(expected), record.reason);
    });
    assert.match(lines[1]!, /"user":"jörg \\"✓\\""/, 'UTF-8 and escapes as they are');
  } finally {
    await proxy.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The access line a logger writes for a session refused at its greeting. */
async function refusedSessionLine(log: Logger, lines: string[]): Promise<string> {
  const proxy = await startProxy();
  attachLogger(proxy.server, log);
  try {
    const client = await RawClient.connect(proxy.port);
    client.write(hex('05 00'));
    await client.readToEnd();
    await proxy.record();
    await new Promise((resolve) => setImmediate(resolve));
    const line = lines.find((l) => l.includes('"event":"session"'));
    assert.ok(line, lines.join('\n'));
    return line;
  } finally {
    await proxy.close();
  }
}

test('an access line carries a child logger\'s bindings where pino puts them (the CLI\'s workers add their pid)', async () => {
  const { out, lines } = capture();
  const line = await refusedSessionLine(createLogger({ level: 'info', format: 'json', destination: out }).child({ pid: 4242 }), lines);
  assert.match(line, /^\{"level":40,"time":"[^"]+","pid":4242,"event":"session","id":\d+,/);
  assert.equal(JSON.parse(line).reason, 'protocol-error');
});

test('a logger from elsewhere keeps its own serializers for access lines (only createLogger\'s loggers take the fast path)', async () => {
  const { out, lines } = capture();
  const line = await refusedSessionLine(pino({ base: undefined, serializers: { clientAddress: () => 'hidden' } }, out), lines);
  assert.equal(JSON.parse(line).clientAddress, 'hidden');
});

test('a child of createLogger\'s logger that redacts, serializes or prefixes its own way keeps that on access lines', async (t) => {
  const children: Array<[string, (l: Logger) => Logger, (line: Record<string, unknown>) => void]> = [
    ['redact', (l) => l.child({}, { redact: ['user', 'clientAddress'] }), (line) => assert.equal(line.clientAddress, '[Redacted]')],
    ['serializers', (l) => l.child({}, { serializers: { clientAddress: () => 'hidden' } }), (line) => assert.equal(line.clientAddress, 'hidden')],
    ['msgPrefix', (l) => l.child({}, { msgPrefix: 'edge: ' }), (line) => assert.match(String(line.msg), /^edge: session /)],
  ];
  for (const [what, child, check] of children) {
    await t.test(what, async () => {
      const { out, lines } = capture();
      const line = await refusedSessionLine(child(createLogger({ level: 'info', format: 'json', destination: out })), lines);
      check(JSON.parse(line) as Record<string, unknown>);
    });
  }
});

test('stdout to a regular file goes through FileLines; a pipe, or anything unknown, through sonic-boom', () => {
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-log-'));
  const fd = openSync(join(dir, 'out.log'), 'w');
  try {
    assert.equal(isRegularFile(fd), true);
    assert.ok(new StdoutSink({ fd }).stream instanceof FileLines);
    // A child whose stdout is a pipe reports what it would use.
    const script = `import('${new URL('../../src/observe/stdout.js', import.meta.url).href}').then((m) => process.stdout.write(JSON.stringify(m.isRegularFile(1))))`;
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(JSON.parse(child.stdout), false);
    closeSync(fd);
    assert.equal(isRegularFile(fd), false, 'a closed descriptor');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('isoTime: pino\'s time field, formatted once per millisecond', () => {
  const pinoTime = (ms: number) => `,"time":"${new Date(ms).toISOString()}"`;
  const t = Date.UTC(2026, 10, 23, 2, 41, 18, 113);
  const first = isoTime(t);
  assert.equal(first, pinoTime(t));
  assert.equal(isoTime(t), first);
  assert.equal(isoTime(t + 1), pinoTime(t + 1), 'the next millisecond');
  assert.equal(isoTime(t), pinoTime(t), 'and back');
  const now = isoTime();
  assert.match(now, /^,"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"$/);
});

for (const stdout of ['a regular file', 'a pipe'] as const) {
  test(`a crash keeps the batched access lines and ends the log with a fatal line naming the cause (stdout to ${stdout})`, () => {
    const { status, stderr, lines } = runCrashFixture('crash', stdout);
    assert.equal(status, 1, `the process ended as an uncaught exception ends it: ${stderr}`);
    assert.match(stderr, /planned crash in an observer/, "Node's own report is still on stderr");
    assert.equal(lines.filter((line) => line.event === 'session').length, CRASH_SESSIONS + 1, 'every session\'s access line, the last one\'s too');
    const last = lines.at(-1)!;
    assert.equal(last.event, 'crashed');
    assert.equal(last.level, 60, 'fatal');
    assert.equal(last.msg, 'uncaught exception, exiting: planned crash in an observer');
    assert.match(String((last.err as { stack?: unknown }).stack), /planned crash in an observer/);
  });

  test(`process.exit() keeps the batched access lines (stdout to ${stdout})`, () => {
    const { status, stderr, lines } = runCrashFixture('exit', stdout);
    assert.equal(status, 0, stderr);
    assert.equal(lines.filter((line) => line.event === 'session').length, CRASH_SESSIONS);
  });
}

/** Runs test/observe/crash-fixture.ts with stdout to a regular file or a pipe; its JSON lines. */
function runCrashFixture(mode: 'crash' | 'exit', stdout: 'a regular file' | 'a pipe'): { status: number | null; stderr: string; lines: Record<string, unknown>[] } {
  const fixture = new URL('./crash-fixture.js', import.meta.url).pathname;
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-crash-'));
  try {
    const file = join(dir, 'out.log');
    const fd = openSync(file, 'w');
    const run = spawnSync(process.execPath, [fixture], {
      stdio: ['ignore', stdout === 'a pipe' ? 'pipe' : fd, 'pipe'],
      env: { ...process.env, SOCKSGATE_CRASH_FIXTURE: mode },
      encoding: 'utf8',
      timeout: 30_000,
    });
    closeSync(fd);
    const text = stdout === 'a pipe' ? run.stdout : readFileSync(file, 'utf8');
    const lines = text.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    return { status: run.status, stderr: run.stderr, lines };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('reload({ log: { level } }) applies the level to the logger attachLogger was given, after the reloaded line', async () => {
  const { out, lines } = capture();
  const log = createLogger({ level: 'info', format: 'json', destination: out });
  const proxy = await startProxy();
  attachLogger(proxy.server, log);
  try {
    const listen = proxy.server.config.listen.map((l) => ({ address: l.address, port: l.port }));
    const result = proxy.server.reload({ listen, log: { level: 'warn' } });
    assert.deepEqual(result.changed, ['log.level']);
    assert.equal(log.level, 'warn');
    // A normal session's line is at info: no longer written.
    const client = await RawClient.connect(proxy.port);
    client.write(hex('05 01 00'));
    assert.deepEqual(await client.read(2), hex('05 00'));
    client.destroy();
    await proxy.record();
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(lines.some((l) => l.includes('"event":"reloaded"')), 'the reloaded line, at the old level');
    assert.equal(lines.filter((l) => l.includes('"event":"session"')).length, 0, lines.join('\n'));
  } finally {
    await proxy.close();
  }
});

test('loggers made for stdout, or for one file, share one sink: a program making many keeps one flush timer and one exit flush (each kept its own for good)', () => {
  createLogger({ level: 'info', format: 'json' });
  const exitListeners = process.listenerCount('exit');
  const loggers = Array.from({ length: 20 }, () => createLogger({ level: 'info', format: 'json' }));
  assert.equal(process.listenerCount('exit'), exitListeners);
  assert.equal(new Set(loggers.map((log) => (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym])).size, 1, 'one stream');
  // So do loggers for one file.
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-log-'));
  try {
    const file = join(dir, 'access.log');
    const toFile = Array.from({ length: 5 }, () => createLogger({ level: 'info', format: 'json', file }));
    assert.equal(process.listenerCount('exit'), exitListeners + 1);
    assert.equal(new Set(toFile.map((log) => (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym])).size, 1, 'one stream for the file');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a reload that leaves a change waiting for a restart says so at warn (at log.level warn it was unsaid); one without, at info', async () => {
  const { out, lines } = capture();
  const log = createLogger({ level: 'warn', format: 'json', destination: out });
  const proxy = await startProxy();
  attachLogger(proxy.server, log);
  try {
    const listen = proxy.server.config.listen.map((l) => ({ address: l.address, port: l.port }));
    assert.deepEqual(proxy.server.reload({ listen, log: { level: 'warn' }, timeouts: { connect: 1234 } }).needsRestart, []);
    assert.deepEqual(proxy.server.reload({ listen: [...listen, { address: '127.0.0.1', port: 0 }], log: { level: 'warn' } }).needsRestart, ['listen']);
    await new Promise((resolve) => setImmediate(resolve));
    const reloaded = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'reloaded');
    assert.equal(reloaded.length, 1, lines.join('\n'));
    assert.equal(reloaded[0]!.level, 40);
    assert.deepEqual(reloaded[0]!.needsRestart, ['listen']);
  } finally {
    await proxy.close();
  }
});

test('pretty format: lines go to the destination given, and a worker\'s pid is shown (README: every log line of a worker carries its pid)', async () => {
  const out = new PassThrough();
  let text = '';
  out.on('data', (chunk: Buffer) => { text += chunk.toString(); });
  const log = createLogger({ level: 'info', format: 'pretty', destination: out });
  log.child({ pid: 4242 }).info({ event: 'started' }, 'hello from a worker');
  for (let i = 0; i < 200 && !text.includes('\n'); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.match(text, /INFO \(4242\): hello from a worker/);
  assert.doesNotMatch(text, /hostname/);
});
