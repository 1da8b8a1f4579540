/**
 * Small helpers shared by the interop tests (curl, ncat, the npm `socks`
 * client). They add nothing to the proxy; they only spawn clients with a
 * clean environment, pick a session's record out of the proxy's list, and
 * spell out the records a test expects.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { SessionRecord } from '../../src/index.js';
import { type RunResult, run } from '../helpers/run.js';
import type { RunningProxy } from '../helpers/server.js';

/** The user every userpass test configures. */
export const ALICE = { name: 'alice', password: 's3cret' } as const;

/** Server options requiring username/password with ALICE as the only user. */
export const USERPASS_ONLY = { methods: ['userpass' as const], users: [{ ...ALICE }] };

/** Upper bound for one client run; a hang fails the test instead of blocking the run. */
export const CLIENT_TIMEOUT_MS = 15_000;

/** Guard for node:test so a hung client or proxy fails instead of stalling the suite. */
export const TEST_TIMEOUT_MS = 30_000;

/**
 * The environment without any *_proxy variable, so neither curl nor anything
 * else takes a proxy (or a proxy exception such as NO_PROXY=localhost) from
 * the machine running the tests.
 */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/_proxy$/i.test(key)) env[key] = value;
  }
  return env;
}

/**
 * Runs curl with the given arguments. `-q` (no .curlrc) must come first;
 * `--noproxy ''` disables NO_PROXY exceptions that would bypass the proxy.
 */
export function curl(args: readonly string[]): Promise<RunResult> {
  return run('curl', ['-q', '-sS', '--max-time', '10', '--noproxy', '', ...args], {
    env: cleanEnv(),
    timeoutMs: CLIENT_TIMEOUT_MS,
  });
}

/** Runs ncat with `input` on stdin; stdin is closed after it, which ends the echo. */
export function ncat(args: readonly string[], input: string | Buffer): Promise<RunResult> {
  return run('ncat', args, { input, env: cleanEnv(), timeoutMs: CLIENT_TIMEOUT_MS });
}

/** Matches the record of the session whose requested destination has this port. */
export function forPort(port: number): (r: SessionRecord) => boolean {
  return (r) => r.requested !== null && r.requested.endsWith(`:${port}`);
}

export { recordsFrom } from '../helpers/server.js';

/** A payload that no single chunk or short buffer could fake: random bytes. */
export function payload(size: number): Buffer {
  return randomBytes(size);
}

/**
 * Writes `data` to the socket, ends its write side, and resolves with every
 * byte read until the far end closes (the echo fixture ends when we end).
 */
export function roundTrip(socket: Socket, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', reject);
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.end(data);
  });
}

/** The SOCKS4 reply codes, as the record reports them. */
export const SOCKS4_GRANTED = 0x5a;
export const SOCKS4_REJECTED = 0x5b;

/** The fields of a record a test can know in advance (no ids, ports of the client, times or byte counts). */
export type RecordFields = Pick<
  SessionRecord,
  'version' | 'authMethod' | 'user' | 'command' | 'requested' | 'connected' | 'reply' | 'reason' | 'error'
>;

/** Picks the predictable fields, for one deepStrictEqual that names every difference. */
export function fields(r: SessionRecord): RecordFields {
  return {
    version: r.version,
    authMethod: r.authMethod,
    user: r.user,
    command: r.command,
    requested: r.requested,
    connected: r.connected,
    reply: r.reply,
    reason: r.reason,
    error: r.error,
  };
}

/** How the proxy recorded the client's authentication. */
export type RecordedAuth = Pick<RecordFields, 'authMethod' | 'user'>;

/** No authentication, no user id. */
export const NO_AUTH: RecordedAuth = { authMethod: 'none', user: null };

/**
 * The predictable fields of a CONNECT that was granted (SOCKS4 0x5a, SOCKS5
 * reply 0), relayed, and ended by the client, with no error.
 */
export function relayedConnect(version: 4 | 5, requested: string, connected: string, auth: RecordedAuth = NO_AUTH): RecordFields {
  return {
    version,
    authMethod: auth.authMethod,
    user: auth.user,
    command: 'connect',
    requested,
    connected,
    reply: version === 4 ? SOCKS4_GRANTED : 0,
    reason: 'client-closed',
    error: null,
  };
}

/** Asserts the record counted `size` payload bytes each way, as an echo of `size` bytes makes. */
export function assertEchoCounted(rec: SessionRecord, size: number): void {
  assert.equal(rec.bytesUp, size);
  assert.equal(rec.bytesDown, size);
}
