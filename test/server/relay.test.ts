/**
 * The relay: bytes arrive whole and in order both ways at once, half-close
 * works in both directions, an idle session is closed, and payload that a
 * client sends together with its request reaches the destination. Every
 * test runs on both relay engines: splice (the native addon, built by the test
 * command) and stream.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { type Socket, connect } from 'node:net';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { SocksClient } from 'socks';
import { bcryptHash } from '../../src/auth/bcrypt.js';
import type { ServerOptions } from '../../src/index.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type Fixture, type RunningProxy, startProxy, startTcpServer } from '../helpers/server.js';

const MB = 1024 * 1024;
const ENGINES = ['splice', 'stream'] as const;

async function socks5(proxy: RunningProxy, port: number): Promise<Socket> {
  // allowHalfOpen: the destination may finish first; this client must keep
  // sending (a default socket would end its side at the peer's FIN).
  const existing = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(existing, 'connect');
  // The socks client re-emits bytes that came with the reply on the next
  // turn of the event loop: callers must attach their 'data' listener at once.
  const { socket } = await SocksClient.createConnection({
    proxy: { host: '127.0.0.1', port: proxy.port, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port },
    existing_socket: existing,
  });
  return socket;
}

/** Writes `total` random bytes with backpressure, then ends; resolves with their sha256. */
async function sendRandom(socket: Socket, total: number): Promise<string> {
  const hash = createHash('sha256');
  const chunk = randomBytes(MB); // varied per chunk by its first bytes below
  for (let sent = 0, n = 0; sent < total; sent += chunk.length, n++) {
    chunk.writeUInt32BE(n, 0);
    const piece = Buffer.from(chunk.subarray(0, Math.min(chunk.length, total - sent)));
    hash.update(piece);
    if (!socket.write(piece)) await new Promise((resolve) => socket.once('drain', resolve));
  }
  socket.end();
  return hash.digest('hex');
}

/** Reads until the peer ends; resolves with the byte count and sha256. */
function receiveAll(socket: Socket): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    socket.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.once('error', reject);
  });
}

/** Writes until the reader's side is full: a write not drained for 500 ms. Resolves then; writes nothing more. */
function offerUntilHeldBack(socket: Socket): Promise<void> {
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  return new Promise((resolve) => {
    const pump = () => {
      while (!socket.destroyed) {
        if (!socket.write(chunk)) {
          const timer = setTimeout(resolve, 500);
          socket.once('drain', () => {
            clearTimeout(timer);
            pump();
          });
          return;
        }
      }
    };
    pump();
  });
}

/** Resumes a paused socket and counts what it reads until it closes; says whether it ended with a FIN or a reset. */
function readUntilClosed(socket: Socket): Promise<{ bytes: number; end: 'end' | 'reset' }> {
  return new Promise((resolve) => {
    let bytes = 0;
    let end: 'end' | 'reset' = 'reset';
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
    });
    socket.once('end', () => {
      end = 'end';
      socket.end();
    });
    socket.on('error', () => {});
    socket.once('close', () => resolve({ bytes, end }));
    socket.resume();
  });
}

for (const engine of ENGINES) {
describe(`relay (${engine} engine)`, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }], relay: { engine } });
    assert.equal(proxy.server.relayEngine, engine);
  });
  after(() => proxy.close());

  test('256 MB up and 256 MB down at the same time, sha256 equal at both ends', async () => {
    const size = Number(process.env.RELAY_TEST_MB ?? 256) * MB;
    let onTarget: (ends: { atTarget: Promise<{ bytes: number; sha256: string }>; fromTarget: Promise<string> }) => void = () => {};
    const targetSide = new Promise<Parameters<typeof onTarget>[0]>((resolve) => { onTarget = resolve; });
    const fixture = await startTcpServer((socket) => onTarget({ atTarget: receiveAll(socket), fromTarget: sendRandom(socket, size) }));
    try {
      const client = await socks5(proxy, fixture.port);
      const clientPort = client.localPort;
      // Listen at once: the destination is already sending.
      const down = receiveAll(client);
      const up = sendRandom(client, size);
      const { atTarget, fromTarget } = await targetSide;
      const [sentUp, receivedDown] = await Promise.all([up, down]);
      const [uploaded, sentDown] = await Promise.all([atTarget, fromTarget]);
      assert.equal(uploaded.bytes, size);
      assert.equal(uploaded.sha256, sentUp);
      assert.equal(receivedDown.bytes, size);
      assert.equal(receivedDown.sha256, sentDown);
      const record = await proxy.record((r) => r.clientPort === clientPort);
      assert.equal(record.bytesUp, size);
      assert.equal(record.bytesDown, size);
      assert.equal(record.relay, engine);
    } finally {
      await fixture.close();
    }
  });

  test('half-close: the client shuts its write side and still gets the whole response', async () => {
    const response = randomBytes(4 * MB);
    const target = await startTcpServer((socket) => {
      const request: Buffer[] = [];
      socket.on('data', (c: Buffer) => request.push(c));
      socket.on('end', () => {
        // Answer only after the client's FIN: the response depends on the whole request.
        socket.write(Buffer.from(`${Buffer.concat(request).length}\n`));
        socket.end(response);
      });
    });
    try {
      const client = await socks5(proxy, target.port);
      const clientPort = client.localPort;
      const received = receiveAll(client);
      client.end('the whole request');
      const { bytes, sha256 } = await received;
      const expected = Buffer.concat([Buffer.from('17\n'), response]);
      assert.equal(bytes, expected.length);
      assert.equal(sha256, createHash('sha256').update(expected).digest('hex'));
      const record = await proxy.record((r) => r.clientPort === clientPort);
      assert.equal(record.reason, 'client-closed');
    } finally {
      await target.close();
    }
  });

  test('half-close the other way: the destination ends first and still receives the client\'s data', async () => {
    let received: Promise<{ bytes: number; sha256: string }> = Promise.reject(new Error('none'));
    received.catch(() => {});
    const target = await startTcpServer((socket) => {
      received = receiveAll(socket);
      socket.end('bye');
    });
    try {
      // A client that keeps its write side open after the peer's FIN (the npm
      // socks client's socket would close it at once).
      const client = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
      await once(client, 'connect');
      const clientPort = client.localPort;
      const down = receiveAll(client); // the destination's FIN arrives first
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
      assert.equal((await down).bytes, 2 + 10 + 3);
      const payload = randomBytes(MB);
      client.end(payload);
      const up = await received;
      assert.equal(up.bytes, payload.length);
      assert.equal(up.sha256, createHash('sha256').update(payload).digest('hex'));
      const record = await proxy.record((r) => r.clientPort === clientPort);
      assert.equal(record.reason, 'destination-closed');
    } finally {
      await target.close();
    }
  });

  test('payload sent in the same write as a SOCKS4 request reaches the destination first', async () => {
    let firstBytes: Promise<string> = Promise.reject(new Error('none'));
    firstBytes.catch(() => {});
    const target = await startTcpServer((socket) => {
      firstBytes = new Promise((resolve) => socket.once('data', (c: Buffer) => resolve(c.toString())));
      socket.on('end', () => socket.end());
    });
    try {
      const client = await RawClient.connect(proxy.port);
      const port = target.port;
      client.write(Buffer.concat([Buffer.from([4, 1, port >> 8, port & 0xff, 127, 0, 0, 1]), Buffer.from('bob\0'), Buffer.from('early data')]));
      const reply = await client.read(8);
      assert.equal(reply[1], 0x5a);
      assert.equal(await firstBytes, 'early data');
      client.destroy();
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.user, 'bob');
      assert.equal(record.bytesUp, 10);
    } finally {
      await target.close();
    }
  });
});

describe(`a client that half-closes during the handshake (node handshake engine, ${engine} relay)`, () => {
  /**
   * The client writes its whole exchange and its data, then shuts its write
   * side before the proxy has answered (as `printf ... | nc -N` does): the FIN
   * reaches the proxy while it checks the password or dials. That is a
   * half-close, not a departure: the client still reads.
   */
  async function halfClosedEarly(options: ServerOptions, greeting: Buffer, answerBeforeReply: string) {
    const target = await startTcpServer((socket) => {
      const request: Buffer[] = [];
      socket.on('data', (c: Buffer) => request.push(c));
      socket.on('end', () => socket.end(`read ${Buffer.concat(request).length} bytes, then EOF`));
    });
    const proxy = await startProxy({ ...options, relay: { engine }, handshake: { engine: 'node' } });
    try {
      const client = await RawClient.connect(proxy.port);
      const data = Buffer.from('all of the request');
      client.socket.end(Buffer.concat([greeting, connectRequest('127.0.0.1', target.port), data]));
      const answer = await client.readToEnd();
      assert.equal(answer.subarray(0, answerBeforeReply.length / 2 + 4).toString('hex'), `${answerBeforeReply}05000001`, 'the replies');
      assert.equal(answer.subarray(answerBeforeReply.length / 2 + 10).toString(), `read ${data.length} bytes, then EOF`);
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.reason, 'client-closed');
      assert.equal(record.bytesUp, data.length);
      assert.equal(record.relay, engine);
    } finally {
      await proxy.close();
      await target.close();
    }
  }

  test('no authentication: the FIN arrives while the proxy dials', async () => {
    await halfClosedEarly({}, hex('05 01 00'), '0500');
  });

  test('username/password with a bcrypt hash: the FIN arrives while the password is checked', async () => {
    const users = [{ name: 'carol', password: await bcryptHash('pass', 4) }];
    const greeting = Buffer.concat([hex('05 01 02 01 05'), Buffer.from('carol'), hex('04'), Buffer.from('pass')]);
    await halfClosedEarly({ auth: { methods: ['userpass'], users } }, greeting, '05020100');
  });
});

describe(`idle timeout (${engine} engine)`, () => {
  /** The record of a session to a destination that never answers or closes; the client half-closes first if asked. */
  async function idleRecord(halfClose: boolean) {
    const target = await startTcpServer(() => {});
    const proxy = await startProxy({ timeouts: { idle: 200 }, relay: { engine } });
    try {
      const client = await RawClient.connect(proxy.port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
      assert.equal((await client.read(12))[3], 0x00);
      if (halfClose) client.socket.end();
      await client.readToEnd();
      return await proxy.record((r) => r.clientPort === client.localPort);
    } finally {
      await proxy.close();
      await target.close();
    }
  }

  test('a relayed session with no traffic is closed after timeouts.idle', async () => {
    assert.equal((await idleRecord(false)).reason, 'idle-timeout');
  });

  test('a half-closed session that goes quiet is closed after timeouts.idle, and the record says so (not client-closed)', async () => {
    assert.equal((await idleRecord(true)).reason, 'idle-timeout');
  });
});

describe(`a reader that stalls until the proxy ends the session (${engine} engine)`, () => {
  /**
   * One side offers bytes until the relay holds it back, the other reads
   * nothing; the proxy ends the session (idle timeout or close()); then the
   * reader reads everything it got until the proxy's FIN. The record counts
   * exactly that: bytes the proxy still held when it ended the session were
   * never sent, so they are not counted.
   */
  async function stalledSession(stalled: 'client' | 'destination', ending: 'idle-timeout' | 'shutdown') {
    let sender: Socket | null = null;
    let reader: Socket | null = null;
    let targetReady = () => {};
    const accepted = new Promise<void>((resolve) => {
      targetReady = resolve;
    });
    const target = await startTcpServer((socket) => {
      if (stalled === 'client') sender = socket;
      else {
        reader = socket;
        socket.pause();
      }
      targetReady();
    });
    const proxy = await startProxy({ timeouts: { idle: ending === 'idle-timeout' ? 300 : 0 }, relay: { engine } });
    try {
      const client = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
      client.on('error', () => {}); // a stalled sender may be reset when the proxy ends
      await once(client, 'connect');
      const clientPort = client.localPort; // a reset socket forgets it
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
      client.pause();
      await accepted;
      if (stalled === 'client') reader = client;
      else sender = client;
      const heldBack = offerUntilHeldBack(sender!);
      if (ending === 'shutdown') {
        await heldBack;
        void proxy.close();
      }
      const record = await proxy.record((r) => r.clientPort === clientPort);
      const { bytes, end } = await readUntilClosed(reader!);
      // The client's first 12 bytes are the method selection and the reply.
      const relayed = stalled === 'client' ? bytes - 12 : bytes;
      return { record, relayed, end };
    } finally {
      await proxy.close();
      await target.close();
    }
  }

  for (const stalled of ['client', 'destination'] as const) {
    for (const ending of ['idle-timeout', 'shutdown'] as const) {
      const counted = stalled === 'client' ? 'bytesDown' : 'bytesUp';
      test(`${ending}: the ${stalled} reads what is left, and ${counted} is exactly what it read`, async () => {
        const { record, relayed, end } = await stalledSession(stalled, ending);
        assert.equal(record.reason, ending);
        assert.equal(end, 'end', `the ${stalled} gets a FIN, not a reset`);
        assert.ok(relayed > 0, 'some bytes were relayed before the stall');
        assert.equal(record[counted], relayed, `${counted} against the bytes the ${stalled} read`);
      });
    }
  }
});
}
