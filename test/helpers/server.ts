/**
 * Test fixtures: a real socksgate in-process on a loopback port 0, and the
 * small servers it connects to. Tests await events, never sleep.
 */
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, type Server, type Socket, createServer as createNetServer } from 'node:net';
import { passwordChecks } from '../../src/auth/bcrypt.js';
import { createServer, type ServerOptions, type SessionRecord, type SocksServer } from '../../src/index.js';

export interface RunningProxy {
  readonly server: SocksServer;
  readonly port: number;
  readonly host: string;
  /** Every session record so far, in order of closing. */
  readonly records: SessionRecord[];
  /** Resolves with the first record (past or future) that matches. */
  record(match?: (r: SessionRecord) => boolean): Promise<SessionRecord>;
  close(): Promise<void>;
}

/** Starts socksgate on 127.0.0.1:0 (unless `listen` is given) with the options. */
export async function startProxy(options: ServerOptions = {}): Promise<RunningProxy> {
  const server = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], ...options });
  const records: SessionRecord[] = [];
  const waiters: Array<{ match: (r: SessionRecord) => boolean; resolve: (r: SessionRecord) => void }> = [];
  server.on('session-close', (r) => {
    records.push(r);
    for (const w of [...waiters]) {
      if (w.match(r)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(r);
      }
    }
  });
  const [bound] = await server.listen();
  return {
    server,
    port: bound!.port,
    host: bound!.address,
    records,
    record(match = () => true) {
      const found = records.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => waiters.push({ match, resolve }));
    },
    close: () => server.close({ graceMs: 0 }),
  };
}

/**
 * Records closed from now on only: call before starting a client, then await
 * the returned function. A client port the kernel hands out again, or a
 * record left by an earlier test on the same proxy, cannot be mistaken for
 * this one.
 */
export function recordsFrom(proxy: RunningProxy): (match?: (r: SessionRecord) => boolean) => Promise<SessionRecord> {
  const start = proxy.records.length;
  return (match = () => true) => proxy.record((r) => proxy.records.indexOf(r) >= start && match(r));
}

export interface Fixture {
  readonly port: number;
  close(): Promise<void>;
}

/** An HTTP server answering every request with `body` (default "hello from http"). */
export async function startHttpServer(body = 'hello from http', host = '127.0.0.1'): Promise<Fixture> {
  const server = createHttpServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(body);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return fixture(server);
}

/** A TCP server that echoes every byte back, and ends when the client ends. */
export async function startEchoServer(host = '127.0.0.1'): Promise<Fixture> {
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return fixture(server);
}

/** A TCP server whose connection handler the test supplies. */
export async function startTcpServer(onConnection: (socket: Socket) => void, host = '127.0.0.1'): Promise<Fixture> {
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    onConnection(socket);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return fixture(server);
}

function fixture(server: Server): Fixture {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    port: (server.address() as AddressInfo).port,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** A loopback port with nothing listening on it (bound then released). */
export async function closedPort(): Promise<number> {
  const server = createNetServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Everything `socket` receives until its peer's FIN; then ends it in turn. */
export function receiveAll(socket: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => {
      resolve(Buffer.concat(chunks));
      socket.end();
    });
  });
}

/** Until no password check runs (a user store's hash for unknown names is made when it is built). */
export async function untilNoPasswordCheckRuns(): Promise<void> {
  for (let i = 0; i < 10_000 && passwordChecks().running > 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
}

/** Waits, a bounded while (5 s), for the server to catch up; the caller's checks say what was missing. */
export async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
}
