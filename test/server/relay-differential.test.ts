/**
 * The splice relay (the addon's relay thread, after its own handshake or
 * Node's) against the stream relay (Node streams), on generated
 * conversations: the client and the destination take turns to write (a few
 * bytes to a few hundred kilobytes), to half-close, to reset or to close
 * outright. Each turn waits until the other end has seen it, so a
 * conversation is one sequence of events, and the relays must deliver the
 * same bytes, end each side the same way and write the same record.
 *
 * relay.test.ts names the cases one by one; this walks the orders between
 * them (data after a half-close, a reset after one, both sides closing).
 * Left out: writes towards an end that closed outright (see play()).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type Socket, connect } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import fc from 'fast-check';
import type { ServerOptions } from '../../src/index.js';
import { spliceStats } from '../../src/relay/splice.js';
import { withTimeout } from '../cli/helpers.js';
import { connectRequest } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, recordsFrom, startProxy, startTcpServer } from '../helpers/server.js';

/**
 * The relay thread with its own handshakes (the default), the relay thread
 * given a socket after a Node handshake (relay/splice.ts), and Node streams.
 */
const ENGINES = {
  splice: { relay: { engine: 'splice' } },
  'splice-after-node': { relay: { engine: 'splice' }, handshake: { engine: 'node' } },
  stream: { relay: { engine: 'stream' } },
} as const satisfies Record<string, ServerOptions>;
type Engine = keyof typeof ENGINES;
type Side = 'client' | 'target';

/** How long to wait for the other end to see a turn before calling the relay stuck. */
const TURN_MS = 5000;

const turn = fc.record({
  by: fc.constantFrom<Side>('client', 'target'),
  op: fc.oneof(
    { weight: 6, arbitrary: fc.constant<'write'>('write') },
    /** A write while the other end stops reading for a moment: the relay must hold back, not drop. */
    { weight: 1, arbitrary: fc.constant<'stalled-write'>('stalled-write') },
    { weight: 2, arbitrary: fc.constant<'end'>('end') },
    { weight: 1, arbitrary: fc.constantFrom<'reset' | 'destroy'>('reset', 'destroy') },
  ),
  size: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 2000 }) },
    { weight: 1, arbitrary: fc.integer({ min: 60_000, max: 400_000 }) },
  ),
});

const conversation = fc.record({
  /** SOCKS5, or SOCKS4 (which the relay thread hands to a Node session even when it runs the handshakes). */
  version: fc.oneof({ weight: 3, arbitrary: fc.constant<5>(5) }, { weight: 1, arbitrary: fc.constant<4>(4) }),
  /** Bytes the client sends with its request. */
  early: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 5000 }) }),
  turns: fc.array(turn, { minLength: 1, maxLength: 8 }),
});
type Conversation = typeof conversation extends fc.Arbitrary<infer T> ? T : never;

/** One end of the conversation: what it was sent, and how its peer left. */
class End {
  readonly socket: Socket;
  received = 0;
  /** A running checksum of the bytes in order (each byte times its position). */
  checksum = 0;
  /** 'end': the peer's FIN arrived; 'error': a reset or a write into a closed connection. */
  heard: 'open' | 'end' | 'error' = 'open';
  closed = false;
  /** This end wrote its last byte (end, reset, destroy). */
  done = false;
  /** This end closed outright (reset, destroy): it reads nothing more. */
  gone = false;
  sent = 0;
  readonly #changed = new Set<() => void>();

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      for (let i = 0; i < chunk.length; i++) this.checksum = (this.checksum + chunk[i]! * (((this.received + i) % 251) + 1)) % 1_000_000_007;
      this.received += chunk.length;
      this.#notify();
    });
    socket.on('end', () => {
      if (this.heard === 'open') this.heard = 'end';
      this.#notify();
    });
    socket.on('error', () => {
      this.heard = 'error';
      this.#notify();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#notify();
    });
  }

  /** Resolves once `ready()` holds; rejects after TURN_MS. */
  async until(ready: () => boolean, what: string): Promise<void> {
    if (ready()) return;
    let wake = () => {};
    const check = new Promise<void>((resolve) => {
      wake = () => {
        if (ready()) resolve();
      };
      this.#changed.add(wake);
    });
    try {
      await withTimeout(check, TURN_MS, what);
    } finally {
      this.#changed.delete(wake);
    }
  }

  #notify(): void {
    for (const wake of [...this.#changed]) wake();
  }
}

/** `size` bytes of a pattern that differs by position, so a lost or doubled chunk shows. */
function bytesFrom(offset: number, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (offset + i) * 7 % 256;
  return out;
}

let targetServer: Fixture;
let nextTarget: ((socket: Socket) => void) | null = null;
const proxies = new Map<Engine, RunningProxy>();

before(async () => {
  targetServer = await startTcpServer((socket) => {
    const take = nextTarget;
    nextTarget = null;
    if (take) take(socket);
    else socket.destroy();
  });
  for (const [engine, options] of Object.entries(ENGINES)) {
    proxies.set(engine as Engine, await startProxy({ ...options, listen: [{ address: '127.0.0.1', port: 0, socks4: true }] }));
  }
});
after(async () => {
  for (const proxy of proxies.values()) await proxy.close();
  await targetServer.close();
});

/** A client through the proxy to the target server, and the target's accepted socket. */
async function converse(proxy: RunningProxy, version: 4 | 5, early: number): Promise<{ client: End; target: End; clientPort: number }> {
  const accepted = new Promise<Socket>((resolve) => { nextTarget = resolve; });
  const socket = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  const port = targetServer.port;
  const request =
    version === 5
      ? Buffer.concat([Buffer.from([5, 1, 0]), connectRequest('127.0.0.1', port)])
      : Buffer.from([4, 1, port >> 8, port & 0xff, 127, 0, 0, 1, 0]);
  // Payload in the same write as the request, as a client that does not wait for the reply sends it.
  socket.write(Buffer.concat([request, bytesFrom(0, early)]));
  const answer = await readExactly(socket, version === 5 ? 12 : 8);
  if (version === 5) assert.equal(answer.subarray(0, 4).toString('hex'), '05000500', 'method none, then a success reply');
  else assert.equal(answer.subarray(0, 2).toString('hex'), '005a', 'request granted');
  const target = new End(await withTimeout(accepted, TURN_MS, 'the target accepts'));
  const client = new End(socket);
  client.sent = early;
  await target.until(() => target.received === early, 'the payload sent with the request arrives');
  return { client, target, clientPort: socket.localPort! };
}

async function readExactly(socket: Socket, n: number): Promise<Buffer> {
  let got = Buffer.alloc(0);
  while (got.length < n) {
    const chunk: Buffer | null = socket.read(n - got.length) ?? socket.read();
    if (chunk) got = Buffer.concat([got, chunk]);
    else await withTimeout(once(socket, 'readable'), TURN_MS, 'the proxy answers');
  }
  return got;
}

/**
 * Plays the turns, each waiting until the other end has seen it (unless
 * something already broke the connection, when there is nothing to wait
 * for), then closes what is left and reports what each end saw.
 */
async function play(engine: Engine, { version, early, turns }: Conversation) {
  const proxy = proxies.get(engine)!;
  const nextRecord = recordsFrom(proxy);
  const { client, target, clientPort } = await converse(proxy, version, early);
  const ends = { client, target };
  let broken = false; // a reset or an outright close: later deliveries may be cut short
  for (const { by, op, size } of turns) {
    const self = ends[by];
    const peer = by === 'client' ? target : client;
    if (self.done || self.closed) continue;
    if (op === 'write' || op === 'stalled-write') {
      // Bytes towards an end that closed outright are lost, and when the
      // relay learns of it is a race (the reset comes back after the write
      // succeeded; the stream relay only sees it on its next write): no
      // single answer to compare.
      if (peer.gone) continue;
      const stalled = op === 'stalled-write' && !broken;
      const bytes = stalled ? size * 8 : size; // up to 3 MB: past what the sockets' buffers hold
      if (stalled) peer.socket.pause();
      self.socket.write(bytesFrom(self.sent, bytes));
      self.sent += bytes;
      if (stalled) {
        await delay(20);
        peer.socket.resume();
      }
      if (!broken) await peer.until(() => peer.received === self.sent, `${engine}: ${by}'s ${self.sent} bytes arrive`);
      continue;
    }
    self.done = true;
    if (op === 'end') self.socket.end();
    else if (op === 'reset') self.socket.resetAndDestroy();
    else self.socket.destroy();
    if (op !== 'end') {
      broken = true;
      self.gone = true;
    }
    if (!broken || op !== 'end') await peer.until(() => peer.heard !== 'open' || peer.closed, `${engine}: ${by}'s ${op} reaches the other end`);
  }
  // What is left: each end that has not finished ends its side in turn (the
  // client first), then both close.
  for (const [self, peer] of [[client, target], [target, client]] as const) {
    if (self.done || self.closed) continue;
    self.done = true;
    self.socket.end();
    if (!broken) await peer.until(() => peer.heard !== 'open' || peer.closed, `${engine}: the last FINs reach the other end`);
  }
  await client.until(() => client.closed, `${engine}: the client's connection closes`);
  await target.until(() => target.closed, `${engine}: the target's connection closes`);
  const record = await withTimeout(nextRecord((r) => r.clientPort === clientPort), TURN_MS, `${engine}: the record`);
  // Nothing outlives its record: no session, no pair of the relay thread's (each holds two descriptors).
  assert.equal(proxy.server.sessionCount, 0, `${engine}: sessions left after the record`);
  assert.equal(spliceStats()?.activePairs ?? 0, 0, `${engine}: relay-thread pairs left after the record`);
  const seen = (end: End) => ({ received: end.received, checksum: end.checksum, heard: end.heard });
  return {
    client: seen(client),
    target: seen(target),
    record: { reason: record.reason, bytesUp: record.bytesUp, bytesDown: record.bytesDown },
  };
}

test('generated conversations: the three relay paths deliver the same bytes, end each side the same way and write the same record', { timeout: 300_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(conversation, async (generated) => {
      const stream = await play('stream', generated);
      assert.deepEqual(await play('splice', generated), stream, 'splice against stream');
      assert.deepEqual(await play('splice-after-node', generated), stream, 'splice after a Node handshake against stream');
    }),
    { numRuns: 200, includeErrorInReport: true },
  );
});
