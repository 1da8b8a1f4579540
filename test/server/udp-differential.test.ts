/**
 * The relay thread's UDP relay (native/udp.c, with the splice relay) against
 * the dgram relay (the stream relay), on generated datagrams: SOCKS5 UDP
 * headers valid or with one field off (RSV, FRAG, ATYP, the destination),
 * cut short anywhere, with any payload. Both relays must deliver the same
 * datagrams to the destinations, send the client the same replies, and count
 * the same in the record.
 */
import assert from 'node:assert/strict';
import type { Socket as UdpSocket } from 'node:dgram';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import type { Resolver } from '../../src/index.js';
import { withTimeout } from '../cli/helpers.js';
import { fraction, mostly } from '../helpers/arbitraries.js';
import { RawClient, hex } from '../helpers/raw.js';
import { type RunningProxy, recordsFrom, startProxy } from '../helpers/server.js';
import { UdpEcho, bindUdp } from '../helpers/udp.js';

const RELAYS = ['splice', 'stream'] as const;
type RelayEngine = (typeof RELAYS)[number];

/**
 * Where a datagram may be addressed; `echo4` and `echo6` are filled in with
 * the servers' port. The names resolve through TEST_NAMES only.
 */
const NAME_TARGETS = ['name4', 'name6', 'nameUpper', 'unknownName', 'numericName'] as const;
type Target = 'echo4' | 'echo6' | 'mapped' | 'port0' | 'badType' | 'silent' | (typeof NAME_TARGETS)[number];

/** The proxies' resolver: two names for the echo servers, nothing else looked up. */
const TEST_NAMES: Resolver = {
  resolve: async (hostname) => {
    const name = hostname.toLowerCase();
    if (name === 'echo4.test') return [{ address: '127.0.0.1', family: 4 }];
    if (name === 'echo6.test') return [{ address: '::1', family: 6 }];
    throw Object.assign(new Error(`test: ${hostname} not looked up`), { code: 'ENOTFOUND' });
  },
};

const datagram = fc.record({
  rsv: mostly(0, 0x0100, 0x0001),
  frag: mostly(0, 1, 0x80),
  target: fc.oneof(
    { weight: 4, arbitrary: fc.constant<Target>('echo4') },
    { weight: 1, arbitrary: fc.constantFrom<Target>('echo6', 'mapped', 'port0', 'badType', 'silent') },
    { weight: 1, arbitrary: fc.constantFrom<Target>(...NAME_TARGETS) },
  ),
  payload: fc.uint8Array({ maxLength: 64 }),
  /** A fraction of the length to cut the datagram at, or null to send it whole. */
  cut: fc.option(fraction, { freq: 4 }),
});
type Generated = typeof datagram extends fc.Arbitrary<infer T> ? T : never;

let echo4: UdpEcho;
let echo6: UdpEcho;
/** A UDP port on 127.0.0.1 nothing listens on (bound and closed). */
let silentPort: number;
/** Per relay engine: `plain` relays everything; `rules` decides each datagram and each reply. */
const proxies = new Map<string, RunningProxy>();
type Kind = 'plain' | 'rules';

before(async () => {
  echo4 = await UdpEcho.start('127.0.0.1');
  echo6 = await UdpEcho.start('::1');
  const probe = await bindUdp('127.0.0.1');
  silentPort = probe.address().port;
  probe.close();
  for (const engine of RELAYS) {
    proxies.set(`plain/${engine}`, await startProxy({ relay: { engine }, resolver: TEST_NAMES }));
    proxies.set(`rules/${engine}`, await startProxy({
      relay: { engine },
      resolver: TEST_NAMES,
      rules: [
        // A deny with `to` leaves the association open and drops what it matches.
        { name: 'no-ipv6', deny: { to: { nets: ['::/0'] } } },
        // Opens the association, and lets each datagram to echo4 (and each reply from it) through.
        { name: 'echo4-only', allow: { commands: ['udp'], to: { nets: ['127.0.0.0/8'], ports: [echo4.port] } } },
        // By name, decided before DNS: echo6.test is let through though its address is not.
        { name: 'echo-names', allow: { commands: ['udp'], to: { hosts: ['echo4.test', 'echo6.test'] } } },
      ],
    }));
  }
});
after(async () => {
  for (const proxy of proxies.values()) await proxy.close();
  await echo4.close();
  await echo6.close();
});

function header(rsv: number, frag: number, atyp: number, address: readonly number[], port: number): Buffer {
  return Buffer.from([rsv >> 8, rsv & 0xff, frag, atyp, ...address, port >> 8, port & 0xff]);
}

const V4 = [127, 0, 0, 1];
const V6 = [...Array<number>(15).fill(0), 1];
const MAPPED = [...Array<number>(10).fill(0), 0xff, 0xff, ...V4];

/** A domain-name header (ATYP 3). */
function named(rsv: number, frag: number, name: string, port: number): Buffer {
  return header(rsv, frag, 3, [name.length, ...Buffer.from(name, 'latin1')], port);
}

function bytesOf({ rsv, frag, target, payload, cut }: Generated): Buffer {
  const head =
    target === 'echo4' ? header(rsv, frag, 1, V4, echo4.port)
    : target === 'echo6' ? header(rsv, frag, 4, V6, echo6.port)
    : target === 'mapped' ? header(rsv, frag, 4, MAPPED, echo4.port)
    : target === 'port0' ? header(rsv, frag, 1, V4, 0)
    : target === 'silent' ? header(rsv, frag, 1, V4, silentPort)
    : target === 'name4' ? named(rsv, frag, 'echo4.test', echo4.port)
    : target === 'name6' ? named(rsv, frag, 'echo6.test', echo6.port)
    : target === 'nameUpper' ? named(rsv, frag, 'ECHO4.Test.', echo4.port)
    : target === 'unknownName' ? named(rsv, frag, 'nowhere.test', echo4.port)
    : target === 'numericName' ? named(rsv, frag, '127.1', echo4.port)
    : header(rsv, frag, 2, V4, echo4.port);
  const whole = Buffer.concat([head, payload]);
  return cut === null ? whole : whole.subarray(0, Math.floor(cut * whole.length));
}

/** What the client and the destinations saw of one association, and its record's counts. */
async function play(kind: Kind, engine: RelayEngine, datagrams: readonly Buffer[], run: number, inOrder: boolean) {
  const proxy = proxies.get(`${kind}/${engine}`)!;
  const nextRecord = recordsFrom(proxy);
  const control = await RawClient.connect(proxy.port);
  const client = await bindUdp('127.0.0.1');
  const replies: string[] = [];
  // A barrier per path a datagram may take: each family's literal (the rules
  // proxy lets no IPv6 literal through) and each name.
  const barrierHeaders: Record<string, Buffer> = {
    v4: header(0, 0, 1, V4, echo4.port),
    ...(kind === 'plain' ? { v6: header(0, 0, 4, V6, echo6.port) } : {}),
    name4: named(0, 0, 'echo4.test', echo4.port),
    name6: named(0, 0, 'echo6.test', echo6.port),
  };
  const barriers = new Set(Object.keys(barrierHeaders).map((path) => `barrier ${run} ${path}`));
  const barriersBack = new Promise<void>((resolve) => {
    client.on('message', (msg) => {
      const payload = msg.subarray(msg[3] === 4 ? 22 : 10).toString('latin1');
      if (barriers.delete(payload)) {
        if (barriers.size === 0) resolve();
      } else {
        replies.push(msg.toString('hex'));
      }
    });
  });
  const echoedBefore = { v4: echo4.received.length, v6: echo6.received.length };
  try {
    const port = client.address().port;
    control.write(Buffer.concat([hex('05 01 00 05 03 00 01 7f000001'), Buffer.from([port >> 8, port & 0xff])]));
    const reply = await control.read(12);
    assert.equal(reply[3], 0x00, `${engine}: the association is granted`);
    const relayPort = reply.readUInt16BE(10);
    const send = (bytes: Buffer) => sendTo(client, bytes, relayPort);
    for (const bytes of datagrams) await send(bytes);
    // Datagrams through one socket keep their order, and so do the replies
    // through each outbound socket, and the datagrams to each name: once
    // every barrier is back, every datagram before it has been handled.
    for (const [path, head] of Object.entries(barrierHeaders)) await send(Buffer.concat([head, Buffer.from(`barrier ${run} ${path}`)]));
    await withTimeout(barriersBack, 5000, `${engine} relay (${kind}): the barriers' echoes`);
    control.socket.end();
    await control.readToEnd();
    const record = await nextRecord((r) => r.clientPort === control.localPort);
    const received = (echo: UdpEcho, from: number) => {
      const payloads = echo.received.slice(from).map((r) => r.data.toString('hex'));
      return inOrder ? payloads : payloads.sort();
    };
    return {
      // Replies from the two destinations may interleave either way.
      replies: replies.sort(),
      atEcho4: received(echo4, echoedBefore.v4),
      atEcho6: received(echo6, echoedBefore.v6),
      counts: {
        reason: record.reason,
        datagramsUp: record.datagramsUp,
        datagramsDown: record.datagramsDown,
        datagramsDropped: record.datagramsDropped,
        datagramsDenied: record.datagramsDenied,
        bytesUp: record.bytesUp,
        bytesDown: record.bytesDown,
      },
    };
  } finally {
    control.destroy();
    client.close();
  }
}

function sendTo(socket: UdpSocket, bytes: Buffer, port: number): Promise<void> {
  return new Promise((resolve, reject) => socket.send(bytes, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
}

/** Plays runs of generated datagrams through both relays of `kind` and compares what each did. */
async function bothRelaysAgree(kind: Kind, numRuns: number): Promise<void> {
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(datagram, { minLength: 1, maxLength: 6 }), async (generated) => {
      run++;
      const datagrams = generated.map(bytesOf);
      // A datagram to a name waits for the resolver while later ones to
      // addresses go on: the order holds per path, not across paths.
      const inOrder = !generated.some((d) => (NAME_TARGETS as readonly Target[]).includes(d.target));
      const native = await play(kind, 'splice', datagrams, run, inOrder);
      const dgram = await play(kind, 'stream', datagrams, run, inOrder);
      assert.deepEqual(native, dgram, `datagrams ${datagrams.map((d) => d.toString('hex')).join(' ')}`);
    }),
    { numRuns, includeErrorInReport: true },
  );
}

test('generated datagrams, whole or cut short: both UDP relays deliver, answer and count the same', { timeout: 120_000 }, async () => {
  await bothRelaysAgree('plain', 200);
});

test('the same under rules on destinations: both relays let through, deny and count the same datagrams and replies', { timeout: 120_000 }, async () => {
  // One proxy per engine for every run: the relay thread keeps each verdict
  // it was given, and must repeat it only for the same destination.
  await bothRelaysAgree('rules', 100);
});
