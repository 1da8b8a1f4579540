/**
 * The splice relay's own promises, beyond the relay suite both engines run
 * (test/server/relay.test.ts): bytes Node had already read before the
 * handover go out first and in order, resets and shutdowns reach both sides,
 * many sessions at once share the pipe pool, small messages are copied
 * (with a FIN in the same segment, and into a stalled destination) without
 * losing a byte, and a stalled reader stops the sender instead of filling
 * memory. Some cases run on both engines, so a
 * difference between them shows.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { type Socket, connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { spliceStats, spliceUnavailable } from '../../src/relay/splice.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { type RunningProxy, receiveAll, startProxy, startTcpServer } from '../helpers/server.js';

const MB = 1024 * 1024;
const PYTHON = '/usr/bin/python3';
const ENGINES = ['splice', 'stream'] as const;

/** `n` bytes where byte i is (i * 7 + seed) mod 251: any loss, duplicate or reordering shows. */
function pattern(n: number, seed = 0): Buffer {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + seed) % 251;
  return out;
}

/** A client speaking SOCKS5 by hand: the request bytes and anything after them go in one write. */
async function open(proxy: RunningProxy, port: number, after: Buffer = Buffer.alloc(0)): Promise<RawClient> {
  const client = await RawClient.connect(proxy.port);
  client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', port), after]));
  const reply = await client.read(12);
  assert.equal(reply[3], 0x00, 'CONNECT succeeded');
  return client;
}

test('the addon is built and loads (the test command builds it)', () => {
  assert.equal(spliceUnavailable(), null);
});

test('fromAddon: a callback that throws returns to the addon, and its error reaches uncaughtException on the next tick', () => {
  // In a child: the runner's own uncaughtException handler would take the error here.
  const module = new URL('../../src/relay/splice.js', import.meta.url).href;
  const script = `
    const { fromAddon } = await import(${JSON.stringify(module)});
    const seen = [];
    process.on('uncaughtException', (error) => seen.push('uncaught: ' + error.message));
    const batch = fromAddon((n) => { seen.push('message ' + n); if (n === 1) throw new Error('bug in a handler'); });
    for (const n of [1, 2, 3]) batch(n); // as the addon delivers a batch
    seen.push('batch done');
    setImmediate(() => console.log(JSON.stringify(seen)));
  `;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual(JSON.parse(run.stdout), ['message 1', 'message 2', 'message 3', 'batch done', 'uncaught: bug in a handler']);
});

describe('splice handover', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ relay: { engine: 'splice' } });
  });
  after(() => proxy.close());

  test('a destination that speaks first: its 2 MB banner arrives whole and in order', async () => {
    const banner = pattern(2 * MB, 3);
    const target = await startTcpServer((socket) => {
      socket.end(banner); // sent at once: part is read by Node before the handover, the rest spliced
    });
    try {
      const client = await open(proxy, target.port);
      client.socket.end();
      const got = await client.readToEnd();
      assert.equal(got.length, banner.length);
      assert.ok(got.equals(banner), 'banner bytes identical');
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.relay, 'splice');
      assert.equal(record.bytesDown, banner.length);
    } finally {
      await target.close();
    }
  });

  test('early client bytes (in the request write and right after it) precede spliced bytes', async () => {
    const early = pattern(300 * 1024, 1);
    const later = pattern(3 * MB, 2);
    let received: Promise<Buffer> = Promise.reject(new Error('no connection'));
    received.catch(() => {});
    const target = await startTcpServer((socket) => {
      received = receiveAll(socket);
    });
    try {
      const client = await open(proxy, target.port, early);
      client.socket.end(later);
      await client.readToEnd();
      const got = await received;
      assert.equal(got.length, early.length + later.length);
      assert.ok(got.equals(Buffer.concat([early, later])), 'bytes identical and in order');
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.bytesUp, early.length + later.length);
      assert.equal(record.reason, 'client-closed');
    } finally {
      await target.close();
    }
  });

  test('200 sessions at once, each with its own bytes both ways', async () => {
    const target = await startTcpServer((socket) => {
      socket.on('data', (c: Buffer) => socket.write(c)); // echo
      socket.on('end', () => socket.end());
    });
    try {
      const sessions = Array.from({ length: 200 }, async (_, i) => {
        const payload = pattern(64 * 1024 + i, i);
        const client = await open(proxy, target.port);
        client.socket.end(payload);
        const echoed = await client.readToEnd();
        assert.ok(echoed.equals(payload), `session ${i} echoed exactly`);
        return client.localPort;
      });
      const ports = new Set(await Promise.all(sessions));
      const records = await Promise.all([...ports].map((port) => proxy.record((r) => r.clientPort === port)));
      assert.ok(records.every((r) => r.relay === 'splice' && r.reason !== 'client-error' && r.reason !== 'destination-error'));
      // Pipes are pooled and held only while bytes are in flight.
      const stats = spliceStats();
      assert.ok(stats && stats.pipesCreated <= 2 * 200 + 64, `pipes created: ${stats?.pipesCreated}`);
    } finally {
      await target.close();
    }
  });

  test('a destination reset reaches the client as a reset, and the record says destination-error', async () => {
    const target = await startTcpServer((socket) => {
      socket.once('data', () => socket.resetAndDestroy());
    });
    try {
      const client = await open(proxy, target.port);
      client.write(Buffer.from('trigger'));
      assert.equal(await client.ended, 'reset');
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.reason, 'destination-error');
      assert.match(record.error ?? '', /ECONNRESET|EPIPE/);
    } finally {
      await target.close();
    }
  });
});

describe('small messages go through a buffer, not a pipe', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ relay: { engine: 'splice' } });
  });
  after(() => proxy.close());

  const copied = () => spliceStats()?.bytesCopied ?? 0;
  const echoTarget = () => startTcpServer((socket) => {
    socket.on('data', (c: Buffer) => socket.write(c));
    socket.on('end', () => socket.end());
  });

  test('request/response traffic is copied, every byte arrives, and the record counts it', async () => {
    const target = await echoTarget();
    try {
      const client = await open(proxy, target.port);
      const before = copied();
      let total = 0;
      for (let i = 1; i <= 300; i++) {
        const message = pattern(i, i);
        client.write(message);
        assert.ok((await client.read(i)).equals(message), `round trip ${i}`);
        total += i;
      }
      // Both directions went through the buffer: nothing of it was spliced.
      assert.equal(copied() - before, 2 * total);
      client.socket.end();
      await client.readToEnd();
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.bytesUp, total);
      assert.equal(record.bytesDown, total);
    } finally {
      await target.close();
    }
  });

  test('a message with its FIN in the same segment: the bytes and the end both arrive, each way', () => {
    // TCP_CORK (Python: Node cannot set it) puts the FIN into the segment
    // with the data, so the relay sees one event for both: a short read must
    // not be taken to mean "nothing more". The destination echoes the same way.
    const script = `
import socket, struct, sys, threading
CORK = socket.TCP_CORK
def send_with_fin(sock, data):
    sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)
def read_all(sock):
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out
target = socket.socket()
target.bind(("127.0.0.1", 0)); target.listen(64)
def serve():
    while True:
        conn, _ = target.accept()
        send_with_fin(conn, read_all(conn))
        conn.close()
threading.Thread(target=serve, daemon=True).start()
ok = 0
for i in range(40):
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    c.sendall(bytes([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1]) + struct.pack(">H", target.getsockname()[1]))
    reply = b""
    while len(reply) < 12:
        reply += c.recv(12 - len(reply))
    message = bytes((j * 7 + i) % 251 for j in range(10 + i))
    send_with_fin(c, message)
    ok += read_all(c) == message
    c.close()
print(ok)
`;
    const run = spawnSync(PYTHON, ['-c', script, String(proxy.port)], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout.trim(), '40', 'every session echoed exactly and ended');
  });

  test('small reads the stalled destination cannot take wait in the proxy, and arrive whole and in order', () => {
    // In a network namespace with 16 KiB TCP buffers (loopback's own grow to
    // tens of MB, too much to fill with small writes): see the fixture.
    const fixture = new URL('./small-buffers-fixture.js', import.meta.url).pathname;
    const script = 'ip link set lo up && sysctl -qw net.ipv4.tcp_wmem="4096 8192 16384" net.ipv4.tcp_rmem="4096 8192 16384" && exec "$0" "$1"';
    const run = spawnSync('unshare', ['--net', 'sh', '-c', script, process.execPath, fixture], {
      encoding: 'utf8',
      env: { ...process.env, SOCKSGATE_SMALL_BUFFERS: '1' },
      timeout: 60_000,
    });
    assert.equal(run.status, 0, `unshare --net (needs root): ${run.stderr}`);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    assert.equal(result.heldBack, true, 'the client was held back: everything up to the destination was full');
    assert.equal(result.received, result.sent);
    assert.equal(result.identical, true, 'bytes identical and in order');
    assert.equal(result.bytesUp, result.sent);
    assert.equal(result.relay, 'splice');
    assert.ok(Number(result.copied) > 64 * 1024, `small reads were copied: ${String(result.copied)} bytes`);
  });

  test('one flow that turns from bulk to small and back stays exact', async () => {
    const target = await echoTarget();
    try {
      const client = await open(proxy, target.port);
      const sent: Buffer[] = [];
      const send = async (message: Buffer) => {
        sent.push(message);
        client.write(message);
        assert.ok((await client.read(message.length)).equals(message), `echo of ${message.length} bytes`);
      };
      await send(pattern(3 * MB, 1));
      for (let i = 0; i < 50; i++) await send(pattern(20 + i, i));
      await send(pattern(2 * MB + 7, 2));
      await send(pattern(5, 3));
      client.socket.end();
      await client.readToEnd();
      const total = sent.reduce((n, b) => n + b.length, 0);
      const record = await proxy.record((r) => r.clientPort === client.localPort);
      assert.equal(record.bytesUp, total);
      assert.equal(record.bytesDown, total);
    } finally {
      await target.close();
    }
  });
});

describe('server shutdown with spliced sessions', () => {
  test('close() ends live sessions on both sides and records them as shutdown', async () => {
    const proxy = await startProxy({ relay: { engine: 'splice' } });
    const atTarget: Socket[] = [];
    const target = await startTcpServer((socket) => {
      atTarget.push(socket);
    });
    try {
      const clients = await Promise.all([1, 2, 3].map(() => open(proxy, target.port)));
      assert.equal(proxy.server.sessionCount, 3);
      await proxy.server.close({ graceMs: 0 });
      await Promise.all(clients.map((c) => c.ended));
      await Promise.all(atTarget.map((s) => (s.readableEnded ? undefined : once(s, 'end'))));
      for (const c of clients) {
        const record = await proxy.record((r) => r.clientPort === c.localPort);
        assert.equal(record.reason, 'shutdown');
        assert.equal(record.relay, 'splice');
      }
    } finally {
      await target.close();
    }
  });
});

for (const engine of ENGINES) {
  describe(`a reader that stalls (${engine} engine)`, () => {
    test('the destination is held back by TCP, not buffered without bound in the proxy', async () => {
      const proxy = await startProxy({ relay: { engine } });
      let sent = 0;
      let stalled: () => void = () => {};
      const blocked = new Promise<void>((resolve) => { stalled = resolve; });
      const chunk = Buffer.alloc(MB, 1);
      const target = await startTcpServer((socket) => {
        // Write until the kernel stops taking bytes: Node then keeps one chunk queued.
        const pump = () => {
          while (sent < 1024 * MB) {
            sent += chunk.length;
            if (!socket.write(chunk)) {
              const timer = setTimeout(stalled, 500); // no drain for a while: held back
              socket.once('drain', () => {
                clearTimeout(timer);
                pump();
              });
              return;
            }
          }
          stalled(); // all of it was taken: nothing held the destination back
        };
        pump();
      });
      try {
        const client = connect({ port: proxy.port, host: '127.0.0.1' });
        await once(client, 'connect');
        client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
        client.pause(); // never reads: the reply and everything after stay in its kernel buffer
        await blocked;
        // Kernel buffers on three sockets plus a pipe: a few MB, far from the 1 GB offered.
        assert.ok(sent < 64 * MB, `the destination got ${sent / MB} MB accepted before being held back`);
        client.destroy();
      } finally {
        await proxy.close();
        await target.close();
      }
    });
  });
}
