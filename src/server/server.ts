/**
 * The server: listeners, the client rules applied before any byte is read,
 * the set of live sessions, and graceful shutdown. It emits typed events
 * (see observe/events.ts) and knows nothing of who listens to them.
 */
import { EventEmitter } from 'node:events';
import { closeSync } from 'node:fs';
import { type Server as NetServer, type Socket, createServer as createNetServer, isIP } from 'node:net';
import { type Authenticator, UserStore, readUsersFile, storedSecret, type StoredSecret } from '../auth/users.js';
import { validateConfig } from '../config/load.js';
import { RESTART_KEYS, type RestartSettings, valueAt } from '../config/restart.js';
import { type Config, type ConfigInput, LONGEST_TIMER_MS, type ListenerConfig, parseNetwork } from '../config/schema.js';
import { type CloseReason, type ListenerInfo, type ServerEvents, type SessionRecord, sessionsOpen } from '../observe/events.js';
import { boundAddressSpelling, clientBlock, formatDestination, peerAddress } from '../protocol/address.js';
import { throwLater } from '../callbacks.js';
import { borrowedPipes, peerAfterReset, requestBusyPoll, spliceUnavailable } from '../relay/splice.js';
import type { RelayEngine } from '../relay/tcp.js';
import { type Dialer, createDirectDialer } from '../upstream/dialer.js';
import { LookupHandOff } from '../upstream/lookup-hand-off.js';
import { type Resolver, systemResolver } from '../upstream/resolver.js';
import { Session, type SessionContext, type SessionResume } from './session.js';
import { SessionTable } from './session-table.js';
import {
  type AllowedNetwork, type NativeListener, type NativeOwner, type NativeSession, type PlacesTaken, type Refusal, type SessionGate,
  bindReusePort, listenNatively, sessionGate,
} from './native.js';
import { LIMIT_REPORT_EVERY_MS, openFilesLimit, reserveSessionDescriptors, sessionLimit } from './session-limit.js';
import { type RuleSet, compileRules } from '../policy/rules.js';
import { NetworkSet, canonicalNetwork } from '../policy/networks.js';

/** Collaborators a library user (or a test) may replace. */
export interface ServerDependencies {
  /** Resolves destination names; default: the system resolver. */
  readonly resolver?: Resolver;
  /** Opens outbound connections; default: the direct Happy-Eyeballs dialer over `resolver`. */
  readonly dialer?: Dialer;
  /** Checks username/password; default: the users from the config and users file. */
  readonly authenticator?: Authenticator;
  /** Milliseconds since the epoch; default `Date.now`. */
  readonly now?: () => number;
}

export type ServerOptions = ConfigInput & ServerDependencies;

/** How `listen()` binds. */
export interface ListenOptions {
  /**
   * For several processes serving the same port (the CLI's `--workers`):
   * each listener gets a socket of this process's own with SO_REUSEPORT, and
   * the kernel spreads new connections among the processes. `ports[i]`
   * stands in for listener i's port when the configuration says 0 (the port
   * the supervising process reserved, so that every worker binds the same).
   * Only with native handshakes (the addon accepts on the socket); otherwise
   * ignored, and Node binds as usual (in a cluster worker: through the primary).
   */
  readonly reusePort?: { readonly ports: readonly number[] };
  /**
   * How many processes serve these listeners together, this one included
   * (the CLI's workers): each applies its share of a numeric
   * `limits.sessions`. Default 1.
   */
  readonly sharedBy?: number;
}

/** A listener that could not be bound; the message is one line for operators. */
export class ListenError extends Error {
  readonly code: string;

  constructor(address: string, port: number, err: NodeJS.ErrnoException) {
    const why = err.code === 'EADDRINUSE' ? 'address already in use'
      : err.code === 'EACCES' ? 'permission denied'
      : err.code === 'EADDRNOTAVAIL' ? 'address not available on this host'
      : err.message;
    super(`cannot listen on ${formatDestination({ host: address, port })}: ${why}`, { cause: err });
    this.name = 'ListenError';
    this.code = err.code ?? 'ERR_LISTEN';
  }
}

/** `relay.engine: splice` on a machine without the addon cannot run as asked. */
export class RelayEngineError extends Error {
  override readonly name = 'RelayEngineError';
}

function resolveRelayEngine(wanted: Config['relay']['engine']): RelayEngine {
  if (wanted === 'stream') return 'stream';
  const why = spliceUnavailable();
  if (why === null) return 'splice';
  if (wanted === 'splice') throw new RelayEngineError(`relay.engine is splice, but the splice addon cannot be used: ${why}`);
  return 'stream';
}

/** How the SOCKS5 exchange runs: `native` in the addon for the common case, `node` always in a Node session. */
export type HandshakeEngine = 'native' | 'node';

function resolveHandshakeEngine(wanted: Config['handshake']['engine'], relay: RelayEngine, customDialer: boolean): HandshakeEngine {
  if (wanted === 'node') return 'node';
  // The splice relay runs only when the addon loaded, and the addon is all native handshakes need besides.
  const why = relay !== 'splice' ? `it needs the splice relay (${spliceUnavailable() ?? 'relay.engine is stream'})`
    : customDialer ? 'a custom dialer is in use (the addon dials directly)'
    : null;
  if (why === null) return 'native';
  if (wanted === 'native') throw new RelayEngineError(`handshake.engine is native, but ${why}`);
  return 'node';
}

const DEPENDENCY_KEYS = ['resolver', 'dialer', 'authenticator', 'now'] as const;

/** What `SocksServer.reload` did: key paths now in effect for new sessions, and those left as they were. */
export interface ReloadResult {
  /** Key paths whose new values new sessions use, e.g. `rules`, `auth.users`, `timeouts.connect`. */
  readonly changed: readonly string[];
  /** Key paths that changed but cannot apply without a restart (`listen`, `workers`, `relay.engine`, `log.format`); not applied. */
  readonly needsRestart: readonly string[];
}

/** The server's events: those of observe/events.ts, and `reload`. */
export interface SocksServerEvents extends ServerEvents {
  /** A reload succeeded (a failed one throws to its caller and emits nothing). */
  reload: [ReloadResult];
}

/**
 * `input`, validated, with `kept`'s values at the restart keys, as a reload
 * keeps them: what a replacement worker builds from when the config file
 * changed since the service started (cli.ts). Throws ConfigError as
 * createServer does. `needsRestart`: the key paths whose file value was set aside.
 */
export function keepRestartSettings(input: ConfigInput, kept: RestartSettings): { input: ConfigInput; needsRestart: string[] } {
  const wanted = validateConfig(input);
  const needsRestart = differingRestartKeys(kept, wanted);
  return { input: needsRestart.length === 0 ? input : withRestartSettings(wanted, kept), needsRestart };
}

function differingRestartKeys(kept: RestartSettings, wanted: Config): string[] {
  return RESTART_KEYS.filter((key) => !sameValue(valueAt(kept, key), valueAt(wanted, key)));
}

function withRestartSettings(wanted: Config, kept: RestartSettings): ConfigInput {
  return {
    ...wanted,
    listen: kept.listen,
    workers: kept.workers,
    relay: { ...wanted.relay, engine: kept.relay.engine },
    handshake: { ...wanted.handshake, engine: kept.handshake.engine },
    log: { ...wanted.log, format: kept.log.format },
  };
}

/** Validates the options (throws ConfigError or UsersFileError) and builds a server. Call `listen()` to start it. */
export function createServer(options: ServerOptions = {}): SocksServer {
  const input: Record<string, unknown> = { ...options };
  for (const key of DEPENDENCY_KEYS) delete input[key];
  return new SocksServer(validateConfig(input, { ownAuthenticator: options.authenticator !== undefined }), options);
}

export class SocksServer extends EventEmitter<SocksServerEvents> {
  /** The configuration in effect (for new sessions): validated, frozen; replaced by `reload`. */
  #config: Config;
  readonly #dialer: Dialer;
  readonly #resolver: Resolver;
  /** Native sessions' lookups whose answers the relay thread does not race (over 64 addresses, or an IPv6 address with a zone), for the node engine's dialer that takes them over. */
  readonly #lookupHandOff = new LookupHandOff();
  /** UDP associations per client address, against udp.maxAssociationsPerClient (updated by reload). */
  readonly #udpSlots: ClientSlots;
  /** The library's own authenticator, when it gave one: a reload keeps it. */
  readonly #customAuthenticator: boolean;
  #authenticator: Authenticator | null;
  /** The users behind #authenticator (config and users file), to tell whether a reload changed them. */
  #users: LoadedUsers | null;
  readonly #now: () => number;
  #allow: NetworkSet | null;
  /** Request rules, compiled once per configuration; null when none are configured. */
  #rules: RuleSet | null;
  /** Per bound listener, the context new sessions get; a reload replaces each `ctx` at once. */
  readonly #listeners: ListenerSlot[] = [];
  readonly #servers: NetServer[] = [];
  readonly #bound: ListenerInfo[] = [];
  readonly #sessions = new SessionTable<Session | NativeSession>();
  /** `limits.sessions` as this process applies it (Infinity: none). */
  #sessionLimit: number;
  /** Processes sharing the listeners (ListenOptions.sharedBy). */
  #sharedBy = 1;
  /** The count the relay thread reads to refuse past the limit; made with the first native listener. */
  #gate: SessionGate | null = null;
  /** Sessions per client (`limits.sessionsPerClient`) of the connections Node accepts; the relay thread counts its own. */
  readonly #clientSessions: ClientSlots;
  /** The client slot each session holds, by session id: what to give back when it ends. */
  readonly #slotsHeld = new SessionTable<{ readonly native: boolean; readonly client: string; handedOver?: boolean }>();
  /** Connections refused at the limit since `session-limit` was last told, and when (performance.now()). */
  #refusedAtLimit = 0;
  #limitToldAt = -Infinity;
  /** The TCP relay engine sessions use, `relay.engine` resolved against what this machine has. */
  readonly relayEngine: RelayEngine;
  #handshakeEngine: HandshakeEngine;
  #nextId = 1;
  #state: 'new' | 'listening' | 'closing' | 'closed' = 'new';
  #drained: (() => void) | null = null;
  /** close()'s promise, from its first call. */
  #closing: Promise<void> | null = null;
  /** When close() cuts the sessions still open (Date.now(); Infinity: never), and its timer once draining. */
  #cutAt = Infinity;
  #cutTimer: NodeJS.Timeout | undefined;

  constructor(config: Config, deps: ServerDependencies = {}) {
    super();
    this.#config = config;
    this.#now = deps.now ?? Date.now;
    this.#resolver = deps.resolver ?? systemResolver;
    this.#dialer = deps.dialer ?? createDirectDialer({ resolver: this.#lookupHandOff.resolver(this.#resolver) });
    this.#customAuthenticator = deps.authenticator !== undefined;
    this.#users = this.#customAuthenticator ? null : loadUsers(config);
    this.#authenticator = deps.authenticator ?? (this.#users ? new UserStore(this.#users.all) : null);
    this.#allow = buildAllowList(config.clients.allow);
    this.#rules = compileRules(config.rules);
    this.#udpSlots = new ClientSlots(config.udp.maxAssociationsPerClient);
    this.relayEngine = resolveRelayEngine(config.relay.engine);
    this.#handshakeEngine = resolveHandshakeEngine(config.handshake.engine, this.relayEngine, deps.dialer !== undefined);
    this.#sessionLimit = this.#limitFor(config);
    this.#clientSessions = new ClientSlots(config.limits.sessionsPerClient ?? Infinity);
  }

  /**
   * Who runs handshakes: `handshake.engine` resolved against this machine.
   * In a cluster worker that binds through Node (not `listen({ reusePort })`)
   * the primary accepts and hands each worker its connections, so there the
   * listeners stay on `node` once bound.
   */
  get handshakeEngine(): HandshakeEngine {
    return this.#handshakeEngine;
  }

  /** `relay.busyPollMicroseconds` as it applies here: 0 unless the splice relay runs. */
  get busyPollMicroseconds(): number {
    return this.relayEngine === 'splice' ? this.#config.relay.busyPollMicroseconds : 0;
  }

  /** The validated, frozen configuration in effect for new sessions (after a reload, the reloaded one). */
  get config(): Config {
    return this.#config;
  }

  /**
   * Validates `input` with the same schema as `createServer` and, if it is
   * valid, makes new sessions use it: request rules, users (config and users
   * file, read again), auth methods, `clients.allow`, timeouts, limits, `udp`,
   * `bind`, `log.level`. Sessions already accepted keep the settings they
   * started with and are not disturbed. `listen`, `workers`, `relay.engine`
   * and `log.format` cannot change without a restart: a change to them is
   * listed in `needsRestart` and not applied.
   *
   * The collaborators (`resolver`, `dialer`, `authenticator`, `now`) stay:
   * the same ones may be given again, others throw a TypeError.
   *
   * Synchronous and all-or-nothing: an invalid input throws ConfigError
   * (`problems` name each key path) or UsersFileError, and the server is left
   * exactly as it was. On success emits `reload` with the result.
   */
  reload(input: ServerOptions = {}): ReloadResult {
    if (this.#state === 'closing' || this.#state === 'closed') throw new Error(`server is ${this.#state}`);
    const old = this.#config;
    const ownAuthenticator = { ownAuthenticator: this.#customAuthenticator };
    const wanted = validateConfig(this.#withoutCollaborators(input), ownAuthenticator);
    const needsRestart = differingRestartKeys(old, wanted);
    // What restarts would change stays; validated again as a whole, so that
    // e.g. an old non-loopback listener with a new `auth.methods: [none]` and
    // no `clients.allow` is refused here as it would be at startup.
    const next = needsRestart.length === 0 ? wanted : validateConfig(withRestartSettings(wanted, old), ownAuthenticator);

    // Build everything first (this may throw: users file), then swap at once.
    const users = this.#customAuthenticator ? null : loadUsers(next);
    const authenticator = this.#customAuthenticator ? this.#authenticator
      // Same users: keep the store and its cache of verified passwords. Any
      // difference: a new store, so a changed hash never accepts the old password.
      : users && this.#users && sameUsers(users.all, this.#users.all) ? this.#authenticator
      : users ? new UserStore(users.all) : null;
    // The same users file named, but its content changed on disk.
    const usersFileChanged = users?.file !== undefined && this.#users?.file !== undefined
      && next.auth.usersFile === old.auth.usersFile && !sameUsers(users.file, this.#users.file);
    const rules = compileRules(next.rules);
    const allow = buildAllowList(next.clients.allow);

    const changed = changedKeys(old, next);
    if (usersFileChanged) changed.push('auth.usersFile');
    this.#config = next;
    this.#users = users;
    this.#authenticator = authenticator;
    this.#rules = rules;
    this.#allow = allow;
    this.#udpSlots.limit = next.udp.maxAssociationsPerClient;
    this.#applySessionLimit(this.#limitFor(next));
    this.#clientSessions.limit = next.limits.sessionsPerClient ?? Infinity;
    if (this.#gate) this.#gate.perClient = this.#clientSessions.limit;
    for (const slot of this.#listeners) {
      slot.ctx = this.#sessionContext(slot.ctx.listener, slot.config);
      slot.native?.configure(slot.ctx, allowedNetworks(next.clients.allow));
    }
    if (this.#state === 'listening') requestBusyPoll(this, this.busyPollMicroseconds);
    const result: ReloadResult = { changed, needsRestart };
    this.#tell('reload', result);
    return result;
  }

  /**
   * `input` without the collaborators, which a reload keeps: the very ones
   * given to createServer may come again (the same options object, with new
   * settings); others are refused, since the running sessions hold these.
   */
  #withoutCollaborators(input: ServerOptions): ConfigInput {
    const held: ServerDependencies = { resolver: this.#resolver, dialer: this.#dialer, authenticator: this.#authenticator ?? undefined, now: this.#now };
    const rest: Record<string, unknown> = { ...input };
    for (const key of DEPENDENCY_KEYS) {
      if (rest[key] !== undefined && rest[key] !== held[key]) throw new TypeError(`reload cannot replace the ${key} given to createServer: create a new server for another`);
      delete rest[key];
    }
    return rest;
  }

  /** Binds every listener; rejects with ListenError (and binds none) if one fails. */
  async listen(options: ListenOptions = {}): Promise<ListenerInfo[]> {
    if (this.#state !== 'new') throw new Error(`server is ${this.#state}`);
    const { sharedBy = 1 } = options;
    if (!Number.isInteger(sharedBy) || sharedBy < 1) throw new RangeError(`listen: sharedBy must be a whole number of processes, at least 1, not ${String(sharedBy)}`);
    this.#state = 'listening';
    this.#sharedBy = sharedBy;
    // Under Node handshakes too: the relay thread reads the session count
    // there before it lets a pipe take a session's place.
    if (this.relayEngine === 'splice') this.#sharedGate();
    this.#applySessionLimit(this.#limitFor(this.#config));
    const reusePorts = this.#handshakeEngine === 'native' ? options.reusePort?.ports : undefined;
    try {
      for (const [i, listener] of this.config.listen.entries()) {
        if (this.#state !== 'listening') throw closedWhileListening();
        if (reusePorts) this.#bindReusable(listener, reusePorts[i] || listener.port);
        else await this.#bind(listener);
      }
      // The last one's `listening` listener may have called close().
      if (this.#state !== 'listening') throw closedWhileListening();
    } catch (err) {
      // A close() already under way keeps its own grace; this one is not waited for.
      if (this.#closing === null) await this.close({ graceMs: 0 });
      throw err;
    }
    requestBusyPoll(this, this.busyPollMicroseconds);
    return this.addresses();
  }

  /** The bound addresses, with the real port when port 0 was asked for; none once close() is called. */
  addresses(): ListenerInfo[] {
    return [...this.#bound];
  }

  /** Sessions alive now, in any phase. */
  get sessionCount(): number {
    // And those the relay thread accepted (refusals apart) and has not yet
    // told: every native listener shares the gate.
    return this.#sessions.size + (this.#gate?.unreported ?? 0);
  }

  /**
   * How many sessions this process holds at most: `limits.sessions` as it
   * applies here (this process's share of a number; `auto` from the
   * open-files limit); Infinity for none.
   */
  get sessionLimit(): number {
    return this.#sessionLimit;
  }

  #limitFor(config: Config): number {
    return sessionLimit(config.limits.sessions, this.#sharedBy, config.limits.sessions === 'auto' ? openFilesLimit() : null);
  }

  #applySessionLimit(limit: number): void {
    this.#sessionLimit = limit;
    if (this.#gate) this.#gate.limit = limit;
    // The splice relay's pipes may use what the sessions leave of the descriptors.
    if (this.relayEngine === 'splice') reserveSessionDescriptors(this, limit, openFilesLimit());
  }

  /** Sessions held, and the relay's pipes that hold a session's place (see reserveSessionDescriptors). */
  #placesTakenNow(): PlacesTaken {
    return { sessions: this.sessionCount, pipes: this.relayEngine === 'splice' ? borrowedPipes() : 0 };
  }

  #track(id: number, session: Session | NativeSession): void {
    this.#sessions.set(id, session);
    if (this.#gate) this.#gate.sessions = this.#sessions.size;
  }

  #untrack(id: number): void {
    this.#sessions.delete(id);
    if (this.#gate) this.#gate.sessions = this.#sessions.size;
    const slot = this.#slotsHeld.get(id);
    if (slot === undefined) return;
    this.#slotsHeld.delete(id);
    // The relay thread gives back the slots of the sessions it ended itself.
    if (!slot.native) this.#clientSessions.release(slot.client);
    else if (slot.handedOver) this.#gate?.release(slot.client);
  }

  /**
   * Stops accepting, lets sessions finish for `graceMs` (default
   * `timeouts.shutdownGrace`), then closes the rest. Resolves when all are
   * gone. A later call returns the first one's promise: it too resolves only
   * once every session is gone. Its `graceMs`, when that ends sooner than the
   * grace under way, brings the cut forward (a second signal to the daemon);
   * a longer one changes nothing.
   */
  close(options: { graceMs?: number } = {}): Promise<void> {
    const { graceMs } = options;
    // NaN would pass every comparison below as "longer than a timer holds" and wait forever.
    if (graceMs !== undefined && !(typeof graceMs === 'number' && graceMs >= 0)) {
      return Promise.reject(new RangeError(`close: graceMs must be a number of milliseconds >= 0 or Infinity, not ${String(graceMs)}`));
    }
    if (this.#closing === null) this.#closing = this.#close(graceMs ?? this.config.timeouts.shutdownGrace);
    else if (graceMs !== undefined) this.#cutWithin(graceMs);
    return this.#closing;
  }

  /** Sessions still open in `graceMs` are cut then, unless an earlier cut is planned. */
  #cutWithin(graceMs: number): void {
    const at = Date.now() + graceMs; // Infinity stays Infinity: no cut
    if (at >= this.#cutAt) return;
    this.#cutAt = at;
    // Before draining starts, #close arms the timer with the new time itself.
    if (this.#drained) this.#armCut();
  }

  #armCut(): void {
    clearTimeout(this.#cutTimer);
    const wait = Math.max(0, this.#cutAt - Date.now());
    // Longer than a timer holds (Infinity too): wait for the sessions themselves.
    if (wait > LONGEST_TIMER_MS) return;
    this.#cutTimer = setTimeout(() => { for (const s of this.#sessions.values()) s.shutdown(); }, wait);
  }

  async #close(graceMs: number): Promise<void> {
    this.#state = 'closing';
    this.#cutWithin(graceMs);
    if (this.relayEngine === 'splice') reserveSessionDescriptors(this, null, openFilesLimit());
    requestBusyPoll(this, 0);
    // Stop accepting now; net.Server's own close callback would wait for every session.
    for (const server of this.#servers) server.close();
    this.#bound.length = 0; // addresses() lists what is bound: nothing from now on
    // Native listeners tell of sessions in batches: count only once all are known.
    await Promise.all(this.#listeners.map((slot) => slot.native?.close()));
    this.#tell('draining', { sessions: this.#sessions.size, graceMs });
    if (this.#sessions.size > 0) {
      const drained = new Promise<void>((resolve) => { this.#drained = resolve; });
      this.#armCut();
      await drained;
      this.#drained = null; // a close() from now on has nothing to cut
      clearTimeout(this.#cutTimer);
    }
    this.#state = 'closed';
    this.#tell('close');
  }

  async #bind(listener: ListenerConfig): Promise<void> {
    const server = createNetServer({ allowHalfOpen: true, noDelay: true });
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new ListenError(listener.address, listener.port, err)));
      server.once('close', () => reject(closedWhileListening())); // close() came first: no 'listening' will
      server.listen({ host: listener.address, port: listener.port, backlog: listener.backlog }, () => resolve());
    });
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('listener has no TCP address');
    const info: ListenerInfo = {
      address: address.address,
      port: address.port,
      family: address.family === 'IPv6' ? 'IPv6' : 'IPv4',
      socks4: listener.socks4,
    };
    const name = formatDestination({ host: info.address, port: info.port });
    server.on('error', (error) => this.#tell('listener-error', { listener: name, error }));
    const slot = this.#addListener(listener, name);
    server.on('connection', (socket) => this.#accept(socket, slot.ctx));
    if (this.#handshakeEngine === 'native') this.#acceptNatively(server, slot);
    this.#listened(info);
  }

  /**
   * A listener on a socket of this process's own with SO_REUSEPORT (see
   * `ListenOptions.reusePort`), accepted on by the addon from the start: no
   * Node handle, so no cluster primary in between.
   */
  #bindReusable(listener: ListenerConfig, port: number): void {
    const { fd, port: bound } = reusableSocket(listener, port, listener.backlog);
    // Spelled as Node spells a bound address (`::1`, `::ffff:127.0.0.1`), as #bind's listeners are: rules name listeners so.
    const address = boundAddressSpelling(listener.address) ?? listener.address;
    const info: ListenerInfo = { address, port: bound, family: isIP(address) === 6 ? 'IPv6' : 'IPv4', socks4: listener.socks4 };
    const slot = this.#addListener(listener, formatDestination({ host: info.address, port: info.port }));
    try {
      this.#listenNatively(fd, slot);
    } finally {
      closeSync(fd); // the addon accepts on a duplicate
    }
    if (!slot.native) throw new Error('the splice addon did not take the listener');
    this.#listened(info);
  }

  #addListener(listener: ListenerConfig, name: string): ListenerSlot {
    const slot: ListenerSlot = { config: listener, ctx: this.#sessionContext(name, listener), native: null };
    this.#listeners.push(slot);
    return slot;
  }

  #listened(info: ListenerInfo): void {
    this.#bound.push(info);
    this.#tell('listening', info);
  }

  /**
   * Lets the addon accept on this listener from now on: it takes a duplicate
   * of the listening socket and Node's handle is closed. Connections Node
   * accepted before that are served as usual.
   */
  #acceptNatively(server: NetServer, slot: ListenerSlot): void {
    const fd = (server as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) {
      this.#handshakeEngine = 'node'; // a cluster worker's handle: the primary accepts
      return;
    }
    this.#listenNatively(fd, slot);
    if (slot.native) server.close();
  }

  #listenNatively(fd: number, slot: ListenerSlot): void {
    const owner: NativeOwner = {
      rememberCredentials: !this.#customAuthenticator,
      context: () => slot.ctx,
      nextId: () => this.#nextId++,
      opened: (session) => {
        this.#track(session.id, session);
        if (session.holdsClientSlot) this.#slotsHeld.set(session.id, { native: true, client: session.clientAddress });
        if (this.listenerCount('session-open') > 0) {
          const { id, clientAddress, clientPort } = session;
          this.#tell('session-open', { id, listener: slot.ctx.listener, clientAddress, clientPort });
        }
      },
      handedOver: (native, socket, resume) => this.#adopt(native, socket, resume),
      refused: (native, why) => this.#refuse(native.id, null, native.ctx, native.clientAddress, native.clientPort, why, native.limitSeen),
      keepLookup: (client, host, addresses) => this.#lookupHandOff.keep(client, host, addresses),
      acceptFailed: (error) => this.#tell('listener-error', { listener: slot.ctx.listener, error }),
    };
    slot.native = listenNatively(fd, owner, allowedNetworks(this.config.clients.allow), this.#sharedGate());
  }

  #sharedGate(): SessionGate | null {
    if (this.#gate) return this.#gate;
    this.#gate = sessionGate();
    if (this.#gate) {
      this.#gate.limit = this.#sessionLimit;
      this.#gate.perClient = this.#clientSessions.limit;
      this.#gate.sessions = this.#sessions.size;
    }
    return this.#gate;
  }

  /** A connection the addon accepted leaves the native path: a Node session goes on with it. */
  #adopt(native: NativeSession, socket: Socket, resume: SessionResume): void {
    const ctx = native.ctx!;
    const slot = this.#slotsHeld.get(native.id);
    if (slot) slot.handedOver = true; // its slot is now JavaScript's to give back
    const session = new Session(native.id, socket, ctx, resume);
    this.#track(native.id, session);
    session.start();
    if (native.shutDown) session.shutdown(); // the shutdown crossed the hand-over
  }

  #sessionContext(name: string, listener: ListenerConfig): SessionContext {
    const { config } = this;
    return {
      listener: name,
      socks4: listener.socks4,
      methods: config.auth.methods,
      authenticator: this.#authenticator,
      dialer: this.#dialer,
      resolver: this.#resolver,
      socks4Limits: { maxUserId: config.limits.socks4UserId, maxHostname: config.limits.socks4Hostname },
      handshakeMs: config.timeouts.handshake,
      connectMs: config.timeouts.connect,
      idleMs: config.timeouts.idle,
      relayEngine: this.relayEngine,
      bindMs: config.timeouts.bind,
      bindCheck: config.bind.acceptFrom,
      udpIdleMs: config.timeouts.udpIdle,
      udpLimits: config.udp,
      udpSlots: this.#udpSlots,
      rules: this.#rules,
      now: this.#now,
      onClose: this.#onSessionClose,
    };
  }

  #accept(socket: Socket, ctx: SessionContext): void {
    if (this.#state !== 'listening') {
      socket.destroy(); // shutting down: not a session, so no id and no record
      return;
    }
    const id = this.#nextId++;
    const client = this.#clientOf(socket);
    if (client === null) return this.#recordUnknownClient(id, socket, ctx);
    const { address, port } = client;
    if (this.#allow && !this.#allow.has(address)) return this.#refuse(id, socket, ctx, address, port, 'not-allowed');
    const taken = this.#placesTakenNow();
    if (taken.sessions + taken.pipes >= this.#sessionLimit) return this.#refuse(id, socket, ctx, address, port, 'limit-reached', taken);
    if (this.#clientSessions.limit !== Infinity) {
      const block = clientBlock(address);
      if (!this.#clientSessions.acquire(block)) return this.#refuse(id, socket, ctx, address, port, 'client-limit');
      this.#slotsHeld.set(id, { native: false, client: block });
    }
    const session = new Session(id, socket, ctx, null, client);
    this.#track(id, session);
    if (this.listenerCount('session-open') > 0) {
      this.#tell('session-open', { id, listener: ctx.listener, clientAddress: address, clientPort: port });
    }
    session.start();
  }

  /** Closes a connection refused as soon as it was accepted, before a byte is read (null: the relay thread closed it), and records why. */
  #refuse(id: number, socket: Socket | null, ctx: SessionContext, address: string, port: number, why: Refusal, seen: PlacesTaken | null = null): void {
    socket?.on('error', () => {});
    socket?.destroy();
    const now = this.#now();
    if (why === 'not-allowed') return this.#onSessionClose(deniedRecord(id, ctx, address, port, now));
    if (why === 'client-limit') {
      const error = `too many sessions from ${clientBlock(address)} (limits.sessionsPerClient ${this.#clientSessions.limit})`;
      return this.#onSessionClose(unservedRecord(id, ctx, address, port, now, 'limit-reached', error));
    }
    // The relay thread's count when it refused; Node's listeners refuse with this count.
    const taken = seen ?? this.#placesTakenNow();
    const pipes = taken.pipes > 0 ? `, ${taken.pipes} more places taken by relay pipes` : '';
    const error = `session limit reached: ${sessionsOpen(taken.sessions)}${pipes} (${this.#limitSetting()})`;
    this.#onSessionClose(unservedRecord(id, ctx, address, port, now, 'limit-reached', error));
    this.#refusedAtLimit++;
    const mono = performance.now();
    if (mono - this.#limitToldAt < LIMIT_REPORT_EVERY_MS) return;
    this.#limitToldAt = mono;
    this.#tell('session-limit', { limit: this.#sessionLimit, sessions: taken.sessions, refused: this.#refusedAtLimit });
    this.#refusedAtLimit = 0;
  }

  /** Which setting made the limit, for a record. */
  #limitSetting(): string {
    return this.#config.limits.sessions === 'auto' ? `limits.sessions auto: ${this.#sessionLimit} from the open-files limit`
      : this.#sharedBy > 1 ? `limits.sessions ${this.#config.limits.sessions} shared by ${this.#sharedBy} processes: ${this.#sessionLimit} here`
      : `limits.sessions ${this.#sessionLimit}`;
  }

  /**
   * Who connected. A client that reset before Node accepted has no
   * remoteAddress any more (getpeername fails); with the splice relay the
   * addon, loaded already, still reads it from the kernel. The stream relay
   * leaves the addon alone (`relay.engine: stream` runs without it): null.
   */
  #clientOf(socket: Socket): { readonly address: string; readonly port: number } | null {
    const address = socket.remoteAddress;
    if (address !== undefined) return { address: peerAddress(address), port: socket.remotePort ?? 0 };
    return this.relayEngine === 'splice' ? peerAfterReset(socket) : null;
  }

  /**
   * A client that reset before Node accepted, whose address cannot be known:
   * it is counted and recorded as gone, as the native handshake records it,
   * but never served (clients.allow and the rules could not judge it).
   */
  #recordUnknownClient(id: number, socket: Socket, ctx: SessionContext): void {
    socket.on('error', () => {});
    socket.destroy();
    if (this.listenerCount('session-open') > 0) {
      this.#tell('session-open', { id, listener: ctx.listener, clientAddress: '', clientPort: 0 });
    }
    this.#tell('session-close', unknownClientRecord(id, ctx, this.#now()));
  }

  /**
   * Tells observers. A listener that throws must not stop the server half way
   * through its own work (a session counted forever, a close that never
   * resolves, the rest of a native batch unrecorded), so its error is thrown
   * again on the next tick: it reaches 'uncaughtException' as a listener's
   * error does in Node, once the server is consistent. (`args` is typed as
   * EventEmitter types emit's, so that the two agree for any K.)
   */
  #tell<K extends keyof SocksServerEvents>(event: K, ...args: K extends keyof SocksServerEvents ? SocksServerEvents[K] : never): void {
    try {
      this.emit(event, ...args);
    } catch (error) {
      throwLater(error);
    }
  }

  readonly #onSessionClose = (record: SessionRecord): void => {
    this.#untrack(record.id);
    this.#tell('session-close', record);
    if (this.#sessions.size === 0 && this.#drained) this.#drained();
  };
}

/** What listen() rejects with when close() was called before every listener was bound. */
function closedWhileListening(): Error {
  return new Error('the server was closed before it was listening');
}

/** Counts something per client address against a limit. */
class ClientSlots {
  /** Changed by a reload; sessions already holding slots keep them. */
  limit: number;
  readonly #counts = new Map<string, number>();

  constructor(limit: number) {
    this.limit = limit;
  }

  acquire(client: string): boolean {
    const count = this.#counts.get(client) ?? 0;
    if (count >= this.limit) return false;
    this.#counts.set(client, count + 1);
    return true;
  }

  release(client: string): void {
    const count = (this.#counts.get(client) ?? 1) - 1;
    if (count <= 0) this.#counts.delete(client);
    else this.#counts.set(client, count);
  }
}

/**
 * For a supervisor of `listen({ reusePort })` workers: binds (without
 * listening) a SO_REUSEPORT socket for each listener and keeps it open for
 * the life of the process, so the port stays this user's while workers come
 * and go, a port 0 becomes a real one every worker binds, and a port in use
 * is reported once, before any worker starts. Returns the ports, in the
 * order of `listen`; throws ListenError and then holds none of them.
 */
export function reservePorts(listen: readonly Pick<ListenerConfig, 'address' | 'port'>[]): number[] {
  const reserved: Array<{ fd: number; port: number }> = [];
  try {
    for (const listener of listen) reserved.push(reusableSocket(listener, listener.port, null));
  } catch (err) {
    for (const { fd } of reserved) closeSync(fd); // all or none
    throw err;
  }
  return reserved.map(({ port }) => port);
}

function reusableSocket(listener: Pick<ListenerConfig, 'address'>, port: number, backlog: number | null): { fd: number; port: number } {
  try {
    return bindReusePort(listener.address, port, backlog);
  } catch (err) {
    throw new ListenError(listener.address, port, err as NodeJS.ErrnoException);
  }
}

/** A bound listener's settings and the context its next sessions get. */
interface ListenerSlot {
  readonly config: ListenerConfig;
  ctx: SessionContext;
  /** Set when the addon accepts on this listener. */
  native: NativeListener | null;
}

interface LoadedUsers {
  /** Config users, then the users file's (which win). */
  readonly all: ReadonlyMap<string, StoredSecret>;
  /** The users file's entries alone, when one is named. */
  readonly file?: ReadonlyMap<string, StoredSecret>;
}

/** The users `userpass` checks against (reads the users file: may throw UsersFileError); null without userpass. */
function loadUsers(config: Config): LoadedUsers | null {
  if (!config.auth.methods.includes('userpass')) return null;
  const all = new Map<string, StoredSecret>();
  for (const user of config.auth.users) all.set(user.name, storedSecret(user.password));
  if (!config.auth.usersFile) return { all };
  const file = readUsersFile(config.auth.usersFile);
  for (const [name, secret] of file) all.set(name, secret);
  return { all, file };
}

function sameUsers(a: ReadonlyMap<string, StoredSecret>, b: ReadonlyMap<string, StoredSecret>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, x] of a) {
    const y = b.get(name);
    if (!y || x.kind !== y.kind) return false;
    if (x.kind === 'bcrypt' ? x.hash !== (y as typeof x).hash : !x.digest.equals((y as typeof x).digest)) return false;
  }
  return true;
}

/** Validated configs are plain data (JSON-like, keys in schema order). */
function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The key paths that differ between two configurations: `section.key` inside
 * object sections (`timeouts.connect`, `auth.users`), the top-level key for
 * lists and values (`rules`, `listen`, `workers`).
 */
function changedKeys(old: Config, next: Config): string[] {
  const changed: string[] = [];
  const keys = new Set([...Object.keys(old), ...Object.keys(next)]);
  for (const key of keys) {
    const a = (old as Record<string, unknown>)[key];
    const b = (next as Record<string, unknown>)[key];
    if (sameValue(a, b)) continue;
    if (isSection(a) && isSection(b)) {
      for (const sub of new Set([...Object.keys(a), ...Object.keys(b)])) {
        if (!sameValue(a[sub], b[sub])) changed.push(`${key}.${sub}`);
      }
    } else {
      changed.push(key);
    }
  }
  return changed;
}

function isSection(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function buildAllowList(networks: readonly string[] | undefined): NetworkSet | null {
  const parsed = allowedNetworks(networks);
  return parsed && new NetworkSet(parsed);
}

/**
 * The networks of `clients.allow` (null when any client may connect), each
 * in its own family, as the addon compares them: an IPv4-mapped IPv6
 * network is the IPv4 network it maps.
 */
function allowedNetworks(networks: readonly string[] | undefined): AllowedNetwork[] | null {
  if (!networks) return null;
  return networks.map(parseNetwork).filter((net) => net !== undefined).map(canonicalNetwork);
}

function deniedRecord(id: number, ctx: SessionContext, clientAddress: string, clientPort: number, now: number): SessionRecord {
  return unservedRecord(id, ctx, clientAddress, clientPort, now, 'not-allowed', `client ${clientAddress} is not in clients.allow`);
}

/** An empty clientAddress and port 0: the address was lost with the reset. */
function unknownClientRecord(id: number, ctx: SessionContext, now: number): SessionRecord {
  return unservedRecord(id, ctx, '', 0, now, 'client-gone', 'client reset the connection before it was accepted; its address is unknown');
}

/** The record of a connection closed as soon as it was accepted, before a byte was read. */
function unservedRecord(
  id: number,
  ctx: SessionContext,
  clientAddress: string,
  clientPort: number,
  now: number,
  reason: CloseReason,
  error: string,
): SessionRecord {
  return {
    id,
    listener: ctx.listener,
    clientAddress,
    clientPort,
    version: null,
    authMethod: null,
    user: null,
    command: null,
    requested: null,
    connected: null,
    reply: null,
    bytesUp: 0,
    bytesDown: 0,
    relay: null,
    datagramsUp: 0,
    datagramsDown: 0,
    datagramsDropped: 0,
    datagramsDenied: 0,
    startedAt: now,
    durationMs: 0,
    reason,
    error,
    rule: null,
  };
}
