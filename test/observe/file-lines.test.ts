/** FileLines: access lines to a regular file, batched, written whole and in order, held while writes fail. */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FileLines, type FileLinesOptions } from '../../src/observe/file-lines.js';

/** A FileLines on a temporary file; `read()` is what the file holds now. */
function onTempFile(options: Partial<FileLinesOptions> = {}): { lines: FileLines; read(): string; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'socksgate-file-lines-'));
  const path = join(dir, 'access.log');
  const fd = openSync(path, 'w');
  const lines = new FileLines({ fd, backlogBytes: 1024 * 1024, ...options });
  return {
    lines,
    read: () => readFileSync(path, 'utf8'),
    done: () => {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A write function that throws ENOSPC while `failing()` says so, and counts its calls. */
function flakyWrite(failing: () => boolean): { write: NonNullable<FileLinesOptions['writeSync']>; calls(): number } {
  let calls = 0;
  return {
    write: (fd, buffer, offset, length) => {
      calls++;
      if (failing()) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return writeSync(fd, buffer, offset, length);
    },
    calls: () => calls,
  };
}

/** A FileLines whose writes fail (ENOSPC) until `recover()`, on a clock the test moves with `advance(ms)`. */
function onFailingFile(options: Partial<FileLinesOptions> = {}) {
  let failing = true;
  let now = 0;
  const flaky = flakyWrite(() => failing);
  const file = onTempFile({ ...options, writeSync: flaky.write, now: () => now });
  return {
    ...file,
    writes: flaky.calls,
    recover: () => { failing = false; },
    advance: (ms: number) => { now += ms; },
  };
}

test('lines reach the file whole and in order: multi-byte text, lines across batch ends, a line longer than a batch', () => {
  const file = onTempFile({ batchBytes: 64 });
  try {
    const written = ['{"a":1}\n', `{"user":"jörg ✓ 𝄞"}\n`, `${'x'.repeat(40)}\n`, `${'é'.repeat(30)}\n`, `${'long'.repeat(50)}\n`, 'last\n'];
    for (const line of written) file.lines.write(line);
    file.lines.flush();
    assert.equal(file.read(), written.join(''));
  } finally {
    file.done();
  }
});

test('a line waits in the batch until the batch is full or flushed (one write for many lines)', () => {
  const counting = flakyWrite(() => false);
  const file = onTempFile({ batchBytes: 1024, writeSync: counting.write });
  try {
    for (let i = 0; i < 10; i++) file.lines.write(`{"n":${i}}\n`);
    assert.equal(file.read(), '', 'nothing written yet');
    assert.equal(counting.calls(), 0);
    file.lines.flush();
    assert.equal(file.read().split('\n').length, 11);
    assert.equal(counting.calls(), 1, 'ten lines, one write');
  } finally {
    file.done();
  }
});

test('a partial write is continued, not lost', () => {
  let first = true;
  const file = onTempFile({
    batchBytes: 256,
    writeSync: (fd, buffer, offset, length) => {
      const take = first ? Math.min(length, 5) : length;
      first = false;
      return writeSync(fd, buffer, offset, take);
    },
  });
  try {
    file.lines.write('{"first":"line"}\n');
    file.lines.write('{"second":"line"}\n');
    file.lines.flush();
    assert.equal(file.read(), '{"first":"line"}\n{"second":"line"}\n');
  } finally {
    file.done();
  }
});

test('while writes fail, lines wait (error said once); once a write goes through, all of them follow in order and drain is said', () => {
  const file = onFailingFile({ batchBytes: 64 });
  const errors: Error[] = [];
  let drains = 0;
  let drops = 0;
  file.lines.on('error', (err: Error) => errors.push(err));
  file.lines.on('drain', () => { drains++; });
  file.lines.on('drop', () => { drops++; });
  try {
    const written: string[] = [];
    for (let i = 0; i < 40; i++) {
      written.push(`{"n":${i},"pad":"${'p'.repeat(i % 7)}"}\n`);
      file.lines.write(written[i]!);
      file.advance(10);
    }
    assert.equal(errors.length, 1, 'said once');
    assert.match(errors[0]!.message, /ENOSPC/);
    assert.equal(file.read(), '');
    assert.equal(drains, 0);
    file.recover();
    file.lines.flush();
    assert.equal(file.read(), written.join(''));
    assert.equal(drains, 1);
    assert.equal(drops, 0);
  } finally {
    file.done();
  }
});

test('while writes fail, a new line tries again at most every 100 ms', () => {
  const file = onFailingFile({ batchBytes: 32 });
  file.lines.on('error', () => {});
  try {
    for (let i = 0; i < 100; i++) file.lines.write(`line ${i} of the failing log\n`);
    assert.equal(file.writes(), 1, 'the write that failed, and no retry within the same millisecond');
    file.advance(100);
    file.lines.write('after 100 ms\n');
    assert.equal(file.writes(), 2, 'one retry');
    file.recover();
    file.advance(100);
    file.lines.write('recovered\n');
    assert.match(file.read(), /line 0 of the failing log\n[^]*line 99 of the failing log\nafter 100 ms\nrecovered\n$/);
  } finally {
    file.done();
  }
});

test('while writes fail, lines beyond the backlog bound are dropped and counted; those held are written later', () => {
  const file = onFailingFile({ batchBytes: 64, backlogBytes: 256 });
  let drops = 0;
  file.lines.on('error', () => {});
  file.lines.on('drop', () => { drops++; });
  try {
    const line = (i: number) => `{"line":${String(i).padStart(4, '0')}}\n`; // 15 bytes
    for (let i = 0; i < 100; i++) file.lines.write(line(i));
    assert.ok(drops > 0 && drops < 100, `some dropped (${drops})`);
    file.recover();
    file.lines.flush();
    const kept = file.read().split('\n').filter(Boolean);
    assert.equal(kept.length + drops, 100, 'every line either written or counted');
    assert.ok(Buffer.byteLength(file.read()) <= 256, 'held no more than the bound');
    assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => line(i).trimEnd()), 'the oldest kept, in order');
  } finally {
    file.done();
  }
});

test('flushSync throws while writes fail (the exit flush says it could not), and writes everything once they go through', () => {
  const file = onFailingFile();
  file.lines.on('error', () => {});
  try {
    file.lines.write('kept\n');
    assert.throws(() => file.lines.flushSync(), /cannot be written/);
    file.recover();
    file.lines.flushSync();
    assert.equal(file.read(), 'kept\n');
  } finally {
    file.done();
  }
});

/** Encodes `text` (ASCII) straight into the batch, as log.ts's access lines are: false if makeRoom() refused. */
function encodeLine(lines: FileLines, text: string, bound = text.length): boolean {
  if (!lines.makeRoom(bound)) return false;
  lines.commit(lines.used + lines.batch.write(text, lines.used, 'latin1'));
  return true;
}

test('lines encoded straight into the batch keep their place among written ones; a batch without room for the bound is written out first', () => {
  const counting = flakyWrite(() => false);
  const file = onTempFile({ batchBytes: 64, writeSync: counting.write });
  try {
    file.lines.write('{"a":1}\n');
    assert.ok(encodeLine(file.lines, '{"b":2}\n'));
    assert.equal(counting.calls(), 0, 'both wait in the batch');
    // 16 bytes used: a bound of 49 does not fit the 48 left, so the batch is written first.
    assert.ok(encodeLine(file.lines, '{"c":3}\n', 49));
    assert.equal(counting.calls(), 1);
    assert.equal(file.read(), '{"a":1}\n{"b":2}\n');
    assert.equal(file.lines.used, 8, 'the new line starts a fresh batch');
    file.lines.write('{"d":4}\n');
    file.lines.flush();
    assert.equal(file.read(), '{"a":1}\n{"b":2}\n{"c":3}\n{"d":4}\n');
  } finally {
    file.done();
  }
});

test('makeRoom refuses a bound larger than a batch, and refuses while writes fail (write() takes those lines: it keeps or drops them)', () => {
  const big = onTempFile({ batchBytes: 64 });
  try {
    assert.equal(big.lines.makeRoom(65), false);
    assert.equal(big.lines.makeRoom(64), true);
  } finally {
    big.done();
  }
  const file = onFailingFile({ batchBytes: 32 });
  const errors: Error[] = [];
  file.lines.on('error', (err: Error) => errors.push(err));
  try {
    file.lines.write(`${'x'.repeat(30)}\n`);
    file.lines.write('{"n":1}\n'); // the batch is full: its write fails
    assert.equal(errors.length, 1);
    assert.equal(encodeLine(file.lines, '{"n":2}\n'), false, 'refused while failing');
    file.lines.write('{"n":2}\n');
    file.recover();
    file.lines.flush();
    assert.equal(file.read(), `${'x'.repeat(30)}\n{"n":1}\n{"n":2}\n`);
    assert.equal(encodeLine(file.lines, '{"n":3}\n'), true, 'taken again once writes go through');
  } finally {
    file.done();
  }
});
