/**
 * One UDP association (RFC 1928 §7): a client-facing socket on the address
 * the client reached the proxy on, and outbound sockets (one per family,
 * opened on first use) toward destinations.
 *
 * Client → destination: only datagrams from the client's address (and port,
 * once known) are taken; the header is decoded, fragments are dropped, names
 * are resolved once per association, the payload is sent on.
 * Destination → client: the payload is wrapped in a header naming the sender.
 *
 * Everything is bounded: datagram size, datagrams waiting on a name lookup,
 * names cached; drops are counted, never queued without limit.
 */
import { type Socket as UdpSocket, createSocket } from 'node:dgram';
import { isIP } from 'node:net';
import { type Destination, destination, unmapIPv4 } from '../protocol/address.js';
import { decodeUdpHeader, encodeUdpDatagram } from '../protocol/udp.js';
import type { Resolver } from '../upstream/resolver.js';

export interface UdpLimits {
  /** Largest datagram taken from the client, header included, in bytes. */
  readonly maxDatagram: number;
  /** Datagrams held per association while names resolve. */
  readonly pendingDatagrams: number;
  /** Names cached per association. */
  readonly cachedNames: number;
}

export interface UdpCounters {
  datagramsUp: number;
  datagramsDown: number;
  bytesUp: number;
  bytesDown: number;
  /** Fragments (FRAG ≠ 0), which are not reassembled. */
  droppedFragments: number;
  /** From an address other than the client's. */
  droppedForeign: number;
  /** Malformed headers, oversized datagrams, full queues, failed lookups. */
  droppedInvalid: number;
}

export interface UdpAssociationOptions {
  /** Address to bind the client-facing socket on (where the client reached the proxy). */
  readonly bindAddress: string;
  /** The client's IP address: datagrams from elsewhere are dropped. */
  readonly clientAddress: string;
  /** The client's UDP port if it named one in its request; otherwise learned from its first datagram. */
  readonly clientPort: number | null;
  readonly resolver: Resolver;
  readonly limits: UdpLimits;
  /** No datagram either way for this long ends the association. */
  readonly idleMs: number;
  readonly onIdle: () => void;
}

export class UdpAssociation {
  readonly counters: UdpCounters = {
    datagramsUp: 0, datagramsDown: 0, bytesUp: 0, bytesDown: 0,
    droppedFragments: 0, droppedForeign: 0, droppedInvalid: 0,
  };
  readonly #options: UdpAssociationOptions;
  readonly #clientSide: UdpSocket;
  readonly #outbound: { 4?: UdpSocket; 6?: UdpSocket } = {};
  readonly #names = new Map<string, string>();
  readonly #pending = new Map<string, Buffer[]>();
  #pendingCount = 0;
  #clientPort: number | null;
  /** Largest UDP payload the client-facing socket can send (IPv4 65507, IPv6 65527). */
  readonly #maxToClient: number;
  #idleTimer: NodeJS.Timeout | undefined;
  #lastActivity = 0;
  #closed = false;

  private constructor(options: UdpAssociationOptions, clientSide: UdpSocket) {
    this.#options = options;
    this.#clientSide = clientSide;
    this.#clientPort = options.clientPort;
    this.#maxToClient = isIP(options.bindAddress) === 6 ? 65527 : 65507;
    clientSide.on('message', (msg, from) => this.#fromClient(msg, from.address, from.port));
    clientSide.on('error', () => {}); // ICMP errors and the like: a datagram is lost, the association lives on
    this.#touch();
    this.#armIdle();
  }

  /** Binds the client-facing socket; the reply announces `address`. */
  static async open(options: UdpAssociationOptions): Promise<UdpAssociation> {
    const family = isIP(options.bindAddress) === 6 ? 'udp6' : 'udp4';
    const socket = createSocket({ type: family, recvBufferSize: 1 << 20 });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, options.bindAddress, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    return new UdpAssociation(options, socket);
  }

  /** The client-facing address and port, for the reply. */
  get address(): Destination {
    const { address, port } = this.#clientSide.address();
    return destination(address, port);
  }

  /** Closes every socket of the association. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    this.#clientSide.close();
    this.#outbound[4]?.close();
    this.#outbound[6]?.close();
    this.#pending.clear();
  }

  #fromClient(msg: Buffer, address: string, port: number): void {
    if (this.#closed) return;
    if ((unmapIPv4(address) ?? address) !== this.#options.clientAddress || (this.#clientPort !== null && port !== this.#clientPort)) {
      this.counters.droppedForeign++;
      return;
    }
    if (msg.length > this.#options.limits.maxDatagram) {
      this.counters.droppedInvalid++;
      return;
    }
    let header;
    try {
      header = decodeUdpHeader(msg);
    } catch {
      this.counters.droppedInvalid++;
      return;
    }
    if (header.frag !== 0) {
      this.counters.droppedFragments++;
      return;
    }
    this.#clientPort ??= port;
    this.#touch();
    const payload = msg.subarray(header.payloadOffset);
    const target = header.destination;
    if (target.kind !== 'domain') return this.#sendOut(target.host, target.port, payload);
    const name = target.host.toLowerCase();
    const known = this.#names.get(name);
    if (known) return this.#sendOut(known, target.port, payload);
    this.#resolveThenSend(name, target.port, payload);
  }

  #resolveThenSend(name: string, port: number, payload: Buffer): void {
    const key = `${name}:${port}`;
    const waiting = this.#pending.get(key);
    if (this.#pendingCount >= this.#options.limits.pendingDatagrams) {
      this.counters.droppedInvalid++;
      return;
    }
    this.#pendingCount++;
    if (waiting) {
      waiting.push(payload);
      return;
    }
    this.#pending.set(key, [payload]);
    this.#options.resolver.resolve(name).then(
      (addresses) => {
        const first = addresses[0]?.address;
        if (first && this.#names.size < this.#options.limits.cachedNames) this.#names.set(name, first);
        this.#flushPending(key, first, port);
      },
      () => this.#flushPending(key, undefined, port),
    );
  }

  #flushPending(key: string, address: string | undefined, port: number): void {
    const queued = this.#pending.get(key) ?? [];
    this.#pending.delete(key);
    this.#pendingCount -= queued.length;
    if (this.#closed) return;
    for (const payload of queued) {
      if (address) this.#sendOut(address, port, payload);
      else this.counters.droppedInvalid++;
    }
  }

  #sendOut(address: string, port: number, payload: Buffer): void {
    const family = isIP(address) === 6 ? 6 : 4;
    this.counters.datagramsUp++;
    this.counters.bytesUp += payload.length;
    this.#outboundSocket(family).send(payload, port, address);
  }

  #outboundSocket(family: 4 | 6): UdpSocket {
    const existing = this.#outbound[family];
    if (existing) return existing;
    const socket = createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6 });
    socket.on('message', (msg, from) => this.#fromDestination(msg, from.address, from.port));
    socket.on('error', () => {});
    socket.bind(0);
    this.#outbound[family] = socket;
    return socket;
  }

  #fromDestination(msg: Buffer, address: string, port: number): void {
    if (this.#closed || this.#clientPort === null) return;
    const sender = destination(unmapIPv4(address) ?? address, port);
    const datagram = encodeUdpDatagram(sender, msg);
    if (datagram.length > this.#maxToClient) {
      this.counters.droppedInvalid++; // the header makes it too large for one datagram
      return;
    }
    this.counters.datagramsDown++;
    this.counters.bytesDown += msg.length;
    this.#touch();
    this.#clientSide.send(datagram, this.#clientPort, this.#options.clientAddress);
  }

  #touch(): void {
    this.#lastActivity = Date.now();
  }

  /** One timer per association, re-armed lazily: no timer work per datagram. */
  #armIdle(): void {
    const remaining = this.#lastActivity + this.#options.idleMs - Date.now();
    this.#idleTimer = setTimeout(() => {
      if (this.#closed) return;
      if (Date.now() - this.#lastActivity >= this.#options.idleMs) this.#options.onIdle();
      else this.#armIdle();
    }, Math.max(remaining, 1));
  }
}
