/**
 * UDP ASSOCIATE end to end with the npm `socks` client for the control
 * connection and its frame helpers for the datagrams: to UDP echo servers on
 * IPv4 and IPv6, by address and by name; the reply's header names the
 * sender; foreign sources, fragments, malformed and oversized datagrams are
 * dropped and counted while the association keeps relaying; the association
 * and its sockets are gone after the control connection closes and after the
 * idle timeout; the per-client association limit.
 *
 * "Dropped" is shown with a positive barrier, never a wait for nothing: the
 * bad datagram goes first, then a valid one through the same socket, and once
 * the valid one's echo is back the bad one has been handled (loopback UDP
 * through one socket keeps order). Then the echo server's list and the
 * record's counters tell what happened to it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import type { RemoteInfo, Socket as UdpSocket } from 'node:dgram';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import ipaddr from 'ipaddr.js';
import { SocksClient } from 'socks';
import type { Resolver, ServerOptions, SessionRecord } from '../../src/index.js';
import { type SpliceStats, spliceStats } from '../../src/relay/splice.js';
import { ReplyHeaders } from '../../src/relay/udp.js';
import { startDaemon } from '../cli/helpers.js';
import { RawClient, hex } from '../helpers/raw.js';
import { type RunningProxy, recordsFrom, startProxy } from '../helpers/server.js';
import { UdpEcho, bindUdp } from '../helpers/udp.js';

const opts = { timeout: 20_000 };

/** Rejects after `ms` with `what` in the message: a hang fails with a name instead of the suite timeout. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

interface Datagram {
  readonly msg: Buffer;
  readonly from: RemoteInfo;
}

/** A UDP socket whose datagrams queue up to be awaited one by one. */
class UdpPeer {
  readonly socket: UdpSocket;
  #queue: Datagram[] = [];
  #waiters: Array<() => void> = [];

  private constructor(socket: UdpSocket) {
    this.socket = socket;
    socket.on('message', (msg, from) => {
      this.#queue.push({ msg, from });
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    });
  }

  static async open(address: string, port = 0): Promise<UdpPeer> {
    return new UdpPeer(await bindUdp(address, port));
  }

  get address(): string {
    return this.socket.address().address;
  }

  get port(): number {
    return this.socket.address().port;
  }

  /** Datagrams received and not taken yet. */
  get queued(): number {
    return this.#queue.length;
  }

  send(data: Buffer, port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(data, port, host, (err) => (err ? reject(err) : resolve())));
  }

  async next(what = 'a datagram', ms = 5000): Promise<Datagram> {
    const take = async () => {
      while (this.#queue.length === 0) await new Promise<void>((resolve) => this.#waiters.push(resolve));
      return this.#queue.shift()!;
    };
    return within(take(), ms, what);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve(); // already closed
      }
    });
  }
}

interface Association {
  /** The TCP control connection (its close ends the association). */
  readonly control: Socket;
  readonly controlPort: number;
  /** The relay's address from the reply, IPv6 in its short form. */
  readonly relay: { host: string; port: number };
  readonly closed: Promise<void>;
}

/** UDP ASSOCIATE with the npm client: `destination` is where the client will send from. */
async function associate(proxy: Pick<RunningProxy, 'port'>, from: { host: string; port: number }, proxyHost = '127.0.0.1'): Promise<Association> {
  const client = new SocksClient({
    proxy: { host: proxyHost, port: proxy.port, type: 5 },
    command: 'associate',
    destination: from,
    timeout: 10_000,
  });
  const established = new Promise<{ socket: Socket; host: string; port: number }>((resolve, reject) => {
    client.once('established', (info) => resolve({ socket: info.socket, host: info.remoteHost!.host, port: info.remoteHost!.port }));
    client.once('error', reject);
  });
  client.connect();
  const { socket, host, port } = await within(established, 5000, 'the UDP ASSOCIATE reply');
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { control: socket, controlPort: socket.localPort!, relay: { host: ipaddr.parse(host).toString(), port }, closed };
}

/** A SOCKS5 UDP datagram (header + payload) for `host:port`, built by the npm client. */
function frame(host: string, port: number, payload: Buffer | string): Buffer {
  return SocksClient.createUDPFrame({ remoteHost: { host, port }, data: typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload });
}

/** Sends `payload` through the relay to host:port and returns the datagram that comes back. */
async function roundTrip(peer: UdpPeer, relay: Association['relay'], host: string, port: number, payload: string): Promise<Datagram> {
  await peer.send(frame(host, port, payload), relay.port, relay.host);
  return peer.next(`the echo of "${payload}"`);
}

/** Asserts that `reply` is exactly the frame "from sender, payload", and that it came from the relay. */
function assertReply(reply: Datagram, relay: Association['relay'], sender: { host: string; port: number }, payload: string): void {
  assert.deepEqual(reply.msg, frame(sender.host, sender.port, payload), 'the reply header names the sender, the payload is intact');
  const parsed = SocksClient.parseUDPFrame(reply.msg);
  assert.equal(parsed.frameNumber, 0);
  assert.equal(ipaddr.parse(parsed.remoteHost.host).toString(), sender.host);
  assert.equal(parsed.remoteHost.port, sender.port);
  assert.equal(parsed.data.toString('latin1'), payload);
  assert.equal(reply.from.address, relay.host, 'the reply comes from the relay address');
  assert.equal(reply.from.port, relay.port);
}

/** Sends `payload` through the relay to host:port and asserts the reply (see assertReply) names `sender`: by default host:port itself. */
async function assertEchoed(
  peer: UdpPeer,
  relay: Association['relay'],
  host: string,
  port: number,
  payload: string,
  sender = { host, port },
): Promise<void> {
  assertReply(await roundTrip(peer, relay, host, port, payload), relay, sender, payload);
}

/**
 * Local ports of the UDP sockets this process holds: the lines of
 * /proc/self/net/udp{,6} whose inode is one of our fds. The kernel lists that
 * table a page per read, so sockets that other processes open or close
 * meanwhile can make a line appear twice or not at all: lines are keyed by
 * inode (no duplicates) and the tables are read several times (the union
 * misses nothing). Our own sockets cannot change during this synchronous code.
 */
function udpPortsOfThisProcess(): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  const found = new Map<string, number>();
  for (let pass = 0; pass < 5; pass++) {
    for (const file of ['/proc/self/net/udp', '/proc/self/net/udp6']) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n').slice(1)) {
        const cols = line.trim().split(/\s+/);
        if (cols.length > 9 && inodes.has(cols[9]!)) found.set(cols[9]!, parseInt(cols[1]!.split(':')[1]!, 16));
      }
    }
  }
  return [...found.values()];
}

/** Binding a fresh socket to exactly host:port succeeds only once nothing else holds it. */
async function canBindUdp(host: string, port: number): Promise<boolean> {
  try {
    const probe = await UdpPeer.open(host, port);
    await probe.close();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') return false;
    throw err;
  }
}

/**
 * Asserts that an association's relay socket (on host:relayPort) and its
 * outbound socket are closed, that this process holds `baseline` UDP sockets
 * again, and that the relay address can be bound anew.
 */
async function assertSocketsGone(baseline: number, host: string, relayPort: number, outboundPort: number): Promise<void> {
  const ports = udpPortsOfThisProcess();
  assert.ok(!ports.includes(relayPort), 'the relay socket is closed');
  assert.ok(!ports.includes(outboundPort), 'the outbound socket is closed');
  assert.equal(ports.length, baseline);
  assert.ok(await canBindUdp(host, relayPort), 'the relay address is free again');
}

/** The record of the association, once it is closed (waited for at most 5 s). */
function recordOf(proxy: RunningProxy, assoc: Association): Promise<SessionRecord> {
  return within(proxy.record((r) => r.clientPort === assoc.controlPort), 5000, 'the session record');
}

/** What the tests of one describe block run against: a proxy, and UDP echo servers on 127.0.0.1 and ::1. */
interface UdpSuite {
  readonly proxy: RunningProxy;
  readonly echo4: UdpEcho;
  readonly echo6: UdpEcho;
}

/**
 * For a describe block: starts a proxy with `options` and the two echo
 * servers before its tests, and closes them after. The fields are set once
 * the `before` hook has run, so read them inside tests.
 */
function udpSuite(engine: 'splice' | 'stream', options: ServerOptions = {}): UdpSuite {
  const suite = {} as { proxy: RunningProxy; echo4: UdpEcho; echo6: UdpEcho };
  before(async () => {
    suite.proxy = await startProxy({ ...options, relay: { engine } });
    suite.echo4 = await UdpEcho.start('127.0.0.1');
    suite.echo6 = await UdpEcho.start('::1');
  });
  after(async () => {
    await suite.proxy.close();
    await suite.echo4.close();
    await suite.echo6.close();
  });
  return suite;
}

/** Records closed from now on only (recordsFrom), each awaited for at most 5 s. */
function laterRecords(proxy: RunningProxy): (match: (r: SessionRecord) => boolean) => Promise<SessionRecord> {
  const next = recordsFrom(proxy);
  return (match) => within(next(match), 5000, 'the session record');
}

/**
 * Every suite below runs with each relay engine: with splice the addon's relay
 * thread carries the datagrams (native/udp.c), with stream dgram sockets do.
 */
for (const engine of ['splice', 'stream'] as const) {
  describe(`UDP ASSOCIATE through an IPv4 listener (${engine} relay)`, opts, () => {
    const suite = udpSuite(engine);

    test('IPv4 destination by address: exact echo, sender in the header, record counts, sockets gone after the control connection closes', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const baseline = udpPortsOfThisProcess().length;
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        assert.equal(assoc.relay.host, '127.0.0.1', 'the relay is announced on the address the client reached, not 0.0.0.0');
        assert.ok(assoc.relay.port > 0);
        assert.ok(udpPortsOfThisProcess().includes(assoc.relay.port), 'the relay socket is open');

        const seen = suite.echo4.received.length;
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'ping over udp \u0000\u00ff');
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'second');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['ping over udp \u0000\u00ff', 'second']);
        const outboundPort = suite.echo4.received.at(-1)!.from.port;
        assert.equal(udpPortsOfThisProcess().length, baseline + 2, 'the relay and one outbound socket');

        assoc.control.end();
        await within(assoc.closed, 5000, 'the control connection to close');
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.version, 5);
        assert.equal(record.command, 'udp');
        assert.equal(record.requested, `127.0.0.1:${peer.port}`);
        assert.equal(record.connected, `127.0.0.1:${assoc.relay.port}`);
        assert.equal(record.reply, 0);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
        assert.equal(record.datagramsDropped, 0);
        assert.equal(record.bytesUp, 'ping over udp \u0000\u00ff'.length + 'second'.length);
        assert.equal(record.bytesDown, record.bytesUp);
        assert.equal(record.reason, 'client-closed');
        assert.equal(record.error, null);
        assert.equal(record.relay, engine, 'the record names what carried the datagrams');

        await assertSocketsGone(baseline, '127.0.0.1', assoc.relay.port, outboundPort);
      } finally {
        await peer.close();
      }
    });

    test('after the association is gone, a datagram to the old relay address gets no echo', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'alive');
        assoc.control.destroy();
        await suite.proxy.record((r) => r.clientPort === assoc.controlPort);
        // Hold the old relay address ourselves: whatever is sent there lands here, not at a relay.
        const squatter = await UdpPeer.open('127.0.0.1', assoc.relay.port);
        try {
          const seen = suite.echo4.received.length;
          await peer.send(frame('127.0.0.1', suite.echo4.port, 'after close'), assoc.relay.port, assoc.relay.host);
          const landed = await squatter.next('the datagram at the old relay address');
          assert.deepEqual(landed.msg, frame('127.0.0.1', suite.echo4.port, 'after close'));
          assert.equal(suite.echo4.received.length, seen, 'nothing reached the echo server');
          assert.equal(peer.queued, 0);
        } finally {
          await squatter.close();
        }
      } finally {
        await peer.close();
      }
    });

    test('IPv6 destination (::1) through the IPv4 relay: the header carries ::1 and the echo port', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo6.received.length;
        const reply = await roundTrip(peer, assoc.relay, '::1', suite.echo6.port, 'hello v6');
        assertReply(reply, assoc.relay, { host: '::1', port: suite.echo6.port }, 'hello v6');
        assert.equal(reply.msg[3], 4, 'ATYP IPv6');
        assert.deepEqual(suite.echo6.payloads().slice(seen), ['hello v6']);
        // And IPv4 in the same association.
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'and v4');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
        assert.equal(record.bytesUp, 'hello v6'.length + 'and v4'.length);
      } finally {
        await peer.close();
      }
    });

    test('an IPv4-mapped IPv6 destination (::ffff:127.0.0.1, ATYP 4) reaches the IPv4 echo; the reply names 127.0.0.1', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo4.received.length;
        const reply = await roundTrip(peer, assoc.relay, '::ffff:127.0.0.1', suite.echo4.port, 'mapped');
        assertReply(reply, assoc.relay, { host: '127.0.0.1', port: suite.echo4.port }, 'mapped');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['mapped']);
        assoc.control.end();
      } finally {
        await peer.close();
      }
    });

    test('by name: "localhost" reaches an echo bound on 127.0.0.1 and ::1 at one port; the header names the address that answered', opts, async () => {
      const both = await UdpEcho.start('127.0.0.1', '::1');
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        for (const payload of ['by name 1', 'by name 2']) {
          const reply = await roundTrip(peer, assoc.relay, 'localhost', both.port, payload);
          const got = both.received.at(-1)!;
          assert.equal(got.data.toString(), payload);
          const sender = got.at === '::1' ? '::1' : '127.0.0.1';
          assertReply(reply, assoc.relay, { host: sender, port: both.port }, payload);
          assert.notEqual(reply.msg[3], 3, 'the reply names an address, not the name');
        }
        assert.equal(both.received.length, 2);
        assert.equal(both.received[0]!.at, both.received[1]!.at, 'the name resolves once per association');
        assoc.control.end();
        const record = await suite.proxy.record((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
      } finally {
        await peer.close();
        await both.close();
      }
    });

    test('request naming port 0: the client port is learned from the first datagram', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '0.0.0.0', port: 0 });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'learned');
        assoc.control.end();
        const record = await suite.proxy.record((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.requested, '0.0.0.0:0');
        assert.equal(record.datagramsUp, 1);
      } finally {
        await peer.close();
      }
    });

    test('a datagram from a foreign address (127.0.0.2) is dropped and counted', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const foreign = await UdpPeer.open('127.0.0.2');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '0.0.0.0', port: 0 });
        const seen = suite.echo4.received.length;
        // First, before the client's port is known: only the address can tell.
        await foreign.send(frame('127.0.0.1', suite.echo4.port, 'foreign before'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'mine 1');
        await foreign.send(frame('127.0.0.1', suite.echo4.port, 'foreign after'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'mine 2');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['mine 1', 'mine 2'], 'nothing from the foreign source reached the echo');
        assert.equal(foreign.queued, 0);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 2);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
      } finally {
        await peer.close();
        await foreign.close();
      }
    });

    test('when the request named a port, a datagram from another port of the same address is dropped and counted', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const otherPort = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo4.received.length;
        await otherPort.send(frame('127.0.0.1', suite.echo4.port, 'wrong port'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'right port');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['right port']);
        assert.equal(otherPort.queued, 0);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 1);
        assert.equal(record.datagramsUp, 1);
      } finally {
        await peer.close();
        await otherPort.close();
      }
    });

    test('a fragment (FRAG = 1) is dropped and counted, and the association keeps relaying', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo4.received.length;
        const port = Buffer.alloc(2);
        port.writeUInt16BE(suite.echo4.port);
        const fragment = Buffer.concat([hex('00 00 01 01 7f 00 00 01'), port, Buffer.from('fragment 1')]);
        await peer.send(fragment, assoc.relay.port, assoc.relay.host);
        const endOfFragments = Buffer.concat([hex('00 00 81 01 7f 00 00 01'), port, Buffer.from('fragment 2, last')]);
        await peer.send(endOfFragments, assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'whole');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['whole']);
        assert.equal(peer.queued, 0);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 2);
        assert.equal(record.datagramsUp, 1);
        assert.equal(record.datagramsDown, 1);
      } finally {
        await peer.close();
      }
    });

    // The relay remembers the last header it decoded and compares the next
    // datagram's bytes against it; these datagrams share most of those bytes.
    test('after a datagram to the echo, a fragment and a datagram cut short to the same place are still dropped; a header alone is relayed empty', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo4.received.length;
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'first');
        const fragment = frame('127.0.0.1', suite.echo4.port, 'fragment');
        fragment[2] = 1;
        await peer.send(fragment, assoc.relay.port, assoc.relay.host);
        const header = frame('127.0.0.1', suite.echo4.port, '');
        await peer.send(header.subarray(0, header.length - 1), assoc.relay.port, assoc.relay.host); // the port cut short
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, ''); // the header and nothing else
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'last');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['first', '', 'last']);
        assert.equal(peer.queued, 0);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 2);
        assert.equal(record.datagramsUp, 3);
        assert.equal(record.datagramsDown, 3);
      } finally {
        await peer.close();
      }
    });

    test('three destinations interleaved in one association: each datagram reaches its own, each reply names its sender', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const other = await UdpEcho.start('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen4 = suite.echo4.received.length;
        const seen6 = suite.echo6.received.length;
        for (const round of [1, 2, 3]) {
          await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, `four ${round}`);
          await assertEchoed(peer, assoc.relay, '127.0.0.1', other.port, `other ${round}`);
          await assertEchoed(peer, assoc.relay, '::1', suite.echo6.port, `six ${round}`);
        }
        assert.deepEqual(suite.echo4.payloads().slice(seen4), ['four 1', 'four 2', 'four 3']);
        assert.deepEqual(other.payloads(), ['other 1', 'other 2', 'other 3']);
        assert.deepEqual(suite.echo6.payloads().slice(seen6), ['six 1', 'six 2', 'six 3']);
        const fromPorts = new Set([...suite.echo4.received.slice(seen4), ...other.received].map((r) => r.from.port));
        assert.equal(fromPorts.size, 1, 'one outbound IPv4 socket for both IPv4 destinations');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 9);
        assert.equal(record.datagramsDown, 9);
        assert.equal(record.datagramsDropped, 0);
      } finally {
        await peer.close();
        await other.close();
      }
    });

    test('a reply too large to wrap in a header (65507 bytes + 10) cannot reach the client and is not counted as relayed', opts, async () => {
      // Answers every datagram with a maximum-size IPv4 UDP payload, then a small one.
      const big = await UdpPeer.open('127.0.0.1');
      big.socket.on('message', (_msg, from) => {
        big.socket.send(Buffer.alloc(65507, 0x42), from.port, from.address);
        big.socket.send(Buffer.from('small'), from.port, from.address);
      });
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await peer.send(frame('127.0.0.1', big.port, 'x'), assoc.relay.port, assoc.relay.host);
        // Same socket, same order: once "small" is here, the big one was handled first.
        const first = await peer.next('the small reply');
        assertReply(first, assoc.relay, { host: '127.0.0.1', port: big.port }, 'small');
        assert.equal(peer.queued, 0);
        assoc.control.end();
        const record = await recordOf(suite.proxy, assoc);
        assert.equal(record.datagramsDown, 1, 'only the small reply was relayed');
        assert.equal(record.bytesDown, 5);
        assert.equal(record.datagramsDropped, 1, 'the big one was dropped');
      } finally {
        await peer.close();
        await big.close();
      }
    });

    test('bytes on the control connection are ignored and do not end the association', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        assoc.control.write('noise on the control connection');
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'still here');
        assoc.control.end();
        const record = await suite.proxy.record((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.reason, 'client-closed');
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE through an IPv6 listener (${engine} relay)`, opts, () => {
    const suite = udpSuite(engine, { listen: [{ address: '::1', port: 0 }] });

    test('an IPv6 client gets a relay on ::1 and reaches IPv6 and IPv4 destinations', opts, async () => {
      const peer = await UdpPeer.open('::1');
      try {
        const assoc = await associate(suite.proxy, { host: '::1', port: peer.port }, '::1');
        assert.equal(assoc.relay.host, '::1', 'the relay is on the address the client reached');
        await assertEchoed(peer, assoc.relay, '::1', suite.echo6.port, 'six to six');
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'six to four');
        assoc.control.end();
        await within(assoc.closed, 5000, 'the control connection to close');
        const record = await recordOf(suite.proxy, assoc);
        assert.equal(record.clientAddress, '::1');
        assert.equal(record.connected, `[::1]:${assoc.relay.port}`);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
        assert.ok(!udpPortsOfThisProcess().includes(assoc.relay.port), 'the relay socket is closed');
        assert.ok(await canBindUdp('::1', assoc.relay.port));
      } finally {
        await peer.close();
      }
    });

    test('a datagram the kernel refuses to send (too large for IPv4) is counted as dropped, not relayed', opts, async () => {
      // IPv6 carries 65527 bytes of UDP payload, IPv4 65507: with a 10-byte
      // header, 65517 bytes for an IPv4 destination arrive whole and cannot go on.
      const peer = await UdpPeer.open('::1');
      try {
        const assoc = await associate(suite.proxy, { host: '::1', port: peer.port }, '::1');
        await peer.send(frame('127.0.0.1', suite.echo4.port, Buffer.alloc(65517, 0x61)), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'after it'); // same socket, same order
        assoc.control.end();
        const record = await recordOf(suite.proxy, assoc);
        assert.equal(record.datagramsUp, 1, 'only the small one went on');
        assert.equal(record.bytesUp, 'after it'.length);
        assert.equal(record.datagramsDropped, 1, 'the refused one is counted as dropped');
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE with a custom resolver (${engine} relay)`, opts, () => {
    const asked: string[] = [];
    // Not an async function: it can throw synchronously, as a library user's may.
    const resolver: Resolver = {
      resolve(name) {
        asked.push(name);
        if (name === 'echo.test') return Promise.resolve([{ address: '::1', family: 6 }, { address: '127.0.0.1', family: 4 }]);
        if (name === 'four.test') return Promise.resolve([{ address: '127.0.0.1', family: 4 }]);
        if (name === 'broken.test') throw new Error('a bug in the resolver');
        // Not what a Resolver returns: a library user's may break its contract.
        if (name === 'null.test') return Promise.resolve(null as unknown as []);
        if (name === 'slow.test') return new Promise((resolve) => setTimeout(() => resolve([{ address: '127.0.0.1', family: 4 }]), 100));
        return Promise.reject(Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' }));
      },
    };
    const suite = udpSuite(engine, { resolver });

    test('a name goes to its first address; an unknown name, or one the resolver throws on, is dropped and counted; the association lives on', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, 'echo.test', suite.echo6.port, 'to the first address', { host: '::1', port: suite.echo6.port });
        assert.deepEqual(suite.echo6.payloads(), ['to the first address']);
        await peer.send(frame('nowhere.test', suite.echo4.port, 'lost'), assoc.relay.port, assoc.relay.host);
        await peer.send(frame('broken.test', suite.echo4.port, 'lost too'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, 'four.test', suite.echo4.port, 'by name v4', { host: '127.0.0.1', port: suite.echo4.port });
        assert.deepEqual(suite.echo4.payloads(), ['by name v4']);
        assert.deepEqual(asked, ['echo.test', 'nowhere.test', 'broken.test', 'four.test']);
        assoc.control.end();
        const record = await recordOf(suite.proxy, assoc);
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
        assert.equal(record.datagramsDropped, 2);
      } finally {
        await peer.close();
      }
    });
    test('datagrams to a known name and to an address, interleaved, reach the destination in the order sent', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, 'four.test', suite.echo4.port, 'the name is known now', { host: '127.0.0.1', port: suite.echo4.port });
        const seen = suite.echo4.received.length;
        const sent: string[] = [];
        // Sent back to back: on the relay thread, the one to a name goes through JavaScript.
        await Promise.all(Array.from({ length: 5 }, (_, i) => [
          peer.send(frame('four.test', suite.echo4.port, `name ${i}`), assoc.relay.port, assoc.relay.host),
          peer.send(frame('127.0.0.1', suite.echo4.port, `address ${i}`), assoc.relay.port, assoc.relay.host),
        ]).flat());
        for (let i = 0; i < 5; i++) sent.push(`name ${i}`, `address ${i}`);
        for (const payload of sent) await peer.next(`the echo of "${payload}"`);
        assert.deepEqual(suite.echo4.payloads().slice(seen), sent);
        assoc.control.end();
      } finally {
        await peer.close();
      }
    });

    test('an answer that is not a list of addresses (null): the datagram is dropped and counted, and the proxy relays on', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      // In the daemon an unhandled rejection ends the process.
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await peer.send(frame('null.test', suite.echo4.port, 'lost'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, 'four.test', suite.echo4.port, 'after the broken answer', { host: '127.0.0.1', port: suite.echo4.port });
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 1);
        assert.equal(record.datagramsUp, 1);
        assert.deepEqual(unhandled, []);
      } finally {
        process.off('unhandledRejection', onUnhandled);
        await peer.close();
      }
    });

    test('datagrams to one name at two ports while it resolves: one lookup, each delivered to its port', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const other = await UdpEcho.start('127.0.0.1');
      try {
        const before = asked.filter((name) => name === 'slow.test').length;
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await peer.send(frame('slow.test', suite.echo4.port, 'to the first port'), assoc.relay.port, assoc.relay.host);
        await peer.send(frame('slow.test', other.port, 'to the second port'), assoc.relay.port, assoc.relay.host);
        const replies = [await peer.next('the first echo'), await peer.next('the second echo')];
        assert.deepEqual(replies.map(({ msg }) => msg.subarray(10).toString()).sort(), ['to the first port', 'to the second port']);
        assert.deepEqual(other.payloads(), ['to the second port']);
        assert.equal(asked.filter((name) => name === 'slow.test').length - before, 1, 'one lookup');
        assoc.control.end();
      } finally {
        await peer.close();
        await other.close();
      }
    });

    test('request naming port 0, first datagram to a name that does not resolve: it names the client port all the same, and another port of the address is foreign', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const otherPort = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '0.0.0.0', port: 0 });
        const seen = suite.echo4.received.length;
        // On the splice relay the name goes to JavaScript, which must teach the port to the relay thread.
        await peer.send(frame('nowhere.test', suite.echo4.port, 'first, to no one'), assoc.relay.port, assoc.relay.host);
        await otherPort.send(frame('127.0.0.1', suite.echo4.port, 'from another port'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'mine');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['mine'], 'nothing from the other port reached the echo');
        assert.equal(otherPort.queued, 0);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 1);
        assert.equal(record.datagramsDropped, 2, 'the unresolved name and the foreign port');
      } finally {
        await peer.close();
        await otherPort.close();
      }
    });
  });

  describe(`UDP ASSOCIATE idle timeout (${engine} relay)`, opts, () => {
    const suite = udpSuite(engine, { timeouts: { udpIdle: 200 } });
    /** For the test that must get one round trip in first: 200 ms could pass before it on a loaded machine. */
    let roomier: RunningProxy;
    before(async () => {
      roomier = await startProxy({ relay: { engine }, timeouts: { udpIdle: 1000 } });
    });
    after(async () => {
      await roomier.close();
    });

    test('no datagram for timeouts.udpIdle: the control connection is closed, reason idle-timeout, sockets gone', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const baseline = udpPortsOfThisProcess().length;
        const assoc = await associate(roomier, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'once');
        const outboundPort = suite.echo4.received.at(-1)!.from.port;
        await within(assoc.closed, 10_000, 'the proxy to close the idle control connection');
        const record = await recordOf(roomier, assoc);
        assert.equal(record.command, 'udp');
        assert.equal(record.reason, 'idle-timeout');
        assert.equal(record.datagramsUp, 1);
        assert.equal(record.datagramsDown, 1);
        assert.equal(record.bytesUp, 4);
        assert.equal(record.bytesDown, 4);
        await assertSocketsGone(baseline, '127.0.0.1', assoc.relay.port, outboundPort);
      } finally {
        await peer.close();
      }
    });

    test('an association that never carried a datagram also times out', opts, async () => {
      const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: 0 });
      await within(assoc.closed, 10_000, 'the proxy to close the idle control connection');
      const record = await recordOf(suite.proxy, assoc);
      assert.equal(record.reason, 'idle-timeout');
      assert.equal(record.datagramsUp, 0);
      assert.ok(await canBindUdp('127.0.0.1', assoc.relay.port));
    });
  });

  describe(`UDP ASSOCIATE bad input (udp.maxDatagram: 512, ${engine} relay)`, opts, () => {
    const suite = udpSuite(engine, { udp: { maxDatagram: 512 } });

    test('malformed headers and an oversized datagram are dropped and counted; a valid datagram then still goes through', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const port = Buffer.alloc(2);
        port.writeUInt16BE(suite.echo4.port);
        const bad: Record<string, Buffer> = {
          'RSV = 01 00': Buffer.concat([hex('01 00 00 01 7f 00 00 01'), port, Buffer.from('rsv')]),
          'RSV = 00 01': Buffer.concat([hex('00 01 00 01 7f 00 00 01'), port, Buffer.from('rsv')]),
          'empty datagram': Buffer.alloc(0),
          'three bytes': hex('00 00 00'),
          'IPv4 address cut short': hex('00 00 00 01 7f 00'),
          'port cut short': hex('00 00 00 01 7f 00 00 01 00'),
          'IPv6 address cut short': hex('00 00 00 04 00 00 00 00 00 00 00 00'),
          'domain longer than the datagram': hex('00 00 00 03 20 61 62 63'),
          'unknown ATYP 0x05': Buffer.concat([hex('00 00 00 05 7f 00 00 01'), port, Buffer.from('atyp')]),
          'unknown ATYP 0x02': Buffer.concat([hex('00 00 00 02 7f 00 00 01'), port, Buffer.from('atyp')]),
          // Once threw out of the dgram relay and ended the process.
          'destination port 0': Buffer.concat([hex('00 00 00 01 7f 00 00 01 00 00'), Buffer.from('port 0')]),
          'a name with port 0': Buffer.concat([hex('00 00 00 03 09'), Buffer.from('127.0.0.1'), hex('00 00'), Buffer.from('port 0')]),
          '1000 bytes (over maxDatagram)': Buffer.concat([hex('00 00 00 01 7f 00 00 01'), port, Buffer.alloc(990, 0x61)]),
          '513 bytes (one over maxDatagram)': Buffer.concat([hex('00 00 00 01 7f 00 00 01'), port, Buffer.alloc(503, 0x62)]),
        };
        for (const datagram of Object.values(bad)) await peer.send(datagram, assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'valid');
        assert.deepEqual(suite.echo4.payloads(), ['valid'], 'none of the bad datagrams reached the echo server');
        // Exactly maxDatagram is still taken.
        const largest = 'c'.repeat(512 - 10);
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, largest);
        assert.equal(peer.queued, 0);
        assoc.control.end();
        const record = await recordOf(suite.proxy, assoc);
        assert.equal(record.datagramsDropped, Object.keys(bad).length);
        assert.equal(record.datagramsDenied, 0, "malformed datagrams are dropped, not denied");
        assert.equal(record.datagramsUp, 2);
        assert.equal(record.datagramsDown, 2);
        assert.equal(record.bytesUp, 'valid'.length + largest.length);
        assert.equal(record.reason, 'client-closed');
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE limit (udp.maxAssociationsPerClient: 2, ${engine} relay)`, opts, () => {
    const suite = udpSuite(engine, { udp: { maxAssociationsPerClient: 2 } });

    test('the third association gets REP 0x01 (limit-reached); after one closes, a new one works', opts, async () => {
      const peers = await Promise.all([UdpPeer.open('127.0.0.1'), UdpPeer.open('127.0.0.1'), UdpPeer.open('127.0.0.1')]);
      const [p1, p2, p3] = peers as [UdpPeer, UdpPeer, UdpPeer];
      const open: Association[] = [];
      try {
        const a1 = await associate(suite.proxy, { host: '127.0.0.1', port: p1.port });
        open.push(a1);
        const a2 = await associate(suite.proxy, { host: '127.0.0.1', port: p2.port });
        open.push(a2);

        const third = await RawClient.connect(suite.proxy.port);
        try {
          third.write(Buffer.concat([hex('05 01 00 05 03 00 01 7f 00 00 01'), Buffer.from([p3.port >> 8, p3.port & 0xff])]));
          assert.deepEqual(await third.read(2), hex('05 00'));
          const reply = await third.read(4);
          assert.equal(reply[0], 5);
          assert.equal(reply[1], 0x01, `REP 0x${reply[1]!.toString(16)}`);
          await within(third.readToEnd(), 5000, 'the proxy to close the refused association');
          const record = await within(suite.proxy.record((r) => r.clientPort === third.localPort), 5000, 'the refused session record');
          assert.equal(record.command, 'udp');
          assert.equal(record.reply, 0x01);
          assert.equal(record.reason, 'limit-reached');
          assert.equal(record.connected, null);
        } finally {
          third.destroy();
        }

        // The two admitted ones still relay.
        await assertEchoed(p2, a2.relay, '127.0.0.1', suite.echo4.port, 'a2');

        a1.control.end();
        await within(suite.proxy.record((r) => r.clientPort === a1.controlPort), 5000, 'the first association\'s record');
        const a3 = await associate(suite.proxy, { host: '127.0.0.1', port: p3.port });
        open.push(a3);
        await assertEchoed(p3, a3.relay, '127.0.0.1', suite.echo4.port, 'a3');
        a3.control.end();
        const record = await within(suite.proxy.record((r) => r.clientPort === a3.controlPort), 5000, 'the new association\'s record');
        assert.equal(record.reply, 0);
        assert.equal(record.datagramsUp, 1);
      } finally {
        for (const a of open) a.control.destroy();
        for (const p of peers) await p.close();
      }
    });
  });

  test(`UDP ASSOCIATE limit on an IPv6 listener: counted per /64, and the refusal names it (${engine} relay)`, opts, async () => {
    const proxy = await startProxy({ listen: [{ address: '::1', port: 0 }], relay: { engine }, udp: { maxAssociationsPerClient: 1 } });
    const first = await associate(proxy, { host: '::1', port: 0 }, '::1');
    try {
      const second = await RawClient.connect(proxy.port, '::1');
      second.write(hex('05 01 00 05 03 00 01 00000000 0000'));
      assert.deepEqual((await second.read(6)).subarray(0, 4), hex('05 00 05 01'));
      await within(second.readToEnd(), 5000, 'the proxy to close the refused association');
      const record = await within(proxy.record((r) => r.clientPort === second.localPort), 5000, 'the refused session record');
      assert.equal(record.reason, 'limit-reached');
      assert.equal(record.error, 'too many UDP associations from ::/64 (limit 1)');
    } finally {
      first.control.destroy();
      await proxy.close();
    }
  });

  describe(`UDP ASSOCIATE under load (${engine} relay)`, opts, () => {
    const suite = udpSuite(engine);

    test('a burst of 100 datagrams (over three of the relay thread\'s batches): each relayed once, in order, and counted', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const payloads = Array.from({ length: 100 }, (_, i) => `burst ${i}`);
        const seen = suite.echo4.received.length;
        for (const payload of payloads) await peer.send(frame('127.0.0.1', suite.echo4.port, payload), assoc.relay.port, assoc.relay.host);
        for (const payload of payloads) assertReply(await peer.next(`the echo of "${payload}"`), assoc.relay, { host: '127.0.0.1', port: suite.echo4.port }, payload);
        assert.deepEqual(suite.echo4.payloads().slice(seen), payloads);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 100);
        assert.equal(record.datagramsDown, 100);
        assert.equal(record.datagramsDropped, 0);
        assert.equal(record.bytesUp, payloads.join('').length);
      } finally {
        await peer.close();
      }
    });

    test('associations closed while their datagrams are on the way: every socket closed, the proxy relays on', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const baseline = udpPortsOfThisProcess().length;
        const next = laterRecords(suite.proxy);
        for (let round = 0; round < 20; round++) {
          const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
          const sent: Array<Promise<void>> = [];
          for (let i = 0; i < 30; i++) {
            const to = i % 3 === 0 ? frame('localhost', suite.echo4.port, `by name ${i}`) : frame('127.0.0.1', suite.echo4.port, `by address ${i}`);
            sent.push(peer.send(to, assoc.relay.port, assoc.relay.host));
          }
          assoc.control.destroy();
          await Promise.all(sent);
          await next((r) => r.clientPort === assoc.controlPort);
        }
        assert.equal(udpPortsOfThisProcess().length, baseline, 'no association left a socket open');
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        while (peer.queued > 0) await peer.next(); // late echoes of the closed associations
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'still relaying');
        assoc.control.end();
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE with rules on destinations (${engine} relay)`, opts, () => {
    const suite = udpSuite(engine, {
      rules: [
        { name: 'not-dot-two', deny: { to: { nets: ['127.0.0.2/32'] } } },
        { name: 'the-rest', allow: {} },
      ],
    });
    let denied: UdpEcho;
    before(async () => {
      denied = await UdpEcho.start('127.0.0.2');
    });
    after(() => denied.close());

    test('a datagram to a denied destination is dropped and counted, again and again; the association relays on', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        for (const payload of ['first', 'second']) {
          await peer.send(frame('127.0.0.2', denied.port, `denied ${payload}`), assoc.relay.port, assoc.relay.host);
          await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, `allowed ${payload}`); // the barrier
        }
        // The same address written as IPv4-mapped IPv6 (ATYP 4) is the same destination.
        const mapped = frame('::ffff:127.0.0.2', denied.port, 'denied, mapped');
        assert.equal(mapped[3], 4, 'sent as ATYP IPv6');
        await peer.send(mapped, assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, '::1', suite.echo6.port, 'allowed over IPv6');
        assert.deepEqual(denied.payloads(), [], 'nothing reached the denied destination');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.rule, 'the-rest', 'the association itself was allowed');
        assert.equal(record.datagramsUp, 3);
        assert.equal(record.datagramsDown, 3);
        assert.equal(record.datagramsDropped, 3);
        assert.equal(record.datagramsDenied, 3, 'every drop here is a denial');
      } finally {
        await peer.close();
      }
    });

    test('a reply from a sender the rules deny is dropped; one from an allowed sender is relayed', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const intruder = await UdpPeer.open('127.0.0.2');
      const stranger = await UdpPeer.open('127.0.0.3');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'opens the outbound socket');
        const outbound = suite.echo4.received.at(-1)!.from.port;
        for (const round of [1, 2]) {
          await intruder.send(Buffer.from(`intruder ${round}`), outbound, '127.0.0.1');
          await stranger.send(Buffer.from(`stranger ${round}`), outbound, '127.0.0.1');
          assertReply(await peer.next(`the stranger's datagram ${round}`), assoc.relay, { host: '127.0.0.3', port: stranger.port }, `stranger ${round}`);
        }
        assert.equal(peer.queued, 0, "the intruder's datagrams were not relayed");
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDown, 3);
        assert.equal(record.datagramsDropped, 2);
        assert.equal(record.datagramsDenied, 2, 'every drop here is a denial');
      } finally {
        await Promise.all([peer.close(), intruder.close(), stranger.close()]);
      }
    });

    test('a reply too large to wrap in a header, from a sender the rules deny: counted as too large, not as denied', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const intruder = await UdpPeer.open('127.0.0.2');
      const stranger = await UdpPeer.open('127.0.0.3');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'opens the outbound socket');
        const outbound = suite.echo4.received.at(-1)!.from.port;
        await intruder.send(Buffer.alloc(65507, 0x42), outbound, '127.0.0.1');
        await stranger.send(Buffer.from('the barrier'), outbound, '127.0.0.1');
        assertReply(await peer.next('the barrier'), assoc.relay, { host: '127.0.0.3', port: stranger.port }, 'the barrier');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDropped, 1);
        assert.equal(record.datagramsDenied, 0, 'the relays agree: too large comes first');
      } finally {
        await Promise.all([peer.close(), intruder.close(), stranger.close()]);
      }
    });

    test('a burst of 100 datagrams to a destination not decided yet: each relayed once, in order', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const payloads = Array.from({ length: 100 }, (_, i) => `checked burst ${i}`);
        const seen = suite.echo4.received.length;
        for (const payload of payloads) await peer.send(frame('127.0.0.1', suite.echo4.port, payload), assoc.relay.port, assoc.relay.host);
        for (const payload of payloads) assertReply(await peer.next(`the echo of "${payload}"`), assoc.relay, { host: '127.0.0.1', port: suite.echo4.port }, payload);
        assert.deepEqual(suite.echo4.payloads().slice(seen), payloads);
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsUp, 100);
        assert.equal(record.datagramsDropped, 0);
        assert.equal(record.datagramsDenied, 0, 'every drop here is a denial');
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE idle timeout counts every datagram of the client's that decodes (${engine} relay)`, opts, () => {
    const resolver: Resolver = { resolve: (name) => Promise.reject(Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' })) };
    const suite = udpSuite(engine, {
      resolver,
      timeouts: { udpIdle: 1000 },
      rules: [{ name: 'not-dot-two', deny: { to: { nets: ['127.0.0.2/32'] } } }, { name: 'the-rest', allow: {} }],
    });

    test('datagrams to a denied destination and to a name that does not resolve keep the association alive past timeouts.udpIdle', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        // 2.5 s of datagrams none of which is relayed, one every 100 ms: well past the 1 s idle timeout.
        for (let i = 0; i < 25; i++) {
          const target = i % 2 === 0 ? frame('127.0.0.2', suite.echo4.port, `denied ${i}`) : frame('nowhere.test', suite.echo4.port, `unresolved ${i}`);
          await peer.send(target, assoc.relay.port, assoc.relay.host);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'still associated');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.reason, 'client-closed', 'not idle-timeout');
        assert.equal(record.datagramsDropped, 25);
      } finally {
        await peer.close();
      }
    });
  });

  describe(`UDP ASSOCIATE allowed to one name only (${engine} relay)`, opts, () => {
    const resolver: Resolver = {
      async resolve(name) {
        if (name === 'four.test') return [{ address: '127.0.0.1', family: 4 }];
        if (name === 'six.test') return [{ address: '0:0:0:0:0:0:0:1', family: 6 }]; // ::1, spelled in full
        throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
      },
    };
    const suite = udpSuite(engine, {
      resolver,
      rules: [
        { name: 'four-test', allow: { commands: ['udp'], to: { hosts: ['four.test'] } } },
        { name: 'six-test', allow: { commands: ['udp'], to: { hosts: ['six.test'] } } },
      ],
    });

    test('a name the resolver spells in full (0:0:0:0:0:0:0:1): its replies come back from ::1', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        await assertEchoed(peer, assoc.relay, 'six.test', suite.echo6.port, 'spelled in full', { host: '::1', port: suite.echo6.port });
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.datagramsDown, 1);
        assert.equal(record.datagramsDenied, 0);
      } finally {
        await peer.close();
      }
    });

    test('decided before DNS: the address is denied until the name led there; then both ways are open, and only there', opts, async () => {
      const peer = await UdpPeer.open('127.0.0.1');
      const sameHost = await UdpPeer.open('127.0.0.1');
      try {
        const next = laterRecords(suite.proxy);
        const assoc = await associate(suite.proxy, { host: '127.0.0.1', port: peer.port });
        const seen = suite.echo4.received.length;
        await peer.send(frame('127.0.0.1', suite.echo4.port, 'by address first'), assoc.relay.port, assoc.relay.host);
        await assertEchoed(peer, assoc.relay, 'four.test', suite.echo4.port, 'by name', { host: '127.0.0.1', port: suite.echo4.port });
        await assertEchoed(peer, assoc.relay, '127.0.0.1', suite.echo4.port, 'by address, where the name led');
        assert.deepEqual(suite.echo4.payloads().slice(seen), ['by name', 'by address, where the name led']);
        const outbound = suite.echo4.received.at(-1)!.from.port;
        await sameHost.send(Buffer.from('another port of that host'), outbound, '127.0.0.1');
        await assertEchoed(peer, assoc.relay, 'four.test', suite.echo4.port, 'the barrier', { host: '127.0.0.1', port: suite.echo4.port });
        assert.equal(peer.queued, 0, 'the datagram from a port the name did not lead to was dropped');
        assoc.control.end();
        const record = await next((r) => r.clientPort === assoc.controlPort);
        assert.equal(record.rule, 'four-test');
        assert.equal(record.datagramsUp, 3);
        assert.equal(record.datagramsDown, 3);
        assert.equal(record.datagramsDropped, 2);
        assert.equal(record.datagramsDenied, 2, 'every drop here is a denial');
      } finally {
        await Promise.all([peer.close(), sameHost.close()]);
      }
    });
  });
}

/**
 * The addon's counters once `udpNativeDatagrams` has moved by at least
 * `delta` since `since`, or after 2 s: the relay thread counts a datagram
 * when sendmmsg() returns, which can be after the test holds the echo. The
 * callers still assert the exact figure.
 */
async function nativeDatagramsMoved(since: SpliceStats, delta: number): Promise<SpliceStats> {
  for (let i = 0; i < 100; i++) {
    const now = spliceStats()!;
    if (now.udpNativeDatagrams - since.udpNativeDatagrams >= delta) return now;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return spliceStats()!;
}

describe('UDP ASSOCIATE on the relay thread (splice relay)', opts, () => {
  const splice = udpSuite('splice');
  const stream = udpSuite('stream');
  const checked = udpSuite('splice', {
    rules: [
      { name: 'not-dot-two', deny: { to: { nets: ['127.0.0.2/32'] } } },
      { name: 'the-rest', allow: {} },
    ],
  });

  test('datagrams to addresses and their replies never enter JavaScript; a name is handed to it, resolved and sent', opts, async () => {
    const peer = await UdpPeer.open('127.0.0.1');
    try {
      const assoc = await associate(splice.proxy, { host: '127.0.0.1', port: peer.port });
      const before = spliceStats()!;
      for (const payload of ['one', 'two', 'three']) await assertEchoed(peer, assoc.relay, '127.0.0.1', splice.echo4.port, payload);
      const literal = await nativeDatagramsMoved(before, 6);
      assert.equal(literal.udpNativeDatagrams - before.udpNativeDatagrams, 6, 'three datagrams each way on the relay thread');
      assert.equal(literal.udpHandedOver - before.udpHandedOver, 0);
      await assertEchoed(peer, assoc.relay, 'localhost', splice.echo4.port, 'by name', { host: '127.0.0.1', port: splice.echo4.port });
      const named = await nativeDatagramsMoved(literal, 1);
      assert.equal(named.udpHandedOver - literal.udpHandedOver, 1, 'the datagram to a name went through JavaScript');
      assert.equal(named.udpNativeDatagrams - literal.udpNativeDatagrams, 1, 'its reply did not');
      assoc.control.end();
    } finally {
      await peer.close();
    }
  });

  test('with rules on destinations: JavaScript decides an address once, the relay thread keeps its verdict, denials too', opts, async () => {
    const peer = await UdpPeer.open('127.0.0.1');
    try {
      const assoc = await associate(checked.proxy, { host: '127.0.0.1', port: peer.port });
      const before = spliceStats()!;
      for (const payload of ['one', 'two', 'three']) await assertEchoed(peer, assoc.relay, '127.0.0.1', checked.echo4.port, payload);
      const allowed = await nativeDatagramsMoved(before, 5);
      assert.equal(allowed.udpHandedOver - before.udpHandedOver, 1, 'the first datagram went to JavaScript for its verdict');
      assert.equal(allowed.udpNativeDatagrams - before.udpNativeDatagrams, 5, 'the rest, and every reply, did not');
      // The first denial is JavaScript's; once the barrier after it is back, the
      // verdict is the relay thread's (a datagram that comes while one is on its
      // way to JavaScript follows it there, so the barrier may or may not).
      await peer.send(frame('127.0.0.2', checked.echo4.port, 'denied 1'), assoc.relay.port, assoc.relay.host);
      await assertEchoed(peer, assoc.relay, '127.0.0.1', checked.echo4.port, 'barrier 1');
      assert.ok(spliceStats()!.udpHandedOver - allowed.udpHandedOver >= 1);
      const decided = await nativeDatagramsMoved(allowed, 1); // barrier 1's reply at least (the barrier may have gone through JavaScript)
      await peer.send(frame('127.0.0.2', checked.echo4.port, 'denied 2'), assoc.relay.port, assoc.relay.host);
      await assertEchoed(peer, assoc.relay, '127.0.0.1', checked.echo4.port, 'barrier 2');
      const denied = await nativeDatagramsMoved(decided, 2);
      assert.equal(denied.udpHandedOver - decided.udpHandedOver, 0, 'the second denial was the relay thread\'s own');
      assert.equal(denied.udpNativeDatagrams - decided.udpNativeDatagrams, 2, 'the barrier, each way');
      assoc.control.end();
      const record = await recordOf(checked.proxy, assoc);
      assert.equal(record.datagramsDropped, 2);
      assert.equal(record.datagramsDenied, 2, 'every drop here is a denial');
    } finally {
      await peer.close();
    }
  });

  test('while JavaScript is busy, a burst it must decide waits in the socket buffer: none lost, in order', opts, async () => {
    const count = 240; // more than the 128 that may be on their way to JavaScript
    const next = laterRecords(checked.proxy);
    const assoc = await associate(checked.proxy, { host: '127.0.0.1', port: 0 });
    const seen = checked.echo4.received.length;
    // A checked association's first datagram to an address goes to JavaScript and
    // the rest follow it. This thread is blocked while Python sends them all.
    const blast = [
      'import socket, struct, sys',
      's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))',
      'relay, echo, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])',
      'for i in range(count): s.sendto(b"\\0\\0\\0\\1" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo) + b"held %d" % i, ("127.0.0.1", relay))',
    ].join('\n');
    try {
      execFileSync('python3', ['-c', blast, String(assoc.relay.port), String(checked.echo4.port), String(count)]);
      let waited = 0;
      while (checked.echo4.received.length - seen < count && waited++ < 250) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.deepEqual(checked.echo4.payloads().slice(seen), Array.from({ length: count }, (_, i) => `held ${i}`));
    } finally {
      assoc.control.end();
    }
    const record = await next((r) => r.clientPort === assoc.controlPort);
    assert.equal(record.datagramsUp, count);
    assert.equal(record.datagramsDropped, 0);
  });

  test('with the stream relay, the relay thread carries no datagram', opts, async () => {
    const peer = await UdpPeer.open('127.0.0.1');
    try {
      const assoc = await associate(stream.proxy, { host: '127.0.0.1', port: peer.port });
      const before = spliceStats()!;
      await assertEchoed(peer, assoc.relay, '127.0.0.1', stream.echo4.port, 'through dgram');
      const after = spliceStats()!;
      assert.equal(after.udpNativeDatagrams, before.udpNativeDatagrams);
      assert.equal(after.udpHandedOver, before.udpHandedOver);
      assoc.control.end();
    } finally {
      await peer.close();
    }
  });
});

describe('UDP ASSOCIATE with --workers 2', opts, () => {
  // Node's cluster shares a worker's bind(0) with the other workers' unless it
  // is exclusive: two associations would then read from one socket.
  test('associations in different workers each get their own relay socket and relay every datagram', opts, async () => {
    const echo = await UdpEcho.start('127.0.0.1');
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--workers', '2', '--log-format', 'json']);
    const peers: UdpPeer[] = [];
    const open: Association[] = [];
    try {
      await daemon.waitFor(() => daemon.logs.filter((l) => l.event === 'started').length === 2, 'both workers started');
      // The kernel spreads connections among the workers by address: all 16
      // land on one worker with a chance of 2^-15.
      const associations = 16;
      for (let i = 0; i < associations; i++) {
        const peer = await UdpPeer.open('127.0.0.1');
        peers.push(peer);
        open.push(await associate({ port }, { host: '127.0.0.1', port: peer.port }));
      }
      assert.equal(new Set(open.map((a) => a.relay.port)).size, associations, 'a relay socket each');
      for (const round of [1, 2, 3]) {
        for (const [i, assoc] of open.entries()) await assertEchoed(peers[i]!, assoc.relay, '127.0.0.1', echo.port, `association ${i}, ${round}`);
      }
      for (const assoc of open) assoc.control.end();
      await daemon.waitFor(() => daemon.sessions().length === associations, 'an access line each');
      assert.equal(new Set(daemon.sessions().map((l) => l.pid)).size, 2, 'both workers served associations');
    } finally {
      for (const assoc of open) assoc.control.destroy();
      for (const peer of peers) await peer.close();
      await daemon.kill();
      await echo.close();
    }
  });
});

describe('UDP reply headers cached per sender (ReplyHeaders)', () => {
  test('each header names its sender exactly; the same sender gets the same Buffer back', () => {
    const cache = new ReplyHeaders(8);
    const first = cache.get('127.0.0.1', 53);
    assert.deepEqual(first, hex('0000 00 01 7f000001 0035'));
    assert.equal(cache.get('127.0.0.1', 53), first, 'cached, not encoded again');
    assert.deepEqual(cache.get('127.0.0.1', 54), hex('0000 00 01 7f000001 0036'));
    assert.deepEqual(cache.get('10.0.0.1', 53), hex('0000 00 01 0a000001 0035'));
    assert.deepEqual(cache.get('::1', 65535), hex('0000 00 04 00000000000000000000000000000001 ffff'));
    assert.deepEqual(cache.get('::ffff:10.0.0.1', 80), hex('0000 00 01 0a000001 0050'), 'an IPv4-mapped sender is named as IPv4');
    assert.equal(cache.size, 5);
  });

  test('bounded: once full it starts over, and every header stays exact', () => {
    const cache = new ReplyHeaders(3);
    const first = cache.get('10.0.0.1', 1);
    cache.get('10.0.0.1', 2);
    cache.get('10.0.0.2', 1);
    assert.equal(cache.size, 3);
    assert.deepEqual(cache.get('10.0.0.3', 7), hex('0000 00 01 0a000003 0007'));
    assert.equal(cache.size, 1, 'the fourth sender started it over');
    const again = cache.get('10.0.0.1', 1);
    assert.notEqual(again, first, 'encoded anew');
    assert.deepEqual(again, first);
    for (let port = 1; port <= 1000; port++) {
      const header = cache.get('10.0.0.9', port);
      assert.equal(header?.readUInt16BE(8), port);
      assert.ok(cache.size <= 3);
    }
  });

  test('with a verdict: a refused sender is remembered as null, decided once, and decided again once forgotten', () => {
    const asked: string[] = [];
    let open = false;
    const cache = new ReplyHeaders(8, (address, port) => {
      asked.push(`${address}:${port}`);
      return open || address === '10.0.0.1';
    });
    assert.deepEqual(cache.get('10.0.0.1', 53), hex('0000 00 01 0a000001 0035'));
    assert.equal(cache.get('10.0.0.2', 53), null);
    assert.equal(cache.get('10.0.0.2', 53), null);
    assert.deepEqual(asked, ['10.0.0.1:53', '10.0.0.2:53'], 'each sender decided once');
    open = true;
    assert.equal(cache.get('10.0.0.2', 53), null, 'still the remembered verdict');
    cache.forget('10.0.0.2', 53);
    assert.deepEqual(cache.get('10.0.0.2', 53), hex('0000 00 01 0a000002 0035'), 'decided again');
    assert.equal(cache.size, 2);
  });
});
