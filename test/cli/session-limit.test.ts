/**
 * `limits.sessions` from the command line: `auto` from the open-files limit
 * keeps a daemon with few descriptors from accepting clients it cannot dial
 * for (they failed with `connect EMFILE`, or, in Node's accept, were lost
 * without a record), and a number is shared by the workers.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Socket } from 'node:net';
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
