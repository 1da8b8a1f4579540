/**
 * Reloaded against fresh, on generated rule sets: one native-engine proxy is
 * reloaded through a run of rule sets (or none), and after each reload it
 * must answer every request as a proxy started with that rule set does. The
 * relay thread remembers verdicts on requests and passwords; a verdict that
 * outlived the rules it came from would show here as an answer the fresh
 * proxy does not give.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import type { ServerOptions } from '../../src/index.js';
import { withTimeout } from '../cli/helpers.js';
import { RawClient, connectRequest } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, closedPort, recordsFrom, startEchoServer, startProxy } from '../helpers/server.js';

const USERS = [
  { name: 'alice', password: 'alice-pass' },
  { name: 'bob', password: 'bob-pass' },
] as const;
type User = (typeof USERS)[number]['name'];
type Port = 'echo' | 'closed';

const rule = fc.record({
  allow: fc.boolean(),
  user: fc.option(fc.constantFrom<User>('alice', 'bob')),
  port: fc.option(fc.constantFrom<Port>('echo', 'closed')),
  net: fc.option(fc.constantFrom('127.0.0.0/8', '10.0.0.0/8', '::/0')),
});
type Rule = typeof rule extends fc.Arbitrary<infer T> ? T : never;

const request = fc.record({
  user: fc.constantFrom<User | null>(null, 'alice', 'bob'),
  /** A wrong password for the user. */
  wrong: fc.boolean(),
  port: fc.constantFrom<Port>('echo', 'closed'),
});
type Request = typeof request extends fc.Arbitrary<infer T> ? T : never;

const step = fc.record({
  /** null: no rules at all (everything allowed). */
  rules: fc.option(fc.array(rule, { minLength: 1, maxLength: 3 }), { freq: 5 }),
  users: fc.subarray([...USERS], { minLength: 1 }),
  requests: fc.array(request, { minLength: 1, maxLength: 4 }),
});
type Step = typeof step extends fc.Arbitrary<infer T> ? T : never;

let echo: Fixture;
let closed: number;
before(async () => {
  echo = await startEchoServer();
  closed = await closedPort();
});
after(() => echo.close());

function portOf(port: Port): number {
  return port === 'echo' ? echo.port : closed;
}

function configOf({ rules, users }: Pick<Step, 'rules' | 'users'>): ServerOptions {
  return {
    listen: [{ address: '127.0.0.1', port: 0 }],
    handshake: { engine: 'native' },
    auth: { methods: ['userpass', 'none'], users: users.map((u) => ({ ...u })) },
    rules: (rules ?? []).map((r: Rule, i) => {
      const match = {
        ...(r.user ? { users: [r.user] } : {}),
        ...(r.port || r.net ? { to: { ...(r.port ? { ports: [portOf(r.port)] } : {}), ...(r.net ? { nets: [r.net] } : {}) } } : {}),
      };
      return { name: `r${i}`, ...(r.allow ? { allow: match } : { deny: match }) };
    }),
  };
}

/** Sends the whole exchange at once, ends, and returns the answer (bound address masked) and the record's verdict. */
async function ask(proxy: RunningProxy, { user, wrong, port }: Request) {
  const next = recordsFrom(proxy);
  const client = await RawClient.connect(proxy.port);
  const parts: Buffer[] = [Buffer.from(user ? [5, 1, 2] : [5, 1, 0])];
  if (user) {
    const password = Buffer.from(`${user}-pass${wrong ? '!' : ''}`);
    parts.push(Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([password.length]), password);
  }
  parts.push(connectRequest('127.0.0.1', portOf(port)));
  client.write(Buffer.concat(parts));
  client.socket.end();
  const answer = Buffer.from(await withTimeout(client.readToEnd(), 5000, 'the answer'));
  const replyAt = user ? 4 : 2;
  if (answer.length >= replyAt + 10 && answer[replyAt + 1] === 0) answer.fill(0, replyAt + 4, replyAt + 10);
  const record = await withTimeout(next((r) => r.clientPort === client.localPort), 5000, 'the record');
  return { answer: answer.toString('hex'), reason: record.reason, rule: record.rule, user: record.user };
}

test('after each reload, a proxy answers every request as one started with the new rules and users does', { timeout: 300_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(step, { minLength: 2, maxLength: 4 }), async (steps) => {
      const reloaded = await startProxy(configOf(steps[0]!));
      try {
        for (const [i, s] of steps.entries()) {
          if (i > 0) reloaded.server.reload(configOf(s));
          const fresh = await startProxy(configOf(s));
          try {
            for (const r of s.requests) {
              assert.deepEqual(await ask(reloaded, r), await ask(fresh, r), `step ${i}: ${JSON.stringify(r)}`);
            }
          } finally {
            await fresh.close();
          }
        }
      } finally {
        await reloaded.close();
      }
    }),
    { numRuns: 60, includeErrorInReport: true },
  );
});
