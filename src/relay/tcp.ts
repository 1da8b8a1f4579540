/**
 * Relays bytes between the client and the destination: backpressure, half-close
 * (each side's FIN is passed on, the other direction keeps flowing), an idle
 * timeout, and a reset passed on as a reset so the far side never mistakes a
 * failure for a clean end.
 *
 * Two engines keep those promises. `splice` (./splice.ts) moves bytes in the
 * kernel through the native addon when it is built; `stream` uses Node's
 * `pipe`. Nothing here runs per chunk except Node's own stream machinery; byte
 * counts come from the sockets' counters (and the addon's) when the relay ends.
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
  const clientWrittenBefore = client.bytesWritten;

  const fail = (why: CloseReason, err: Error | null, other: Socket) => {
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
      bytesUp: destination.bytesWritten,
      bytesDown: client.bytesWritten - clientWrittenBefore,
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
      destination.destroy();
      client.destroy();
    },
  };
}

/**
 * Nothing has ended the session yet, or only one side's FIN has: it goes on
 * in the other direction until that ends too, fails or idles out, and a
 * failure or a timeout is then what the record names.
 */
function stillOpen(reason: CloseReason | null): boolean {
  return reason === null || reason === 'client-closed' || reason === 'destination-closed';
}
