/**
 * Relays bytes between the client and the destination: backpressure, half-close
 * (each side's FIN is passed on, the other direction keeps flowing), an idle
 * timeout, and a reset passed on as a reset so the far side never mistakes a
 * failure for a clean end.
 *
 * Two engines keep those promises. `splice` (./splice.ts) moves bytes in the
 * kernel through the native addon when it is built; `stream` uses Node's
 * `pipe`. Nothing here runs per chunk except Node's own stream machinery; byte
 * counts come from the sockets' counters (and the addon's) when the relay ends:
 * for `stream`, what reached the kernel (see SentBytes).
 */
import type { Socket } from 'node:net';
import type { CloseReason } from '../observe/events.js';
import { spliceRelay } from './splice.js';

export type RelayEngine = 'splice' | 'stream';

export interface RelayEnd {
  readonly reason: CloseReason;
  readonly error: Error | null;
  /** Payload bytes client → destination, early bytes included. */
  readonly bytesUp: number;
  /** Payload bytes destination → client. */
  readonly bytesDown: number;
  readonly engine: RelayEngine;
}

export interface RelayOptions {
  readonly idleMs: number;
  /** Bytes the client sent after its request, to deliver before anything else. */
  readonly firstChunk?: Buffer;
  /** `splice` falls back to `stream` for sockets it cannot take (default `stream`). */
  readonly engine?: RelayEngine;
  readonly onEnd: (end: RelayEnd) => void;
}

/** A running relay. */
export interface Relay {
  /** Ends both sides now (server shutdown); onEnd follows. */
  close(): void;
}

export function relay(client: Socket, destination: Socket, options: RelayOptions): Relay {
  client.setNoDelay(true);
  destination.setNoDelay(true);
  if (options.engine === 'splice') {
    const spliced = spliceRelay(client, destination, options);
    if (spliced) return spliced;
  }
  return streamRelay(client, destination, options);
}

function streamRelay(client: Socket, destination: Socket, options: RelayOptions): Relay {
  let reason: CloseReason | null = null;
  let error: Error | null = null;
  let open = 2;
  const toClient = new SentBytes(client);
  const toDestination = new SentBytes(destination);
  /** Every way the relay or Node destroys a socket before it is done comes here first. */
  const settle = () => {
    toClient.settle();
    toDestination.settle();
  };

  const fail = (why: CloseReason, err: Error | null, other: Socket) => {
    // Node has destroyed the failed socket; its handle still holds what it
    // could not send, until the handle closes after this event.
    settle();
    // A failure after a half-close still ends the session, and bytes may
    // have been lost with it: the record names it, as the splice relay's does.
    if (stillOpen(reason)) {
      reason = why;
      error = err;
    }
    // Pass a failure on as a reset: a FIN would tell the other side all went well.
    if (!other.destroyed) other.resetAndDestroy();
  };
  const closed = () => {
    if (--open > 0) return;
    options.onEnd({
      reason: reason ?? 'client-closed',
      error,
      bytesUp: toDestination.total(),
      bytesDown: toClient.total(),
      engine: 'stream',
    });
  };

  client.on('error', (err) => fail('client-error', err, destination));
  destination.on('error', (err) => fail('destination-error', err, client));
  // A client that half-closed during the handshake has no 'end' left to emit (pipe() passes its FIN on).
  if (client.readableEnded) reason = 'client-closed';
  else client.once('end', () => { reason ??= 'client-closed'; });
  destination.once('end', () => { reason ??= 'destination-closed'; });
  client.once('close', closed);
  destination.once('close', closed);

  if (options.idleMs > 0) {
    const idle = () => {
      if (stillOpen(reason)) reason = 'idle-timeout';
      settle();
      client.destroy();
      destination.destroy();
    };
    client.setTimeout(options.idleMs, idle);
    destination.setTimeout(options.idleMs, idle);
  }

  if (options.firstChunk && options.firstChunk.length > 0) destination.write(options.firstChunk);
  client.pipe(destination);
  destination.pipe(client);
  return {
    close() {
      settle();
      destination.destroy();
      client.destroy();
    },
  };
}

/** The counters of libuv's stream handle behind a Socket (Node internals). */
interface WriteCounters {
  /** Bytes handed to libuv. */
  readonly bytesWritten: number;
  /** Of those, bytes libuv still holds because the kernel's send buffer was full. */
  readonly writeQueueSize: number;
}

/**
 * The bytes a relay wrote to one socket that reached the kernel, as the
 * splice relay counts them. `socket.bytesWritten` also counts what still
 * waits in Node's writable buffer and in libuv's write queue, and destroying
 * the socket drops both: when the proxy ends a session whose reader stalled
 * (idle timeout, shutdown, a reset passed on) that is up to a read (64 KiB)
 * plus the high-water mark the reader never gets. So the count is taken from
 * the handle when the socket is destroyed early (the handle is gone after
 * 'close'); a socket that closed normally had everything sent.
 */
class SentBytes {
  readonly #socket: Socket;
  readonly #handle: WriteCounters | null;
  /** What the socket had written before the relay (the handshake's replies). */
  readonly #before: number;
  #settled: number | null = null;

  constructor(socket: Socket) {
    this.#socket = socket;
    this.#handle = writeCounters(socket);
    this.#before = socket.bytesWritten;
  }

  /** Call before the socket is destroyed early, or as soon as it failed; only the first call counts. */
  settle(): void {
    if (this.#settled !== null || this.#socket.writableFinished) return;
    const handle = this.#handle;
    // Without libuv's counters, the writes Node saw complete (a partly sent one is left out).
    this.#settled = handle ? handle.bytesWritten - handle.writeQueueSize : this.#socket.bytesWritten - this.#socket.writableLength;
  }

  total(): number {
    // Never below 0: a handshake reply still queued when the session ended was not sent either.
    return Math.max(0, (this.#settled ?? this.#socket.bytesWritten) - this.#before);
  }
}

function writeCounters(socket: Socket): WriteCounters | null {
  const handle = (socket as unknown as { _handle?: Partial<WriteCounters> | null })._handle;
  if (!handle || typeof handle.bytesWritten !== 'number' || typeof handle.writeQueueSize !== 'number') return null;
  return handle as WriteCounters;
}

/**
 * Nothing has ended the session yet, or only one side's FIN has: it goes on
 * in the other direction until that ends too, fails or idles out, and a
 * failure or a timeout is then what the record names.
 */
function stillOpen(reason: CloseReason | null): boolean {
  return reason === null || reason === 'client-closed' || reason === 'destination-closed';
}
