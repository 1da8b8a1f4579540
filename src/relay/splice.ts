/**
 * The zero-copy relay: hands both sockets' descriptors to the native addon
 * (native/splice.c), which moves bytes with splice(2) on its own thread, so
 * payload never crosses into JavaScript. This module only does the handover
 * and turns the addon's report into a RelayEnd.
 *
 * The handover keeps the stream relay's promises: bytes already read by Node
 * (early client data, a destination that spoke first) are written out first,
 * and the descriptors change hands only once every one of Node's writes on
 * them has completed, and succeeded: a write that failed (a destination that
 * reset as it accepted) ends the session here, as the stream relay ends it,
 * and the addon never sees the pair. Node destroys a socket whose write
 * failed, closing its descriptor, so a pair handed over before that would
 * hold a descriptor the kernel can give to the next connection. JavaScript
 * keeps owning the descriptors and closes them only after the addon reported
 * the pair's end, so a descriptor number is never reused under the relay
 * thread.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { getSystemErrorName } from 'node:util';
import { throwLater } from '../callbacks.js';
import type { CloseReason } from '../observe/events.js';
import { peerAddress } from '../protocol/address.js';
import type { Relay, RelayOptions } from './tcp.js';

export interface Addon {
  /** ADDON_INTERFACE in native/splice.c; absent in builds from before it. */
  readonly interfaceVersion?: number;
  init(dispatch: (...report: Report) => void): void;
  start(id: number, clientFd: number, destinationFd: number, idleMs: number): object;
  cancel(handle: object): void;
  stats(): SpliceStats;
  // Native handshakes (server/native.ts).
  nativeInit(dispatch: (...message: NativeMessage) => void): void;
  listen(fd: number, tag: number, settings: Buffer, gate: object | null): object;
  /**
   * A server's session count, shared with the relay thread: the handle for
   * listen(), and an ArrayBuffer whose Int32 [0] JavaScript keeps at its
   * sessions, [1] at their limit (INT32_MAX: none), [2] the relay thread at
   * those accepted and not yet told (read only here), and [3] JavaScript at
   * the limit per client (INT32_MAX: none).
   */
  sessionGate(): [object, ArrayBuffer];
  /** A session that took a slot of its client's (MSG_OPEN's n4) is over. */
  releaseClient(gate: object, address: string): void;
  configure(listener: object, settings: Buffer): void;
  unlisten(listener: object): void;
  answer(session: object, goOn: boolean, rememberAs: number): void;
  /**
   * After a decide for a name: the addresses to race (17 bytes each: the
   * family, 4 or 6, then 16 bytes, an IPv4 address in the first 4; at most
   * NATIVE_DIAL_ADDRESSES), the rule that allowed it (-1: no rules), the
   * delay before the next address while one is pending, and how long the
   * relay thread may dial the same request (client, name, port, user) from
   * this answer without a decide (0: not at all; the resolver's reuseMs).
   * Forgotten on a reload, and when a race over it fails.
   */
  dial(session: object, addresses: Buffer, rule: number, attemptDelayMs: number, reuseMs: number): void;
  /** SipHash-2-4 of `data` under a 16-byte key, as the relay thread keys its remembered verdicts (for tests). */
  siphash(key: Buffer, data: Buffer): Buffer;
  /** A TCP socket on address:port with SO_REUSEPORT, listening unless backlog < 0: [fd, port], or [-errno, 0]. */
  bindReusePort(address: string, port: number, backlog: number): [number, number];
  /** How long the relay thread polls for events before it sleeps, in microseconds; 0: off. */
  busyPoll(microseconds: number): void;
  /** How many pipes the relay thread may hold open besides the sessions' two descriptors each (-1: no account kept). */
  pipeAllowance(pipes: number): void;
  /** Pipes open past that allowance: each holds a session's place. */
  borrowedPipes(): number;
  /** A TCP socket's peer, also after a reset closed it (SO_PEERNAME): [address, port], or null. */
  peerName(fd: number): [string, number] | null;
}

/** type, id, handle (open only), ten numbers, and the client's address (open) or the bytes concerned. */
export type NativeMessage = [
  number, number, object | undefined,
  number, number, number, number, number, number, number, number, number, number,
  Buffer | string,
];

/** id, bytes client→destination, bytes destination→client, how it ended, who sent FIN first, failing side, errno. */
type Report = [number, number, number, number, number, number, number];

const enum End {
  CLOSED = 0,
  ERROR = 1,
  IDLE = 2,
  CANCELLED = 3,
}

/** An error as Node reports a failed system call (`connect ECONNREFUSED 127.0.0.1:9`), from the addon's positive errno. */
export function errnoError(syscall: string, errno: number, where = ''): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`${syscall} ${code}${where ? ` ${where}` : ''}`), { code, errno: -errno, syscall });
}

/** How a spliced pair ended, from the addon's report: the close reason and the error, if one. */
export function spliceEnd(end: number, firstEof: number, errorSide: number, errno: number): { reason: CloseReason; error: Error | null } {
  switch (end) {
    case End.CLOSED:
      return { reason: firstEof === 1 ? 'destination-closed' : 'client-closed', error: null };
    case End.ERROR:
      // errorSide < 0: the relay's own failure (no epoll slot; without a pipe it goes on, see native/splice.c).
      return { reason: errorSide < 0 ? 'relay-error' : errorSide === 1 ? 'destination-error' : 'client-error', error: errnoError('splice', errno) };
    case End.IDLE:
      return { reason: 'idle-timeout', error: null };
    default:
      return { reason: 'shutdown', error: null };
  }
}

/**
 * Wraps a function the addon calls on the main thread. A throw out of an
 * addon's callback is not an ordinary uncaught exception: Node 20 swallows it
 * with a deprecation warning (DEP0168), and the rest of the addon's batch
 * fails because an exception is pending. So it is caught here and thrown
 * again on the next tick, where it reaches 'uncaughtException' as any other
 * would, after the batch is done.
 */
export function fromAddon<A extends unknown[]>(callback: (...args: A) => void): (...args: A) => void {
  return (...args) => {
    try {
      callback(...args);
    } catch (error) {
      throwLater(error);
    }
  };
}

/** The part of libuv's stream handle the handover needs (Node internals, stable since Node 0.x). */
interface StreamHandle {
  readonly fd: number;
  reading?: boolean;
  readStop(): number;
}

/**
 * The addon interface this code speaks (ADDON_INTERFACE in native/splice.c,
 * raised together). A file built from other sources is refused, not misread.
 */
const ADDON_INTERFACE = 15;

/** The most addresses of a name the relay thread races (DIAL_ADDRESSES_MAX in native/splice.c). */
export const NATIVE_DIAL_ADDRESSES = 64;

const DEFAULT_ADDON = fileURLToPath(new URL('../../../build/socksgate_splice.node', import.meta.url));

let loaded: { readonly addon: Addon } | { readonly why: string } | undefined;
const pending = new Map<number, (report: Report) => void>();
let nextId = 1;

/**
 * Loads the addon once. `SOCKSGATE_SPLICE_ADDON` names another file, or
 * `off` to act as if it was never built.
 */
function load(): { readonly addon: Addon } | { readonly why: string } {
  if (loaded) return loaded;
  const path = process.env.SOCKSGATE_SPLICE_ADDON || DEFAULT_ADDON;
  try {
    if (path === 'off') throw new Error('switched off by SOCKSGATE_SPLICE_ADDON=off');
    if (process.platform !== 'linux') throw new Error('splice(2) is Linux-only');
    const addon = createRequire(import.meta.url)(path) as Addon;
    if (addon.interfaceVersion !== ADDON_INTERFACE) {
      const built = addon.interfaceVersion === undefined ? 'an older build with no interface version' : `interface ${addon.interfaceVersion}`;
      throw new Error(`${path} was built from other sources (${built}; this socksgate needs interface ${ADDON_INTERFACE}): rebuild it with node scripts/build-native.mjs`);
    }
    addon.init(fromAddon((...report: Report) => {
      const done = pending.get(report[0]);
      pending.delete(report[0]);
      done?.(report);
    }));
    loaded = { addon };
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' ? `${path} was not built (npm install builds it when a C compiler is present)` : (err as Error).message;
    loaded = { why };
  }
  return loaded;
}

/** Why the splice relay cannot run here, or null when it can. */
export function spliceUnavailable(): string | null {
  const state = load();
  return 'why' in state ? state.why : null;
}

/** The addon's counters since the process started. */
export interface SpliceStats {
  readonly pipesCreated: number;
  /** Pipes open now, in flows and in the pool. */
  readonly pipesOpen: number;
  /** Pairs started from JavaScript (Node sessions) and not yet reported ended. */
  readonly activePairs: number;
  /** Connections the relay thread accepted (native handshakes). */
  readonly nativeAccepted: number;
  /** Of those, how many were handed over to a Node session. */
  readonly nativeHandedOver: number;
  /** Bytes relayed by copying through a small buffer (request/response traffic) rather than spliced. */
  readonly bytesCopied: number;
  /** Busy polls (relay.busyPollMicroseconds) that found events, so that the relay thread did not have to sleep. */
  readonly busyPollHits: number;
  /** UDP datagrams the relay thread sent itself, both ways (relay/native-udp.ts). */
  readonly udpNativeDatagrams: number;
  /** Client datagrams it handed to JavaScript instead: a destination name, a fragment, a malformed header. */
  readonly udpHandedOver: number;
  /** Distinct RFC 1929 usernames the live native sessions hold: the sessions of one user share one copy. */
  readonly usernames: number;
  /** How often the relay thread looks for passed deadlines: a quarter of the shortest live timeout, at most 1,000 ms. */
  readonly scanIntervalMs: number;
}

/** The loaded addon, or null when it cannot be used here. */
export function spliceAddon(): Addon | null {
  const state = load();
  return 'addon' in state ? state.addon : null;
}

/** Busy-poll windows asked for, by the server asking; the relay thread, one per process, uses the longest. */
const busyPollWanted = new Map<object, number>();

/**
 * Asks the relay thread to poll for `microseconds` before it sleeps (0
 * withdraws the request). Several servers in one process share the thread:
 * the longest window any of them wants applies.
 */
export function requestBusyPoll(owner: object, microseconds: number): void {
  if (microseconds > 0) busyPollWanted.set(owner, microseconds);
  else busyPollWanted.delete(owner);
  spliceAddon()?.busyPoll(Math.max(0, ...busyPollWanted.values()));
}

/** Pipes the relay thread holds past its allowance, each in a session's place (0 without the addon). */
export function borrowedPipes(): number {
  return spliceAddon()?.borrowedPipes() ?? 0;
}

/** Counters from the addon, for tests and diagnostics; null when it is not loaded. */
export function spliceStats(): SpliceStats | null {
  const state = load();
  return 'addon' in state ? state.addon.stats() : null;
}

/**
 * The client of a connection reset before Node's listener accepted it: Node
 * asks getpeername(2), which fails once a reset closed the socket, so its
 * remoteAddress is undefined; the kernel still has the address, and the
 * addon reads it. Null without the addon, or when the kernel has none.
 */
export function peerAfterReset(socket: Socket): { readonly address: string; readonly port: number } | null {
  const addon = spliceAddon();
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (!addon || typeof fd !== 'number' || fd < 0) return null;
  const peer = addon.peerName(fd);
  return peer && { address: peerAddress(peer[0]), port: peer[1] };
}

function streamHandle(socket: Socket): StreamHandle | null {
  const handle = (socket as unknown as { _handle?: Partial<StreamHandle> | null })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') return null;
  return handle as StreamHandle;
}

/** Stops Node from reading and returns what it had read but nobody consumed. */
function takeOver(socket: Socket, handle: StreamHandle): Buffer[] {
  socket.pause();
  const unread: Buffer[] = [];
  // read() may ask libuv to start reading again; that only takes effect on a
  // later turn of the event loop, and readStop below comes first.
  for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null; ) unread.push(chunk);
  handle.readStop();
  handle.reading = false;
  return unread;
}

/**
 * Calls back once every write so far has completed: with null when the kernel
 * has all of it, or with the write's failure. A write that fails at once
 * (ECONNRESET from a socket the peer already reset) leaves nothing queued,
 * so `writableLength` is 0 then too; only `errored` tells, because Node
 * emits the error and destroys the socket on the next tick.
 */
function whenFlushed(socket: Socket, done: (error: Error | null) => void): void {
  if (socket.writableLength === 0) done(socket.errored);
  else socket.write(Buffer.alloc(0), (err) => done(socket.errored ?? err ?? null));
}

/**
 * Starts the splice relay, or returns null when these sockets cannot be
 * spliced (the caller then uses the stream relay).
 */
export function spliceRelay(client: Socket, destination: Socket, options: RelayOptions): Relay | null {
  const state = load();
  if (!('addon' in state)) return null;
  const addon = state.addon;
  const clientHandle = streamHandle(client);
  const destinationHandle = streamHandle(destination);
  if (!clientHandle || !destinationHandle || client.destroyed || destination.destroyed) return null;

  const clientWrittenBefore = client.bytesWritten;
  const toDestination = takeOver(client, clientHandle);
  const toClient = takeOver(destination, destinationHandle);
  if (options.firstChunk && options.firstChunk.length > 0) toDestination.unshift(options.firstChunk);

  const id = nextId++;
  let handle: object | null = null;
  let ended = false;
  let cancelled = false;
  let failure: { reason: CloseReason; error: Error } | null = null;

  const finish = (reason: CloseReason, error: Error | null, up: number, down: number) => {
    if (ended) return;
    ended = true;
    options.onEnd({
      reason,
      error,
      bytesUp: destination.bytesWritten + up,
      bytesDown: client.bytesWritten - clientWrittenBefore + down,
      engine: 'splice',
    });
  };

  const failed = (side: 'client' | 'destination', err: Error) => {
    failure ??= { reason: side === 'client' ? 'client-error' : 'destination-error', error: err };
  };
  // Node is not reading or writing these sockets while the addon has them
  // (the pair is handed over only after all of Node's writes succeeded), so
  // errors are not expected then; one during the handover ends the session.
  // Should one come all the same, Node has closed that descriptor: the pair
  // is cancelled at once, so that the session ends with the failure instead
  // of waiting for the idle timeout, and the relay thread lets go of it.
  const onError = (side: 'client' | 'destination') => (err: Error) => {
    failed(side, err);
    if (handle === null) abandon();
    else if (!cancelled) {
      cancelled = true;
      addon.cancel(handle);
    }
  };
  client.on('error', onError('client'));
  destination.on('error', onError('destination'));

  const abandon = () => {
    if (ended) return;
    if (failure?.reason === 'relay-error') {
      client.resetAndDestroy();
      destination.resetAndDestroy();
    }
    const other = failure?.reason === 'client-error' ? destination : client;
    if (!other.destroyed) other.resetAndDestroy();
    client.destroy();
    destination.destroy();
    finish(failure?.reason ?? 'shutdown', failure?.error ?? null, 0, 0);
  };

  const onReport = ([, up, down, end, firstEof, errorSide, errno]: Report) => {
    // A failure Node saw (see onError) is what ended the pair, not the cancel.
    const { reason, error } = failure ?? spliceEnd(end, firstEof, errorSide, errno);
    if (reason === 'relay-error') {
      // The relay's own failure: neither side may think all went well.
      client.resetAndDestroy();
      destination.resetAndDestroy();
    } else if (reason === 'client-error' || reason === 'destination-error') {
      // A failure is passed on as a reset, as the stream relay does.
      (reason === 'client-error' ? destination : client).resetAndDestroy();
    }
    client.destroy();
    destination.destroy();
    finish(reason, error, up, down);
  };

  const handOver = () => {
    if (ended) return;
    if (cancelled || failure || client.destroyed || destination.destroyed) return abandon();
    // Only once Node has nothing queued and nothing failed: from here the descriptors are the relay thread's to use.
    pending.set(id, onReport);
    try {
      handle = addon.start(id, clientHandle.fd, destinationHandle.fd, options.idleMs);
    } catch (err) {
      pending.delete(id); // the addon refused the pair outright: nothing was moved
      failure = { reason: 'relay-error', error: err as Error };
      abandon();
    }
  };

  // What Node read before the handover goes out first, in order.
  for (const chunk of toDestination) destination.write(chunk);
  for (const chunk of toClient) client.write(chunk);
  // A write that failed ends the session here, with the error the stream
  // relay records for it (`write ECONNRESET`, destination-error), and the
  // other side is reset: the bytes did not all arrive, and nobody may think
  // they did.
  let waiting = 2;
  const flushed = (side: 'client' | 'destination') => (err: Error | null) => {
    if (err) failed(side, err);
    if (--waiting === 0) handOver();
  };
  whenFlushed(client, flushed('client'));
  whenFlushed(destination, flushed('destination'));

  return {
    close() {
      if (ended || cancelled) return;
      cancelled = true;
      if (handle !== null) addon.cancel(handle); // the report follows, then the sockets close
      else abandon(); // still handing over: the descriptors are Node's alone
    },
  };
}
