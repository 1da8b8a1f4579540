/**
 * A UDP association relayed by the addon's relay thread (native/udp.c), with
 * the splice relay engine: datagrams to address literals and every reply move
 * in batches (recvmmsg/sendmmsg) without entering JavaScript. The relay thread
 * hands over what it cannot decide alone (a destination name, a fragment, a
 * malformed header), and this side decodes, resolves, counts and sends those
 * as the JavaScript association does (relay/udp.ts), through the addon.
 *
 * When the rules look at UDP destinations the association is opened checked:
 * the relay thread keeps the verdicts this side gives it (udpVerdict, and
 * every udpSend as an allow) by address and port, and hands over what it has
 * no verdict for, a reply too (udpToClient sends one this side allowed).
 */
import { isIP } from 'node:net';
import { getSystemErrorName } from 'node:util';
import { type Destination, destination, isUnspecifiedAddress, unmappedAddress } from '../protocol/address.js';
import { decodeUdpHeader } from '../protocol/udp.js';
import { errnoError, fromAddon, spliceAddon } from './splice.js';
import {
  DatagramPolicy, DestinationNames, type UdpAssociationOptions, type UdpCounters, type UdpRelay, decodeClientDatagram,
  outboundSocketFailure, udpCounters,
} from './udp.js';

/** What the relay thread hands over (native/udp.c TO_JS_*). */
const FROM_CLIENT = 0;
const REPLY = 1;

/** The addon's part (native/udp.c). */
export interface UdpAddon {
  udpInit(dispatch: (id: number, kind: number, clientPort: number, datagram: Buffer) => void): void;
  udpOpen(id: number, bindAddress: string, clientAddress: string, clientPort: number, maxDatagram: number, checked: boolean): [object | null, number];
  udpSend(handle: object, address: string, port: number, payload: Buffer, clientPort: number): void;
  udpVerdict(handle: object, address: string, port: number, allowed: boolean): void;
  /** Whether `port` is the client's; the first datagram that decodes sets it when the request gave none. */
  udpClientPort(handle: object, port: number): boolean;
  udpToClient(handle: object, datagram: Buffer, headerLength: number): void;
  udpStatus(handle: object): NativeStatus;
  udpClose(handle: object): NativeStatus;
}

/**
 * datagramsUp, datagramsDown, bytesUp, bytesDown, droppedForeign,
 * droppedInvalid, droppedDenied, milliseconds since the last datagram
 * relayed, datagrams handed to JavaScript that it has not taken yet, and the
 * errno for which an outbound socket first could not be opened (0: never).
 */
type NativeStatus = [number, number, number, number, number, number, number, number, number, number];
const IDLE_MS = 7;
const TO_JS = 8;
const OUTBOUND_ERRNO = 9;

/** Live native associations by id, for the datagrams the relay thread hands over. */
const live = new Map<number, NativeUdpAssociation>();
let nextId = 1;
let initialised: UdpAddon | null = null;

function addon(): UdpAddon | null {
  if (initialised) return initialised;
  const loaded = spliceAddon() as (UdpAddon & object) | null;
  if (!loaded) return null;
  loaded.udpInit(fromAddon((id: number, kind: number, clientPort: number, datagram: Buffer) => {
    const association = live.get(id);
    if (kind === REPLY) association?.fromDestination(datagram);
    else if (kind === FROM_CLIENT) association?.fromClient(datagram, clientPort);
  }));
  initialised = loaded;
  return loaded;
}

export class NativeUdpAssociation implements UdpRelay {
  readonly engine = 'splice';
  readonly #id: number;
  readonly #addon: UdpAddon;
  readonly #handle: object;
  readonly #port: number;
  readonly #options: UdpAssociationOptions;
  /** What JavaScript itself dropped; the rest is counted by the relay thread. */
  readonly #own: UdpCounters = udpCounters();
  readonly #names: DestinationNames;
  readonly #policy: DatagramPolicy | null;
  #clientPort: number | null;
  #final: NativeStatus | null = null;
  #idleTimer: NodeJS.Timeout | undefined;

  private constructor(id: number, addon: UdpAddon, handle: object, port: number, options: UdpAssociationOptions) {
    this.#id = id;
    this.#addon = addon;
    this.#handle = handle;
    this.#port = port;
    this.#options = options;
    this.#clientPort = options.clientPort;
    const policy = options.allows ? new DatagramPolicy(options.allows) : null;
    this.#policy = policy;
    this.#names = new DestinationNames(options, this.#own, (address, port, _family, payload) => {
      policy?.reachedByName(address, port); // the relay thread learns it from udpSend
      this.#send(address, port, payload);
    });
    live.set(this.#id, this);
    this.#armIdle(options.idleMs);
  }

  /**
   * Opens the client-facing socket on the relay thread; null when the addon
   * is not there, or for a scoped (link-local) address, which it does not take.
   */
  static open(options: UdpAssociationOptions): NativeUdpAssociation | null {
    const udp = addon();
    if (!udp || options.bindAddress.includes('%') || options.clientAddress.includes('%')) return null;
    const id = nextId++;
    const checked = options.allows !== null;
    const [handle, port] = udp.udpOpen(id, options.bindAddress, options.clientAddress, options.clientPort ?? 0, options.limits.maxDatagram, checked);
    if (handle === null) throw errnoError('bind', -port, options.bindAddress);
    return new NativeUdpAssociation(id, udp, handle, port, options);
  }

  get address(): Destination {
    return destination(this.#options.bindAddress, this.#port);
  }

  /** Relayed and dropped so far; after close(), the final figures. */
  get counters(): UdpCounters {
    const [datagramsUp, datagramsDown, bytesUp, bytesDown, foreign, invalid, denied] = this.#final ?? this.#addon.udpStatus(this.#handle);
    const own = this.#own;
    return {
      datagramsUp, datagramsDown, bytesUp, bytesDown,
      droppedFragments: own.droppedFragments,
      droppedForeign: foreign + own.droppedForeign,
      droppedInvalid: invalid + own.droppedInvalid,
      droppedDenied: denied + own.droppedDenied,
      droppedAtClose: own.droppedAtClose,
    };
  }

  get failure(): string | null {
    const errno = (this.#final ?? this.#addon.udpStatus(this.#handle))[OUTBOUND_ERRNO];
    return errno > 0 ? outboundSocketFailure(getSystemErrorName(-errno)) : null;
  }

  close(): void {
    if (this.#final) return;
    this.#final = this.#addon.udpClose(this.#handle);
    live.delete(this.#id);
    clearTimeout(this.#idleTimer);
    this.#names.clear();
    // Handed to JavaScript but not taken: their dispatch finds the association gone.
    this.#own.droppedAtClose += this.#final[TO_JS];
  }

  /** A datagram from the client that the relay thread left to JavaScript (called by the addon's dispatch). */
  fromClient(msg: Buffer, port: number): void {
    const decoded = decodeClientDatagram(msg, this.#own);
    if (decoded === null) return;
    // As on the stream relay: the first datagram that decodes names the
    // client's port, here for the relay thread too, and the others are foreign.
    if (!this.#addon.udpClientPort(this.#handle, port)) {
      this.#own.droppedForeign++;
      return;
    }
    this.#clientPort = port;
    const target = decoded.header.destination;
    if (this.#policy !== null && !this.#policy.admits(target)) return this.#refuse(target);
    if (target.kind === 'domain') return this.#names.send(target.host, target.port, decoded.payload);
    const address = target.kind === 'ipv6' ? unmappedAddress(target.host) : target.host; // mapped: over IPv4
    if (isUnspecifiedAddress(address)) this.#own.droppedInvalid++; // the relay thread leaves these here: Linux would deliver them to this host
    else this.#send(address, target.port, decoded.payload);
  }

  /** A reply the relay thread had no verdict for (checked associations): its header names the sender. */
  fromDestination(datagram: Buffer): void {
    if (this.#final) return;
    const header = decodeUdpHeader(datagram); // the relay thread's own encoding
    const sender = header.destination;
    if (this.#policy !== null && !this.#policy.admits(sender)) return this.#refuse(sender);
    this.#addon.udpVerdict(this.#handle, sender.host, sender.port, true); // udpSend teaches allows the other way
    this.#addon.udpToClient(this.#handle, datagram, header.payloadOffset);
  }

  /** Counts a denied datagram; for an address, the relay thread drops the next ones itself. */
  #refuse(target: Destination): void {
    this.#own.droppedDenied++;
    if (target.kind !== 'domain') this.#addon.udpVerdict(this.#handle, target.host, target.port, false);
  }

  #send(address: string, port: number, payload: Buffer): void {
    if (this.#final || isIP(address) === 0) return;
    this.#addon.udpSend(this.#handle, address, port, payload, this.#clientPort ?? 0);
  }

  /** One timer per association, re-armed from the relay thread's idea of the last datagram. */
  #armIdle(delay: number): void {
    this.#idleTimer = setTimeout(() => {
      if (this.#final) return;
      const idleFor = this.#addon.udpStatus(this.#handle)[IDLE_MS];
      if (idleFor >= this.#options.idleMs) this.#options.onIdle();
      else this.#armIdle(this.#options.idleMs - idleFor);
    }, Math.max(delay, 1));
  }
}
