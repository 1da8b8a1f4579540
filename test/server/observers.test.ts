/**
 * Observers (session-open, session-close, draining, … listeners) are other
 * people's code. One that throws must not break the server: every session is
 * still served, recorded and counted, close() still resolves, and the error
 * reaches 'uncaughtException' as a listener's error does in Node, not
 * swallowed (as a throw out of an addon callback is, DEP0168).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { spliceUnavailable } from '../../src/relay/splice.js';

const ENGINES = ['splice/native', 'splice/node', 'stream/node'] as const;
const SESSIONS = 6 + 3 + 1; // a concurrent burst, three one at a time, one held open across close()

describe('an observer that throws', () => {
  for (const engines of ENGINES) {
    const skip = engines.startsWith('splice') ? spliceUnavailable() ?? false : false;
    test(`leaves the server whole, and its error reaches uncaughtException (${engines})`, { skip }, () => {
      const fixture = new URL('./throwing-observer-fixture.js', import.meta.url).pathname;
      const run = spawnSync(process.execPath, [fixture], {
        encoding: 'utf8',
        env: { ...process.env, SOCKSGATE_THROWING_OBSERVER: engines },
        timeout: 60_000,
      });
      assert.equal(run.status, 0, run.stderr);
      const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as {
        received: string[]; ids: number[]; reasons: string[]; sessionCount: number; closed: boolean; uncaught: string[];
      };
      assert.deepEqual(result.received, Array(SESSIONS - 1).fill('hi'), 'every client was served');
      assert.equal(new Set(result.ids).size, SESSIONS, `every session recorded once: ${result.ids.join(' ')}`);
      assert.equal(result.reasons.at(-1), 'shutdown', 'the session held open was shut down after the grace period');
      assert.equal(result.closed, true, 'close() resolved');
      assert.equal(result.sessionCount, 0);
      assert.deepEqual(result.uncaught.sort(), ['close observer', 'draining observer', 'open observer']);
      assert.doesNotMatch(run.stderr, /DEP0168/, 'nothing was thrown out of an addon callback');
    });
  }
});
