/**
 * Relays bytes between the client and the destination: backpressure through
 * `pipe`, half-close (each side's FIN is passed on, the other direction keeps
 * flowing), an idle timeout, and a reset passed on as a reset so the far side
 * never mistakes a failure for a clean end.
 *
 * Nothing here runs per chunk except Node's own stream machinery; byte counts
 * come from the sockets' counters when the relay ends.
 */
import type { Socket } from 'node:net';
import type { CloseReason } from '../observe/events.js';

export interface RelayEnd {
  readonly reason: CloseReason;
  readonly error: Error | null;
}

export interface RelayOptions {
  readonly idleMs: number;
  /** Bytes the client sent after its request, to deliver before anything else. */
  readonly firstChunk?: Buffer;
  readonly onEnd: (end: RelayEnd) => void;
}

export function relay(client: Socket, destination: Socket, options: RelayOptions): void {
  let reason: CloseReason | null = null;
  let error: Error | null = null;
  let open = 2;

  const fail = (why: CloseReason, err: Error | null, other: Socket) => {
    if (reason === null) {
      reason = why;
      error = err;
    }
    // Pass a failure on as a reset: a FIN would tell the other side all went well.
    if (!other.destroyed) other.resetAndDestroy();
  };
  const closed = () => {
    if (--open === 0) options.onEnd({ reason: reason ?? 'client-closed', error });
  };

  client.on('error', (err) => fail('client-error', err, destination));
  destination.on('error', (err) => fail('destination-error', err, client));
  client.once('end', () => { reason ??= 'client-closed'; });
  destination.once('end', () => { reason ??= 'destination-closed'; });
  client.once('close', closed);
  destination.once('close', closed);

  if (options.idleMs > 0) {
    const idle = () => {
      reason ??= 'idle-timeout';
      client.destroy();
      destination.destroy();
    };
    client.setTimeout(options.idleMs, idle);
    destination.setTimeout(options.idleMs, idle);
  }

  client.setNoDelay(true);
  destination.setNoDelay(true);
  if (options.firstChunk && options.firstChunk.length > 0) destination.write(options.firstChunk);
  client.pipe(destination);
  destination.pipe(client);
}
