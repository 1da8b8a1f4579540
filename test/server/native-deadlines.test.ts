/**
 * The relay thread checks negotiation deadlines on a scan whose interval
 * follows the shortest timeout it has seen (a quarter of it, at most 1 s).
 * When a shorter timeout arrives (another listener's, or after a reload), the
 * scan already planned with the longer interval must not be waited out.
 *
 * Its own file: the first test needs the relay thread to start from the
 * default 1 s, which no other test file's sessions may have shortened.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { spliceStats } from '../../src/relay/splice.js';
import { RawClient } from '../helpers/raw.js';
import { type Fixture, startEchoServer } from '../helpers/server.js';
import { type EngineProxy, recordOf, socksConnect, startEngineProxy } from './native-helpers.js';

const SHORT_HANDSHAKE_MS = 200;
/** The interval the relay thread starts with (idle_scan_every in native/splice.c). */
const FIRST_SCAN_INTERVAL_MS = 1000;

let echo: Fixture;
before(async () => {
  echo = await startEchoServer();
});
after(() => echo.close());

/**
 * Runs `body` with two native listeners: one with the default timeouts and a
 * relayed session through it, which keeps the relay thread scanning (its idle
 * timeout is an hour), and a strict one with a handshake timeout of
 * `handshakeMs`, which `body` gets.
 */
async function withStrictBesideRelaxed(handshakeMs: number, body: (strict: EngineProxy) => Promise<void>): Promise<void> {
  const proxies: EngineProxy[] = [];
  try {
    const relaxed = await startEngineProxy('native');
    proxies.push(relaxed);
    const relayed = await socksConnect(relaxed, echo.port);
    try {
      const strict = await startEngineProxy('native', { timeouts: { handshake: handshakeMs } });
      proxies.push(strict);
      await body(strict);
    } finally {
      relayed.destroy();
    }
  } finally {
    for (const proxy of proxies) await proxy.close();
  }
}

test('a short handshake timeout on a second listener is kept, not stretched to the scan planned for the first', { timeout: 30_000 }, async () => {
  // The relaxed listener's session had the relay thread plan its next scan a second ahead.
  await withStrictBesideRelaxed(SHORT_HANDSHAKE_MS, async (strict) => {
    const silent = await RawClient.connect(strict.port); // sends nothing
    try {
      const record = await recordOf(strict, silent.localPort);
      assert.equal(record.reason, 'handshake-timeout');
      // Fails when the deadline waits for the scan planned a second ahead;
      // the margin above the timeout's own quarter-interval is wide on purpose.
      assert.ok(
        record.durationMs < FIRST_SCAN_INTERVAL_MS - 200,
        `the ${SHORT_HANDSHAKE_MS} ms handshake timeout ended the session after ${record.durationMs} ms`,
      );
    } finally {
      silent.destroy();
    }
  });
});

/** The relay thread's scan interval once it equals `ms`, or its last value after a bounded wait. */
async function untilScanInterval(ms: number): Promise<number> {
  let current = Number.NaN;
  for (let i = 0; i < 500; i++) {
    const stats = spliceStats();
    assert.ok(stats, 'the splice addon is loaded (the test command builds it)');
    current = stats.scanIntervalMs;
    if (current === ms) break;
    await delay(10);
  }
  return current;
}

test('the scan interval grows back once the sessions with a short timeout are gone', { timeout: 30_000 }, async () => {
  await withStrictBesideRelaxed(40, async (strict) => {
    const silent = await RawClient.connect(strict.port);
    try {
      // A quarter of 40 ms is below the floor of 10 ms.
      assert.equal(await untilScanInterval(10), 10);
      assert.equal((await recordOf(strict, silent.localPort)).reason, 'handshake-timeout');
    } finally {
      silent.destroy();
    }
    // Before, the thread kept waking every 10 ms for as long as any session lived.
    assert.equal(await untilScanInterval(FIRST_SCAN_INTERVAL_MS), FIRST_SCAN_INTERVAL_MS);
    // And it shrinks again for the next short deadline.
    const again = await RawClient.connect(strict.port);
    try {
      assert.equal(await untilScanInterval(10), 10);
    } finally {
      again.destroy();
    }
  });
});
