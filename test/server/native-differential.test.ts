/**
 * The native handshake engine against the node engine, on generated clients:
 * greetings, RFC 1929 messages and requests, each valid or with one field
 * off, cut short at any byte, written in random pieces and followed by a
 * FIN. Whatever a client sends, both engines must answer with the same
 * bytes, end the connection the same way and write the same record.
 *
 * The table in native.test.ts names the cases one by one; this walks the
 * space between them, where a parser that reads in pieces (the relay
 * thread's) can go wrong at a boundary.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import fc from 'fast-check';
import type { ServerOptions } from '../../src/index.js';
import { fraction, mostly } from '../helpers/arbitraries.js';
import { RawClient } from '../helpers/raw.js';
import { type Fixture, closedPort, startEchoServer } from '../helpers/server.js';
import { ALICE } from '../interop/helpers.js';
import { ENGINES, type Engine, type EngineProxy, comparable, recordOf, startEngineProxy } from './native-helpers.js';

const BOB = { name: 'bob', password: 'hunter2' } as const;

/** Where a request may point: the echo server, a closed port, port 0. */
interface Ports {
  readonly echo: number;
  readonly closed: number;
}

/**
 * Client ports a rule looks at, and the ports beside them: below the
 * ephemeral range (32768-60999), so that only clients that ask get them.
 */
const CLIENT_PORTS = { low: [20_000, 24_999], high: [25_000, 29_999] } as const;

/** Two users with plain passwords: a wrong one is refused at once, no bcrypt wait. */
const USERS = { methods: ['userpass' as const], users: [{ ...ALICE }, { ...BOB }] };
const KINDS = {
  plain: (): ServerOptions => ({}),
  userpass: (): ServerOptions => ({ auth: USERS }),
  /** Rules on the user, the client's port, the destination's port and network. */
  rules: (ports: Ports): ServerOptions => ({
    auth: { ...USERS, methods: ['userpass', 'none'] },
    rules: [
      { name: 'bob-not-to-echo', deny: { users: [BOB.name], to: { ports: [ports.echo] } } },
      // Towards the echo server: an allowed CONNECT stays native, so only the relay thread's memory decides a repeat.
      { name: 'low-client-ports-not-to-echo', deny: { from: { ports: [CLIENT_PORTS.low.join('-')] }, to: { ports: [ports.echo] } } },
      { name: 'v4-loopback', allow: { to: { nets: ['127.0.0.0/8'] } } },
      { name: 'v6-loopback-echo', allow: { to: { nets: ['::1/128'], ports: [ports.echo] } } },
    ],
  }),
} as const;
type Kind = keyof typeof KINDS;

/** Added to a length field: 0, or a count that disagrees with the bytes that follow. */
const skew = mostly(0, -1, 1, 3);

const greeting = fc.record({
  version: mostly(5, 4, 0, 6),
  skew,
  methods: fc.oneof(
    fc.constantFrom([0], [2], [0, 2], [2, 0]),
    fc.array(fc.constantFrom(0x00, 0x01, 0x02, 0x03, 0x80, 0xff), { maxLength: 4 }),
  ),
});

const credentials = fc.record({
  version: mostly(1, 0, 2, 5),
  skew,
  user: fc.constantFrom(ALICE.name, BOB.name, 'mallory', ''),
  password: fc.constantFrom(ALICE.password, BOB.password, 'wrong', ''),
});

type Address = { readonly atyp: number; readonly bytes: readonly number[] };
const V4_LOOPBACK: Address = { atyp: 1, bytes: [127, 0, 0, 1] };
const V6_LOOPBACK: Address = { atyp: 4, bytes: [...Array<number>(15).fill(0), 1] };
/** A name is handed over to the node engine; this one needs no resolver. */
const NAME: Address = { atyp: 3, bytes: [9, ...Buffer.from('127.0.0.1')] };
const BAD_TYPE: Address = { atyp: 2, bytes: [127, 0, 0, 1] };

const request = fc.record({
  version: mostly(5, 4, 1),
  command: mostly(1, 0, 4, 9),
  reserved: mostly(0, 1),
  address: fc.oneof(
    { weight: 4, arbitrary: fc.constant(V4_LOOPBACK) },
    { weight: 1, arbitrary: fc.constantFrom(V6_LOOPBACK, NAME, BAD_TYPE) },
  ),
  port: mostly<'echo' | 'closed' | 'zero'>('echo', 'closed', 'zero'),
});

const script = fc.record({
  kind: fc.constantFrom<'plain' | 'userpass'>('plain', 'userpass'),
  greeting,
  credentials: fc.option(credentials, { freq: 4 }),
  request,
  payload: fc.uint8Array({ maxLength: 300 }),
  /** Fractions of the length, each a point where one write ends and the next begins. */
  splits: fc.array(fraction, { maxLength: 4 }),
  /** A fraction of the length to cut the bytes at, or null to send them all. */
  cut: fc.option(fraction, { freq: 3 }),
});
/** A generated client: what it sends, and where its writes are split. */
type Script = typeof script extends fc.Arbitrary<infer T> ? T : never;

/** Everything the script's client sends, before any cut. */
function bytesOf({ kind, greeting: g, credentials: c, request: r, payload }: Script, ports: Ports): Buffer {
  const port = r.port === 'echo' ? ports.echo : r.port === 'closed' ? ports.closed : 0;
  const parts = [Buffer.from([g.version, (g.methods.length + g.skew) & 0xff, ...g.methods])];
  // Credentials go where a username/password client puts them; a client of
  // the plain proxy that sends them anyway sends a malformed request.
  if (c && (kind === 'userpass' || c.version !== 1)) {
    const user = Buffer.from(c.user);
    const password = Buffer.from(c.password);
    parts.push(Buffer.from([c.version, (user.length + c.skew) & 0xff]), user, Buffer.from([password.length]), password);
  }
  parts.push(Buffer.from([r.version, r.command, r.reserved, r.address.atyp, ...r.address.bytes, port >> 8, port & 0xff]));
  parts.push(Buffer.from(payload));
  return Buffer.concat(parts);
}

/**
 * The answer with the bound address and port of a success reply zeroed (an
 * ephemeral port): the method selection, the RFC 1929 status if there is
 * one, then the reply, then whatever the destination echoed.
 */
function maskReply(answer: Buffer): Buffer {
  const out = Buffer.from(answer);
  if (out[0] !== 5 || out.length < 2) return out;
  let at = 2;
  if (out[1] === 0x02) {
    if (out[at + 1] !== 0x00) return out; // refused, or nothing more
    at += 2;
  }
  if (out[at] !== 5 || out[at + 1] !== 0 || out[at + 2] !== 0) return out;
  const length = out[at + 3] === 1 ? 4 : out[at + 3] === 4 ? 16 : 0;
  out.fill(0, at + 4, Math.min(out.length, at + 4 + length + 2));
  return out;
}

/** Connects from a port in `range`: a random one, another if it is taken (an earlier client's TIME_WAIT). */
async function connectFrom(port: number, [low, high]: readonly [number, number]): Promise<RawClient> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await RawClient.connect(port, '127.0.0.1', low + Math.floor(Math.random() * (high - low + 1)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt === 50) throw err;
    }
  }
}

/**
 * Sends `bytes` in pieces ending at `splits`, a little apart so that the
 * server reads them apart, then a FIN; from a port in `from` if given.
 */
async function play(bytes: Buffer, splits: readonly number[], proxy: EngineProxy, from?: readonly [number, number]) {
  const points = [...new Set(splits.map((f) => Math.floor(f * bytes.length)))].sort((a, b) => a - b);
  // Hundreds of sessions: an earlier one's client port comes back, and its record must not be taken for this one's.
  proxy.records.length = 0;
  proxy.opens.length = 0;
  const client = from ? await connectFrom(proxy.port, from) : await RawClient.connect(proxy.port);
  try {
    let start = 0;
    for (const end of [...points, bytes.length]) {
      if (end > start) client.write(bytes.subarray(start, end));
      start = end;
      await delay(2);
    }
    client.socket.end();
    const answer = await client.readToEnd();
    const ended = await client.ended;
    const record = await recordOf(proxy, client.localPort);
    return { answer: maskReply(answer).toString('hex'), ended, record: comparable(record) };
  } finally {
    client.destroy();
  }
}

let echo: Fixture;
let ports: Ports;
const proxies = new Map<string, EngineProxy>();

before(async () => {
  echo = await startEchoServer();
  ports = { echo: echo.port, closed: await closedPort() };
  for (const kind of Object.keys(KINDS) as Kind[]) {
    for (const engine of ENGINES) proxies.set(`${kind}/${engine}`, await startEngineProxy(engine, KINDS[kind](ports)));
  }
});
after(async () => {
  for (const proxy of proxies.values()) await proxy.close();
  await echo.close();
});

function proxyFor(kind: Kind, engine: Engine): EngineProxy {
  return proxies.get(`${kind}/${engine}`)!;
}

test('generated clients, whole or cut short, in any pieces: both engines give the same answer, close and record', { timeout: 120_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(script, async (s) => {
      const all = bytesOf(s, ports);
      const bytes = s.cut === null ? all : all.subarray(0, Math.floor(s.cut * all.length));
      const node = await play(bytes, s.splits, proxyFor(s.kind, 'node'));
      const native = await play(bytes, s.splits, proxyFor(s.kind, 'native'));
      assert.deepEqual(native, node, `client bytes ${bytes.toString('hex')}`);
    }),
    { numRuns: 150, includeErrorInReport: true },
  );
});

/** One well-formed client of the rules proxy: who it is, and where it asks to go. */
const ruledRequest = fc.record({
  who: fc.constantFrom<'anonymous' | 'alice' | 'bob'>('anonymous', 'alice', 'bob'),
  from: fc.constantFrom<keyof typeof CLIENT_PORTS>('low', 'high'),
  address: fc.constantFrom(V4_LOOPBACK, V6_LOOPBACK),
  port: fc.constantFrom<'echo' | 'closed'>('echo', 'closed'),
});

function ruledBytes({ who, address, port }: typeof ruledRequest extends fc.Arbitrary<infer T> ? T : never): Buffer {
  const to = port === 'echo' ? ports.echo : ports.closed;
  const user = who === 'alice' ? ALICE : who === 'bob' ? BOB : null;
  const hello = user
    ? Buffer.concat([Buffer.from([5, 1, 2, 1, user.name.length]), Buffer.from(user.name), Buffer.from([user.password.length]), Buffer.from(user.password)])
    : Buffer.from([5, 1, 0]);
  return Buffer.concat([hello, Buffer.from([5, 1, 0, address.atyp, ...address.bytes, to >> 8, to & 0xff])]);
}

test('runs of requests under rules on users, client ports and destinations: both engines apply the same rule to each', { timeout: 120_000 }, async () => {
  // The relay thread remembers each verdict by everything it depended on, so
  // one proxy per engine serves every run, and a verdict given to one client
  // must not be repeated for another that differs in any of it.
  await fc.assert(
    fc.asyncProperty(fc.array(ruledRequest, { minLength: 1, maxLength: 6 }), async (requests) => {
      for (const request of requests) {
        const bytes = ruledBytes(request);
        const from = CLIENT_PORTS[request.from];
        const node = await play(bytes, [], proxyFor('rules', 'node'), from);
        const native = await play(bytes, [], proxyFor('rules', 'native'), from);
        assert.deepEqual(native, node, `client bytes ${bytes.toString('hex')}`);
      }
    }),
    { numRuns: 40, includeErrorInReport: true },
  );
});
