/**
 * `limits.sessions` from the command line: `auto` from the open-files limit
 * keeps a daemon with few descriptors from accepting clients it cannot dial
 * for (they failed with `connect EMFILE`, or, in Node's accept, were lost
 * without a record), and a number is shared by the workers.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type AddressInfo, type Socket, connect, createServer as createNetServer } from 'node:net';
import { type Fixture, startEchoServer } from '../helpers/server.js';
import { Daemon, socksConnect, startDaemon } from './helpers.js';

/** Open files the daemon may hold: `auto` then allows (512 - 128) / 2 sessions. */
const OPEN_FILES = 512;
const AUTO_LIMIT = 192;
/** Clients at once: past the limit by a fifth, within what the descriptors left can refuse. */
const CLIENTS = 230;

for (const engine of ['native', 'node'] as const) {
  describe(`--max-sessions auto under ulimit -n ${OPEN_FILES} (${engine} handshakes)`, () => {
    let echo: Fixture;
    before(async () => { echo = await startEchoServer(); });
    after(() => echo.close());

    it(`relays ${AUTO_LIMIT} clients at once and refuses the rest with a record each: no connect EMFILE, none lost`, async () => {
      const daemon = new Daemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--handshake-engine', engine],
        process.env, { launcher: ['prlimit', `--nofile=${OPEN_FILES}:${OPEN_FILES}`, '--'] });
      const held: Socket[] = [];
      try {
        const port = await daemon.port();
        const started = await daemon.waitFor((l) => l.event === 'started', 'the started line');
        assert.equal(started.sessionLimit, AUTO_LIMIT);
        assert.match(String(started.msg), new RegExp(`at most ${AUTO_LIMIT} sessions`));

        const outcomes = await Promise.allSettled(Array.from({ length: CLIENTS }, () => socksConnect(port, echo.port)));
        for (const outcome of outcomes) if (outcome.status === 'fulfilled') held.push(outcome.value);
        assert.equal(held.length, AUTO_LIMIT, 'every client within the limit is relayed');

        for (const socket of held) socket.destroy();
        await daemon.waitFor(() => daemon.sessions().length === CLIENTS, `a record for each of the ${CLIENTS} clients`);
        const reasons = new Map<string, number>();
        for (const line of daemon.sessions()) reasons.set(String(line.reason), (reasons.get(String(line.reason)) ?? 0) + 1);
        assert.equal(reasons.get('limit-reached'), CLIENTS - AUTO_LIMIT, JSON.stringify([...reasons]));
        assert.equal((reasons.get('client-closed') ?? 0) + (reasons.get('client-error') ?? 0), AUTO_LIMIT, JSON.stringify([...reasons]));
        const refusal = daemon.sessions().find((l) => l.reason === 'limit-reached')!;
        assert.match(String(refusal.error), new RegExp(`^session limit reached: ${AUTO_LIMIT} sessions open \\(limits\\.sessions auto: ${AUTO_LIMIT} from the open-files limit\\)$`));
        assert.deepEqual(daemon.logs.filter((l) => l.event === 'listener-error'), []);
        const warned = daemon.logs.filter((l) => l.event === 'session-limit');
        assert.equal(warned.length, 1);
        assert.equal(warned[0]!.level, 40);
      } finally {
        for (const socket of held) socket.destroy();
        await daemon.kill();
      }
    });
  });
}

/** A destination that sends `bytes` to each connection as soon as it connects, then waits. */
async function startPusher(bytes: number): Promise<{ port: number; close(): Promise<void> }> {
  const chunk = Buffer.alloc(64 * 1024, 0x78);
  const connections = new Set<Socket>();
  const server = createNetServer((socket) => {
    connections.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => connections.delete(socket));
    let left = bytes;
    const push = () => {
      while (left > 0) {
        left -= chunk.length;
        if (!socket.write(chunk)) return;
      }
    };
    socket.on('drain', push);
    push();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => {
      for (const socket of connections) socket.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A SOCKS5 CONNECT (greeting and request in one write) whose client then
 * reads nothing more: the socket is paused with no 'data' listener, so the
 * bytes wait in the kernel. Rejects when the proxy closes first.
 */
function connectAndStopReading(proxyPort: number, port: number): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const socket = connect(proxyPort, '127.0.0.1');
    const request = Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]);
    let answer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      answer = Buffer.concat([answer, chunk]);
      if (answer.length < 12) return;
      socket.off('data', onData);
      socket.pause();
      if (answer[1] === 0 && answer[3] === 0) resolve(socket);
      else reject(new Error(`refused: ${answer.subarray(0, 12).toString('hex')}`));
    };
    socket.on('data', onData);
    socket.on('error', () => {});
    socket.once('close', () => reject(new Error('closed by the proxy')));
    socket.write(request);
  });
}

for (const engine of ['native', 'node'] as const) {
  it(`clients that stop reading (${engine} handshakes, ulimit -n ${OPEN_FILES}): the relay's pipes take sessions' places, not the descriptors of clients to come`, async () => {
    // Each session's download backs up into a pipe of the splice relay (two
    // descriptors more), which `auto`'s two descriptors a session leave no
    // room for: accepts failed with EMFILE and freed places stayed taken.
    const pusher = await startPusher(64 * 1024 * 1024); // more than the buffers on the way hold
    const daemon = new Daemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--handshake-engine', engine],
      process.env, { launcher: ['prlimit', `--nofile=${OPEN_FILES}:${OPEN_FILES}`, '--'] });
    const held: Socket[] = [];
    try {
      const port = await daemon.port();
      let refused = 0;
      for (let i = 0; i < CLIENTS; i++) {
        try {
          held.push(await connectAndStopReading(port, pusher.port));
        } catch {
          refused++;
        }
      }
      await daemon.waitFor(() => daemon.sessions().length === refused, `a record for each of the ${refused} refused`);
      assert.ok(held.length > 0 && refused > 0, `${held.length} relayed, ${refused} refused`);
      assert.deepEqual(daemon.sessions().map((l) => l.reason).filter((r) => r !== 'limit-reached'), [], 'refused at the limit only');
      // Each record says what took the places: sessions, and pipes in sessions' places.
      const taken = daemon.sessions().map((l) => /^session limit reached: (\d+) sessions? open(?:, (\d+) more places taken by relay pipes)? \(limits\.sessions auto: /.exec(String(l.error)));
      assert.ok(taken.every((m) => m !== null && Number(m[1]) + Number(m[2] ?? 0) >= AUTO_LIMIT), daemon.sessions().map((l) => l.error).join('\n'));
      assert.ok(taken.some((m) => m![2] !== undefined), 'pipes took places');
      assert.deepEqual(daemon.logs.filter((l) => l.event === 'listener-error'), [], 'no accept failed');
      // Places given back go to new clients first.
      for (const socket of held.splice(0, 10)) socket.destroy();
      await daemon.waitFor(() => daemon.sessions().length === refused + 10, 'the records of the 10 that left');
      held.push(await connectAndStopReading(port, pusher.port));
      for (const socket of held) socket.destroy();
      await daemon.waitFor(() => daemon.sessions().length === CLIENTS + 1, 'a record for every client');
      assert.deepEqual(daemon.sessions().filter((l) => /EMFILE/.test(String(l.error))), [], 'no session failed for want of a descriptor');
    } finally {
      for (const socket of held) socket.destroy();
      await daemon.kill();
      await pusher.close();
    }
  });
}

describe('--max-sessions N with --workers 2', () => {
  it('each worker takes half of N, rounded up, and says so in its started line', async () => {
    const { daemon } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--workers', '2', '--max-sessions', '5']);
    try {
      await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'started').length === 2, 'both workers\' started lines');
      for (const line of daemon.logs.filter((l) => l.event === 'started')) {
        assert.equal(line.sessionLimit, 3);
        assert.match(String(line.msg), /at most 3 sessions/);
      }
      daemon.signal('SIGTERM'); // the supervisor stops its workers
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null });
    } finally {
      await daemon.kill();
    }
  });
});
