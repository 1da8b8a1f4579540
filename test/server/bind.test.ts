/**
 * BIND end to end (SOCKS5 and SOCKS4): the npm `socks` client asks for a
 * BIND, a test "application server" connects to the announced address, and
 * the second reply names that peer; then bytes cross both ways. Also the
 * failure paths: the BIND timeout, a peer from the wrong address (turned
 * away for SOCKS5, fatal for SOCKS4), `bind.acceptFrom: any`, and a client
 * that gives up while the proxy waits. Raw bytes where the client library
 * cannot show what the proxy sent (failure replies).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, Server, type Socket, connect, isIP } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { SocksClient, type SocksRemoteHost } from 'socks';
import type { Resolver, SessionRecord } from '../../src/index.js';
import { RawClient, hex } from '../helpers/raw.js';
import { type RunningProxy, startProxy } from '../helpers/server.js';

const opts = { timeout: 20_000 };
const SOCKS4_GRANTED = 0x5a;
const SOCKS4_REJECTED = 0x5b;

/** Rejects after `ms` with `what` in the message: a hang fails with a name instead of the suite timeout. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Collects bytes until at least `n` arrived; rejects if the socket ends or closes first. */
function readBytes(socket: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length >= n) {
        cleanup();
        resolve(buf);
      }
    };
    const onEnd = () => {
      cleanup();
      reject(new Error(`socket ended after ${buf.length} of ${n} bytes`));
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

/** Resolves when the socket is closed (FIN or reset, whichever). */
function closed(socket: Socket): Promise<void> {
  if (socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/** A plain TCP connection from the "application server" to the announced address. */
async function appConnect(host: string, port: number, localAddress?: string): Promise<Socket> {
  const socket = connect({ host, port, ...(localAddress ? { localAddress } : {}) });
  socket.on('error', () => {});
  await once(socket, 'connect');
  return socket;
}

interface BindSession {
  readonly client: SocksClient;
  /** First reply: where the application server must connect. */
  readonly bound: Promise<SocksRemoteHost>;
  /** Second reply: the peer, and the relaying socket. */
  readonly established: Promise<{ remoteHost: SocksRemoteHost; socket: Socket }>;
  /** Resolves with the client's error, if it gets one. */
  readonly failed: Promise<Error>;
  /** The control connection's local port (for the record), known once bound. */
  controlPort(): number;
}

/** Starts a BIND with the npm `socks` client; nothing is awaited yet. */
function startBind(proxy: RunningProxy, type: 4 | 5, host: string): BindSession {
  const client = new SocksClient({
    proxy: { host: '127.0.0.1', port: proxy.port, type },
    command: 'bind',
    destination: { host, port: 0 },
    timeout: 10_000,
  });
  let port = 0;
  const failed = new Promise<Error>((resolve) => client.once('error', resolve));
  const bound = new Promise<SocksRemoteHost>((resolve, reject) => {
    client.once('bound', (info) => {
      port = info.socket.localPort ?? 0;
      resolve(info.remoteHost!);
    });
    void failed.then(reject);
  });
  const established = new Promise<{ remoteHost: SocksRemoteHost; socket: Socket }>((resolve, reject) => {
    client.once('established', (info) => resolve({ remoteHost: info.remoteHost!, socket: info.socket }));
    void failed.then(reject);
  });
  bound.catch(() => {});
  established.catch(() => {});
  client.connect();
  return { client, bound, established, failed, controlPort: () => port };
}

/** SOCKS5 greeting (no auth) and a BIND request for an IPv4 address. */
function socks5Bind(host: string, port = 0): Buffer {
  return Buffer.concat([hex('05 01 00'), Buffer.from([5, 2, 0, 1, ...host.split('.').map(Number), port >> 8, port & 0xff])]);
}

/** SOCKS4 BIND request for an IPv4 address, empty USERID. */
function socks4Bind(host: string, port = 0): Buffer {
  return Buffer.from([4, 2, port >> 8, port & 0xff, ...host.split('.').map(Number), 0]);
}

/** The address and port of a SOCKS5 reply with ATYP 1 (10 bytes). */
function socks5ReplyAddress(reply: Buffer): { host: string; port: number } {
  assert.equal(reply[3], 1, `reply ATYP ${reply[3]}, expected IPv4`);
  return { host: [...reply.subarray(4, 8)].join('.'), port: reply.readUInt16BE(8) };
}

/** The address and port of a SOCKS4 reply (8 bytes). */
function socks4ReplyAddress(reply: Buffer): { host: string; port: number } {
  return { host: [...reply.subarray(4, 8)].join('.'), port: reply.readUInt16BE(2) };
}

/** True when nothing accepts TCP connections on host:port any more. */
async function refusesConnections(host: string, port: number): Promise<boolean> {
  const socket = connect({ host, port });
  try {
    await once(socket, 'connect');
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  } finally {
    socket.destroy();
  }
}

/**
 * The full happy path for one SOCKS version: announced address, the app
 * server connects, the second reply names it, exact bytes both ways, record.
 */
async function bindRoundTrip(proxy: RunningProxy, type: 4 | 5): Promise<void> {
  const session = startBind(proxy, type, '127.0.0.1');
  const bound = await within(session.bound, 5000, 'the first BIND reply');
  assert.equal(bound.host, '127.0.0.1', 'the announced address is the one used toward 127.0.0.1');
  assert.notEqual(bound.host, '0.0.0.0');
  assert.ok(bound.port > 0);
  assert.notEqual(bound.port, proxy.port);
  const controlPort = session.controlPort();

  const app = await appConnect(bound.host, bound.port);
  // Kept now: a closed socket forgets its address.
  const appPort = app.localPort!;
  try {
    const { remoteHost, socket } = await within(session.established, 5000, 'the second BIND reply');
    assert.deepEqual(remoteHost, { host: app.localAddress, port: appPort }, 'the second reply names the peer');

    const up = Buffer.from(`client to app server over SOCKS${type} BIND \u0000\u00ff`, 'latin1');
    const down = Buffer.from(`app server to client, SOCKS${type}, a bit longer \u0001\u00fe`, 'latin1');
    const atApp = readBytes(app, up.length);
    const atClient = readBytes(socket, down.length);
    socket.write(up);
    app.write(down);
    assert.deepEqual(await within(atApp, 5000, 'bytes at the app server'), up);
    assert.deepEqual(await within(atClient, 5000, 'bytes at the client'), down);

    const appSawEnd = once(app, 'end');
    socket.end();
    await within(appSawEnd, 5000, 'the client FIN at the app server');
    app.end();
    await within(closed(socket), 5000, 'the client socket to close');

    const record = await within(proxy.record((r) => r.clientPort === controlPort), 5000, 'the session record');
    assert.equal(record.version, type);
    assert.equal(record.command, 'bind');
    assert.equal(record.requested, '127.0.0.1:0');
    assert.equal(record.connected, `127.0.0.1:${appPort}`);
    assert.equal(record.reply, type === 5 ? 0 : SOCKS4_GRANTED);
    assert.equal(record.bytesUp, up.length);
    assert.equal(record.bytesDown, down.length);
    assert.equal(record.reason, 'client-closed');
    assert.equal(record.error, null);
  } finally {
    app.destroy();
  }
}

describe('BIND', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }] });
  });
  after(() => proxy.close());

  test('SOCKS5: the app server connects to the announced address, the second reply names it, bytes cross both ways', opts, () =>
    bindRoundTrip(proxy, 5));

  test('SOCKS4: the same with a SOCKS4 BIND', opts, () => bindRoundTrip(proxy, 4));

  test('BIND 0.0.0.0 (any peer): the announced address is the listener address, never 0.0.0.0', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks5Bind('0.0.0.0'));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const first = await client.read(10);
      assert.deepEqual(first.subarray(0, 3), hex('05 00 00'));
      const announced = socks5ReplyAddress(first);
      assert.equal(announced.host, '127.0.0.1');
      assert.ok(announced.port > 0);
      const app = await appConnect(announced.host, announced.port);
      const appPort = app.localPort!;
      try {
        const second = await client.read(10);
        assert.deepEqual(second.subarray(0, 3), hex('05 00 00'));
        assert.deepEqual(socks5ReplyAddress(second), { host: '127.0.0.1', port: appPort });
        const atClient = client.read(5);
        const atApp = readBytes(app, 2);
        app.write('ready');
        client.write(Buffer.from('go'));
        assert.equal((await within(atClient, 5000, 'bytes at the client')).toString(), 'ready');
        assert.equal((await within(atApp, 5000, 'bytes at the app server')).toString(), 'go');
      } finally {
        app.destroy();
      }
      await client.readToEnd();
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.command, 'bind');
      assert.equal(record.requested, '0.0.0.0:0');
      assert.equal(record.connected, `127.0.0.1:${appPort}`);
      assert.equal(record.bytesUp, 2);
      assert.equal(record.bytesDown, 5);
      assert.equal(record.reason, 'destination-closed');
    } finally {
      client.destroy();
    }
  });

  test('the BIND listening socket reports an error (a failed accept): REP 0x01 naming it, the listener closes, the server serves on', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks5Bind('127.0.0.1'));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const announced = socks5ReplyAddress(await client.read(10));
      // The proxy's own listening socket for this BIND, as libuv would report an accept error on it.
      const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
      const bindServer = handles.find((h): h is Server => h instanceof Server && (h.address() as AddressInfo | null)?.port === announced.port);
      assert.ok(bindServer, 'the BIND listener is found');
      bindServer.emit('error', Object.assign(new Error('accept ENOBUFS'), { code: 'ENOBUFS' }));
      const second = await within(client.read(10), 5000, 'the failure reply');
      assert.deepEqual(second.subarray(0, 2), hex('05 01'));
      await within(client.readToEnd(), 5000, 'the proxy to close');
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.match(record.error ?? '', /the listening socket failed: accept ENOBUFS/);
      assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
    } finally {
      client.destroy();
    }
    await bindRoundTrip(proxy, 5);
  });

  test('SOCKS4 BIND 0.0.0.0: the announced address is not 0.0.0.0 either', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks4Bind('0.0.0.0'));
      const first = await client.read(8);
      assert.equal(first[0], 0);
      assert.equal(first[1], SOCKS4_GRANTED);
      const announced = socks4ReplyAddress(first);
      assert.equal(announced.host, '127.0.0.1');
      const app = await appConnect(announced.host, announced.port);
      try {
        const second = await client.read(8);
        assert.equal(second[1], SOCKS4_GRANTED);
        assert.deepEqual(socks4ReplyAddress(second), { host: '127.0.0.1', port: app.localPort });
      } finally {
        app.destroy();
      }
    } finally {
      client.destroy();
    }
  });

  test('SOCKS5: a connection from the wrong address is closed and the proxy waits on for the right one', opts, async () => {
    const session = startBind(proxy, 5, '127.0.0.2');
    const bound = await within(session.bound, 5000, 'the first BIND reply');
    assert.notEqual(bound.host, '0.0.0.0');
    assert.ok(isIP(bound.host) === 4, `announced ${bound.host}`);
    let establishedEarly = false;
    void session.established.then(() => { establishedEarly = true; }, () => {});

    // The stray: from 127.0.0.1, while the request named 127.0.0.2.
    const stray = await appConnect(bound.host, bound.port, '127.0.0.1');
    const strayData: Buffer[] = [];
    stray.on('data', (c: Buffer) => strayData.push(c));
    stray.write('stray bytes must not reach the client');
    await within(closed(stray), 5000, 'the proxy to close the stray connection');
    assert.deepEqual(Buffer.concat(strayData), Buffer.alloc(0), 'the stray got nothing');
    assert.equal(establishedEarly, false, 'no second reply for the stray');

    // The right peer, from 127.0.0.2: accepted.
    const app = await appConnect(bound.host, bound.port, '127.0.0.2');
    const appPort = app.localPort!;
    try {
      const { remoteHost, socket } = await within(session.established, 5000, 'the second BIND reply');
      assert.deepEqual(remoteHost, { host: '127.0.0.2', port: appPort });
      const atApp = readBytes(app, 5);
      const atClient = readBytes(socket, 4);
      socket.write('hello');
      app.write('back');
      assert.equal((await within(atApp, 5000, 'bytes at the app server')).toString(), 'hello');
      assert.equal((await within(atClient, 5000, 'bytes at the client')).toString(), 'back');
      socket.destroy();
      const record = await within(proxy.record((r) => r.clientPort === session.controlPort()), 5000, 'the session record');
      assert.equal(record.command, 'bind');
      assert.equal(record.requested, '127.0.0.2:0');
      assert.equal(record.connected, `127.0.0.2:${appPort}`);
      assert.equal(record.reply, 0);
      assert.equal(record.bytesUp, 5);
      assert.equal(record.bytesDown, 4);
    } finally {
      app.destroy();
    }
  });

  for (const [named, peerAddress] of [['::ffff:127.0.0.2', '127.0.0.2'], ['::ffff:0.0.0.0', '127.0.0.3']] as const) {
    test(`SOCKS5 BIND naming the IPv4-mapped ${named} (ATYP 4): a peer from ${peerAddress} is the one expected`, opts, async () => {
      const client = await RawClient.connect(proxy.port);
      try {
        const mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...named.slice(7).split('.').map(Number)];
        client.write(Buffer.concat([hex('05 01 00'), Buffer.from([5, 2, 0, 4, ...mapped, 0, 0])]));
        assert.deepEqual(await client.read(2), hex('05 00'));
        const first = await client.read(10);
        assert.deepEqual(first.subarray(0, 3), hex('05 00 00'));
        const announced = socks5ReplyAddress(first);
        const app = await appConnect(announced.host, announced.port, peerAddress);
        try {
          const second = await within(client.read(10), 5000, 'the second BIND reply');
          assert.deepEqual(second.subarray(0, 3), hex('05 00 00'), `second reply ${second.toString('hex')}`);
          assert.deepEqual(socks5ReplyAddress(second), { host: peerAddress, port: app.localPort });
        } finally {
          app.destroy();
        }
      } finally {
        client.destroy();
      }
    });
  }

  test('SOCKS4: a connection from the wrong address ends the BIND with 0x5B', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks4Bind('127.0.0.2'));
      const first = await client.read(8);
      assert.equal(first[1], SOCKS4_GRANTED);
      const announced = socks4ReplyAddress(first);
      assert.notEqual(announced.host, '0.0.0.0');
      const stray = await appConnect(announced.host, announced.port, '127.0.0.1');
      await within(closed(stray), 5000, 'the proxy to close the stray connection');
      const second = await client.read(8);
      assert.equal(second[0], 0);
      assert.equal(second[1], SOCKS4_REJECTED);
      assert.deepEqual(await client.readToEnd(), Buffer.alloc(0));
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.version, 4);
      assert.equal(record.command, 'bind');
      assert.equal(record.reply, SOCKS4_REJECTED);
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.connected, null);
      assert.match(record.error ?? '', /127\.0\.0\.1/);
      assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
    } finally {
      client.destroy();
    }
  });

  test('SOCKS4 via the npm client: a wrong peer is reported as a rejected incoming connection', opts, async () => {
    const session = startBind(proxy, 4, '127.0.0.2');
    const bound = await within(session.bound, 5000, 'the first BIND reply');
    const stray = await appConnect(bound.host, bound.port, '127.0.0.1');
    try {
      const err = await within(session.failed, 5000, 'the client error');
      assert.match(err.message, /Rejected/i);
      const record = await within(proxy.record((r) => r.clientPort === session.controlPort()), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.reply, SOCKS4_REJECTED);
    } finally {
      stray.destroy();
    }
  });

  test('the client resets the control connection while the proxy waits: the session ends and the listener closes', opts, async () => {
    // A long BIND timeout: only the client's reset can end this session within the test's time.
    const patient = await startProxy({ timeouts: { bind: 60_000 } });
    try {
      const client = await RawClient.connect(patient.port);
      client.write(socks5Bind('127.0.0.1'));
      await client.read(2);
      const announced = socks5ReplyAddress(await client.read(10));
      client.socket.resetAndDestroy();
      const record = await within(patient.record((r) => r.clientPort === client.localPort), 5000, 'the session record after the client left');
      assert.equal(record.command, 'bind');
      assert.equal(record.connected, null);
      assert.equal(record.reason, 'client-gone');
      assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
    } finally {
      await patient.close();
    }
  });

  for (const version of [5, 4] as const) {
    test(`SOCKS${version}: the client sends its request, data and FIN at once (a half-close): the peer still comes, gets the data and the FIN, and answers`, opts, async () => {
      const client = await RawClient.connect(proxy.port);
      try {
        const request = version === 5 ? socks5Bind('127.0.0.1') : socks4Bind('127.0.0.1');
        client.socket.end(Buffer.concat([request, Buffer.from('UPLOAD')]));
        if (version === 5) assert.deepEqual(await client.read(2), hex('05 00'));
        const first = await client.read(version === 5 ? 10 : 8);
        const announced = version === 5 ? socks5ReplyAddress(first) : socks4ReplyAddress(first);
        // Half-open itself, to answer after the client's FIN.
        const app = connect({ host: announced.host, port: announced.port, allowHalfOpen: true });
        app.on('error', () => {});
        await once(app, 'connect');
        try {
          const second = await within(client.read(version === 5 ? 10 : 8), 5000, 'the second BIND reply');
          assert.equal(second[1], version === 5 ? 0 : SOCKS4_GRANTED, `second reply ${second.toString('hex')}`);
          const received: Buffer[] = [];
          app.on('data', (chunk: Buffer) => received.push(chunk));
          await within(once(app, 'end'), 5000, 'the client\'s FIN at the application server');
          assert.equal(Buffer.concat(received).toString(), 'UPLOAD');
          app.end('ANSWER');
          assert.equal((await within(client.readToEnd(), 5000, 'the answer at the client')).toString(), 'ANSWER');
          const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
          assert.equal(record.bytesUp, 6);
          assert.equal(record.bytesDown, 6);
          assert.equal(record.reason, 'client-closed');
        } finally {
          app.destroy();
        }
      } finally {
        client.destroy();
      }
    });
  }

  test('a client that shut its side and never sees a peer: the BIND times out and the listener closes', opts, async () => {
    const brief = await startProxy({ timeouts: { bind: 300 } });
    try {
      const client = await RawClient.connect(brief.port);
      client.socket.end(socks5Bind('127.0.0.1'));
      await client.read(2);
      const announced = socks5ReplyAddress(await client.read(10));
      const record = await within(brief.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
      client.destroy();
    } finally {
      await brief.close();
    }
  });
});

describe('BIND abandoned by its client (a FIN before the peer came)', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    // A BIND wait far longer than the test: only the bound after the FIN can end these sessions in time.
    proxy = await startProxy({ timeouts: { handshake: 300, bind: 120_000 }, limits: { sessionsPerClient: 2 } });
  });
  after(() => proxy.close());

  for (const when of ['with the request', 'after the first reply'] as const) {
    test(`a FIN ${when}: the wait ends after timeouts.handshake (REP 0x06, bind-failed), the listener closes and the client's place is free`, opts, async () => {
      const client = await RawClient.connect(proxy.port);
      try {
        if (when === 'with the request') client.socket.end(socks5Bind('127.0.0.1'));
        else client.write(socks5Bind('127.0.0.1'));
        assert.deepEqual(await client.read(2), hex('05 00'));
        const announced = socks5ReplyAddress(await client.read(10));
        if (when === 'after the first reply') client.socket.end();
        const second = await within(client.read(10), 5000, 'the failure reply');
        assert.equal(second[1], 0x06, `REP 0x${second[1]!.toString(16)}`);
        const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
        assert.equal(record.reason, 'bind-failed');
        assert.match(record.error ?? '', /^BIND: no connection within 300 ms of the client shutting its side/);
        assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
      } finally {
        client.destroy();
      }
    });
  }

  test('the places of abandoned BINDs are free again: a client at limits.sessionsPerClient can connect', opts, async () => {
    const abandoned = await Promise.all([0, 1].map(async () => {
      const client = await RawClient.connect(proxy.port);
      client.socket.end(socks5Bind('127.0.0.1'));
      await client.read(12);
      return client;
    }));
    await within(Promise.all(abandoned.map((c) => proxy.record((r) => r.clientPort === c.localPort))), 5000, 'both records');
    const next = await RawClient.connect(proxy.port);
    try {
      next.write(hex('05 01 00'));
      assert.deepEqual(await within(next.read(2), 5000, 'the method reply'), hex('05 00'), 'a place was free: the greeting was answered');
    } finally {
      next.destroy();
      for (const c of abandoned) c.destroy();
    }
  });
});

describe('BIND and request rules denying a network: the peer that connects is decided too', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({
      listen: [{ address: '127.0.0.1', port: 0, socks4: true }],
      rules: [{ name: 'no-bind-from-dot-two', deny: { commands: ['bind'], to: { nets: ['127.0.0.2/32'] } } }, { name: 'rest', allow: {} }],
    });
  });
  after(() => proxy.close());

  test('SOCKS5 BIND 0.0.0.0 (any peer): a peer from the denied network is turned away, one from elsewhere is taken', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks5Bind('0.0.0.0'));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const announced = socks5ReplyAddress(await client.read(10));
      const denied = await appConnect(announced.host, announced.port, '127.0.0.2');
      await within(closed(denied), 5000, 'the proxy to close the denied peer');
      const app = await appConnect(announced.host, announced.port, '127.0.0.3');
      const appPort = app.localPort!;
      try {
        const second = await within(client.read(10), 5000, 'the second BIND reply');
        assert.deepEqual(second.subarray(0, 3), hex('05 00 00'));
        assert.deepEqual(socks5ReplyAddress(second), { host: '127.0.0.3', port: appPort });
      } finally {
        app.destroy();
      }
      await client.readToEnd();
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.connected, `127.0.0.3:${appPort}`);
    } finally {
      client.destroy();
    }
  });

  test('SOCKS4 BIND 0.0.0.0: a peer from the denied network ends the BIND with 0x5B, the rule named', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks4Bind('0.0.0.0'));
      const first = await client.read(8);
      assert.equal(first[1], SOCKS4_GRANTED);
      const announced = socks4ReplyAddress(first);
      const denied = await appConnect(announced.host, announced.port, '127.0.0.2');
      await within(closed(denied), 5000, 'the proxy to close the denied peer');
      const second = await client.read(8);
      assert.equal(second[1], SOCKS4_REJECTED);
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.error, 'BIND: connection from 127.0.0.2, denied by rule "no-bind-from-dot-two"');
    } finally {
      client.destroy();
    }
  });
});

describe('BIND with bind.acceptFrom: any', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ bind: { acceptFrom: 'any' } });
  });
  after(() => proxy.close());

  test('a peer from an address other than the requested one is accepted', opts, async () => {
    const session = startBind(proxy, 5, '127.0.0.2');
    const bound = await within(session.bound, 5000, 'the first BIND reply');
    const app = await appConnect(bound.host, bound.port, '127.0.0.1');
    const appPort = app.localPort!;
    try {
      const { remoteHost, socket } = await within(session.established, 5000, 'the second BIND reply');
      assert.deepEqual(remoteHost, { host: '127.0.0.1', port: appPort });
      const atClient = readBytes(socket, 3);
      app.write('any');
      assert.equal((await within(atClient, 5000, 'bytes at the client')).toString(), 'any');
      socket.destroy();
      const record = await within(proxy.record((r) => r.clientPort === session.controlPort()), 5000, 'the session record');
      assert.equal(record.requested, '127.0.0.2:0');
      assert.equal(record.connected, `127.0.0.1:${appPort}`);
      assert.equal(record.bytesDown, 3);
    } finally {
      app.destroy();
    }
  });
});

describe('BIND naming the application server by name', opts, () => {
  let proxy: RunningProxy;
  const resolver: Resolver = {
    async resolve(name) {
      if (name === 'app.test') return [{ address: '127.0.0.2', family: 4 }];
      // The same peer as a resolver of the library's user may spell it.
      if (name === 'mapped.test') return [{ address: '0:0:0:0:0:ffff:7f00:2', family: 6 }];
      // IPv6 first: a SOCKS4 reply can carry only the IPv4 one.
      if (name === 'both.test') return [{ address: '::1', family: 6 }, { address: '127.0.0.2', family: 4 }];
      if (name === 'six.test') return [{ address: '::1', family: 6 }];
      if (name === 'slow.test') return new Promise(() => {}); // never answers
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
    },
  };
  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }], resolver });
  });
  after(() => proxy.close());

  for (const [type, name] of [[5, 'app.test'], [4, 'app.test'], [5, 'mapped.test'], [4, 'both.test']] as const) {
    test(`SOCKS${type === 5 ? '5' : '4a'}: the name's addresses are the expected peers (${name})`, opts, async () => {
      const session = startBind(proxy, type, name);
      const bound = await within(session.bound, 5000, 'the first BIND reply');
      assert.notEqual(bound.host, '0.0.0.0');
      if (type === 5) {
        // SOCKS5 turns a stray away and waits on; SOCKS4 would end the BIND.
        const stray = await appConnect(bound.host, bound.port, '127.0.0.1');
        await within(closed(stray), 5000, 'the proxy to close the stray connection');
      }
      const app = await appConnect(bound.host, bound.port, '127.0.0.2');
      const appPort = app.localPort!;
      try {
        const { remoteHost, socket } = await within(session.established, 5000, 'the second BIND reply');
        assert.deepEqual(remoteHost, { host: '127.0.0.2', port: appPort });
        const atApp = readBytes(app, 4);
        socket.write('name');
        assert.equal((await within(atApp, 5000, 'bytes at the app server')).toString(), 'name');
        socket.destroy();
        const record = await within(proxy.record((r) => r.clientPort === session.controlPort()), 5000, 'the session record');
        assert.equal(record.version, type);
        assert.equal(record.requested, `${name}:0`);
        assert.equal(record.connected, `127.0.0.2:${appPort}`);
        assert.equal(record.bytesUp, 4);
      } finally {
        app.destroy();
      }
    });
  }

  test('SOCKS4a: a name with IPv6 addresses only is refused with 0x5B (its reply could not name the listener)', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(Buffer.concat([hex('04 02 0000 00000001 00'), Buffer.from('six.test\0')]));
      const reply = await within(client.read(8), 5000, 'the reply');
      assert.equal(reply[1], SOCKS4_REJECTED);
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.match(String(record.error), /no IPv4 address/);
    } finally {
      client.destroy();
    }
  });

  test('a name whose lookup never answers: REP 0x06 after timeouts.connect, as for CONNECT', opts, async () => {
    const brief = await startProxy({ resolver, timeouts: { connect: 300, bind: 60_000 } });
    try {
      const client = await RawClient.connect(brief.port);
      const name = Buffer.from('slow.test');
      client.write(Buffer.concat([hex('05 01 00 05 02 00 03'), Buffer.from([name.length]), name, hex('00 00')]));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const reply = await within(client.read(4), 5000, 'the failure reply');
      assert.equal(reply[1], 0x06, `REP 0x${reply[1]!.toString(16)}`);
      const record = await within(brief.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      client.destroy();
    } finally {
      await brief.close();
    }
  });

  test('SOCKS5: a name that does not resolve is refused with REP 0x04 (host unreachable), reason bind-failed', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      const name = Buffer.from('nowhere.test');
      client.write(Buffer.concat([hex('05 01 00 05 02 00 03'), Buffer.from([name.length]), name, hex('00 00')]));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const reply = await client.read(4);
      assert.equal(reply[0], 5);
      assert.equal(reply[1], 0x04, `REP 0x${reply[1]!.toString(16)}`);
      await within(client.readToEnd(), 5000, 'the proxy to close');
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.reply, 0x04);
    } finally {
      client.destroy();
    }
  });
});

describe('BIND timeout', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ listen: [{ address: '127.0.0.1', port: 0, socks4: true }], timeouts: { bind: 200 } });
  });
  after(() => proxy.close());

  test('SOCKS5: no peer within timeouts.bind gives a second reply REP 0x06, reason bind-failed, listener closed', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks5Bind('127.0.0.1'));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const first = await client.read(10);
      assert.deepEqual(first.subarray(0, 3), hex('05 00 00'));
      const announced = socks5ReplyAddress(first);
      const second = await within(client.read(10), 10_000, 'the failure reply');
      assert.equal(second[0], 5);
      assert.equal(second[1], 0x06, `REP 0x${second[1]!.toString(16)}`);
      await within(client.readToEnd(), 10_000, 'the proxy to close');
      const record: SessionRecord = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.version, 5);
      assert.equal(record.command, 'bind');
      assert.equal(record.reply, 0x06);
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.connected, null);
      assert.equal(record.bytesUp, 0);
      assert.equal(record.bytesDown, 0);
      assert.ok(await refusesConnections(announced.host, announced.port), 'the BIND listener is closed');
    } finally {
      client.destroy();
    }
  });

  test('SOCKS4: no peer within timeouts.bind gives a second reply 0x5B', opts, async () => {
    const client = await RawClient.connect(proxy.port);
    try {
      client.write(socks4Bind('127.0.0.1'));
      assert.equal((await client.read(8))[1], SOCKS4_GRANTED);
      const second = await within(client.read(8), 10_000, 'the failure reply');
      assert.equal(second[1], SOCKS4_REJECTED);
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.reason, 'bind-failed');
      assert.equal(record.reply, SOCKS4_REJECTED);
    } finally {
      client.destroy();
    }
  });

  test('SOCKS5 via the npm client: the timeout is reported as a rejected incoming connection', opts, async () => {
    const session = startBind(proxy, 5, '127.0.0.1');
    await within(session.bound, 5000, 'the first BIND reply');
    const err = await within(session.failed, 10_000, 'the client error');
    assert.match(err.message, /TTLExpired/);
    const record = await within(proxy.record((r) => r.clientPort === session.controlPort()), 5000, 'the session record');
    assert.equal(record.reason, 'bind-failed');
  });
});

describe('BIND on an IPv6 listener', opts, () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ listen: [{ address: '::1', port: 0 }] });
  });
  after(() => proxy.close());

  test('BIND [::1]: announced ::1, the peer from ::1 is named in the second reply', opts, async () => {
    const client = await RawClient.connect(proxy.port, '::1');
    try {
      const ipv6 = Buffer.alloc(16);
      ipv6[15] = 1;
      client.write(Buffer.concat([hex('05 01 00 05 02 00 04'), ipv6, hex('00 00')]));
      assert.deepEqual(await client.read(2), hex('05 00'));
      const first = await client.read(22);
      assert.deepEqual(first.subarray(0, 4), hex('05 00 00 04'));
      assert.deepEqual(first.subarray(4, 20), ipv6);
      const port = first.readUInt16BE(20);
      const app = await appConnect('::1', port);
      const appPort = app.localPort!;
      try {
        const second = await client.read(22);
        assert.deepEqual(second.subarray(0, 4), hex('05 00 00 04'));
        assert.deepEqual(second.subarray(4, 20), ipv6);
        assert.equal(second.readUInt16BE(20), appPort);
        const atApp = readBytes(app, 2);
        client.write(Buffer.from('v6')); // a string would be read as hex
        assert.equal((await within(atApp, 5000, 'bytes at the app server')).toString(), 'v6');
      } finally {
        app.destroy();
      }
      await client.readToEnd();
      const record = await within(proxy.record((r) => r.clientPort === client.localPort), 5000, 'the session record');
      assert.equal(record.connected, `[::1]:${appPort}`);
      assert.equal(record.bytesUp, 2);
    } finally {
      client.destroy();
    }
  });
});
