/**
 * Helpers for the native-handshake lifecycle tests: the addon's counters as
 * deltas, this process's descriptors, and SOCKS clients spoken by hand so the
 * exact bytes (and how the server ends the connection) are visible.
 */
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { type SpliceStats, spliceStats } from '../../src/relay/splice.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import type { RunningProxy } from '../helpers/server.js';

/** The addon's counters now; the addon must be loaded (this machine builds it). */
export function counters(): SpliceStats {
  const stats = spliceStats();
  assert.ok(stats, 'the splice addon is loaded');
  return stats;
}

/** How much `nativeAccepted` and `nativeHandedOver` moved since `before` (they are process-wide). */
export function nativeDelta(before: SpliceStats): { accepted: number; handedOver: number } {
  const now = counters();
  return { accepted: now.nativeAccepted - before.nativeAccepted, handedOver: now.nativeHandedOver - before.nativeHandedOver };
}

/** Pipes the addon created since `before` (it pools up to 64 for the whole process). */
export function pipesCreatedSince(before: SpliceStats): number {
  return counters().pipesCreated - before.pipesCreated;
}

/** This process's open descriptors: all of them, and those that are not pipes (the addon pools pipes for good). */
export interface FdCount {
  readonly total: number;
  readonly nonPipe: number;
}

export function openFds(): FdCount {
  let total = 0;
  let nonPipe = 0;
  for (const name of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // the directory's own descriptor, closed by now
    }
    total++;
    if (!target.startsWith('pipe:')) nonPipe++;
  }
  return { total, nonPipe };
}

/**
 * Polls (every 50 ms, for at most `timeoutMs`) until the descriptor count is
 * back to `baseline`; returns the last count, which the caller asserts on.
 * Sockets close a few event-loop turns after their peer does, hence the wait.
 */
export async function settledFds(baseline: FdCount, timeoutMs = 5000): Promise<FdCount> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = openFds();
    if ((now.total <= baseline.total && now.nonPipe <= baseline.nonPipe) || Date.now() >= deadline) return now;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Opens a SOCKS5 CONNECT (no auth) to 127.0.0.1:`port` in one write and reads the success reply. */
export async function openNative(proxyPort: number, port: number): Promise<RawClient> {
  const client = await RawClient.connect(proxyPort);
  client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', port)]));
  const reply = await client.read(12);
  assert.deepEqual(reply.subarray(0, 2), hex('05 00'), 'method none chosen');
  assert.equal(reply[3], 0x00, `CONNECT succeeded: ${reply.toString('hex')}`);
  return client;
}

/** Writes `text` and expects the echo server behind the proxy to send it back. */
export async function expectEcho(client: RawClient, text: string | Buffer): Promise<void> {
  const bytes = typeof text === 'string' ? Buffer.from(text) : text;
  client.write(bytes);
  assert.ok((await client.read(bytes.length)).equals(bytes), 'echoed exactly');
}

/** A SOCKS5 reply of any address type: the whole reply, read exactly. */
export async function readSocks5Reply(client: RawClient): Promise<Buffer> {
  const head = await client.read(4);
  const rest = head[3] === 0x01 ? 6 : head[3] === 0x04 ? 18 : (await client.read(1))[0]! + 2;
  return Buffer.concat([head, await client.read(rest)]);
}

/**
 * A session the native path hands over to a Node session: SOCKS4 CONNECT
 * (the listener must allow SOCKS4) or SOCKS5 CONNECT to a name. Resolves once
 * the success reply is read.
 */
export async function openHandedOver(proxyPort: number, port: number, kind: 'socks4' | 'domain'): Promise<RawClient> {
  const client = await RawClient.connect(proxyPort);
  if (kind === 'socks4') {
    client.write(Buffer.concat([hex('04 01'), Buffer.from([port >> 8, port & 0xff]), hex('7f000001 00')]));
    const reply = await client.read(8);
    assert.equal(reply[1], 0x5a, `SOCKS4 request granted: ${reply.toString('hex')}`);
  } else {
    client.write(Buffer.concat([hex('05 01 00'), connectRequestByName('localhost', port)]));
    assert.deepEqual(await client.read(2), hex('05 00'));
    const reply = await readSocks5Reply(client);
    assert.equal(reply[1], 0x00, `CONNECT to a name succeeded: ${reply.toString('hex')}`);
  }
  return client;
}

/** RFC 1929 username/password message. */
export function credentials(user: string, pass: string): Buffer {
  return Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([pass.length]), Buffer.from(pass)]);
}

/** The record of `client`'s session (matched by its local port). */
export function recordOf(proxy: RunningProxy, client: RawClient) {
  return proxy.record((r) => r.clientPort === client.localPort);
}
