/**
 * Native handshakes: the addon's relay thread (native/splice.c) accepts on a
 * listener, runs the common SOCKS5 exchange itself (greeting, RFC 1929
 * credentials, CONNECT to an address literal, the reply) and splices the pair,
 * so the common session never builds a Node socket. JavaScript stays the
 * authority: it is asked whether a password is right and whether a rule
 * allows a request, it gets every connection that leaves the common path
 * handed over (with the bytes read so far) to the ordinary Session, which
 * sends every refusal, and it writes every record.
 *
 * One relay thread per process serves the listeners of every server in it;
 * each listener is registered with its owner, who learns of its sessions.
 */
import { Socket } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { parseNetwork } from '../config/schema.js';
import { SocksError, toSocksError } from '../errors.js';
import type { SessionRecord } from '../observe/events.js';
import { type Destination, NEED_MORE, formatDestination, peerAddress } from '../protocol/address.js';
import { promiseFrom } from '../callbacks.js';
import { Method, decodeRequest } from '../protocol/socks5.js';
import { decodeUserPass } from '../protocol/userpass.js';
import { type Addon, NATIVE_DIAL_ADDRESSES, type NativeMessage, errnoError, fromAddon, spliceAddon, spliceEnd } from '../relay/splice.js';
import { ATTEMPT_DELAY_MS, connectTimeoutError, resolveDialable } from '../upstream/dialer.js';
import { type ResolvedAddress, answerReuseMs } from '../upstream/resolver.js';
import { type SessionContext, type SessionResume, elapsedMs } from './session.js';
import { SessionTable } from './session-table.js';

const enum Message {
  OPEN = 0,
  AUTH = 1,
  DECIDE = 2,
  HAND_OVER = 3,
  END = 4,
  LISTENER_CLOSED = 5,
  ACCEPT_FAILED = 6,
  /** A name's request the relay thread dialled from an answer it remembered: for the record. */
  NAMED = 7,
}

const RESUME_PHASES = ['version', 'auth', 'request'] as const;
/** The addon's resume codes for a client refused as soon as it was accepted: by clients.allow, or at the session limit. */
const RESUME_DENIED = 3;
const RESUME_LIMIT = 4;
const RESUME_CLIENT_LIMIT = 5;
const METHOD_BYTES = { none: Method.NONE, userpass: Method.USERPASS } as const;
const SETTINGS_HEADER = 48;
/**
 * Contexts kept per listener beyond the oldest one a session not yet told to
 * JavaScript may have been accepted under: a bound on memory for a storm of
 * reloads, far beyond what the relay thread lags behind.
 */
const GENERATIONS_KEPT = 64;
const NETWORK_BYTES = 18;

/** What a native listener's owner (the server) does with its sessions. */
export interface NativeOwner {
  /**
   * The authenticator is the built-in users list, whose verdict on a password
   * does not change until a reload: the relay thread may remember it.
   */
  readonly rememberCredentials: boolean;
  /** The context a session accepted now gets (a reload replaces it). */
  context(): SessionContext;
  nextId(): number;
  /** A session began (it is not yet known whether it stays native). */
  opened(session: NativeSession): void;
  /** The session left the native path: go on with `socket` from `resume`. */
  handedOver(session: NativeSession, socket: Socket, resume: SessionResume): void;
  /** The relay thread refused the connection and closed it: record why. */
  refused(session: NativeSession, why: Refusal): void;
  /** A name's addresses, looked up before the session is handed over, for the dialer that takes it (see LookupHandOff). */
  keepLookup(client: string, host: string, addresses: readonly ResolvedAddress[]): void;
  /** The relay thread could not accept for want of descriptors (told at most once a second). */
  acceptFailed(error: Error): void;
}

/** Why a connection was closed as soon as it was accepted: clients.allow, the session limit, or its client's. */
export type Refusal = 'not-allowed' | 'limit-reached' | 'client-limit';

/** The places of limits.sessions taken: sessions held, and relay pipes in sessions' places. */
export interface PlacesTaken {
  readonly sessions: number;
  readonly pipes: number;
}

/**
 * A server's count of its sessions, which the relay thread reads to refuse
 * connections past `limit` as it accepts them (the server keeps `sessions`
 * at its own count; `unreported` is what the relay thread accepted and has
 * not yet told). The relay thread also counts each client's sessions
 * against `perClient`, and gives back the slot of a session it ended
 * itself; the server gives back, with `release`, that of a session handed
 * over to it.
 */
export class SessionGate {
  /** For listenNatively. */
  readonly handle: object;
  readonly #addon: Addon;
  readonly #counts: Int32Array;

  constructor(addon: Addon, handle: object, buffer: ArrayBuffer) {
    this.#addon = addon;
    this.handle = handle;
    this.#counts = new Int32Array(buffer, 0, 4);
  }

  /** Infinity: no limit per client. */
  set perClient(limit: number) {
    this.#counts[3] = Math.min(limit, 0x7fffffff);
  }

  /** The session from `clientAddress` that took a slot (NativeSession.holdsClientSlot) is over. */
  release(clientAddress: string): void {
    this.#addon.releaseClient(this.handle, clientAddress);
  }

  set sessions(count: number) {
    this.#counts[0] = count;
  }

  /** Infinity (or anything past an Int32): no limit. */
  set limit(limit: number) {
    this.#counts[1] = Math.min(limit, 0x7fffffff);
  }

  get unreported(): number {
    return this.#counts[2]!;
  }
}

/** A new gate, or null when the addon is not loaded. */
export function sessionGate(): SessionGate | null {
  const addon = frontendOrNull()?.addon;
  if (!addon) return null;
  const [handle, buffer] = addon.sessionGate();
  return new SessionGate(addon, handle, buffer);
}

/** A listener whose connections the relay thread accepts. */
export interface NativeListener {
  /** New sessions use these settings from now on (reload). */
  configure(ctx: SessionContext, allow: readonly AllowedNetwork[] | null): void;
  /**
   * Stops accepting now; sessions already accepted go on. Resolves once the
   * owner has been told of every session the listener accepted.
   */
  close(): Promise<void>;
}

/** A network of `clients.allow`, as the schema parses it. */
export type AllowedNetwork = NonNullable<ReturnType<typeof parseNetwork>>;

/**
 * A listener's contexts by the generation of its settings: a session
 * accepted just before a reload is told to JavaScript just after it, and
 * must get the context the relay thread used (its methods and its rules'
 * indexes, above all), never a newer one. The relay thread tells a listener's
 * sessions in the order it accepted them, so once a session of generation g
 * is told, no older generation is asked for again.
 */
class Generations {
  readonly #contexts = new Map<number, SessionContext>();
  #latest = 0;

  constructor(first: SessionContext) {
    this.#contexts.set(0, first);
  }

  add(ctx: SessionContext): number {
    this.#contexts.set(++this.#latest, ctx);
    this.#contexts.delete(this.#latest - GENERATIONS_KEPT);
    return this.#latest;
  }

  /** The context of a session accepted under `generation`, or null if a storm of reloads evicted it. */
  told(generation: number): SessionContext | null {
    for (const older of this.#contexts.keys()) {
      if (older >= generation) break; // a Map keeps insertion order: ascending
      this.#contexts.delete(older);
    }
    return this.#contexts.get(generation) ?? null;
  }

  get latest(): SessionContext {
    return this.#contexts.get(this.#latest)!;
  }
}

interface Frontend {
  readonly addon: Addon;
  /** By listener tag, until the addon confirms the listener closed. */
  readonly owners: Map<number, { readonly owner: NativeOwner; readonly generations: Generations }>;
  readonly closing: Map<number, () => void>;
  readonly sessions: SessionTable<NativeSession>;
  nextTag: number;
}

let frontend: Frontend | null = null;

function frontendOrNull(): Frontend | null {
  if (frontend) return frontend;
  const addon = spliceAddon();
  if (!addon) return null;
  const state: Frontend = { addon, owners: new Map(), closing: new Map(), sessions: new SessionTable(), nextTag: 1 };
  addon.nativeInit(fromAddon((...message: NativeMessage) => dispatch(state, message)));
  frontend = state;
  return state;
}

/**
 * A TCP socket of this process's own on address:port with SO_REUSEPORT
 * (bindReusePort in native/splice.c): listening with `backlog`, or, when it
 * is null, only bound, which holds the port for the processes that bind it
 * after. Throws the system error (`listen EADDRINUSE`), or an Error when the
 * addon is not loaded.
 */
export function bindReusePort(address: string, port: number, backlog: number | null): { fd: number; port: number } {
  // The addon takes 32-bit integers: a port out of range would wrap, not fail.
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`not a TCP port: ${port}`);
  const addon = spliceAddon();
  if (!addon) throw new Error('SO_REUSEPORT listeners need the splice addon');
  const [fd, bound] = addon.bindReusePort(address, port, backlog ?? -1);
  if (fd < 0) throw errnoError(backlog === null ? 'bind' : 'listen', -fd, formatDestination({ host: address, port }));
  return { fd, port: bound };
}

/**
 * Takes over accepting on `fd` (a listening socket Node bound; the caller
 * then closes Node's handle, the socket stays open in the addon). Returns null
 * when the addon is not loaded.
 */
export function listenNatively(fd: number, owner: NativeOwner, allow: readonly AllowedNetwork[] | null, gate: SessionGate | null): NativeListener | null {
  const state = frontendOrNull();
  if (!state) return null;
  const tag = state.nextTag++;
  const generations = new Generations(owner.context());
  const handle = state.addon.listen(fd, tag, encodeSettings(owner, owner.context(), allow, 0), gate?.handle ?? null);
  state.owners.set(tag, { owner, generations });
  let closed: Promise<void> | null = null;
  return {
    configure(ctx, networks) {
      if (!closed) state.addon.configure(handle, encodeSettings(owner, ctx, networks, generations.add(ctx)));
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        state.closing.set(tag, resolve);
        state.addon.unlisten(handle);
      });
      return closed;
    },
  };
}

/**
 * The settings a listener's new sessions get, in the addon's layout
 * (parse_settings in native/splice.c): method count and bytes in preference
 * order, whether requests are decided here, the allow count (all ones:
 * anyone), f64 handshake, connect and idle timeouts and the generation,
 * whether verdicts on passwords and on requests may be remembered by the
 * client's port or without it, then each allowed network as family, prefix
 * and 16 address bytes.
 */
function encodeSettings(owner: NativeOwner, ctx: SessionContext, allow: readonly AllowedNetwork[] | null, generation: number): Buffer {
  const count = allow?.length ?? 0;
  const buf = Buffer.alloc(SETTINGS_HEADER + count * NETWORK_BYTES);
  const methods = ctx.methods.slice(0, 2);
  buf[0] = methods.length;
  methods.forEach((m, i) => { buf[1 + i] = METHOD_BYTES[m]; });
  buf[3] = ctx.rules !== null ? 1 : 0;
  buf.writeUInt32LE(allow ? count : 0xffffffff, 4);
  buf.writeDoubleLE(ctx.handshakeMs, 8);
  buf.writeDoubleLE(ctx.connectMs, 16);
  buf.writeDoubleLE(ctx.idleMs, 24);
  buf.writeDoubleLE(generation, 32);
  buf[40] = owner.rememberCredentials ? 1 : 0;
  buf[41] = ctx.rules?.usesClientPort ? 1 : 0;
  allow?.forEach((net, i) => {
    const at = SETTINGS_HEADER + i * NETWORK_BYTES;
    buf[at] = net.family;
    buf[at + 1] = net.prefix;
    addressBytes(net.address, net.family).copy(buf, at + 2);
  });
  return buf;
}

/** An IPv4-mapped address written as Node writes a socket's address (`::ffff:127.0.0.1`). */
function unmappedText(host: string): string {
  if (!ipaddr.IPv6.isValid(host)) return host;
  const address = ipaddr.IPv6.parse(host);
  return address.isIPv4MappedAddress() ? `::ffff:${address.toIPv4Address().toString()}` : host;
}

function addressBytes(address: string, family: 4 | 6): Buffer {
  return Buffer.from(family === 4 ? ipaddr.IPv4.parse(address).toByteArray() : ipaddr.IPv6.parse(address).toByteArray());
}

/** An IPv6 address naming its interface (`fe80::1%eth0`), which the addon's dial() cannot carry. */
function hasZone({ address }: ResolvedAddress): boolean {
  return address.includes('%');
}

/** A name's addresses as the addon's dial() takes them: 17 bytes each, the family (4 or 6), then the address. */
function dialList(addresses: readonly ResolvedAddress[]): Buffer {
  const list = Buffer.alloc(addresses.length * 17);
  addresses.forEach(({ address, family }, i) => {
    list[i * 17] = family;
    addressBytes(address, family).copy(list, i * 17 + 1);
  });
  return list;
}

function dispatch(state: Frontend, [type, id, handle, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, payload]: NativeMessage): void {
  if (type === Message.LISTENER_CLOSED) {
    state.owners.delete(n0);
    state.closing.get(n0)?.();
    state.closing.delete(n0);
    return;
  }
  if (type === Message.ACCEPT_FAILED) {
    const counted = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
    const since = `${counted(n2, 'connection')} closed unserved, ${counted(n3, 'pause')} of 100 ms since the last report`;
    state.owners.get(n0)?.owner.acceptFailed(errnoError('accept', n1, `(out of descriptors: ${since})`));
    return;
  }
  if (type === Message.OPEN) {
    const listener = state.owners.get(n0);
    if (!listener || !handle) return; // not ours (cannot happen: a listener's sessions come before its close)
    const { owner, generations } = listener;
    const ctx = generations.told(n2);
    const session = new NativeSession(owner, handle, state.addon, owner.nextId(), payload as string, n1, ctx ?? generations.latest, n4 === 1,
      n5 >= 0 ? { sessions: n5, pipes: n6 } : null);
    state.sessions.set(id, session);
    if (n3 === 0) owner.opened(session); // else refused (1: clients.allow, 2: the session limit, 3: its client's); its hand-over follows
    // Its context is gone: deciding with another one could mix two configurations. Refuse it.
    if (!ctx) session.shutdown();
    return;
  }
  const session = state.sessions.get(id);
  if (!session) return;
  const bytes = payload as Buffer;
  switch (type) {
    case Message.AUTH:
      return session.verify(bytes);
    case Message.DECIDE: {
      const { user, rest } = splitUser(bytes);
      return session.decide(user, rest);
    }
    case Message.NAMED: {
      const { user, rest } = splitUser(bytes);
      return session.named(user, rest);
    }
    case Message.HAND_OVER: {
      state.sessions.delete(id);
      const { user, rest } = splitUser(bytes);
      const dialLocal = n6 === 4 || n6 === 6 ? { family: n6, port: n7 } as const : null;
      return session.handOver({ fd: n0, resume: n1, method: n2, connectErrno: n3, timedOut: n4 === 1, clientErrno: n5, dialLocal, dialFailed: n8 }, user, rest);
    }
    case Message.END: {
      state.sessions.delete(id);
      const { user, rest } = splitUser(bytes);
      return session.end({ up: n0, down: n1, reason: n2, firstEof: n3, errorSide: n4, errno: n5, rule: n6, method: n7, version: n8, replied: n9 }, user, rest);
    }
  }
}

/** A hand-over or end payload: a flag byte, the username's length and bytes, then the rest. */
function splitUser(payload: Buffer): { user: string | null; rest: Buffer } {
  const length = payload[1] ?? 0;
  const user = payload[0] === 1 ? payload.toString('utf8', 2, 2 + length) : null;
  return { user, rest: payload.subarray(2 + length) };
}

/** How a native session ended, as the addon reports it. */
interface NativeEnd {
  readonly up: number;
  readonly down: number;
  readonly reason: number;
  readonly firstEof: number;
  readonly errorSide: number;
  readonly errno: number;
  /** The index of the rule that allowed the request; -1: none. */
  readonly rule: number;
  /** The SOCKS5 method chosen; -1: none yet. */
  readonly method: number;
  /** 5 once the first byte was read, else 0. */
  readonly version: number;
  /** 1 once the success reply went out and the pair relayed; 0 if it ended before (a shutdown). */
  readonly replied: number;
}

/** How a connection left the native path, as the addon reports it. */
interface NativeHandOver {
  readonly fd: number;
  /** Where the session goes on: RESUME_PHASES, or a refusal (RESUME_DENIED, RESUME_LIMIT, RESUME_CLIENT_LIMIT). */
  readonly resume: number;
  /** The SOCKS5 method chosen; -1: none yet. */
  readonly method: number;
  /** The connect to the destination failed so (0: it did not). */
  readonly connectErrno: number;
  /** A deadline passed: the handshake's, or the connect's when connectErrno is set. */
  readonly timedOut: boolean;
  /** Reading from the client failed so (a reset), 0 if not. */
  readonly clientErrno: number;
  /** connect() failed at once on a socket left at the wildcard address of this family, on this port. */
  readonly dialLocal: { readonly family: 4 | 6; readonly port: number } | null;
  /** A name's: the index of the address whose failure connectErrno is (-1: none). */
  readonly dialFailed: number;
}

function methodName(method: number): 'none' | 'userpass' | null {
  return method === Method.USERPASS ? 'userpass' : method === Method.NONE ? 'none' : null;
}

/** Why a password check or lookup was dropped: one object for every session, as an Error's stack costs microseconds. */
const LET_GO = new Error('the session left the relay thread');

/**
 * A session the relay thread negotiates (and then splices), as the server
 * sees it: enough to count it, shut it down, and write its record.
 */
export class NativeSession {
  readonly id: number;
  readonly clientAddress: string;
  readonly clientPort: number;
  /** It took a slot of its client's at the relay thread (limits.sessionsPerClient): the relay thread gives it back if the session ends there, the server if it was handed over. */
  readonly holdsClientSlot: boolean;
  /** Refused at limits.sessions: what the relay thread counted then (sessions held, pipes in sessions' places). */
  readonly limitSeen: PlacesTaken | null;
  readonly #owner: NativeOwner;
  readonly #handle: object;
  readonly #addon: Addon;
  /** The context this session started with. */
  readonly ctx: SessionContext;
  readonly #startedAt: number;
  readonly #startedMono = performance.now();
  #user: string | null = null;
  /** The credentials were refused: by the authenticator (error null), or because it failed (its error). */
  #authRefused: { readonly error: unknown } | null = null;
  /**
   * The password check or lookup under way, if any: aborted if the addon lets
   * the session go first. Dropped as soon as it answers, so a relayed session
   * holds none (one whose signal has been read is about 760 bytes), and the
   * end aborts nothing (aborting a signal nobody listens to costs microseconds).
   */
  #underWay: AbortController | null = null;
  /** Handed over or ended: the addon has forgotten the handle. */
  #gone = false;
  #shutdown = false;
  /** A CONNECT to a name: the request's destination, and the addresses the relay thread was told to race. */
  #named: { readonly destination: Destination; addresses: readonly ResolvedAddress[] } | null = null;
  /** The lookup of a name failed: the session it is handed to refuses with this, without looking it up again. */
  #lookupFailure: SocksError | null = null;

  constructor(
    owner: NativeOwner, handle: object, addon: Addon, id: number, address: string, port: number, ctx: SessionContext,
    holdsClientSlot: boolean, limitSeen: PlacesTaken | null = null,
  ) {
    this.holdsClientSlot = holdsClientSlot;
    this.limitSeen = limitSeen;
    this.#owner = owner;
    this.#handle = handle;
    this.#addon = addon;
    this.id = id;
    this.clientAddress = peerAddress(address);
    this.clientPort = port;
    this.ctx = ctx;
    this.#startedAt = ctx.now();
  }

  /**
   * shutdown() was called. The addon may have handed the connection over
   * before it saw the cancel: then the Node session taking it must end too.
   */
  get shutDown(): boolean {
    return this.#shutdown;
  }

  /** Ends the session now, whatever its phase (server shutdown); its record follows. */
  shutdown(): void {
    if (this.#gone || this.#shutdown) return;
    this.#shutdown = true;
    this.#addon.cancel(this.#handle);
  }

  /** RFC 1929 credentials arrived: check them and tell the relay thread. */
  verify(message: Buffer): void {
    const ctx = this.ctx;
    let username: string;
    let password: string;
    try {
      const decoded = decodeUserPass(message);
      if (decoded === NEED_MORE || !decoded.value.wellFormed) throw new Error('incomplete, or not UTF-8');
      ({ username, password } = decoded.value);
    } catch {
      return this.#answer(false); // the session decodes it again and says why
    }
    this.#user = username;
    const check = this.#begin();
    const context = { clientAddress: this.clientAddress, signal: check.signal };
    const { authenticator } = ctx;
    const verdict = authenticator ? promiseFrom(() => authenticator.verify(username, password, context)) : Promise.resolve(false);
    verdict.then(
      (ok) => {
        this.#settled(check);
        // Only true accepts (as in the node engine): a truthy string from a
        // careless authenticator is not a yes, and the addon takes booleans only.
        const accepted = ok === true;
        if (!accepted) this.#authRefused = { error: null };
        this.#answer(accepted, accepted && this.#owner.rememberCredentials ? 1 : -1);
      },
      (err: unknown) => {
        this.#settled(check);
        // The session the refusal is handed to records the failure; it does not ask again.
        this.#authRefused = { error: err ?? new Error('rejected without a reason') };
        this.#answer(false);
      },
    );
  }

  /** A CONNECT request arrived, to an address while request rules exist, or to a name: decide it. */
  decide(user: string | null, request: Buffer): void {
    const ctx = this.ctx;
    this.#user = user;
    let decoded;
    try {
      decoded = decodeRequest(request);
    } catch {
      return this.#answer(false); // the session decodes it again and says why
    }
    if (decoded === NEED_MORE) return this.#answer(false);
    const destination = decoded.value.destination;
    const decision = ctx.rules?.decide({
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      command: 'connect',
      destination,
      user: this.#user,
      listener: ctx.listener,
    });
    // A refusal is the session's to send and record: hand it over.
    if (decision && !decision.allowed) return this.#answer(false);
    const rule = decision ? decision.index : -1;
    if (destination.kind === 'domain') return this.#resolve(destination, rule);
    // An allow is remembered for the same client, request and user until a reload.
    this.#answer(true, rule);
  }

  /**
   * A name the rules allowed: look it up as the node engine's dialer would,
   * and have the relay thread race its addresses as that dialer does (Happy
   * Eyeballs). A failed lookup is handed over with its failure: the session
   * taking over refuses it without looking again. So is an answer the
   * relay thread does not take, with the answer kept for the dialer: more
   * than NATIVE_DIAL_ADDRESSES addresses, or an IPv6 address with a zone
   * (`fe80::1%eth0`: the relay thread takes 16 bytes, no interface).
   */
  #resolve(destination: Destination, rule: number): void {
    this.#named = { destination, addresses: [] };
    const lookup = this.#begin();
    resolveDialable(this.ctx.resolver, destination.host, { client: this.clientAddress, signal: lookup.signal }).then(
      (addresses) => {
        this.#settled(lookup);
        if (this.#gone) return;
        if (addresses.length > NATIVE_DIAL_ADDRESSES || addresses.some(hasZone)) {
          this.#owner.keepLookup(this.clientAddress, destination.host, addresses);
          return this.#answer(false);
        }
        this.#named!.addresses = addresses;
        this.#addon.dial(this.#handle, dialList(addresses), rule, ATTEMPT_DELAY_MS, answerReuseMs(this.ctx.resolver));
      },
      (err: unknown) => {
        this.#settled(lookup);
        this.#lookupFailure = toSocksError(err);
        this.#answer(false);
      },
    );
  }

  /**
   * The relay thread dialled a name's request from an answer it remembered
   * (the same client, request and user within the resolver's reuseMs),
   * without a decide: what was asked for, for the record. Should that race
   * fail, the session is handed over to look the name up afresh.
   */
  named(user: string | null, request: Buffer): void {
    this.#user = user;
    const decoded = decodeRequest(request);
    if (decoded !== NEED_MORE) this.#named = { destination: decoded.value.destination, addresses: [] };
  }

  /**
   * The addon has forgotten the handle. A password check or a lookup still
   * under way is dropped: nobody reads its answer (a session taking the
   * connection over asks again if it still needs one).
   */
  #letGo(): void {
    this.#gone = true;
    this.#underWay?.abort(LET_GO);
    this.#underWay = null;
  }

  /** A password check or lookup starts: #letGo drops it until it answers. */
  #begin(): AbortController {
    const work = new AbortController();
    this.#underWay = work;
    return work;
  }

  /** It answered: nothing is left to drop. */
  #settled(work: AbortController): void {
    if (this.#underWay === work) this.#underWay = null;
  }

  #answer(goOn: boolean, rememberAs = -1): void {
    if (!this.#gone) this.#addon.answer(this.#handle, goOn, rememberAs);
  }

  handOver({ fd, resume: resumeCode, method, connectErrno, timedOut, clientErrno, dialLocal, dialFailed }: NativeHandOver, user: string | null, buffer: Buffer): void {
    this.#letGo();
    this.#user = user;
    // A refusal comes without a descriptor: the relay thread closed it.
    if (resumeCode === RESUME_DENIED) return this.#owner.refused(this, 'not-allowed');
    if (resumeCode === RESUME_LIMIT) return this.#owner.refused(this, 'limit-reached');
    if (resumeCode === RESUME_CLIENT_LIMIT) return this.#owner.refused(this, 'client-limit');
    const socket = new Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
    const phase = RESUME_PHASES[resumeCode] ?? 'version';
    this.#owner.handedOver(this, socket, {
      phase,
      buffer,
      startedAt: this.#startedAt,
      startedMono: this.#startedMono,
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      authMethod: phase === 'version' ? null : methodName(method),
      user: this.#user,
      timedOut: timedOut && connectErrno === 0,
      authRefused: this.#authRefused,
      dialFailure: phase !== 'request' ? null : connectErrno !== 0 ? this.#dialFailure(buffer, connectErrno, timedOut, dialLocal, dialFailed) : this.#lookupFailure,
      clientError: clientErrno !== 0 ? errnoError('read', clientErrno) : null,
    });
  }

  #dialFailure(request: Buffer, errno: number, timedOut: boolean, local: NativeHandOver['dialLocal'], failed: number): SocksError {
    const decoded = decodeRequest(request);
    const target = decoded === NEED_MORE ? { host: '?', port: 0 } : decoded.value.destination;
    if (timedOut) return connectTimeoutError(target, this.ctx.connectMs);
    // A name: Node words the failure with the address whose failure it kept.
    const host = this.#named?.addresses[failed]?.address ?? target.host;
    // Worded as Node words a failed connect (no brackets around IPv6), as the node engine records it;
    // a connect() that failed at once names the socket's own address too, as Node's internalConnect does.
    const own = local ? ` - Local (${local.family === 6 ? '::' : '0.0.0.0'}:${local.port})` : '';
    return toSocksError(errnoError('connect', errno, `${host}:${target.port}${own}`));
  }

  end({ up, down, reason, firstEof, errorSide, errno, rule, method, version, replied }: NativeEnd, user: string | null, request: Buffer): void {
    this.#letGo();
    this.#user = user;
    const ctx = this.ctx;
    const decoded = request.length > 0 ? decodeRequest(request) : NEED_MORE;
    // What was dialled (for a name, the address that won the race), and what was asked for.
    const dialled = decoded !== NEED_MORE ? decoded.value.destination : null;
    const destination = this.#named?.destination ?? dialled;
    const relayed = dialled !== null && destination !== null && replied === 1;
    const end = spliceEnd(reason, firstEof, errorSide, errno);
    // Ended before relaying: only a shutdown does that (anything else is handed over).
    const error = end.error?.message ?? (relayed ? null : 'server shutting down');
    const ruleName = rule >= 0 && ctx.rules ? ctx.rules.decisionAt(rule).rule : null;
    const record: SessionRecord = {
      id: this.id,
      listener: ctx.listener,
      clientAddress: this.clientAddress,
      clientPort: this.clientPort,
      version: version === 5 ? 5 : null,
      authMethod: methodName(method),
      user: this.#user,
      command: destination ? 'connect' : null,
      requested: destination && formatDestination(destination),
      connected: relayed ? formatDestination({ host: unmappedText(dialled.host), port: dialled.port }) : null,
      reply: relayed ? 0 : null,
      bytesUp: up,
      bytesDown: down,
      relay: relayed ? 'splice' : null,
      datagramsUp: 0,
      datagramsDown: 0,
      datagramsDropped: 0,
      datagramsDenied: 0,
      startedAt: this.#startedAt,
      durationMs: elapsedMs(this.#startedMono),
      reason: end.reason,
      error,
      rule: ruleName,
    };
    ctx.onClose(record);
  }
}
