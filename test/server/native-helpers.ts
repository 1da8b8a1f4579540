/**
 * Helpers for the native-handshake tests (test/server/native.test.ts): the
 * addon's accept/hand-over counters, a proxy per handshake engine, SOCKS5
 * replies read whole and with their bound address masked, byte patterns, and
 * a loopback destination that never completes the TCP handshake.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { type Socket, connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { SocksClient } from 'socks';
import type { ServerOptions, SessionOpen, SessionRecord } from '../../src/index.js';
import { spliceStats } from '../../src/relay/splice.js';
import { withTimeout } from '../cli/helpers.js';
import type { RawClient } from '../helpers/raw.js';
import { type RunningProxy, startProxy } from '../helpers/server.js';

export const ENGINES = ['native', 'node'] as const;
export type Engine = (typeof ENGINES)[number];

/** The addon's process-wide counters of native accepts and hand-overs. */
export interface NativeCounters {
  readonly accepted: number;
  readonly handedOver: number;
}

export function nativeCounters(): NativeCounters {
  const stats = spliceStats();
  assert.ok(stats, 'the splice addon is loaded (the test command builds it)');
  return { accepted: stats.nativeAccepted, handedOver: stats.nativeHandedOver };
}

/** How far the counters moved since `before`. */
export function countersSince(before: NativeCounters): NativeCounters {
  const now = nativeCounters();
  return { accepted: now.accepted - before.accepted, handedOver: now.handedOver - before.handedOver };
}

export type EngineProxy = RunningProxy & { readonly opens: SessionOpen[] };

/**
 * A proxy on 127.0.0.1:0 whose handshakes run on `engine`; it also keeps
 * every `session-open` event. `native` is asked for outright, so a machine
 * where it cannot run fails here instead of silently testing Node twice.
 */
export async function startEngineProxy(engine: Engine, options: ServerOptions = {}): Promise<EngineProxy> {
  const proxy = await startProxy({ ...options, handshake: { engine } });
  assert.equal(proxy.server.handshakeEngine, engine);
  const opens: SessionOpen[] = [];
  proxy.server.on('session-open', (open) => opens.push(open));
  return Object.assign(proxy, { opens });
}

/** Runs `body` with a fresh proxy whose handshakes run on `engine`, and closes the proxy after, pass or fail. */
export async function withProxy<T>(engine: Engine, options: ServerOptions, body: (proxy: EngineProxy) => Promise<T>): Promise<T> {
  const proxy = await startEngineProxy(engine, options);
  try {
    return await body(proxy);
  } finally {
    await proxy.close();
  }
}

/** Failure guard for a record that never comes (the session hung, or its record names another client). */
const RECORD_WAIT_MS = 10_000;

/**
 * The record of the session whose client connected from `clientPort`:
 * matched by the record's own clientPort, or by the id its session-open gave
 * (so a record that names the wrong client is still found, and the caller can
 * assert on it instead of waiting forever).
 */
export function recordOf(proxy: EngineProxy, clientPort: number): Promise<SessionRecord> {
  assert.ok(clientPort > 0, 'the client has a local port');
  const openedAs = (r: SessionRecord) => proxy.opens.some((o) => o.id === r.id && o.clientPort === clientPort);
  const found = proxy.record((r) => r.clientPort === clientPort || openedAs(r));
  return withTimeout(found, RECORD_WAIT_MS, `the record of the session from client port ${clientPort}`);
}

/** The fields of a record that must not depend on the engine (no ids, client ports or times). */
export function comparable(r: SessionRecord) {
  return {
    clientAddress: r.clientAddress,
    version: r.version,
    authMethod: r.authMethod,
    user: r.user,
    command: r.command,
    requested: r.requested,
    // A UDP relay's port is ephemeral.
    connected: r.command === 'udp' ? r.connected?.replace(/:\d+$/, ':*') ?? null : r.connected,
    reply: r.reply,
    bytesUp: r.bytesUp,
    bytesDown: r.bytesDown,
    relay: r.relay,
    datagramsUp: r.datagramsUp,
    datagramsDown: r.datagramsDown,
    reason: r.reason,
    error: r.error,
    rule: r.rule,
  };
}

/** Reads one whole SOCKS5 reply (its length depends on ATYP). */
export async function readSocks5Reply(client: RawClient): Promise<Buffer> {
  const head = await client.read(4);
  const atyp = head[3];
  const rest = atyp === 1 ? 6 : atyp === 4 ? 18 : atyp === 3 ? (await client.read(1))[0]! + 2 : 0;
  const tail = atyp === 3 ? Buffer.concat([Buffer.from([rest - 2]), await client.read(rest)]) : await client.read(rest);
  return Buffer.concat([head, tail]);
}

/**
 * The bytes of a server's answer with the bound address and port of a
 * success reply zeroed: they name an ephemeral port that differs per
 * session. In every answer compared here the success reply comes last (after
 * the method selection and RFC 1929 status, if any); a SOCKS4 answer is 8 bytes.
 */
export function maskBound(answer: Buffer, version: 4 | 5): Buffer {
  const out = Buffer.from(answer);
  if (version === 4) {
    if (out.length === 8 && out[1] === 0x5a) out.fill(0, 2, 8);
    return out;
  }
  for (const [atyp, length] of [[1, 10], [4, 22]] as const) {
    const at = out.length - length;
    if (at >= 0 && out[at] === 5 && out[at + 1] === 0 && out[at + 2] === 0 && out[at + 3] === atyp) {
      out.fill(0, at + 4);
      break;
    }
  }
  return out;
}

/** `n` bytes where byte i is (i * 7 + seed) mod 251: any loss, duplicate or reordering shows. */
export function pattern(n: number, seed = 0): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + seed) % 251;
  return out;
}

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

/** RFC 1929 username/password message. */
export function credentials(user: string, pass: string, version = 1): Buffer {
  return Buffer.concat([Buffer.from([version, user.length]), Buffer.from(user), Buffer.from([pass.length]), Buffer.from(pass)]);
}

/** SOCKS4 CONNECT request bytes (IPv4, with a USERID). */
export function socks4Connect(ip: string, port: number, userId = ''): Buffer {
  return Buffer.concat([Buffer.from([4, 1, port >> 8, port & 0xff, ...ip.split('.').map(Number)]), Buffer.from(userId, 'latin1'), Buffer.from([0])]);
}

/** SOCKS5 request bytes for an IPv6 address literal. */
export function connectRequest6(host: string, port: number): Buffer {
  const groups = expandIPv6(host);
  const address = Buffer.alloc(16);
  groups.forEach((g, i) => address.writeUInt16BE(g, i * 2));
  return Buffer.concat([Buffer.from([5, 1, 0, 4]), address, Buffer.from([port >> 8, port & 0xff])]);
}

function expandIPv6(host: string): number[] {
  const [head = '', tail] = host.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const zeros = tail === undefined ? 0 : 8 - left.length - right.length;
  return [...left, ...Array<string>(zeros).fill('0'), ...right].map((g) => parseInt(g, 16));
}

/** CONNECT through the proxy with the npm `socks` client (userpass when `auth` is given). */
export async function socksConnect(proxy: RunningProxy, port: number, auth?: { name: string; password: string }): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: proxy.port, type: 5, ...(auth ? { userId: auth.name, password: auth.password } : {}) },
    command: 'connect',
    destination: { host: '127.0.0.1', port },
    timeout: 10_000,
  });
  return socket;
}

/** Everything the socket reads until the peer's FIN. */
export function readAll(socket: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

/** Writes `bytes` one byte per write, with a pause between writes so each goes out as its own segment. */
export async function writeByteByByte(client: RawClient, bytes: Buffer, pauseMs = 3): Promise<void> {
  client.socket.setNoDelay(true);
  for (const byte of bytes) {
    client.write(Buffer.from([byte]));
    await delay(pauseMs);
  }
}

/**
 * A loopback port whose connects never complete: the TCP handshake hangs.
 *
 * Node's net.Server always accepts, so nothing in this thread can hold a
 * listener without accepting. A worker thread binds it (backlog 1) and then
 * blocks its own event loop in Atomics.wait: libuv never calls accept(2).
 * The kernel queues completed handshakes up to the backlog (backlog + 1 on
 * Linux); the `clog` connections made here fill that queue, and from then on
 * the listener drops every SYN, so a connect stays in SYN-SENT (the kernel
 * retries for about two minutes). Before it is used, a plain connect is
 * checked to hang; if it does not, the fixture throws rather than letting a
 * test pass or fail for the wrong reason. `at`: its address (127.0.0.1) and
 * port (any free one).
 */
export async function startBlackHole(at: { readonly host?: string; readonly port?: number } = {}): Promise<{ readonly port: number; open(): void; close(): Promise<void> }> {
  const host = at.host ?? '127.0.0.1';
  const shared = new SharedArrayBuffer(4);
  // open() (flag 2) lets the worker's loop run: it accepts what is queued and
  // echoes, and a dropped SYN's retransmission then completes its connect.
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const net = require('node:net');
    const server = net.createServer((socket) => socket.pipe(socket));
    server.on('error', (err) => parentPort.postMessage({ error: err.message }));
    server.listen({ host: workerData.host, port: workerData.port, backlog: 1 }, () => {
      parentPort.postMessage({ port: server.address().port });
      const flag = new Int32Array(workerData.shared);
      Atomics.wait(flag, 0, 0); // nothing accepts from here on
      if (Atomics.load(flag, 0) !== 2) server.close();
      else parentPort.on('message', () => server.close(() => parentPort.close()));
    });`;
  const worker = new Worker(code, { eval: true, workerData: { shared, host, port: at.port ?? 0 } });
  const sockets: Socket[] = [];
  const flag = new Int32Array(shared);
  const open = () => {
    Atomics.store(flag, 0, 2);
    Atomics.notify(flag, 0);
  };
  const close = async () => {
    for (const s of sockets) s.destroy();
    if (Atomics.load(flag, 0) === 2) worker.postMessage('close');
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    const exited = once(worker, 'exit');
    const timer = setTimeout(() => void worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  };
  try {
    const [message] = (await once(worker, 'message')) as [{ port?: number; error?: string }];
    if (message.port === undefined) throw new Error(`black hole: ${message.error}`);
    const port = message.port;
    const attempt = async (): Promise<'connected' | 'failed' | 'hung'> => {
      const socket = connect({ port, host });
      sockets.push(socket);
      socket.on('error', () => {});
      const outcome = await Promise.race([
        once(socket, 'connect').then(() => 'connected' as const),
        once(socket, 'close').then(() => 'failed' as const),
        delay(500).then(() => 'hung' as const),
      ]);
      return outcome;
    };
    // Fill the accept queue (a bounded number of tries), then prove a connect hangs.
    for (let i = 0; i < 8; i++) {
      const outcome = await attempt();
      if (outcome === 'hung') return { port, open, close };
      if (outcome === 'failed') throw new Error('black hole: a connect failed instead of hanging');
    }
    throw new Error('black hole: the accept queue never filled, connects still complete');
  } catch (err) {
    await close();
    throw err;
  }
}
