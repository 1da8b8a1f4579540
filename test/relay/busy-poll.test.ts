/**
 * `relay.busyPollMicroseconds`: the splice relay's thread polls for the next
 * event for that long before it sleeps. The addon counts the polls that found
 * events (`busyPollHits`); these tests watch that counter move, or stay put,
 * while small messages go back and forth, rather than timing anything.
 * The addon and its relay thread are one per process, so the cases run in
 * order and each checks the counter only across its own traffic.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { restartSettings } from '../../src/config/restart.js';
import { ConfigError, createServer } from '../../src/index.js';
import { keepRestartSettings } from '../../src/server/server.js';
import { spliceStats } from '../../src/relay/splice.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, startEchoServer, startProxy } from '../helpers/server.js';

/** Round trips per exchange: enough that some next message lands inside a 1 ms window. */
const ROUND_TRIPS = 40;
/** The longest window the schema allows; the relay thread polls this long after each event. */
const WINDOW = 1000;

function hits(): number {
  const stats = spliceStats();
  assert.ok(stats, 'the splice addon is loaded (the test command builds it)');
  return stats.busyPollHits;
}

/** Small messages through the proxy to the echo server and back, one at a time; returns how far `busyPollHits` moved. */
async function pingPong(proxy: RunningProxy, echoPort: number): Promise<number> {
  const client = await RawClient.connect(proxy.port);
  client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', echoPort)]));
  assert.equal((await client.read(12))[3], 0x00, 'CONNECT succeeded');
  const before = hits();
  for (let i = 0; i < ROUND_TRIPS; i++) {
    const message = Buffer.from(`message ${i}`);
    client.write(message);
    assert.deepEqual(await client.read(message.length), message);
  }
  const moved = hits() - before;
  client.socket.destroy();
  return moved;
}

describe('relay.busyPollMicroseconds in the schema', () => {
  test('defaults to 0 (off), takes whole microseconds up to 1000, refuses the rest', () => {
    const listen = [{ address: '127.0.0.1', port: 0 }];
    assert.equal(createServer({ listen }).config.relay.busyPollMicroseconds, 0);
    assert.equal(createServer({ listen, relay: { busyPollMicroseconds: 50 } }).config.relay.busyPollMicroseconds, 50);
    for (const wrong of [-1, 1001, 2.5, '50us']) {
      assert.throws(
        () => createServer({ listen, relay: { busyPollMicroseconds: wrong as number } }),
        (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.includes('relay.busyPollMicroseconds')),
        String(wrong),
      );
    }
  });

  test('is not a restart key: a reload that also changes relay.engine still applies it', async () => {
    const listen = [{ address: '127.0.0.1', port: 0 }];
    const server = createServer({ listen, relay: { engine: 'splice' } });
    const result = server.reload({ listen, relay: { engine: 'stream', busyPollMicroseconds: 50 } });
    assert.deepEqual(result.needsRestart, ['relay.engine']);
    assert.ok(result.changed.includes('relay.busyPollMicroseconds'), result.changed.join(', '));
    assert.equal(server.config.relay.engine, 'splice', 'the engine waits for a restart');
    assert.equal(server.config.relay.busyPollMicroseconds, 50);
    await server.close();
  });

  test('a worker keeps the primary\'s relay.engine but takes the file\'s window', () => {
    const listen = [{ address: '127.0.0.1', port: 0 }];
    const kept = restartSettings(createServer({ listen, relay: { engine: 'splice' } }).config);
    const built = keepRestartSettings({ listen, relay: { engine: 'stream', busyPollMicroseconds: 50 } }, kept);
    assert.deepEqual(built.needsRestart, ['relay.engine']);
    const config = createServer(built.input).config;
    assert.equal(config.relay.engine, 'splice');
    assert.equal(config.relay.busyPollMicroseconds, 50);
  });

  test('has no effect with the stream relay, and the server says 0', () => {
    const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], relay: { engine: 'stream', busyPollMicroseconds: 50 } });
    assert.equal(server.busyPollMicroseconds, 0);
  });
});

describe('busy polling on the relay thread', () => {
  let echo: Fixture;
  before(async () => {
    echo = await startEchoServer();
  });
  after(() => echo.close());

  test('off by default: the relay thread never polls', async () => {
    const proxy = await startProxy({ relay: { engine: 'splice' } });
    try {
      assert.equal(proxy.server.busyPollMicroseconds, 0);
      assert.equal(await pingPong(proxy, echo.port), 0);
    } finally {
      await proxy.close();
    }
  });

  test('on: the next message is found by polling instead of after a sleep', async () => {
    const proxy = await startProxy({ relay: { engine: 'splice', busyPollMicroseconds: WINDOW } });
    try {
      assert.equal(proxy.server.busyPollMicroseconds, WINDOW);
      assert.ok((await pingPong(proxy, echo.port)) > 0, 'some polls found events');
    } finally {
      await proxy.close();
    }
  });

  test('closing the server that asked for it stops the polling', async () => {
    const proxy = await startProxy({ relay: { engine: 'splice' } });
    try {
      assert.equal(await pingPong(proxy, echo.port), 0);
    } finally {
      await proxy.close();
    }
  });

  test('two servers in one process share the thread: the longer window applies until its server closes', async () => {
    const polling = await startProxy({ relay: { engine: 'splice', busyPollMicroseconds: WINDOW } });
    const quiet = await startProxy({ relay: { engine: 'splice' } });
    try {
      assert.ok((await pingPong(quiet, echo.port)) > 0, 'the other server\'s window applies to this one\'s sessions too');
      await polling.close();
      assert.equal(await pingPong(quiet, echo.port), 0, 'withdrawn when the server that asked for it closed');
    } finally {
      await polling.close();
      await quiet.close();
    }
  });

  test('a server closed by its own `listening` listener: listen() rejects, and its window is not asked for after all', async () => {
    const closing = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], relay: { engine: 'splice', busyPollMicroseconds: WINDOW } });
    closing.on('listening', () => void closing.close());
    await assert.rejects(closing.listen(), /closed before it was listening/);
    const quiet = await startProxy({ relay: { engine: 'splice' } });
    try {
      assert.equal(await pingPong(quiet, echo.port), 0, 'no window of the closed server\'s');
    } finally {
      await quiet.close();
      await closing.close();
    }
  });

  test('a reload turns it on and off', async () => {
    const proxy = await startProxy({ relay: { engine: 'splice' } });
    const base = { listen: [{ address: '127.0.0.1', port: 0 }], relay: { engine: 'splice' as const } };
    try {
      proxy.server.reload({ ...base, relay: { ...base.relay, busyPollMicroseconds: WINDOW } });
      assert.equal(proxy.server.busyPollMicroseconds, WINDOW);
      assert.ok((await pingPong(proxy, echo.port)) > 0, 'polling after the reload');
      proxy.server.reload(base);
      assert.equal(await pingPong(proxy, echo.port), 0, 'no polling after the second reload');
    } finally {
      await proxy.close();
    }
  });
});
