/**
 * BIND (RFC 1928 §4, SOCKS4 BIND): a listening socket for one inbound
 * connection from the application server, on the address the proxy uses
 * toward that server, so the address announced in the first reply is one the
 * server can reach (never 0.0.0.0 when a concrete address is known).
 */
import { createSocket } from 'node:dgram';
import { type Server, type Socket, createServer, isIP } from 'node:net';
import { SocksError } from '../errors.js';
import { type Destination, destination, isUnspecifiedAddress, unmappedAddress } from '../protocol/address.js';

/** Whether an inbound connection from `peer` is the one the request named. */
export type PeerCheck = 'requested' | 'any';

export interface BindWaitOptions {
  /**
   * The application server's addresses from the request, spelled as a
   * peer's socket spells its address (canonicalAddress); an unspecified one
   * (0.0.0.0, ::) accepts any peer.
   */
  readonly expectedPeers: readonly string[];
  readonly check: PeerCheck;
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
  /** SOCKS4 ends the session on a wrong peer (its spec says so); SOCKS5 turns the stray away and waits on. */
  readonly strayEndsWait: boolean;
  /**
   * Why the request rules refuse a peer the request would take, or null when
   * they allow it: a request naming any peer (0.0.0.0, `acceptFrom: any`)
   * must not bring in one the rules keep out. Refused peers are strays.
   */
  readonly refusal?: (peer: string) => string | null;
}

export class BindListener {
  readonly #server: Server;
  /** Inbound connections turned away because they came from the wrong address (count, and a few of their addresses for the log). */
  #strayCount = 0;
  readonly #strayAddresses = new Set<string>();

  /** An error the listening socket reported (an accept that failed), kept for the wait it ends. */
  #failure: Error | null = null;
  #onFailure: ((err: Error) => void) | null = null;

  private constructor(server: Server) {
    this.#server = server;
    // Without a listener an accept error would be thrown and end the process; it ends this BIND only.
    server.on('error', (err) => {
      this.#failure ??= err;
      this.#onFailure?.(err);
    });
  }

  /** Listens on `address`, any free port. */
  static async open(address: string): Promise<BindListener> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // exclusive: in a cluster worker (--workers) a shared listen goes through
      // the primary, which gives each worker's n-th port-0 listener the same
      // port and hands its connections round the workers: another session's
      // BIND would get the application server's connection.
      server.listen({ host: address, port: 0, backlog: 4, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new BindListener(server);
  }

  get address(): Destination {
    const info = this.#server.address();
    if (!info || typeof info === 'string') return destination('0.0.0.0', 0);
    return destination(info.address, info.port);
  }

  /** Waits for the one inbound connection; then stops listening. Rejects with a SocksError. */
  accept(options: BindWaitOptions): Promise<Socket> {
    const expected = options.expectedPeers;
    const anyPeer = options.check === 'any' || expected.some(isUnspecifiedAddress);
    return new Promise<Socket>((resolve, reject) => {
      const done = (err: SocksError | null, socket?: Socket) => {
        clearTimeout(timer);
        options.signal.removeEventListener('abort', onAbort);
        this.#server.off('connection', onConnection);
        this.#onFailure = null;
        this.close();
        if (socket) resolve(socket);
        else reject(err);
      };
      const onConnection = (socket: Socket) => {
        const peer = unmappedAddress(socket.remoteAddress ?? '');
        const named = anyPeer || expected.includes(peer);
        const refused = named ? options.refusal?.(peer) ?? null : null;
        if (named && refused === null) return done(null, socket);
        socket.destroy();
        this.#strayCount++;
        if (this.#strayAddresses.size < 8) this.#strayAddresses.add(peer); // bounded: strays may flood
        if (options.strayEndsWait) {
          const why = refused ?? `expected ${expected.join(' or ')}`;
          done(new SocksError('ERR_NOT_ALLOWED', `BIND: connection from ${peer}, ${why}`));
        }
      };
      // The session's own reason when it gives one (a bound on the wait); otherwise a plain abort.
      const onAbort = () => done(options.signal.reason instanceof SocksError ? options.signal.reason : new SocksError('ERR_GENERAL', 'BIND wait aborted'));
      const timer = setTimeout(
        () => done(new SocksError('ERR_CONNECT_TIMEOUT', `BIND: no connection within ${options.timeoutMs} ms${this.#strayNote()}`)),
        options.timeoutMs,
      );
      const onFailure = (err: Error) => done(new SocksError('ERR_GENERAL', `BIND: the listening socket failed: ${err.message}`));
      if (options.signal.aborted) return onAbort();
      if (this.#failure) return onFailure(this.#failure);
      this.#onFailure = onFailure;
      options.signal.addEventListener('abort', onAbort, { once: true });
      this.#server.on('connection', onConnection);
    });
  }

  close(): void {
    this.#server.close();
  }

  #strayNote(): string {
    return this.#strayCount ? ` (turned away ${this.#strayCount} from ${[...this.#strayAddresses].join(', ')})` : '';
  }
}

/**
 * The local address the kernel would use toward `host` (an IP literal; a
 * connected UDP socket sends nothing but knows its route), else `fallback`:
 * the address the client reached the proxy on.
 */
export async function addressToward(host: string, port: number, fallback: string): Promise<string> {
  try {
    if (isIP(host) === 0 || isUnspecifiedAddress(host)) return fallback;
    const family = isIP(host) === 6 ? 'udp6' : 'udp4';
    const probe = createSocket(family);
    try {
      await new Promise<void>((resolve, reject) => {
        probe.once('error', reject);
        probe.connect(port || 9, host, () => resolve());
      });
      const local = probe.address().address;
      return isUnspecifiedAddress(local) ? fallback : local;
    } finally {
      probe.close();
    }
  } catch {
    return fallback;
  }
}
