/**
 * A UDP association relayed by the addon's relay thread (native/udp.c), with
 * the splice relay engine: datagrams to address literals and every reply move
 * in batches (recvmmsg/sendmmsg) without entering JavaScript. The relay thread
 * hands over what it cannot decide alone (a destination name, a fragment, a
 * malformed header), and this side decodes, resolves, counts and sends those
 * as the JavaScript association does (relay/udp.ts), through the addon.
 */
import { isIP } from 'node:net';
import { type Destination, destination } from '../protocol/address.js';
import { errnoError, spliceAddon } from './splice.js';
import {
  DestinationNames, type UdpAssociationOptions, type UdpCounters, type UdpRelay, decodeClientDatagram, sendable,
} from './udp.js';

/** The addon's part (native/udp.c). */
export interface UdpAddon {
  udpInit(dispatch: (id: number, clientPort: number, datagram: Buffer) => void): void;
  udpOpen(id: number, bindAddress: string, clientAddress: string, clientPort: number, maxDatagram: number): [object | null, number];
  udpSend(handle: object, address: string, port: number, payload: Buffer, clientPort: number): void;
  udpStatus(handle: object): NativeStatus;
  udpClose(handle: object): NativeStatus;
}

/** datagramsUp, datagramsDown, bytesUp, bytesDown, droppedForeign, droppedInvalid, milliseconds since the last datagram relayed. */
type NativeStatus = [number, number, number, number, number, number, number];

/** Live native associations by id, for the datagrams the relay thread hands over. */
const live = new Map<number, NativeUdpAssociation>();
let nextId = 1;
let initialised: UdpAddon | null = null;

function addon(): UdpAddon | null {
  if (initialised) return initialised;
  const loaded = spliceAddon() as (UdpAddon & object) | null;
  if (!loaded || typeof loaded.udpInit !== 'function') return null;
  loaded.udpInit((id, clientPort, datagram) => live.get(id)?.fromClient(datagram, clientPort));
  initialised = loaded;
  return loaded;
}

export class NativeUdpAssociation implements UdpRelay {
  readonly #id: number;
  readonly #addon: UdpAddon;
  readonly #handle: object;
  readonly #port: number;
  readonly #options: UdpAssociationOptions;
  /** What JavaScript itself dropped; the rest is counted by the relay thread. */
  readonly #own: UdpCounters = {
    datagramsUp: 0, datagramsDown: 0, bytesUp: 0, bytesDown: 0,
    droppedFragments: 0, droppedForeign: 0, droppedInvalid: 0,
  };
  readonly #names: DestinationNames;
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
    this.#names = new DestinationNames(options, this.#own, (address, port, _family, payload) => this.#send(address, port, payload));
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
    const [handle, port] = udp.udpOpen(id, options.bindAddress, options.clientAddress, options.clientPort ?? 0, options.limits.maxDatagram);
    if (handle === null) throw errnoError('bind', -port, options.bindAddress);
    return new NativeUdpAssociation(id, udp, handle, port, options);
  }

  get address(): Destination {
    return destination(this.#options.bindAddress, this.#port);
  }

  /** Relayed and dropped so far; after close(), the final figures. */
  get counters(): UdpCounters {
    const [datagramsUp, datagramsDown, bytesUp, bytesDown, foreign, invalid] = this.#final ?? this.#addon.udpStatus(this.#handle);
    const own = this.#own;
    return {
      datagramsUp, datagramsDown, bytesUp, bytesDown,
      droppedFragments: own.droppedFragments,
      droppedForeign: foreign + own.droppedForeign,
      droppedInvalid: invalid + own.droppedInvalid,
    };
  }

  close(): void {
    if (this.#final) return;
    this.#final = this.#addon.udpClose(this.#handle);
    live.delete(this.#id);
    clearTimeout(this.#idleTimer);
    this.#names.clear();
  }

  /** A datagram from the client that the relay thread left to JavaScript (called by the addon's dispatch). */
  fromClient(msg: Buffer, port: number): void {
    const decoded = decodeClientDatagram(msg, this.#own);
    if (decoded === null) return;
    this.#clientPort ??= port;
    const target = decoded.header.destination;
    if (target.kind === 'domain') this.#names.send(target.host, target.port, decoded.payload);
    else this.#send(target.kind === 'ipv6' ? sendable(target.host) : target.host, target.port, decoded.payload);
  }

  #send(address: string, port: number, payload: Buffer): void {
    if (this.#final || isIP(address) === 0) return;
    this.#addon.udpSend(this.#handle, address, port, payload, this.#clientPort ?? 0);
  }

  /** One timer per association, re-armed from the relay thread's idea of the last datagram. */
  #armIdle(delay: number): void {
    this.#idleTimer = setTimeout(() => {
      if (this.#final) return;
      const idleFor = this.#addon.udpStatus(this.#handle)[6];
      if (idleFor >= this.#options.idleMs) this.#options.onIdle();
      else this.#armIdle(this.#options.idleMs - idleFor);
    }, Math.max(delay, 1));
  }
}
