/**
 * A UDP association whose outbound socket cannot be opened because the
 * process is out of file descriptors: its datagrams are counted as dropped,
 * never as relayed, none goes out late, the access line names the cause,
 * and once descriptors are free again the association relays. Both relays
 * agree. The daemon runs as a child, so that its descriptor limit can be
 * lowered (prlimit) and not the test runner's.
 */
import assert from 'node:assert/strict';
import type { Socket as UdpSocket } from 'node:dgram';
import { readdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type LogLine, envWithoutProxies, startDaemon, withTimeout } from '../cli/helpers.js';
import { RawClient, hex } from '../helpers/raw.js';
import { run } from '../helpers/run.js';
import { UdpEcho, bindUdp } from '../helpers/udp.js';

const LOOPBACK_V4 = [127, 0, 0, 1];
const LOOPBACK_V6 = [...Array<number>(15).fill(0), 1];

let echo4: UdpEcho;
let echo6: UdpEcho;
before(async () => {
  echo4 = await UdpEcho.start('127.0.0.1');
  echo6 = await UdpEcho.start('::1');
});
after(async () => {
  await echo4.close();
  await echo6.close();
});

/** A SOCKS5 UDP datagram to an echo: ATYP 1 for IPv4, 4 for IPv6. */
function toEcho(echo: UdpEcho, payload: string): Buffer {
  const [atyp, address] = echo === echo4 ? [1, LOOPBACK_V4] : [4, LOOPBACK_V6];
  return Buffer.concat([Buffer.from([0, 0, 0, atyp, ...address, echo.port >> 8, echo.port & 0xff]), Buffer.from(payload)]);
}

/** The client's side of an association: sends through the relay, and takes the replies' payloads in order. */
class AssociationClient {
  readonly #socket: UdpSocket;
  readonly #relayPort: number;
  readonly #replies: string[] = [];
  #wake: () => void = () => {};

  constructor(socket: UdpSocket, relayPort: number) {
    this.#socket = socket;
    this.#relayPort = relayPort;
    socket.on('message', (msg) => {
      this.#replies.push(msg.subarray(msg[3] === 4 ? 22 : 10).toString('latin1'));
      this.#wake();
    });
  }

  send(datagram: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.#socket.send(datagram, this.#relayPort, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  }

  /** Sends `payload` to `echo` and waits for its echo: every datagram sent before it has been handled by then. */
  async roundTrip(echo: UdpEcho, payload: string): Promise<void> {
    await this.send(toEcho(echo, payload));
    const arrived = new Promise<void>((resolve) => {
      const check = () => (this.#replies.includes(payload) ? resolve() : (this.#wake = check));
      check();
    });
    await withTimeout(arrived, 5000, `the echo of "${payload}"`);
  }

  get replies(): readonly string[] {
    return this.#replies;
  }
}

/** The lowest descriptor number the process does not use: as its soft limit, no descriptor can be opened. */
function lowestFreeDescriptor(pid: number): number {
  const open = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
  let fd = 0;
  while (open.has(fd)) fd++;
  return fd;
}

async function softDescriptorLimit(pid: number): Promise<number> {
  const result = await run('prlimit', ['--pid', String(pid), '--nofile', '--output=SOFT', '--noheadings']);
  assert.equal(result.code, 0, result.stderr);
  return Number(result.stdout.toString().trim());
}

async function setSoftDescriptorLimit(pid: number, limit: number): Promise<void> {
  const result = await run('prlimit', ['--pid', String(pid), `--nofile=${limit}:`]);
  assert.equal(result.code, 0, result.stderr);
}

/**
 * One association through a daemon with `engine`: an IPv6 datagram opens
 * that family's outbound socket; then, with no descriptor to spare, three
 * datagrams to the IPv4 echo need a socket that cannot be opened; then, with
 * descriptors back, three more. What each side saw, and the access line.
 */
async function outOfDescriptors(engine: 'splice' | 'stream') {
  const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--relay-engine', engine], envWithoutProxies());
  const control = await RawClient.connect(port);
  const socket = await bindUdp('127.0.0.1');
  const echoedBefore = echo4.received.length;
  try {
    const clientPort = socket.address().port;
    control.write(Buffer.concat([hex('05 01 00 05 03 00 01 7f000001'), Buffer.from([clientPort >> 8, clientPort & 0xff])]));
    const reply = await control.read(12);
    assert.equal(reply[3], 0x00, `${engine}: the association is granted`);
    const client = new AssociationClient(socket, reply.readUInt16BE(10));
    await client.roundTrip(echo6, 'opens the IPv6 socket');

    const pid = daemon.child.pid!;
    const limit = await softDescriptorLimit(pid);
    await setSoftDescriptorLimit(pid, lowestFreeDescriptor(pid));
    for (const n of [1, 2, 3]) await client.send(toEcho(echo4, `while out of descriptors ${n}`));
    // Datagrams from the client are handled in order: once this one is back
    // (its family's socket is open), the three before it have been handled.
    await client.roundTrip(echo6, 'barrier');
    await setSoftDescriptorLimit(pid, limit);
    for (const n of [1, 2, 3]) await client.roundTrip(echo4, `with descriptors back ${n}`);

    control.socket.end();
    await control.readToEnd();
    const line: LogLine = await daemon.waitFor((l) => l.event === 'session' && l.clientPort === control.localPort, 'the access line');
    return {
      atEcho4: echo4.received.slice(echoedBefore).map((r) => r.data.toString('latin1')),
      replies: [...client.replies],
      record: Object.fromEntries(['relay', 'reason', 'datagramsUp', 'datagramsDown', 'datagramsDropped', 'bytesUp', 'bytesDown'].map((key) => [key, line[key]])),
      error: line.error,
    };
  } finally {
    control.destroy();
    socket.close();
    daemon.signal('SIGTERM');
    await daemon.waitExit();
  }
}

test('out of descriptors for an outbound UDP socket: datagrams are dropped and counted so, the access line names EMFILE, and the association recovers (both relays)', async () => {
  const results = { stream: await outOfDescriptors('stream'), splice: await outOfDescriptors('splice') };
  const relayed = ['opens the IPv6 socket', 'barrier', 'with descriptors back 1', 'with descriptors back 2', 'with descriptors back 3'];
  const bytes = relayed.reduce((n, payload) => n + payload.length, 0);
  for (const [engine, result] of Object.entries(results)) {
    assert.deepEqual(result.atEcho4, relayed.slice(2), `${engine}: the IPv4 echo got the datagrams sent with descriptors back, and none sent late`);
    assert.deepEqual(result.replies, relayed, `${engine}: the client's replies`);
    assert.deepEqual(
      result.record,
      { relay: engine, reason: 'client-closed', datagramsUp: 5, datagramsDown: 5, datagramsDropped: 3, bytesUp: bytes, bytesDown: bytes },
      `${engine}: the access line counts the three as dropped, not relayed`,
    );
    assert.match(String(result.error), /EMFILE/, `${engine}: the access line names the cause`);
  }
  assert.equal(results.stream.error, results.splice.error, 'both relays name it alike');
});
