/**
 * The server: listeners, the client rules applied before any byte is read,
 * the set of live sessions, and graceful shutdown. It emits typed events
 * (see observe/events.ts) and knows nothing of who listens to them.
 */
import { EventEmitter } from 'node:events';
import { BlockList, type Server as NetServer, type Socket, createServer as createNetServer } from 'node:net';
import { type Authenticator, UserStore, readUsersFile, storedSecret, type StoredSecret } from '../auth/users.js';
import { validateConfig } from '../config/load.js';
import { type Config, type ConfigInput, type ListenerConfig, parseNetwork } from '../config/schema.js';
import type { ListenerInfo, ServerEvents, SessionRecord } from '../observe/events.js';
import { formatDestination, unmapIPv4 } from '../protocol/address.js';
import { spliceUnavailable } from '../relay/splice.js';
import type { RelayEngine } from '../relay/tcp.js';
import { type Dialer, createDirectDialer } from '../upstream/dialer.js';
import { type Resolver, systemResolver } from '../upstream/resolver.js';
import { Session, type SessionContext } from './session.js';
import { type RuleSet, compileRules } from '../policy/rules.js';

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

const DEPENDENCY_KEYS = ['resolver', 'dialer', 'authenticator', 'now'] as const;

/** Validates the options (throws ConfigError or UsersFileError) and builds a server. Call `listen()` to start it. */
export function createServer(options: ServerOptions = {}): SocksServer {
  const input: Record<string, unknown> = { ...options };
  for (const key of DEPENDENCY_KEYS) delete input[key];
  return new SocksServer(validateConfig(input), options);
}

export class SocksServer extends EventEmitter<ServerEvents> {
  /** The validated, frozen configuration. */
  readonly config: Config;
  readonly #dialer: Dialer;
  readonly #resolver: Resolver;
  /** UDP associations per client address, against udp.maxAssociationsPerClient. */
  readonly #udpSlots: ClientSlots;
  readonly #authenticator: Authenticator | null;
  readonly #now: () => number;
  readonly #allow: BlockList | null;
  /** Request rules, compiled once; null when none are configured. */
  readonly #rules: RuleSet | null;
  readonly #servers: NetServer[] = [];
  readonly #bound: ListenerInfo[] = [];
  readonly #sessions = new Map<number, Session>();
  /** The TCP relay engine sessions use, `relay.engine` resolved against what this machine has. */
  readonly relayEngine: RelayEngine;
  #nextId = 1;
  #state: 'new' | 'listening' | 'closing' | 'closed' = 'new';
  #drained: (() => void) | null = null;

  constructor(config: Config, deps: ServerDependencies = {}) {
    super();
    this.config = config;
    this.#now = deps.now ?? Date.now;
    this.#resolver = deps.resolver ?? systemResolver;
    this.#dialer = deps.dialer ?? createDirectDialer({ resolver: this.#resolver });
    this.#authenticator = deps.authenticator ?? buildUserStore(config);
    this.#allow = buildAllowList(config.clients.allow);
    this.#rules = compileRules(config.rules);
    this.#udpSlots = new ClientSlots(config.udp.maxAssociationsPerClient);
    this.relayEngine = resolveRelayEngine(config.relay.engine);
  }

  /** Binds every listener; rejects with ListenError (and binds none) if one fails. */
  async listen(): Promise<ListenerInfo[]> {
    if (this.#state !== 'new') throw new Error(`server is ${this.#state}`);
    this.#state = 'listening';
    try {
      for (const listener of this.config.listen) await this.#bind(listener);
    } catch (err) {
      await this.close({ graceMs: 0 });
      throw err;
    }
    return this.addresses();
  }

  /** The bound addresses, with the real port when port 0 was asked for. */
  addresses(): ListenerInfo[] {
    return [...this.#bound];
  }

  /** Sessions alive now, in any phase. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /**
   * Stops accepting, lets sessions finish for `graceMs` (default
   * `timeouts.shutdownGrace`), then closes the rest. Resolves when all are gone.
   */
  async close(options: { graceMs?: number } = {}): Promise<void> {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
    const graceMs = options.graceMs ?? this.config.timeouts.shutdownGrace;
    // Stop accepting now; net.Server's own close callback would wait for every session.
    for (const server of this.#servers) server.close();
    this.emit('draining', { sessions: this.#sessions.size, graceMs });
    if (this.#sessions.size > 0) {
      const drained = new Promise<void>((resolve) => { this.#drained = resolve; });
      const timer = setTimeout(() => { for (const s of this.#sessions.values()) s.shutdown(); }, graceMs);
      await drained;
      clearTimeout(timer);
    }
    this.#state = 'closed';
    this.emit('close');
  }

  async #bind(listener: ListenerConfig): Promise<void> {
    const server = createNetServer({ allowHalfOpen: true, noDelay: true });
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new ListenError(listener.address, listener.port, err)));
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
    server.on('error', (error) => this.emit('listener-error', { listener: name, error }));
    const ctx = this.#sessionContext(name, listener);
    server.on('connection', (socket) => this.#accept(socket, ctx));
    this.#bound.push(info);
    this.emit('listening', info);
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
    const id = this.#nextId++;
    const address = socket.remoteAddress;
    if (this.#state !== 'listening' || address === undefined) {
      socket.destroy(); // shutting down, or the client is already gone
      return;
    }
    if (this.#allow && !allowed(this.#allow, address)) {
      socket.on('error', () => {});
      socket.destroy();
      this.emit('session-close', deniedRecord(id, ctx, socket, this.#now()));
      return;
    }
    const session = new Session(id, socket, ctx);
    this.#sessions.set(id, session);
    if (this.listenerCount('session-open') > 0) {
      this.emit('session-open', { id, listener: ctx.listener, clientAddress: address, clientPort: socket.remotePort ?? 0 });
    }
    session.start();
  }

  readonly #onSessionClose = (record: SessionRecord): void => {
    this.#sessions.delete(record.id);
    this.emit('session-close', record);
    if (this.#sessions.size === 0 && this.#drained) this.#drained();
  };
}

/** Counts something per client address against a limit. */
class ClientSlots {
  readonly limit: number;
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

function buildUserStore(config: Config): UserStore | null {
  if (!config.auth.methods.includes('userpass')) return null;
  const users = new Map<string, StoredSecret>();
  for (const user of config.auth.users) users.set(user.name, storedSecret(user.password));
  if (config.auth.usersFile) {
    for (const [name, secret] of readUsersFile(config.auth.usersFile)) users.set(name, secret);
  }
  return new UserStore(users);
}

function buildAllowList(networks: readonly string[] | undefined): BlockList | null {
  if (!networks) return null;
  const list = new BlockList();
  for (const text of networks) {
    const net = parseNetwork(text);
    if (!net) continue; // the schema has already refused it
    const type = net.family === 6 ? 'ipv6' : 'ipv4';
    list.addSubnet(net.address, net.prefix, type);
  }
  return list;
}

function allowed(list: BlockList, address: string): boolean {
  const v4 = unmapIPv4(address);
  if (v4) return list.check(v4, 'ipv4');
  return list.check(address, address.includes(':') ? 'ipv6' : 'ipv4');
}

function deniedRecord(id: number, ctx: SessionContext, socket: Socket, now: number): SessionRecord {
  const clientAddress = socket.remoteAddress ?? '';
  return {
    id,
    listener: ctx.listener,
    clientAddress,
    clientPort: socket.remotePort ?? 0,
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
    startedAt: now,
    durationMs: 0,
    reason: 'not-allowed',
    error: `client ${clientAddress} is not in clients.allow`,
    rule: null,
  };
}
