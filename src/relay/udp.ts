/**
 * One UDP association (RFC 1928 §7): a client-facing socket on the address
 * the client reached the proxy on, and outbound sockets (one per family,
 * opened on first use) toward destinations.
 *
 * Client → destination: only datagrams from the client's address (and port,
 * once known) are taken; the header is decoded, fragments are dropped, names
 * are resolved once per association, the payload is sent on.
 * Destination → client: the payload is wrapped in a header naming the sender.
 * When the request rules look at UDP destinations, each datagram is decided
 * too (DatagramPolicy): denied ones are dropped and counted.
 *
 * This is the stream relay's association (dgram sockets); with the splice
 * relay the addon's relay thread carries the datagrams instead
 * (native-udp.ts), and shares the name handling below (DestinationNames).
 *
 * Everything is bounded: datagram size, datagrams waiting on a name lookup,
 * names cached, reply headers cached; drops are counted, never queued without
 * limit. An outbound socket that cannot be opened (out of file descriptors)
 * drops the datagrams that needed it, counted, and the next one tries again.
 *
 * Per datagram, in the steady state, the relay itself allocates only the
 * payload view it hands to dgram: a datagram to the same destination as the
 * one before is recognised by its header bytes (no decoding, no strings), a
 * reply's header is encoded once per sender and sent ahead of the payload as a
 * second buffer (no copy), and addresses skip dgram's DNS lookup (see
 * `passLiteral`).
 */
import { type RemoteInfo, type Socket as UdpSocket, createSocket } from 'node:dgram';
import { isIP } from 'node:net';
import { type Destination, canonicalAddress, destination, isUnspecifiedAddress, peerAddress, unmapIPv4, unmappedAddress } from '../protocol/address.js';
import { type UdpHeader, decodeUdpHeader, encodeUdpHeader, startsWithUdpHeader } from '../protocol/udp.js';
import type { Resolver } from '../upstream/resolver.js';
import { resolveWithin } from '../upstream/dialer.js';

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
  /** Malformed headers, oversized datagrams, full queues, failed lookups, sends the kernel refused. */
  droppedInvalid: number;
  /** Denied by the request rules: to its destination, or a reply from its sender. */
  droppedDenied: number;
  /** Still waiting when the association closed: for a name lookup, or (native relay) for JavaScript to take them. */
  droppedAtClose: number;
}

/** Fresh counters, all zero. */
export function udpCounters(): UdpCounters {
  return {
    datagramsUp: 0, datagramsDown: 0, bytesUp: 0, bytesDown: 0,
    droppedFragments: 0, droppedForeign: 0, droppedInvalid: 0, droppedDenied: 0, droppedAtClose: 0,
  };
}

/** The request rules' verdict on one datagram's destination (a reply's sender taken as one); see DatagramPolicy. */
export type UdpDestinationRules = (target: Destination) => boolean;

export interface UdpAssociationOptions {
  /** Address to bind the client-facing socket on (where the client reached the proxy). */
  readonly bindAddress: string;
  /** The client's IP address: datagrams from elsewhere are dropped. */
  readonly clientAddress: string;
  /** The client's UDP port if it named one in its request; otherwise learned from its first datagram. */
  readonly clientPort: number | null;
  readonly resolver: Resolver;
  /** A destination name's lookup gives up after this long (`timeouts.connect`): its datagrams are dropped. */
  readonly lookupMs: number;
  readonly limits: UdpLimits;
  /** No datagram either way for this long ends the association. */
  readonly idleMs: number;
  readonly onIdle: () => void;
  /** Each datagram's verdict; null when the rules do not look at UDP destinations (all are relayed). */
  readonly allows: UdpDestinationRules | null;
}

/** A UDP association, whichever relays it: what the session needs of it. */
export interface UdpRelay {
  /** What carries the datagrams: the addon's relay thread, or dgram sockets. */
  readonly engine: 'splice' | 'stream';
  /** Relayed and dropped so far; after close(), the final figures. */
  readonly counters: UdpCounters;
  /** The client-facing address and port, for the reply. */
  readonly address: Destination;
  /**
   * Why datagrams were dropped that the proxy itself could not send (see
   * outboundSocketFailure), the first such cause, for the access line's
   * `error`; null while there was none.
   */
  readonly failure: string | null;
  /** Closes every socket of the association. Idempotent. */
  close(): void;
}

/**
 * What the access line says of an association that could not open an
 * outbound socket (`code`: EMFILE when out of file descriptors), the same
 * from either relay: the datagrams that needed it were dropped and counted.
 */
export function outboundSocketFailure(code: string): string {
  return `datagrams dropped: could not open an outbound socket (${code})`;
}

/** Senders whose reply header is kept per association; past this the cache starts over. */
const REPLY_HEADERS = 256;
/** Address and port pairs remembered per association as reached through an allowed name. */
const REACHED_BY_NAME = 1024;

/**
 * The request rules on single datagrams (rules.ts, `decide` with command
 * `udp`). A client's datagram is decided by its destination as the client
 * named it, before DNS, as CONNECT is; a reply by its sender, taken as a
 * destination. Where an allowed name led (its address and the port) counts
 * as allowed both ways, so the name's replies come back, and the client may
 * write that address too. Bounded: past REACHED_BY_NAME the oldest is
 * forgotten, and its replies are decided by the rules alone again.
 */
export class DatagramPolicy {
  readonly #allows: UdpDestinationRules;
  readonly #reached = new Set<string>();

  constructor(allows: UdpDestinationRules) {
    this.#allows = allows;
  }

  /** A client's datagram to `target`, as its header names it. */
  admits(target: Destination): boolean {
    return target.kind === 'domain' ? this.#allows(target) : this.admitsAddress(target.host, target.port);
  }

  /** A datagram to, or a reply from, an address (IPv4-mapped taken as IPv4). */
  admitsAddress(address: string, port: number): boolean {
    const plain = unmappedAddress(address);
    return this.#reached.has(`${plain} ${port}`) || this.#allows(destination(plain, port));
  }

  /** An allowed name resolved to `address`; true when that pair is new. */
  reachedByName(address: string, port: number): boolean {
    const key = `${unmappedAddress(address)} ${port}`;
    if (this.#reached.has(key)) return false;
    if (this.#reached.size >= REACHED_BY_NAME) this.#reached.delete(this.#reached.values().next().value!);
    this.#reached.add(key);
    return true;
  }
}

/** An outbound socket, and the payload lengths of the datagrams dgram holds for it until its bind completes. */
interface Outbound {
  readonly socket: UdpSocket;
  bound: boolean;
  readonly waiting: number[];
}

/** Where the client's last datagram went, keyed by its exact header bytes. */
interface Target {
  readonly header: Buffer;
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/**
 * dgram passes every send's address (and the bind address) through `lookup`:
 * `dns.lookup` by default, which validates it and defers the send by a
 * process.nextTick, per datagram. The relay only ever sends to and binds on IP
 * literals (decoded from headers, from the resolver, the client's own), so it
 * hands the address straight back. dgram ignores the family.
 */
function passLiteral(address: string, _options: unknown, callback: (err: null, address: string, family: number) => void): void {
  callback(null, address, address.includes(':') ? 6 : 4);
}

/** A client's datagram decoded, or null when it is dropped (malformed, a fragment), counted. */
export function decodeClientDatagram(msg: Buffer, counters: UdpCounters): { header: UdpHeader; payload: Buffer } | null {
  let header;
  try {
    header = decodeUdpHeader(msg);
  } catch {
    counters.droppedInvalid++;
    return null;
  }
  if (header.frag !== 0) {
    counters.droppedFragments++;
    return null;
  }
  return { header, payload: msg.subarray(header.payloadOffset) };
}

type Send = (address: string, port: number, family: 4 | 6, payload: Buffer) => void;

/**
 * Datagrams to destination names: each name is resolved once per
 * association and remembered; datagrams wait while it resolves. Both bounded
 * (limits.cachedNames, limits.pendingDatagrams); a datagram over the bound or
 * to a name that does not resolve is dropped and counted.
 */
/** How long an answer is used before its name is looked up again (getaddrinfo tells no TTL). */
export const NAME_TTL_MS = 60_000;
/** How long a name whose lookup failed is not looked up again: its datagrams are dropped meanwhile. */
export const FAILED_NAME_TTL_MS = 10_000;

/** A name's last lookup: its address (null: it failed) and until when that holds. */
interface KnownName {
  readonly address: string | null;
  readonly family: 4 | 6;
  readonly until: number;
}

/** What DestinationNames needs of the association's options; the client's address takes the lookups' turns. */
type NameOptions = Pick<UdpAssociationOptions, 'resolver' | 'limits' | 'lookupMs' | 'clientAddress'>;

export class DestinationNames {
  /** Answers and failures, at most `limits.cachedNames`, each for a while (NAME_TTL_MS, FAILED_NAME_TTL_MS). */
  readonly #names = new Map<string, KnownName>();
  /** By name: the datagrams waiting for its one lookup, each with its port. */
  readonly #pending = new Map<string, Array<{ readonly port: number; readonly payload: Buffer }>>();
  #pendingCount = 0;
  /** Aborted when the association closes: its lookups still waiting for a turn never run. */
  readonly #closing = new AbortController();
  readonly #options: NameOptions;
  readonly #counters: UdpCounters;
  readonly #send: Send;
  /** Milliseconds on a monotonic clock (tests pass their own). */
  readonly #now: () => number;

  constructor(options: NameOptions, counters: UdpCounters, send: Send, now: () => number = () => performance.now()) {
    this.#options = options;
    this.#counters = counters;
    this.#send = send;
    this.#now = now;
  }

  send(host: string, port: number, payload: Buffer): void {
    const name = host.toLowerCase();
    const known = this.#names.get(name);
    if (known === undefined || known.until <= this.#now()) this.#resolveThenSend(name, port, payload);
    else if (known.address === null) this.#counters.droppedInvalid++;
    else this.#send(known.address, port, known.family, payload);
  }

  /** Drops the datagrams waiting for a lookup, counted, and the lookups waiting for a turn (the association closed). */
  clear(): void {
    this.#counters.droppedAtClose += this.#pendingCount;
    this.#pendingCount = 0;
    this.#pending.clear();
    this.#closing.abort(new Error('the UDP association closed'));
  }

  #resolveThenSend(name: string, port: number, payload: Buffer): void {
    if (this.#pendingCount >= this.#options.limits.pendingDatagrams) {
      this.#counters.droppedInvalid++;
      return;
    }
    this.#pendingCount++;
    const waiting = this.#pending.get(name);
    if (waiting) {
      waiting.push({ port, payload });
      return;
    }
    this.#pending.set(name, [{ port, payload }]);
    // With a deadline: a lookup that never answers would hold its datagrams, and its slots, for good.
    const lookup = { client: this.#options.clientAddress, signal: this.#closing.signal };
    resolveWithin(this.#options.resolver, name, this.#options.lookupMs, lookup).then(
      (addresses) => this.#learned(name, firstAddress(addresses)),
      () => this.#learned(name, undefined),
    );
  }

  /** Remembers a lookup's outcome (a failure too: a client repeating a bad name costs one lookup a while), then sends what waited. */
  #learned(name: string, address: string | undefined): void {
    const family = address !== undefined && isIP(address) === 6 ? 6 : 4;
    const ttl = address === undefined ? FAILED_NAME_TTL_MS : NAME_TTL_MS;
    if (this.#roomForName()) this.#names.set(name, { address: address ?? null, family, until: this.#now() + ttl });
    const queued = this.#pending.get(name);
    if (queued === undefined) return; // cleared: the association closed
    this.#pending.delete(name);
    this.#pendingCount -= queued.length;
    for (const { port, payload } of queued) {
      if (address) this.#send(address, port, family, payload);
      else this.#counters.droppedInvalid++;
    }
  }

  /** Whether one more name fits in the cache, after forgetting those that expired. */
  #roomForName(): boolean {
    const limit = this.#options.limits.cachedNames;
    if (this.#names.size < limit) return true;
    const now = this.#now();
    for (const [name, known] of this.#names) if (known.until <= now) this.#names.delete(name);
    return this.#names.size < limit;
  }
}

/**
 * The first address of a resolver's answer, spelled as a socket spells it
 * (replies are matched against it by their sender's text); undefined when
 * there is none, or the answer is not what a Resolver returns (a custom one
 * may break its contract: the datagrams are then dropped, not the process).
 */
function firstAddress(answer: unknown): string | undefined {
  if (!Array.isArray(answer)) return undefined;
  for (const entry of answer as unknown[]) {
    let text: unknown;
    try {
      text = (entry as { address?: unknown } | null)?.address;
    } catch {
      continue; // a getter that throws: not an answer
    }
    const address = typeof text === 'string' ? canonicalAddress(text) : undefined;
    // An unspecified address (a blocklist's 0.0.0.0) would be delivered to this host: not a destination.
    if (address !== undefined && !isUnspecifiedAddress(address)) return address;
  }
  return undefined;
}

export class UdpAssociation implements UdpRelay {
  readonly engine = 'stream';
  readonly counters: UdpCounters = udpCounters();
  readonly #options: UdpAssociationOptions;
  readonly #policy: DatagramPolicy | null;
  readonly #clientSide: UdpSocket;
  readonly #outbound: { 4?: Outbound; 6?: Outbound } = {};
  #failure: string | null = null;
  readonly #names: DestinationNames;
  #lastTarget: Target | null = null;
  readonly #replyHeaders: ReplyHeaders;
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
    const policy = options.allows ? new DatagramPolicy(options.allows) : null;
    this.#policy = policy;
    this.#replyHeaders = new ReplyHeaders(REPLY_HEADERS, policy ? (address, port) => policy.admitsAddress(address, port) : null);
    this.#names = new DestinationNames(options, this.counters, (address, port, family, payload) => {
      if (this.#closed) return;
      if (policy?.reachedByName(address, port)) this.#replyHeaders.forget(address, port);
      this.#sendOut(address, port, family, payload);
    });
    this.#maxToClient = isIP(options.bindAddress) === 6 ? 65527 : 65507;
    clientSide.on('message', (msg: Buffer, from: RemoteInfo) => this.#fromClient(msg, from.address, from.port));
    clientSide.on('error', () => {}); // ICMP errors and the like: a datagram is lost, the association lives on
    this.#touch();
    this.#armIdle();
  }

  /** Binds the client-facing socket; the reply announces `address`. */
  static async open(options: UdpAssociationOptions): Promise<UdpAssociation> {
    const family = isIP(options.bindAddress) === 6 ? 'udp6' : 'udp4';
    const socket = createSocket({ type: family, recvBufferSize: 1 << 20, lookup: passLiteral });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      // Exclusive: in a cluster worker (--workers) a shared bind would hand
      // every worker's first association the same socket.
      socket.bind({ port: 0, address: options.bindAddress, exclusive: true }, () => {
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

  get failure(): string | null {
    return this.#failure;
  }

  /** Closes every socket of the association. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    this.#clientSide.close();
    this.#outbound[4]?.socket.close();
    this.#outbound[6]?.socket.close();
    this.#names.clear();
  }

  #fromClient(msg: Buffer, address: string, port: number): void {
    if (this.#closed) return;
    if (!this.#isClient(address, port)) {
      this.counters.droppedForeign++;
      return;
    }
    if (msg.length > this.#options.limits.maxDatagram) {
      this.counters.droppedInvalid++;
      return;
    }
    const last = this.#lastTarget;
    if (last !== null && startsWithUdpHeader(msg, last.header)) {
      this.#touch();
      this.#sendOut(last.address, last.port, last.family, msg.subarray(last.header.length));
      return;
    }
    this.#decodeThenSend(msg, port);
  }

  /** The client's address (string equality first: the common case needs no unmapping), and its port once known. */
  #isClient(address: string, port: number): boolean {
    if (this.#clientPort !== null && port !== this.#clientPort) return false;
    const client = this.#options.clientAddress;
    return address === client || unmapIPv4(address) === client;
  }

  /** A datagram whose header differs from the last one's: decode it, and remember it when it resolves at once. */
  #decodeThenSend(msg: Buffer, port: number): void {
    const decoded = decodeClientDatagram(msg, this.counters);
    if (decoded === null) return;
    this.#clientPort ??= port;
    this.#touch();
    const { header, payload } = decoded;
    const target = header.destination;
    if (this.#policy !== null && !this.#policy.admits(target)) {
      this.counters.droppedDenied++;
      return;
    }
    if (target.kind === 'domain') return this.#names.send(target.host, target.port, payload);
    // An IPv4-mapped destination goes out over IPv4: the IPv6 outbound socket is v6-only.
    const address = target.kind === 'ipv6' ? unmappedAddress(target.host) : target.host;
    if (isUnspecifiedAddress(address)) {
      this.counters.droppedInvalid++; // Linux would deliver it to this host
      return;
    }
    const family = isIP(address) === 6 ? 6 : 4;
    // A copy: a view would keep the whole received datagram alive.
    this.#lastTarget = { header: Buffer.from(msg.subarray(0, header.payloadOffset)), address, port: target.port, family };
    this.#sendOut(address, target.port, family, payload);
  }

  #sendOut(address: string, port: number, family: 4 | 6, payload: Buffer): void {
    if (port === 0) {
      // Nothing can be sent to port 0 (the kernel refuses it, and dgram throws).
      this.counters.droppedInvalid++;
      return;
    }
    const outbound = this.#outboundSocket(family);
    if (outbound === null) {
      this.counters.droppedInvalid++; // no socket to send it from (see #bindFailed), as the native relay counts it
      return;
    }
    // Counted when handed over, so that a record read at close includes the
    // datagrams still on their way; one the kernel refuses (too large for
    // IPv4, a broadcast address, a firewall) is taken back as dropped, as the
    // native relay counts it. dgram tells of that only to this callback.
    this.counters.datagramsUp++;
    this.counters.bytesUp += payload.length;
    if (!outbound.bound) outbound.waiting.push(payload.length);
    outbound.socket.send(payload, port, address, (error) => {
      if (error) this.#refused('up', payload.length);
    });
  }

  #refused(direction: 'up' | 'down', length: number): void {
    const counters = this.counters;
    if (direction === 'up') {
      counters.datagramsUp--;
      counters.bytesUp -= length;
    } else {
      counters.datagramsDown--;
      counters.bytesDown -= length;
    }
    counters.droppedInvalid++;
  }

  /**
   * The family's outbound socket, opened on first use; null when it cannot
   * be bound (out of file descriptors, say), and the next datagram tries
   * again, so the association recovers once descriptors are free.
   */
  #outboundSocket(family: 4 | 6): Outbound | null {
    const existing = this.#outbound[family];
    if (existing) return existing;
    const socket = createSocket({ type: family === 6 ? 'udp6' : 'udp4', ipv6Only: family === 6, lookup: passLiteral });
    const outbound: Outbound = { socket, bound: false, waiting: [] };
    this.#outbound[family] = outbound;
    socket.on('message', (msg: Buffer, from: RemoteInfo) => this.#fromDestination(msg, from.address, from.port));
    socket.once('listening', () => {
      outbound.bound = true;
      outbound.waiting.length = 0; // dgram sends them now, and their callbacks tell of any failure
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // Once bound: ICMP errors and the like, a datagram is lost and the association lives on.
      if (!outbound.bound) this.#bindFailed(family, outbound, error);
    });
    socket.bind({ port: 0, exclusive: true }); // exclusive: see open()
    // With passLiteral the bind is over already, done or failed; if it were
    // not, sends would wait in dgram's queue, counted in `waiting`.
    return this.#outbound[family] ?? null;
  }

  /**
   * An outbound socket's bind failed. dgram then drops the sends queued
   * behind it without calling their callbacks, and the same socket would bind
   * again at its next send and send what waited then, late. So it is closed
   * and forgotten, what waited is counted as dropped, not relayed, and the
   * cause is kept for the access line (the first one: one line, not one per
   * datagram).
   */
  #bindFailed(family: 4 | 6, outbound: Outbound, error: NodeJS.ErrnoException): void {
    if (this.#outbound[family] === outbound) delete this.#outbound[family];
    outbound.socket.close();
    for (const length of outbound.waiting) this.#refused('up', length);
    outbound.waiting.length = 0;
    this.#failure ??= outboundSocketFailure(error.code ?? error.message);
  }

  #fromDestination(msg: Buffer, address: string, port: number): void {
    if (this.#closed || this.#clientPort === null) return;
    // The header makes it too large for one datagram: dropped before the
    // rules are asked, as the relay thread does. (An outbound IPv6 socket is
    // v6-only: a sender with a colon is IPv6, and gets a 22-byte header.)
    if ((address.includes(':') ? 22 : 10) + msg.length > this.#maxToClient) {
      this.counters.droppedInvalid++;
      return;
    }
    const header = this.#replyHeaders.get(address, port);
    if (header === null) {
      this.counters.droppedDenied++; // a sender the rules refuse
      return;
    }
    this.counters.datagramsDown++;
    this.counters.bytesDown += msg.length;
    this.#touch();
    this.#clientSide.send([header, msg], this.#clientPort, this.#options.clientAddress, (error) => {
      if (error) this.#refused('down', msg.length); // see #sendOut
    });
  }

  // The monotonic clock: a step of the wall clock must not keep a quiet association alive, or end a busy one.
  #touch(): void {
    this.#lastActivity = performance.now();
  }

  /** One timer per association, re-armed lazily: no timer work per datagram. */
  #armIdle(): void {
    const remaining = this.#lastActivity + this.#options.idleMs - performance.now();
    this.#idleTimer = setTimeout(() => {
      if (this.#closed) return;
      if (performance.now() - this.#lastActivity >= this.#options.idleMs) this.#options.onIdle();
      else this.#armIdle();
    }, Math.max(remaining, 1));
  }
}

/**
 * Reply headers by sender address, then port, as dgram reports them: replies
 * mostly come from the few peers the client talks to, so each header is
 * encoded once and two map lookups replace the encoding. With `admit`, a
 * sender it refuses is remembered as null the same way. Bounded: when full,
 * it starts over (a header is cheap to encode again; a sender churn must not
 * grow memory). Exported for its tests only.
 */
export class ReplyHeaders {
  readonly #byAddress = new Map<string, Map<number, Buffer | null>>();
  readonly #limit: number;
  readonly #admit: ((address: string, port: number) => boolean) | null;
  #size = 0;

  constructor(limit: number, admit: ((address: string, port: number) => boolean) | null = null) {
    this.#limit = limit;
    this.#admit = admit;
  }

  /** Senders cached. */
  get size(): number {
    return this.#size;
  }

  /**
   * The header naming address:port (an IPv4-mapped address as IPv4); the
   * same Buffer while cached, never to be written. Null: `admit` refused it.
   */
  get(address: string, port: number): Buffer | null {
    const known = this.#byAddress.get(address)?.get(port);
    return known !== undefined ? known : this.#add(address, port);
  }

  /** Decide address:port again at its next reply. */
  forget(address: string, port: number): void {
    if (this.#byAddress.get(address)?.delete(port)) this.#size--;
  }

  #add(address: string, port: number): Buffer | null {
    const admitted = this.#admit === null || this.#admit(address, port);
    const header = admitted ? encodeUdpHeader(destination(peerAddress(address), port)) : null;
    let ports = this.#byAddress.get(address);
    if (this.#size >= this.#limit) {
      this.#byAddress.clear();
      this.#size = 0;
      ports = undefined;
    }
    if (ports === undefined) {
      ports = new Map();
      this.#byAddress.set(address, ports);
    }
    ports.set(port, header);
    this.#size++;
    return header;
  }
}
