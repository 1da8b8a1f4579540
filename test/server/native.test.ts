/**
 * Native handshakes end to end (`handshake.engine: native`): the addon's
 * relay thread accepts, negotiates the common SOCKS5 exchange (no auth or
 * username/password, CONNECT to an address literal), dials and splices; every
 * other connection is handed over to the Node session with the bytes read so
 * far. What a client sees must not depend on which engine served it: each
 * hand-over case runs on both engines and the answers and records are
 * compared. The addon's counters (nativeAccepted, nativeHandedOver) prove
 * which path served a connection; they are process-wide, so only their
 * deltas around one test's own sessions are used.
 */
import assert from 'node:assert/strict';
import { type Socket, connect, createServer as createNetServer } from 'node:net';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { SocksClient } from 'socks';
import type { CloseReason, ServerOptions, SessionRecord } from '../../src/index.js';
import { spliceStats } from '../../src/relay/splice.js';
import { RawClient, connectRequest, connectRequestByName, hex } from '../helpers/raw.js';
import { type Fixture, closedPort, startEchoServer, startTcpServer } from '../helpers/server.js';
import { ALICE, USERPASS_ONLY } from '../interop/helpers.js';
import {
  ENGINES,
  type Engine,
  type EngineProxy,
  type NativeCounters,
  comparable,
  connectRequest6,
  countersSince,
  credentials,
  maskBound,
  nativeCounters,
  pattern,
  readAll,
  readSocks5Reply,
  recordOf,
  sha256,
  socks4Connect,
  socksConnect,
  startBlackHole,
  startEngineProxy,
  withProxy,
  writeByteByByte,
} from './native-helpers.js';

/** Greetings offering only "no authentication", only username/password. */
const NO_AUTH = '05 01 00';
const USERPASS = '05 01 02';
/** ATYP, BND.ADDR and BND.PORT of a refusal, and of a success reply once masked (maskBound). */
const ZERO_V4 = '00 01 00000000 0000';

/** A failure guard only: a hung session fails the test instead of stalling the run. */
const opts = { timeout: 60_000 };

/** Served natively from accept to the end: counted as accepted, never handed over. */
const STAYED_NATIVE: NativeCounters = { accepted: 1, handedOver: 0 };
const HANDED_OVER: NativeCounters = { accepted: 1, handedOver: 1 };
/** The node engine never lets the addon accept. */
const UNTOUCHED: NativeCounters = { accepted: 0, handedOver: 0 };

/** Whether ::1 can be bound here (a host or container without IPv6 cannot). */
async function ipv6Loopback(): Promise<boolean> {
  const server = createNetServer();
  try {
    server.listen(0, '::1');
    await once(server, 'listening');
    return true;
  } catch {
    return false;
  } finally {
    server.close();
  }
}

/** The digest server's answer size for `up` bytes read (besides the 32-byte digest). */
function downSize(up: number): number {
  return 2 * up + 7;
}

/**
 * A destination that reads until the client's FIN, then answers with the
 * sha256 of what it read followed by `downSize(n)` pattern bytes, and ends:
 * both directions carry known, different sizes and are checked byte for byte.
 */
function startDigestServer(): Promise<Fixture> {
  return startTcpServer((socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => {
      const got = Buffer.concat(chunks);
      socket.end(Buffer.concat([sha256(got), pattern(downSize(got.length), got.length % 251)]));
    });
  });
}

/** One session through `proxy` to the digest server; returns the client's port and the byte counts. */
async function digestSession(proxy: EngineProxy, targetPort: number, size: number, auth?: { name: string; password: string }) {
  const socket = await socksConnect(proxy, targetPort, auth);
  try {
    const clientPort = socket.localPort!;
    const answer = readAll(socket);
    const sent = pattern(size, size % 251);
    socket.end(sent);
    const got = await answer;
    assert.deepEqual(got.subarray(0, 32), sha256(sent), `${size} bytes up: the destination got exactly what was sent`);
    assert.ok(got.subarray(32).equals(pattern(downSize(size), size % 251)), `${downSize(size)} bytes down arrived intact`);
    return { clientPort, up: size, down: got.length };
  } finally {
    socket.destroy();
  }
}


/**
 * One raw client of `proxy`: `exchange` talks to the proxy, then the client
 * ends its side and reads to the end. Returns the session's record and how
 * far the addon's counters moved from before the connect.
 */
async function clientSession(proxy: EngineProxy, exchange: (client: RawClient) => Promise<void>): Promise<{ record: SessionRecord; counters: NativeCounters }> {
  const before = nativeCounters();
  const client = await RawClient.connect(proxy.port);
  try {
    await exchange(client);
    client.socket.end();
    await client.readToEnd();
    const record = await recordOf(proxy, client.localPort);
    return { record, counters: countersSince(before) };
  } finally {
    client.destroy();
  }
}

describe('native handshakes: the common path stays native', () => {
  let digest: Fixture;
  before(async () => {
    digest = await startDigestServer();
  });
  after(() => digest.close());

  const N = 20;
  const variants = [
    { name: 'no authentication', options: {}, auth: undefined, authMethod: 'none', user: null },
    { name: 'username/password', options: { auth: USERPASS_ONLY }, auth: ALICE, authMethod: 'userpass', user: ALICE.name },
  ] as const;

  for (const variant of variants) {
    test(`${N} CONNECT sessions with ${variant.name} (npm socks client): all native, bytes intact both ways, exact records`, opts, async () => {
      const proxy = await startEngineProxy('native', variant.options);
      try {
        const before = nativeCounters();
        const sessions = await Promise.all(Array.from({ length: N }, (_, i) => digestSession(proxy, digest.port, 1000 + i * 4099, variant.auth)));
        const records = await Promise.all(sessions.map((s) => recordOf(proxy, s.clientPort)));
        assert.deepEqual(countersSince(before), { accepted: N, handedOver: 0 }, 'every session was accepted natively and none was handed over');
        records.forEach((record, i) => {
          const s = sessions[i]!;
          assert.deepEqual(
            {
              relay: record.relay,
              version: record.version,
              authMethod: record.authMethod,
              user: record.user,
              command: record.command,
              requested: record.requested,
              connected: record.connected,
              reply: record.reply,
              bytesUp: record.bytesUp,
              bytesDown: record.bytesDown,
              reason: record.reason,
              error: record.error,
              rule: record.rule,
              clientAddress: record.clientAddress,
            },
            {
              relay: 'splice',
              version: 5,
              authMethod: variant.authMethod,
              user: variant.user,
              command: 'connect',
              requested: `127.0.0.1:${digest.port}`,
              connected: `127.0.0.1:${digest.port}`,
              reply: 0,
              bytesUp: s.up,
              bytesDown: s.down,
              reason: 'client-closed', // the client's FIN came first
              error: null,
              rule: null,
              clientAddress: '127.0.0.1',
            },
          );
          assert.ok(record.durationMs >= 0 && record.startedAt > 0);
        });
      } finally {
        await proxy.close();
      }
    });
  }

  test('the success reply names the outbound socket\'s local address as BND.ADDR:BND.PORT', opts, async () => {
    let peer: (address: string) => void = () => {};
    const seen = new Promise<string>((resolve) => { peer = resolve; });
    const target = await startTcpServer((socket) => {
      peer(`${socket.remoteAddress}:${socket.remotePort}`);
      socket.pipe(socket);
    });
    await withFixture(target, async () => {
      await withProxy('native', {}, async (proxy) => {
        const { counters } = await clientSession(proxy, async (client) => {
          client.write(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', target.port)]));
          assert.deepEqual(await client.read(2), hex('05 00'));
          const reply = await readSocks5Reply(client);
          assert.deepEqual(reply.subarray(0, 4), hex('05 00 00 01'));
          const bound = `${[...reply.subarray(4, 8)].join('.')}:${reply.readUInt16BE(8)}`;
          assert.equal(bound, await seen, 'BND.ADDR:BND.PORT is where the destination sees the proxy connect from');
        });
        assert.deepEqual(counters, STAYED_NATIVE);
      });
    });
  });

  test('an IPv6 literal destination ([::1]) is served natively, with the same reply and record as the node engine', opts, async (t) => {
    if (!(await ipv6Loopback())) return t.skip('::1 cannot be bound here');
    await withFixture(await startEchoServer('::1'), async (echo) => {
      const runs = await onBothEngines({}, async (proxy) => {
        const engine = proxy.server.handshakeEngine;
        const client = await RawClient.connect(proxy.port);
        client.write(Buffer.concat([hex(NO_AUTH), connectRequest6('::1', echo.port)]));
        assert.deepEqual(await client.read(2), hex('05 00'));
        const reply = await readSocks5Reply(client);
        assert.deepEqual(reply.subarray(0, 4), hex('05 00 00 04'), `${engine}: an IPv6 bound address`);
        assert.deepEqual(reply.subarray(4, 20), hex('0000 0000 0000 0000 0000 0000 0000 0001'), `${engine}: BND.ADDR is ::1`);
        client.write(hex('cafe'));
        assert.deepEqual(await client.read(2), hex('cafe'));
        client.socket.end();
        await client.readToEnd();
        return client.localPort;
      });
      assert.deepEqual(runs.native.counters, STAYED_NATIVE);
      assert.deepEqual(runs.node.counters, UNTOUCHED);
      assert.equal(runs.native.record.requested, `[::1]:${echo.port}`);
      assertSameEnding(runs);
    });
  });
});

// ---- hand-over cases: the same answer as the node engine ----

/** The fixtures a case's bytes may name. */
interface Ports {
  readonly echo: number;
  readonly closed: number;
  /** The port the deny rule names. */
  readonly denied: number;
}

const PROXY_KINDS = {
  /** SOCKS4 on, no auth: most cases. */
  plain: (): ServerOptions => ({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] }),
  socks4Off: (): ServerOptions => ({ listen: [{ address: '127.0.0.1', port: 0, socks4: false }] }),
  userpass: (): ServerOptions => ({ auth: USERPASS_ONLY }),
  /** A password with U+FFFD, which any byte that is not UTF-8 decodes to. */
  replacement: (): ServerOptions => ({ auth: { methods: ['userpass'], users: [{ name: 'rose', password: 'a\uFFFDb' }] } }),
  rules: (ports: Ports): ServerOptions => ({
    rules: [
      { name: 'no-denied-port', deny: { to: { ports: [ports.denied] } } },
      { name: 'loopback-v4', allow: { to: { nets: ['127.0.0.0/8'] } } },
    ],
  }),
  /** A short handshake timeout, for clients that stall. */
  impatient: (): ServerOptions => ({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }], timeouts: { handshake: 300 } }),
} as const;
type ProxyKind = keyof typeof PROXY_KINDS;

/**
 * What the client does after its bytes: `close` waits for the server to
 * close; `end-close` ends its side at once, then waits; `relay` reads the
 * answer, echoes "ping" through the destination and ends; `hold` reads the
 * answer (BIND's first reply, UDP's reply) and ends; `reset` reads it and
 * resets (a FIN while BIND waits is a half-close: the wait goes on).
 */
type Then = 'close' | 'end-close' | 'relay' | 'hold' | 'reset';

interface HandOverCase {
  readonly name: string;
  readonly proxy: ProxyKind;
  readonly bytes: (ports: Ports) => Buffer;
  readonly then: Then;
  /** The whole answer, hex; success replies with BND.ADDR and BND.PORT zeroed (see maskBound). */
  readonly answer: string;
  readonly reason: CloseReason;
  readonly error?: RegExp;
  readonly rule?: string | null;
  /** The allowed CONNECT stays native: only the rule was asked. */
  readonly stays?: true;
  /** A known discrepancy of the native engine: the case is kept and marked todo. */
  readonly todo?: string;
}

/** The proxy and the ending most cases share: the plain proxy, and a client that waits for the server to close. */
function closed(c: Omit<HandOverCase, 'proxy' | 'then'> & Partial<Pick<HandOverCase, 'proxy' | 'then'>>): HandOverCase {
  return { proxy: 'plain', then: 'close', ...c };
}

/** Relayed: the client reads the answer, echoes "ping" through the destination and ends first (client-closed). */
function relayed(c: Omit<HandOverCase, 'then' | 'reason'>): HandOverCase {
  return { ...c, then: 'relay', reason: 'client-closed' };
}

/** The client ends its side once its bytes are sent, before the handshake is through: client-gone. */
function goneEarly(c: Omit<HandOverCase, 'then' | 'reason'>): HandOverCase {
  return { ...c, then: 'end-close', reason: 'client-gone' };
}

/** A no-auth greeting and a request the proxy refuses: the method selection, then REP `rep` (hex) with a zero address. */
function refusedRequest(c: Omit<HandOverCase, 'proxy' | 'then' | 'bytes' | 'answer'> & { proxy?: ProxyKind; request: (ports: Ports) => Buffer; rep: string }): HandOverCase {
  const { request, rep, ...rest } = c;
  return closed({ ...rest, bytes: (p) => Buffer.concat([hex(NO_AUTH), request(p)]), answer: `05 00 05 ${rep} ${ZERO_V4}` });
}

/** A username/password greeting and credentials the proxy refuses: status 01 01, auth-failed. */
function refusedLogin(c: { name: string; proxy?: ProxyKind; credentials: Buffer; error?: RegExp }): HandOverCase {
  const { credentials: sent, ...rest } = c;
  return { proxy: 'userpass', ...rest, then: 'close', bytes: () => Buffer.concat([hex(USERPASS), sent]), answer: '05 02 01 01', reason: 'auth-failed' };
}

/** A client that sends `sent` (hex) and then nothing, to the impatient proxy: the handshake timeout names what the proxy waited for. */
function stalled(c: { name: string; sent: string; answer: string; waitingFor: string }): HandOverCase {
  return {
    name: c.name,
    proxy: 'impatient',
    bytes: () => hex(c.sent),
    then: 'close',
    answer: c.answer,
    reason: 'handshake-timeout',
    error: new RegExp(`handshake timeout after 300 ms waiting for ${c.waitingFor}`),
  };
}

const CASES: readonly HandOverCase[] = [
  relayed({
    name: 'SOCKS4 CONNECT on a listener with socks4 on: granted and relayed',
    proxy: 'plain',
    bytes: (p) => socks4Connect('127.0.0.1', p.echo, 'bob'),
    answer: '00 5a 0000 00000000',
  }),
  closed({
    name: 'SOCKS4 with socks4 off: 0x5B',
    proxy: 'socks4Off',
    bytes: (p) => socks4Connect('127.0.0.1', p.echo),
    answer: '00 5b 0000 00000000',
    reason: 'not-allowed',
    error: /SOCKS4 is disabled/,
  }),
  closed({ name: 'greeting offering only 0x02 when only none is accepted: 05 FF', bytes: () => hex('05 01 02'), answer: '05 ff', reason: 'no-acceptable-method', error: /offered methods \[0x02\]/ }),
  closed({ name: 'greeting offering only none on a userpass-only listener: 05 FF', proxy: 'userpass', bytes: () => hex('05 01 00'), answer: '05 ff', reason: 'no-acceptable-method' }),
  closed({ name: 'greeting with NMETHODS 0: closed without a reply', bytes: () => hex('05 00'), answer: '', reason: 'protocol-error', error: /zero methods/ }),
  closed({
    name: 'not SOCKS at all (an HTTP request): closed without a reply',
    bytes: () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
    answer: '',
    reason: 'protocol-error',
    error: /first byte 0x47/,
  }),
  goneEarly({ name: 'a truncated greeting, then the client closes', proxy: 'plain', bytes: () => hex('05 03 00'), answer: '', error: /truncated SOCKS5 greeting \(3 bytes\)/ }),
  goneEarly({ name: 'a greeting, then the client closes before its request', proxy: 'plain', bytes: () => hex(NO_AUTH), answer: '05 00', error: /before the SOCKS5 request/ }),
  goneEarly({
    name: 'a greeting and good credentials, then the client closes before its request',
    proxy: 'userpass',
    bytes: () => Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password)]),
    answer: '05 02 01 00',
    error: /before the SOCKS5 request/,
  }),
  relayed({
    name: 'domain-name CONNECT to localhost: JavaScript resolves it, the relay thread dials and relays',
    proxy: 'plain',
    bytes: (p) => Buffer.concat([hex(NO_AUTH), connectRequestByName('localhost', p.echo)]),
    answer: `05 00 05 00 00 01 00000000 0000`,
    stays: true,
  }),
  relayed({
    name: 'username/password, then a domain-name CONNECT: relayed natively, the record names the user',
    proxy: 'userpass',
    bytes: (p) => Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password), connectRequestByName('localhost', p.echo)]),
    answer: `05 02 01 00 05 00 00 01 00000000 0000`,
    stays: true,
  }),
  closed({
    name: 'BIND: the first reply, then the client resets while waiting for the peer',
    bytes: () => Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', 0, 2)]),
    then: 'reset',
    answer: `05 00 05 00 ${ZERO_V4}`,
    reason: 'client-gone',
  }),
  closed({
    name: 'UDP ASSOCIATE: the reply names the relay, the association ends with the control connection',
    bytes: () => Buffer.concat([hex(NO_AUTH), connectRequest('0.0.0.0', 0, 3)]),
    then: 'hold',
    answer: `05 00 05 00 ${ZERO_V4}`,
    reason: 'client-closed',
  }),
  refusedRequest({ name: 'an unknown command (0x04): 05 07', request: (p) => connectRequest('127.0.0.1', p.echo, 4), rep: '07', reason: 'command-not-supported' }),
  refusedRequest({ name: 'an unknown address type (0x02): 05 08', request: () => hex('05 01 00 02 7f000001 0050'), rep: '08', reason: 'protocol-error' }),
  refusedRequest({
    name: 'a request with RSV 0x01: 05 01',
    request: (p) => hex(`05 01 01 01 7f000001 ${p.echo.toString(16).padStart(4, '0')}`),
    rep: '01',
    reason: 'protocol-error',
    error: /reserved byte is 0x01/,
  }),
  refusedRequest({ name: 'a CONNECT to port 0: refused as the node engine refuses it', request: () => connectRequest('127.0.0.1', 0), rep: '05', reason: 'connect-failed' }),
  refusedRequest({ name: 'a CONNECT to a closed loopback port: 05 05', request: (p) => connectRequest('127.0.0.1', p.closed), rep: '05', reason: 'connect-failed', error: /ECONNREFUSED/ }),
  // connect() fails at once (loopback's broadcast address: no packet leaves),
  // so Node's wording names the failed socket's own address too.
  refusedRequest({
    name: 'a CONNECT to 127.255.255.255 (connect() fails at once): 05 03, Node\'s wording with " - Local (…)"',
    request: () => connectRequest('127.255.255.255', 8080),
    rep: '03',
    reason: 'connect-failed',
    error: /^connect ENETUNREACH 127\.255\.255\.255:8080 - Local \(0\.0\.0\.0:0\)$/,
  }),
  refusedLogin({ name: 'a wrong password: status 01 01', credentials: credentials(ALICE.name, 'wrong'), error: /wrong credentials for user "alice"/ }),
  refusedLogin({ name: 'an unknown user: status 01 01', credentials: credentials('mallory', ALICE.password) }),
  refusedLogin({ name: 'an empty username and password: status 01 01', credentials: hex('01 00 00') }),
  refusedLogin({
    name: 'a password that is not UTF-8: status 01 01, even where it decodes to the configured password (U+FFFD)',
    proxy: 'replacement',
    credentials: hex(`01 04 ${Buffer.from('rose').toString('hex')} 03 61ff62`),
    error: /username or password is not UTF-8/,
  }),
  closed({
    name: 'an auth message with version byte 0x02: closed without a status',
    proxy: 'userpass',
    bytes: () => Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password, 2)]),
    answer: '05 02',
    reason: 'protocol-error',
  }),
  relayed({
    name: 'a CONNECT to an IPv4-mapped IPv6 address (::ffff:127.0.0.1): relayed natively, the same reply and record',
    proxy: 'plain',
    bytes: (p) => Buffer.concat([hex(NO_AUTH), connectRequest6('::ffff:7f00:1', p.echo)]),
    answer: `05 00 05 00 ${ZERO_V4}`,
    stays: true,
  }),
  refusedRequest({
    name: 'a deny rule matching the target: 05 02, the record names the rule',
    proxy: 'rules',
    request: (p) => connectRequest('127.0.0.1', p.denied),
    rep: '02',
    reason: 'not-allowed',
    rule: 'no-denied-port',
    error: /denied by rule "no-denied-port"/,
  }),
  refusedRequest({ name: 'no rule matching the target: 05 02, default-deny', proxy: 'rules', request: (p) => connectRequest6('::1', p.echo), rep: '02', reason: 'not-allowed', rule: 'default-deny' }),
  relayed({
    name: 'an allow rule matching the target: relayed and stays native, the record names the rule',
    proxy: 'rules',
    bytes: (p) => Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', p.echo)]),
    answer: `05 00 05 00 ${ZERO_V4}`,
    rule: 'loopback-v4',
    stays: true,
  }),
  stalled({ name: 'handshake timeout: a client that sends nothing', sent: '', answer: '', waitingFor: 'first byte' }),
  stalled({ name: 'handshake timeout: a client that stalls mid-greeting', sent: '05 02 00', answer: '', waitingFor: 'SOCKS5 greeting' }),
  stalled({ name: 'handshake timeout: a client that stalls after the first byte of a SOCKS4 request', sent: '04', answer: '', waitingFor: 'SOCKS4 request' }),
  stalled({ name: 'handshake timeout: a client that stalls mid-request', sent: '05 01 00  05 01 00', answer: '05 00', waitingFor: 'SOCKS5 request' }),
  stalled({ name: 'handshake timeout: a client that stalls mid-name', sent: '05 01 00  05 01 00 03 09 6c6f63', answer: '05 00', waitingFor: 'SOCKS5 request' }),
  refusedRequest({ name: 'a CONNECT to a zero-length name: 05 01', request: () => hex('05 01 00 03 00 0050'), rep: '01', reason: 'protocol-error', error: /zero-length domain name/ }),
  refusedRequest({ name: 'a CONNECT to a name at port 0: refused as the node engine refuses it', request: () => connectRequestByName('localhost', 0), rep: '05', reason: 'connect-failed' }),
  goneEarly({
    name: 'a name cut short, then the client closes',
    proxy: 'plain',
    bytes: () => hex('05 01 00  05 01 00 03 09 6c6f63'),
    answer: '05 00',
    error: /truncated SOCKS5 request/,
  }),
];

interface Outcome {
  /** The record names the client's own port. */
  readonly clientPort: number;
  readonly answer: Buffer;
  readonly ended: 'end' | 'reset';
  readonly record: SessionRecord;
  readonly counters: NativeCounters;
}

/** Runs one case's client against `proxy` and returns what it saw, the record, and the counters' moves. */
async function runCase(c: HandOverCase, proxy: EngineProxy, ports: Ports): Promise<Outcome> {
  const before = nativeCounters();
  const client = await RawClient.connect(proxy.port);
  try {
    const bytes = c.bytes(ports);
    if (bytes.length > 0) client.write(bytes);
    const version = bytes[0] === 4 ? 4 : 5;
    // A success reply is read whole by its ATYP, whatever length the table expects.
    const readAnswer = async () => {
      if (version === 4) return client.read(8);
      const prefix = await client.read(hex(c.answer).length - 10); // method selection, RFC 1929 status
      return Buffer.concat([prefix, await readSocks5Reply(client)]);
    };
    let answer: Buffer;
    switch (c.then) {
      case 'close':
        answer = await client.readToEnd();
        break;
      case 'end-close':
        client.socket.end();
        answer = await client.readToEnd();
        break;
      case 'relay': {
        answer = await readAnswer();
        client.write(Buffer.from('ping'));
        assert.equal((await client.read(4)).toString(), 'ping', 'relayed through the echo server');
        client.socket.end();
        assert.equal((await client.readToEnd()).length, 0, 'nothing after the echo');
        break;
      }
      case 'hold':
        answer = await readAnswer();
        client.socket.end();
        assert.equal((await client.readToEnd()).length, 0, 'nothing after the reply');
        break;
      case 'reset':
        answer = await readAnswer();
        client.socket.resetAndDestroy();
        break;
    }
    const ended = await client.ended;
    const record = await recordOf(proxy, client.localPort);
    return { clientPort: client.localPort, answer: maskBound(answer, version), ended, record, counters: countersSince(before) };
  } finally {
    client.destroy();
  }
}

describe('native handshakes: usernames', () => {
  const BOB = { name: 'bob', password: 'hunter2' } as const;

  function usernamesHeld(): number {
    const stats = spliceStats();
    assert.ok(stats, 'the splice addon is loaded (the test command builds it)');
    return stats.usernames;
  }

  /** Waits (bounded) until the relay thread has let go of every pair that held a name. */
  async function untilUsernamesHeld(count: number): Promise<number> {
    for (let i = 0; i < 2_000 && usernamesHeld() !== count; i++) await delay(5);
    return usernamesHeld();
  }

  test('the sessions of one user share one copy of the name; the copy goes with the last of them', opts, async () => {
    const echo = await startEchoServer();
    // A rule that names users, so the remembered decision is keyed by the name too.
    const proxy = await startEngineProxy('native', {
      auth: { methods: ['userpass'], users: [{ ...ALICE }, { ...BOB }] },
      rules: [{ name: 'known-users', allow: { users: [ALICE.name, BOB.name] } }],
    });
    const sockets: Socket[] = [];
    try {
      const baseline = usernamesHeld();
      const who = [ALICE, ALICE, BOB, ALICE, BOB, ALICE];
      for (const auth of who) sockets.push(await socksConnect(proxy, echo.port, auth));
      assert.equal(usernamesHeld() - baseline, 2, 'six sessions of two users hold two names');
      // Each relay still carries its own bytes and names its own user.
      await Promise.all(sockets.map(async (socket, i) => {
        socket.write(`hello ${i}`);
        const [echoed] = (await once(socket, 'data')) as [Buffer];
        assert.equal(echoed.toString(), `hello ${i}`);
      }));
      const ports = sockets.map((socket) => socket.localPort!);
      for (const socket of sockets.splice(0, 3)) socket.destroy();
      const firstRecords = await Promise.all(ports.slice(0, 3).map((port) => recordOf(proxy, port)));
      assert.equal(usernamesHeld(), baseline + 2, 'alice and bob each still have a live session');
      for (const socket of sockets.splice(0)) socket.destroy();
      const records = [...firstRecords, ...(await Promise.all(ports.slice(3).map((port) => recordOf(proxy, port))))];
      assert.deepEqual(records.map((r) => [r.user, r.rule]), who.map((auth) => [auth.name, 'known-users']));
      assert.equal(await untilUsernamesHeld(baseline), baseline, 'no name is held once its last session is gone');
    } finally {
      for (const socket of sockets) socket.destroy();
      await proxy.close();
      await echo.close();
    }
  });
});

describe('native handshakes: every hand-over gives the node engine\'s answer', () => {
  let echo: Fixture;
  let ports: Ports;
  const proxies = new Map<string, EngineProxy>();

  before(async () => {
    echo = await startEchoServer();
    ports = { echo: echo.port, closed: await closedPort(), denied: await closedPort() };
  });
  after(async () => {
    for (const proxy of proxies.values()) await proxy.close();
    await echo.close();
  });

  async function proxyFor(kind: ProxyKind, engine: Engine): Promise<EngineProxy> {
    const key = `${kind}/${engine}`;
    let proxy = proxies.get(key);
    if (!proxy) {
      proxy = await startEngineProxy(engine, PROXY_KINDS[kind](ports));
      proxies.set(key, proxy);
    }
    return proxy;
  }

  for (const c of CASES) {
    test(c.name, { ...opts, ...(c.todo ? { todo: c.todo } : {}) }, async () => {
      const node = await runCase(c, await proxyFor(c.proxy, 'node'), ports);
      const native = await runCase(c, await proxyFor(c.proxy, 'native'), ports);

      // The node engine is the reference: check it against the table first.
      assert.equal(node.answer.toString('hex'), hex(c.answer).toString('hex'), 'node engine: the answer');
      assert.equal(node.record.reason, c.reason, 'node engine: the record reason');
      if (c.error) assert.match(node.record.error ?? '', c.error, 'node engine: the record error');
      assert.equal(node.record.rule, c.rule ?? null, 'node engine: the record rule');
      assert.deepEqual(node.counters, UNTOUCHED);

      assert.equal(node.record.clientPort, node.clientPort, 'node engine: the record names the client\'s port');
      assert.equal(native.answer.toString('hex'), node.answer.toString('hex'), 'native engine: the same answer bytes');
      assert.equal(native.record.clientPort, native.clientPort, 'native engine: the record names the client\'s port');
      assert.equal(native.ended, node.ended, 'native engine: the same kind of close');
      assert.deepEqual(comparable(native.record), comparable(node.record), 'native engine: the same record');
      assert.deepEqual(native.counters, c.stays ? STAYED_NATIVE : HANDED_OVER, 'native engine: accepted natively, then handed over (or not)');
    });
  }
});

describe('native handshakes: connect timeout', () => {
  test('a destination that never completes the TCP handshake: REP 0x06 and "timed out after 300 ms", as with the node engine', opts, async () => {
    await withFixture(await startBlackHole(), async (hole) => {
      const answers: Partial<Record<Engine, Buffer>> = {};
      const runs = await onBothEngines({ timeouts: { connect: 300 } }, async (proxy) => {
        const client = await RawClient.connect(proxy.port);
        client.write(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', hole.port)]));
        answers[proxy.server.handshakeEngine as Engine] = await client.readToEnd();
        return client.localPort;
      });
      for (const engine of ENGINES) {
        const { record } = runs[engine];
        assert.equal(answers[engine]?.toString('hex'), hex(`05 00 05 06 ${ZERO_V4}`).toString('hex'), `${engine}: REP 0x06`);
        assert.equal(record.reason, 'connect-failed', engine);
        assert.equal(record.reply, 0x06, engine);
        assert.equal(record.error, `connect to 127.0.0.1:${hole.port} timed out after 300 ms`, engine);
      }
      assert.deepEqual(runs.native.counters, HANDED_OVER, 'the native engine dialled, then handed the failure over');
      assert.deepEqual(runs.node.counters, UNTOUCHED);
      assertSameEnding(runs);
    });
  });
});

describe('native handshakes: a connect that completes later', () => {
  test('the destination answers only after a SYN retransmission: CONNECT succeeds and bytes flow', opts, async () => {
    // The relay thread's connect does not complete inside connect() here, so
    // the destination's socket is watched for EPOLLOUT, then re-armed for input.
    await withFixture(await startBlackHole(), async (hole) => {
      await withProxy('native', { timeouts: { connect: 10_000 } }, async (proxy) => {
        const { record, counters } = await clientSession(proxy, async (client) => {
          client.write(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', hole.port)]));
          assert.equal((await client.read(2)).toString('hex'), '0500');
          await delay(100); // the SYN is dropped by the full accept queue
          hole.open();
          const reply = await client.read(10);
          assert.equal(reply[1], 0x00, 'succeeded');
          client.write(Buffer.from('ping after a late connect'));
          assert.equal((await client.read(25)).toString(), 'ping after a late connect');
        });
        assert.equal(record.reason, 'client-closed');
        assert.equal(record.bytesUp, 25);
        assert.deepEqual(counters, STAYED_NATIVE);
      });
    });
  });
});

// ---- how sessions end: the same on both engines ----

interface EngineRun {
  readonly clientPort: number;
  readonly record: SessionRecord;
  readonly counters: NativeCounters;
}

/** Both records name their client, and agree on everything that does not depend on the engine. */
function assertSameEnding(runs: Record<Engine, EngineRun>): void {
  for (const engine of ENGINES) {
    const { record, clientPort } = runs[engine];
    assert.deepEqual([record.clientAddress, record.clientPort], ['127.0.0.1', clientPort], `${engine}: the record names the client`);
  }
  assert.deepEqual(comparable(runs.native.record), comparable(runs.node.record));
}

/** The native run's record names `reason`, its counters moved by `counters` (when given), and both runs agree (assertSameEnding). */
function assertEndedAs(runs: Record<Engine, EngineRun>, reason: CloseReason, counters?: NativeCounters): void {
  assert.equal(runs.native.record.reason, reason);
  if (counters) assert.deepEqual(runs.native.counters, counters);
  assertSameEnding(runs);
}

/** Runs `body` with `fixture` (a destination server), and closes the fixture after, pass or fail. */
async function withFixture<F extends { close(): Promise<void> }, T>(fixture: F, body: (fixture: F) => Promise<T>): Promise<T> {
  try {
    return await body(fixture);
  } finally {
    await fixture.close();
  }
}

/**
 * Runs `scenario` against a fresh proxy per engine (native first); the
 * scenario returns its client's port, whose record is then awaited.
 */
async function onBothEngines(options: ServerOptions, scenario: (proxy: EngineProxy) => Promise<number>): Promise<Record<Engine, EngineRun>> {
  const runs: Partial<Record<Engine, EngineRun>> = {};
  for (const engine of ENGINES) {
    runs[engine] = await withProxy(engine, options, async (proxy) => {
      const before = nativeCounters();
      const clientPort = await scenario(proxy);
      const record = await recordOf(proxy, clientPort);
      return { clientPort, record, counters: countersSince(before) };
    });
  }
  return runs as Record<Engine, EngineRun>;
}

/** An authenticator that never answers; `asked()` settles once it has been asked (again after each call of `asked`). */
interface StalledAuthenticator {
  verify(): Promise<boolean>;
  asked(): Promise<void>;
}

function stalledAuthenticator(): StalledAuthenticator {
  let tell = () => {};
  return {
    verify: () => {
      tell();
      return new Promise<boolean>(() => {});
    },
    asked: () => new Promise<void>((resolve) => (tell = resolve)),
  };
}

/** Connects to `proxy` and sends a username/password greeting with alice's credentials, in one write. */
async function loginAsAlice(proxy: EngineProxy): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port);
  client.write(Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password)]));
  return client;
}

/**
 * On both engines (onBothEngines, username/password only and `options`):
 * alice logs in and reads until the proxy closes. Returns the runs, and what
 * each client read, in hex (native, then node).
 */
async function answersToLogin(options: ServerOptions): Promise<{ runs: Record<Engine, EngineRun>; answers: string[] }> {
  const answers: string[] = [];
  const runs = await onBothEngines({ auth: USERPASS_ONLY, ...options }, async (proxy) => {
    const client = await loginAsAlice(proxy);
    answers.push((await client.readToEnd()).toString('hex'));
    return client.localPort;
  });
  return { runs, answers };
}

/**
 * Greets with username/password and sends the credentials; once the
 * authenticator is asked (the relay thread waits for JavaScript and reads no
 * more), sends a CONNECT request, and returns when the kernel has taken it.
 */
async function requestDuringPasswordCheck(proxy: EngineProxy, authenticator: StalledAuthenticator): Promise<RawClient> {
  const asked = authenticator.asked();
  const client = await loginAsAlice(proxy);
  await asked;
  await new Promise<void>((resolve, reject) => client.socket.write(connectRequest('127.0.0.1', 9), (err) => (err ? reject(err) : resolve())));
  return client;
}

/** Sends "ping" through a relayed session to an echo server and asserts it comes back. */
async function assertPing(client: RawClient): Promise<void> {
  client.write(Buffer.from('ping'));
  assert.equal((await client.read(4)).toString(), 'ping');
}

/** Connects and greets without authentication; returns once the method selection (05 00) is read. */
async function greeted(proxy: EngineProxy): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port);
  client.write(NO_AUTH);
  assert.deepEqual(await client.read(2), hex('05 00'));
  return client;
}

/** Greets without authentication, sends a CONNECT to `port`, and reads the success reply. */
async function connected(proxy: EngineProxy, port: number): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port);
  client.write(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', port)]));
  assert.deepEqual(maskBound(await client.read(12), 5), hex(`05 00 05 00 ${ZERO_V4}`));
  return client;
}

describe('native handshakes: how sessions end, compared with the node engine', () => {
  test('the destination ends first: the client still sends after its FIN, the destination reads it all; destination-closed', opts, async () => {
    let received: Promise<Buffer> = Promise.reject(new Error('no connection'));
    received.catch(() => {});
    const target = await startTcpServer((socket) => {
      received = readAll(socket);
      socket.end('bye');
    });
    const late = pattern(64 * 1024, 21);
    const uploads: Buffer[] = [];
    await withFixture(target, async () => {
      const runs = await onBothEngines({}, async (proxy) => {
        // allowHalfOpen: this client keeps its write side open after the destination's FIN.
        const client = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
        await once(client, 'connect');
        const clientPort = client.localPort!;
        const down = readAll(client);
        client.write(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', target.port)]));
        const got = await down;
        assert.equal(got.subarray(12).toString(), 'bye', 'the reply, then the destination\'s bytes and FIN');
        client.end(late);
        uploads.push(await received);
        client.destroy();
        return clientPort;
      });
      assert.ok(uploads.length === 2 && uploads.every((u) => u.equals(late)), 'both engines: the destination read everything sent after its FIN');
      assert.equal(runs.native.record.bytesDown, 3);
      assert.equal(runs.native.record.bytesUp, late.length);
      assertEndedAs(runs, 'destination-closed', STAYED_NATIVE);
    });
  });

  test('a client reset mid-relay reaches the destination as a reset; record client-error', opts, async () => {
    const outcomes: string[] = [];
    let outcome: () => Promise<string> = () => Promise.reject(new Error('no connection'));
    const target = await startTcpServer((socket) => {
      const seen = new Promise<string>((resolve) => {
        socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
        socket.on('end', () => resolve('end'));
      });
      outcome = () => seen;
      socket.write('hello');
    });
    await withFixture(target, async () => {
      const runs = await onBothEngines({}, async (proxy) => {
        const client = await connected(proxy, target.port);
        assert.equal((await client.read(5)).toString(), 'hello');
        client.socket.resetAndDestroy();
        outcomes.push(await outcome());
        return client.localPort;
      });
      assert.deepEqual(outcomes, ['ECONNRESET', 'ECONNRESET'], 'native, then node: the destination saw a reset');
      assertEndedAs(runs, 'client-error', STAYED_NATIVE);
    });
  });

  test('a relayed session with no traffic is closed after timeouts.idle', opts, async () => {
    await withFixture(await startTcpServer(() => {}), async (target) => {
      const runs = await onBothEngines({ timeouts: { idle: 200 } }, async (proxy) => {
        const client = await connected(proxy, target.port);
        await client.readToEnd();
        return client.localPort;
      });
      assertEndedAs(runs, 'idle-timeout', STAYED_NATIVE);
    });
  });

  test('server close() ends a relayed session on both sides; record shutdown', opts, async () => {
    await withFixture(await startEchoServer(), async (target) => {
      const runs = await onBothEngines({}, async (proxy) => {
        const client = await connected(proxy, target.port);
        await assertPing(client);
        await proxy.server.close({ graceMs: 0 });
        await client.readToEnd();
        return client.localPort;
      });
      assertEndedAs(runs, 'shutdown', STAYED_NATIVE);
    });
  });

  test('server close() during the handshake (greeting answered, no request yet): the same record', {
    ...opts,
  }, async () => {
    const runs = await onBothEngines({}, async (proxy) => {
      const client = await greeted(proxy);
      await proxy.server.close({ graceMs: 0 });
      assert.equal((await client.readToEnd()).length, 0);
      return client.localPort;
    });
    assert.equal(runs.native.counters.accepted, 1);
    assertEndedAs(runs, 'shutdown');
  });

  test('a client reset while the proxy waits for its request: the same record', {
    ...opts,
  }, async () => {
    const runs = await onBothEngines({}, async (proxy) => {
      const client = await greeted(proxy);
      client.socket.resetAndDestroy();
      return client.localPort;
    });
    assertEndedAs(runs, 'client-gone', HANDED_OVER);
  });

  /*
   * The relay thread read part of a greeting, then the reset: the hand-over
   * carries both, and the session steps through the bytes before it records
   * the reset, as the node engine read them as they came (version 5).
   */
  test('a client reset after part of its greeting was read: the same record (version 5, the reset)', opts, async () => {
    const runs = await onBothEngines({}, async (proxy) => {
      const client = await RawClient.connect(proxy.port);
      client.write(hex('05 09 00 02'));
      await delay(200); // read by the proxy: the reset comes in a read of its own
      client.socket.resetAndDestroy();
      return client.localPort;
    });
    for (const e of ENGINES) {
      const { version, reason, error } = runs[e].record;
      assert.deepEqual({ version, reason, error }, { version: 5, reason: 'client-gone', error: 'client connection failed during handshake: ECONNRESET' }, e);
    }
    assert.deepEqual(runs.native.counters, HANDED_OVER);
    assertSameEnding(runs);
  });

  /*
   * The relay thread reads nothing from the client while JavaScript checks
   * the password, but a reset must still end the session at once: the check
   * is dropped (its signal aborted), and the record is the node engine's
   * (client-gone with the reset), never auth-failed, a login failure the
   * client did not make. A verdict that comes after (an authenticator that
   * ignores the signal) goes nowhere: nothing is sent, recorded or dialled.
   */
  for (const late of [null, false, true] as const) {
    const what = late === null ? 'the check is dropped' : `an authenticator that ignores the signal and answers ${late} afterwards changes nothing`;
    test(`a client reset while its password is checked: ${what}; record client-gone with the reset on both engines`, opts, async () => {
      const aborted: Engine[] = [];
      const endings: string[] = [];
      const verdicts: Array<(ok: boolean) => void> = [];
      let engine: Engine = ENGINES[0];
      let asked = () => {};
      const authenticator = {
        verify: (_user: string, _password: string, { signal }: { signal: AbortSignal }) => new Promise<boolean>((resolve, reject) => {
          const of = engine;
          verdicts.push(resolve);
          signal.addEventListener('abort', () => {
            aborted.push(of);
            if (late === null) reject(signal.reason);
          });
          asked();
        }),
      };
      const runs = await onBothEngines({ auth: USERPASS_ONLY, timeouts: { handshake: 3000 }, authenticator }, async (proxy) => {
        engine = proxy.server.handshakeEngine as Engine;
        const checking = new Promise<void>((resolve) => (asked = resolve));
        const client = await loginAsAlice(proxy);
        assert.deepEqual(await client.read(2), hex('05 02'));
        await checking;
        const record = proxy.record((r) => r.clientPort === client.localPort);
        client.socket.resetAndDestroy();
        endings.push(await client.ended);
        if (late !== null) {
          await record;
          for (const verdict of verdicts.splice(0)) verdict(late);
          await delay(100);
        }
        return client.localPort;
      });
      assert.deepEqual(aborted, ['native', 'node'], 'the check\'s signal was aborted on both engines');
      for (const e of ENGINES) {
        assert.deepEqual(
          [runs[e].record.reason, runs[e].record.error, runs[e].record.user],
          ['client-gone', 'client connection failed during handshake: ECONNRESET', ALICE.name],
          e,
        );
      }
      assert.deepEqual(runs.native.counters, HANDED_OVER);
      assertSameEnding(runs);
    });
  }

  test('the handshake timeout passes while JavaScript is still checking the password: the same answer and record', opts, async () => {
    // An authenticator slower than the handshake timeout.
    const slow = { verify: () => new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 1000)) };
    const { runs, answers } = await answersToLogin({ timeouts: { handshake: 300 }, authenticator: slow });
    assert.deepEqual(answers, ['0502', '0502'], 'native, then node: the method selection, then a close');
    assertEndedAs(runs, 'handshake-timeout');
  });

  /*
   * While JavaScript checks a password, the relay thread reads nothing from
   * the client, so a request pipelined behind the credentials waits in the
   * kernel's receive queue. Linux closes a socket with unread bytes with a
   * reset instead of a FIN; the node engine has read them, and closes cleanly.
   */
  test('the handshake timeout passes while the password is checked and the request waits unread: a FIN on both engines, not a reset', opts, async () => {
    const stalled = stalledAuthenticator();
    const endings: string[] = [];
    const runs = await onBothEngines({ auth: USERPASS_ONLY, timeouts: { handshake: 500 }, authenticator: stalled }, async (proxy) => {
      const client = await requestDuringPasswordCheck(proxy, stalled);
      assert.equal((await client.readToEnd()).toString('hex'), '0502');
      endings.push(await client.ended);
      return client.localPort;
    });
    assert.deepEqual(endings, ['end', 'end'], 'native, then node: a FIN, not a reset');
    assertEndedAs(runs, 'handshake-timeout', HANDED_OVER);
  });

  test('server close() while the password is checked and the request waits unread: a FIN on both engines, not a reset', opts, async () => {
    const stalled = stalledAuthenticator();
    const endings: string[] = [];
    const runs = await onBothEngines({ auth: USERPASS_ONLY, authenticator: stalled }, async (proxy) => {
      const client = await requestDuringPasswordCheck(proxy, stalled);
      await proxy.server.close({ graceMs: 0 });
      assert.equal((await client.readToEnd()).toString('hex'), '0502');
      endings.push(await client.ended);
      return client.localPort;
    });
    assert.deepEqual(endings, ['end', 'end'], 'native, then node: a FIN, not a reset');
    // Closed by the relay thread itself: the session never left it.
    assertEndedAs(runs, 'shutdown', STAYED_NATIVE);
  });

  for (const [what, outcome] of [['undefined', undefined], ['1', 1], ['"yes"', 'yes']] as const) {
    test(`an authenticator that resolves ${what}, not true: refused (01 01) on both engines, the process unharmed`, opts, async () => {
      const careless = { verify: async () => outcome as unknown as boolean };
      const { runs, answers } = await answersToLogin({ authenticator: careless });
      assert.deepEqual(answers, ['05020101', '05020101'], 'native, then node');
      assertEndedAs(runs, 'auth-failed');
    });
  }

  test('an authenticator that rejects is asked once per attempt on both engines; the record names its failure', opts, async () => {
    let calls = 0;
    const failing = { verify: async () => { calls++; throw new Error(`backend down (call ${calls})`); } };
    const callsPerEngine: number[] = [];
    const runs = await onBothEngines({ auth: USERPASS_ONLY, authenticator: failing }, async (proxy) => {
      calls = 0;
      const client = await loginAsAlice(proxy);
      assert.equal((await client.readToEnd()).toString('hex'), '05020101');
      callsPerEngine.push(calls);
      return client.localPort;
    });
    assert.deepEqual(callsPerEngine, [1, 1], 'native, then node');
    assert.equal(runs.native.record.error, 'authenticator failed: backend down (call 1)');
    assertSameEnding(runs);
  });
});

/*
 * An idle relayed session is about 1 KiB in all, so what JavaScript keeps
 * per session counts: a password check's or lookup's AbortController, with
 * its signal's listeners, is about 760 bytes. Each is dropped once it has
 * answered. WeakRefs to the signals the authenticator and the resolver were
 * given show it: they are collected while the session still relays.
 */
describe('native handshakes: a relayed session keeps nothing of its password check and lookup', () => {
  test('userpass and a CONNECT by name (npm socks client): both signals are collected while the session relays', opts, async () => {
    const gc = garbageCollector();
    const signals: Array<WeakRef<AbortSignal>> = [];
    const authenticator = {
      verify: async (user: string, password: string, { signal }: { signal: AbortSignal }) => {
        signals.push(new WeakRef(signal));
        signal.addEventListener('abort', () => {});
        return user === ALICE.name && password === ALICE.password;
      },
    };
    const resolver = {
      resolve: async (_host: string, options?: { signal?: AbortSignal }) => {
        if (options?.signal) signals.push(new WeakRef(options.signal));
        return [{ address: '127.0.0.1', family: 4 as const }];
      },
    };
    const echo = await startEchoServer();
    const proxy = await startEngineProxy('native', { auth: USERPASS_ONLY, authenticator, resolver });
    try {
      const before = nativeCounters();
      const { socket } = await SocksClient.createConnection({
        proxy: { host: '127.0.0.1', port: proxy.port, type: 5, userId: ALICE.name, password: ALICE.password },
        command: 'connect',
        destination: { host: 'echo.test', port: echo.port },
        timeout: 10_000,
      });
      socket.write('ping');
      assert.equal(String((await once(socket, 'data'))[0]), 'ping');
      assert.equal(signals.length, 2, 'the authenticator and the resolver were each given a signal');
      // A WeakRef keeps its target for the rest of the job that made or read it.
      for (let turn = 0; turn < 3; turn++) {
        await delay(10);
        gc();
      }
      assert.deepEqual(signals.map((s) => s.deref() === undefined), [true, true], 'the check\'s and the lookup\'s signals were collected');
      socket.write('pong');
      assert.equal(String((await once(socket, 'data'))[0]), 'pong', 'the session still relays');
      assert.deepEqual(countersSince(before), STAYED_NATIVE);
      socket.end();
      const record = await recordOf(proxy, socket.localPort!);
      assert.deepEqual([record.user, record.requested, record.relay], [ALICE.name, `echo.test:${echo.port}`, 'splice']);
    } finally {
      await proxy.close();
      await echo.close();
    }
  });
});

/** V8's collector, which Node exposes only behind a flag: set at run time, then read from a fresh context. */
function garbageCollector(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/**
 * A destination that collects what it reads until the client's FIN, then
 * ends; each connection's bytes come out of `next()` in order of arrival.
 */
async function startCollector(): Promise<Fixture & { next(): Promise<Buffer> }> {
  const arrived: Array<Promise<Buffer>> = [];
  const waiting: Array<(bytes: Promise<Buffer>) => void> = [];
  const fixture = await startTcpServer((socket) => {
    const bytes = readAll(socket);
    bytes.then(() => socket.end(), () => {});
    const waiter = waiting.shift();
    if (waiter) waiter(bytes);
    else arrived.push(bytes);
  });
  return Object.assign(fixture, {
    next: () => arrived.shift() ?? new Promise<Buffer>((resolve, reject) => waiting.push((bytes) => bytes.then(resolve, reject))),
  });
}

describe('native handshakes: pipelining', () => {
  let collector: Awaited<ReturnType<typeof startCollector>>;
  let echo: Fixture;
  let plain: EngineProxy;
  let userpass: EngineProxy;
  before(async () => {
    collector = await startCollector();
    echo = await startEchoServer();
    plain = await startEngineProxy('native');
    userpass = await startEngineProxy('native', { auth: USERPASS_ONLY });
  });
  after(async () => {
    await plain.close();
    await userpass.close();
    await collector.close();
    await echo.close();
  });

  // 100 bytes fit in the addon's handshake buffer with the request; 200 KiB
  // are partly read with it and partly spliced after: both must arrive in order.
  /** The two handshakes that stay native: what precedes the request, the answer to it all, and the record's login. */
  const handshakes = [
    { what: 'greeting', proxy: () => plain, bytes: () => hex(NO_AUTH), answer: `05 00 05 00 ${ZERO_V4}`, seed: 11, login: { authMethod: 'none', user: null } },
    {
      what: 'greeting + username/password',
      proxy: () => userpass,
      bytes: () => Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password)]),
      answer: `05 02 01 00 05 00 ${ZERO_V4}`,
      seed: 13,
      login: { authMethod: 'userpass', user: ALICE.name },
    },
  ] as const;

  for (const size of [100, 200 * 1024]) {
    for (const handshake of handshakes) {
      test(`${handshake.what} + request + ${size} bytes of payload in one write arrive intact and in order`, opts, async () => {
        const payload = pattern(size, handshake.seed);
        const answer = hex(handshake.answer);
        const { record, counters } = await clientSession(handshake.proxy(), async (client) => {
          client.write(Buffer.concat([handshake.bytes(), connectRequest('127.0.0.1', collector.port), payload]));
          assert.deepEqual(maskBound(await client.read(answer.length), 5), answer);
        });
        const got = await collector.next();
        assert.equal(got.length, payload.length);
        assert.ok(got.equals(payload), 'payload identical and in order');
        const { bytesUp, relay, authMethod, user } = record;
        assert.deepEqual({ bytesUp, relay, authMethod, user }, { bytesUp: size, relay: 'splice', ...handshake.login });
        assert.deepEqual(counters, STAYED_NATIVE);
      });
    }
  }

  test('a domain-name request + 200 KiB of payload in one write: resolved, dialled natively, all of it arrives in order', opts, async () => {
    const payload = pattern(200 * 1024, 17);
    const { record, counters } = await clientSession(plain, async (client) => {
      client.write(Buffer.concat([hex(NO_AUTH), connectRequestByName('localhost', collector.port), payload]));
      assert.deepEqual(await client.read(2), hex('05 00'));
      assert.equal((await readSocks5Reply(client))[1], 0x00, 'CONNECT succeeded');
    });
    const got = await collector.next();
    assert.equal(got.length, payload.length);
    assert.ok(got.equals(payload), 'the bytes the addon had read, then the rest, in order');
    assert.equal(record.bytesUp, payload.length);
    assert.equal(record.requested, `localhost:${collector.port}`);
    assert.equal(record.connected, `127.0.0.1:${collector.port}`);
    assert.deepEqual(counters, STAYED_NATIVE);
  });

  test('a handshake sent one byte per write (no auth) still runs natively', opts, async () => {
    const { record, counters } = await clientSession(plain, async (client) => {
      await writeByteByByte(client, hex(NO_AUTH));
      assert.deepEqual(await client.read(2), hex('05 00'));
      await writeByteByByte(client, connectRequest('127.0.0.1', echo.port));
      assert.deepEqual(maskBound(await readSocks5Reply(client), 5), hex(`05 00 ${ZERO_V4}`));
      await assertPing(client);
    });
    assert.equal(record.reason, 'client-closed');
    assert.deepEqual(counters, STAYED_NATIVE);
  });

  test('a handshake with username/password sent one byte per write, all of it before any answer, still runs natively', opts, async () => {
    const { record, counters } = await clientSession(userpass, async (client) => {
      await writeByteByByte(client, Buffer.concat([hex(USERPASS), credentials(ALICE.name, ALICE.password), connectRequest('127.0.0.1', echo.port)]));
      assert.deepEqual(maskBound(await client.read(14), 5), hex(`05 02 01 00 05 00 ${ZERO_V4}`));
      await assertPing(client);
    });
    assert.equal(record.user, ALICE.name);
    assert.deepEqual(counters, STAYED_NATIVE);
  });
});

describe('native handshakes: half-close', () => {
  const response = pattern(300 * 1024, 5);
  let target: Fixture;
  let proxy: EngineProxy;
  before(async () => {
    // Answers only after the client's FIN: how much it read, then a response.
    target = await startTcpServer((socket) => {
      let got = 0;
      socket.on('data', (c: Buffer) => { got += c.length; });
      socket.on('end', () => socket.end(Buffer.concat([Buffer.from(`${got}\n`), response])));
    });
    proxy = await startEngineProxy('native');
  });
  after(async () => {
    await proxy.close();
    await target.close();
  });

  async function halfClose(sendWithRequest: boolean): Promise<void> {
    const before = nativeCounters();
    const client = await RawClient.connect(proxy.port);
    const data = pattern(64 * 1024, 9);
    const request = Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', target.port)]);
    if (sendWithRequest) {
      // The FIN may reach the proxy before it has even dialled.
      client.socket.end(Buffer.concat([request, data]));
    } else {
      client.write(request);
      assert.deepEqual(maskBound(await client.read(12), 5), hex(`05 00 05 00 ${ZERO_V4}`));
      client.socket.end(data);
    }
    const rest = await client.readToEnd();
    if (sendWithRequest) assert.deepEqual(maskBound(rest.subarray(0, 12), 5), hex(`05 00 05 00 ${ZERO_V4}`));
    const answer = sendWithRequest ? rest.subarray(12) : rest;
    const expected = Buffer.concat([Buffer.from(`${data.length}\n`), response]);
    assert.equal(answer.length, expected.length, 'the whole response after the client\'s FIN');
    assert.ok(answer.equals(expected), 'the destination read all the data, then EOF, then answered');
    const record = await recordOf(proxy, client.localPort);
    assert.equal(record.reason, 'client-closed');
    assert.equal(record.bytesUp, data.length);
    assert.equal(record.bytesDown, expected.length);
    assert.deepEqual(countersSince(before), STAYED_NATIVE);
  }

  test('request, then data and end(): the destination reads the data and EOF, and its answer still reaches the client', opts, async () => {
    await halfClose(false);
  });

  test('request, data and FIN in one go: the same', opts, async () => {
    await halfClose(true);
  });
});

describe('native handshakes: clients.allow', () => {
  let echo: Fixture;
  before(async () => {
    echo = await startEchoServer();
  });
  after(() => echo.close());

  /** Connects to `proxy` at `host`, relays a ping if it is let in; returns the record and the counters' moves. */
  async function attempt(proxy: EngineProxy, host: string) {
    const before = nativeCounters();
    const client = await RawClient.connect(proxy.port, host);
    // The whole exchange, then the client's FIN: an echo that was let in ends too.
    client.socket.end(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', echo.port), Buffer.from('ping')]));
    const answer = await client.readToEnd();
    const record = await recordOf(proxy, client.localPort);
    return { answer, record, counters: countersSince(before) };
  }

  test('a loopback client outside clients.allow is closed without a reply, as with the node engine; record not-allowed', opts, async () => {
    const results = [];
    for (const engine of ENGINES) results.push(await withProxy(engine, { clients: { allow: ['10.0.0.0/8'] } }, (proxy) => attempt(proxy, '127.0.0.1')));
    const [native, node] = results;
    assert.equal(native!.answer.length, 0, 'no reply at all');
    assert.equal(native!.record.reason, 'not-allowed');
    assert.equal(native!.record.error, 'client 127.0.0.1 is not in clients.allow');
    assert.deepEqual(native!.counters, HANDED_OVER, 'accepted by the addon, refused by JavaScript');
    assert.deepEqual(node!.counters, UNTOUCHED);
    assert.equal(node!.answer.length, 0);
    assert.deepEqual(comparable(native!.record), comparable(node!.record));
  });

  /** A let-in client's answer: the method selection, the reply, then the echoed "ping". */
  function assertRelayed(answer: Buffer): void {
    assert.deepEqual(maskBound(answer.subarray(0, 12), 5), hex(`05 00 05 00 ${ZERO_V4}`));
    assert.equal(answer.subarray(12).toString(), 'ping');
  }

  test('a loopback client inside clients.allow (127.0.0.0/8) is served natively', opts, async () => {
    const { answer, record, counters } = await withProxy('native', { clients: { allow: ['127.0.0.0/8'] } }, (proxy) => attempt(proxy, '127.0.0.1'));
    assertRelayed(answer);
    assert.equal(record.reason, 'client-closed');
    assert.equal(record.relay, 'splice');
    assert.equal(record.bytesUp, 4);
    assert.deepEqual(counters, STAYED_NATIVE);
  });

  for (const [allow, admitted] of [
    [['::/0'], false], // every IPv6 address, not every IPv4 address too
    [['::ffff:7f00:0/104'], true], // an IPv4-mapped network in hex: 127.0.0.0/8
  ] as const) {
    test(`clients.allow ${JSON.stringify(allow)} ${admitted ? 'admits' : 'refuses'} an IPv4 loopback client, on both engines`, opts, async () => {
      for (const engine of ENGINES) {
        const { answer, record } = await withProxy(engine, { clients: { allow: [...allow] } }, (proxy) => attempt(proxy, '127.0.0.1'));
        assert.equal(record.reason, admitted ? 'client-closed' : 'not-allowed', `${engine} engine`);
        if (admitted) assertRelayed(answer);
        else assert.equal(answer.length, 0, `${engine} engine: no reply`);
      }
    });
  }

  describe('on an IPv6 listener ([::1])', () => {
    let v6: boolean;
    before(async () => {
      v6 = await ipv6Loopback();
    });

    function onV6(allow: string[]) {
      return withProxy('native', { listen: [{ address: '::1', port: 0 }], clients: { allow } }, async (proxy) => {
        assert.equal(proxy.host, '::1');
        return attempt(proxy, '::1');
      });
    }

    test('::1/128 lets a ::1 client in, natively', opts, async (t) => {
      if (!v6) return t.skip('::1 cannot be bound here');
      const { answer, record, counters } = await onV6(['::1/128']);
      assertRelayed(answer);
      assert.equal(record.clientAddress, '::1');
      assert.equal(record.reason, 'client-closed');
      assert.deepEqual(counters, STAYED_NATIVE);
    });

    test('127.0.0.0/8 refuses a ::1 client without a reply, record not-allowed', opts, async (t) => {
      if (!v6) return t.skip('::1 cannot be bound here');
      const { answer, record, counters } = await onV6(['127.0.0.0/8']);
      assert.equal(answer.length, 0);
      assert.equal(record.reason, 'not-allowed');
      assert.equal(record.error, 'client ::1 is not in clients.allow');
      assert.deepEqual(counters, HANDED_OVER);
    });
  });
});

describe('native handshakes: session-open', () => {
  test('native and handed-over sessions each get one session-open with their record\'s id; ids are unique', opts, async () => {
    const echo = await startEchoServer();
    const proxy = await startEngineProxy('native', { listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
    try {
      const before = nativeCounters();
      const ports: number[] = [];
      // Three that stay native, three more sessions (SOCKS4 and a bad greeting handed over, a domain name native).
      for (let i = 0; i < 3; i++) {
        const socket = await socksConnect(proxy, echo.port);
        ports.push(socket.localPort!);
        socket.destroy();
      }
      for (const bytes of [
        socks4Connect('127.0.0.1', echo.port),
        Buffer.concat([hex(NO_AUTH), connectRequestByName('localhost', echo.port)]),
        hex('05 00'),
      ]) {
        const client = await RawClient.connect(proxy.port);
        ports.push(client.localPort);
        client.write(bytes);
        client.socket.end();
        await client.readToEnd();
      }
      const records = await Promise.all(ports.map((port) => recordOf(proxy, port)));
      assert.deepEqual(countersSince(before), { accepted: 6, handedOver: 2 });
      const ids = records.map((r) => r.id);
      assert.equal(new Set(ids).size, ids.length, `record ids unique: ${ids.join(',')}`);
      for (const record of records) {
        const opens = proxy.opens.filter((o) => o.id === record.id);
        assert.equal(opens.length, 1, `one session-open for session ${record.id}`);
        assert.deepEqual(opens[0], { id: record.id, listener: record.listener, clientAddress: '127.0.0.1', clientPort: record.clientPort });
      }
      assert.equal(new Set(proxy.opens.map((o) => o.id)).size, proxy.opens.length, 'session-open ids unique');
    } finally {
      await proxy.close();
      await echo.close();
    }
  });

  // JavaScript hears of a native session in a batch (FLUSH_MS) after the accept: the count must not lag.
  test('server.sessionCount counts a session once its client has the success reply, on both engines', opts, async () => {
    const echo = await startEchoServer();
    try {
      const counted: Partial<Record<Engine, number>> = {};
      for (const engine of ENGINES) {
        await withProxy(engine, {}, async (proxy) => {
          const client = await connected(proxy, echo.port);
          counted[engine] = proxy.server.sessionCount;
          client.socket.end();
          await client.readToEnd();
          await recordOf(proxy, client.localPort);
        });
      }
      assert.deepEqual(counted, { native: 1, node: 1 });
    } finally {
      await echo.close();
    }
  });

  test('a client refused by clients.allow gets the same session-open events as with the node engine (none)', opts, async () => {
    const opened: Record<Engine, number> = { native: 0, node: 0 };
    for (const engine of ENGINES) {
      opened[engine] = await withProxy(engine, { clients: { allow: ['10.0.0.0/8'] } }, async (proxy) => {
        const client = await RawClient.connect(proxy.port);
        await client.readToEnd();
        const record = await recordOf(proxy, client.localPort);
        assert.equal(record.reason, 'not-allowed');
        return proxy.opens.filter((o) => o.id === record.id).length;
      });
    }
    assert.deepEqual(opened, { native: 0, node: 0 }, 'session-open events for a refused client');
  });
});

describe('native handshakes: reload', () => {
  test('a reload of clients.allow and auth.methods reaches the addon for new connections', opts, async () => {
    const echo = await startEchoServer();
    const listen = [{ address: '127.0.0.1', port: 0 }];
    const proxy = await startEngineProxy('native', { listen });
    const base = { listen, handshake: { engine: 'native' as const } };
    try {
      assert.deepEqual(proxy.server.reload({ ...base, clients: { allow: ['10.0.0.0/8'] } }).needsRestart, []);
      let before = nativeCounters();
      const refused = await RawClient.connect(proxy.port);
      refused.socket.end(Buffer.concat([hex(NO_AUTH), connectRequest('127.0.0.1', echo.port)]));
      assert.equal((await refused.readToEnd()).length, 0, 'refused without a reply');
      assert.equal((await recordOf(proxy, refused.localPort)).reason, 'not-allowed');
      assert.deepEqual(countersSince(before), HANDED_OVER);

      proxy.server.reload({ ...base, auth: USERPASS_ONLY });
      before = nativeCounters();
      const noAuth = await RawClient.connect(proxy.port);
      noAuth.write(NO_AUTH);
      assert.deepEqual(await noAuth.readToEnd(), hex('05 ff'), 'no authentication is no longer accepted');
      assert.equal((await recordOf(proxy, noAuth.localPort)).reason, 'no-acceptable-method');
      assert.deepEqual(countersSince(before), HANDED_OVER);

      before = nativeCounters();
      const socket = await socksConnect(proxy, echo.port, ALICE);
      const clientPort = socket.localPort!;
      const echoed = readAll(socket);
      socket.end('ping');
      assert.equal((await echoed).toString(), 'ping');
      const record = await recordOf(proxy, clientPort);
      assert.equal(record.user, ALICE.name);
      assert.equal(record.relay, 'splice');
      assert.deepEqual(countersSince(before), STAYED_NATIVE, 'username/password, as reloaded, runs natively');
    } finally {
      await proxy.close();
      await echo.close();
    }
  });
});
