/**
 * One client connection, from its first byte to its close. The handshake is
 * an explicit state machine: `#advance` steps the phases over the bytes
 * buffered so far, so a message may arrive one byte at a time or several
 * messages (and the first payload bytes) in one chunk. Every refusal is
 * terminal: the reply is sent once, the session closes, and the record names
 * the cause.
 */
import { Socket, isIP } from 'node:net';
import { SocksError, toSocksError } from '../errors.js';
import type { Authenticator } from '../auth/users.js';
import type { AuthMethodName } from '../config/schema.js';
import type { CloseReason, SessionRecord } from '../observe/events.js';
import { promiseFrom } from '../callbacks.js';
import { type Destination, NEED_MORE, canonicalAddress, clientBlock, destination, formatDestination, hex, peerAddress } from '../protocol/address.js';
import { type Socks4Limits, Socks4Command, decodeSocks4Request, encodeSocks4Reply } from '../protocol/socks4.js';
import {
  Command,
  Method,
  decodeGreeting,
  decodeRequest,
  encodeMethodSelection,
  encodeReply,
} from '../protocol/socks5.js';
import { UserPassStatus, decodeUserPass, encodeUserPassStatus } from '../protocol/userpass.js';
import { Socks4Reply, Socks5Reply } from '../errors.js';
import { type Relay, type RelayEnd, type RelayEngine, relay } from '../relay/tcp.js';
import { NativeUdpAssociation } from '../relay/native-udp.js';
import { type UdpAssociationOptions, type UdpDestinationRules, type UdpLimits, type UdpRelay, UdpAssociation } from '../relay/udp.js';
import { type Dialer, connectTimeoutError, resolveWithin } from '../upstream/dialer.js';
import type { Resolver } from '../upstream/resolver.js';
import { BindListener, type PeerCheck, addressToward } from './bind.js';
import { DEFAULT_DENY, type RuleCommand, type RuleRequest, type RuleSet } from '../policy/rules.js';

/** What a session needs from its server; passed in so tests can swap any of it. */
export interface SessionContext {
  /** The listener's `address:port`, for records. */
  readonly listener: string;
  readonly socks4: boolean;
  /** Accepted methods, in order of preference. */
  readonly methods: readonly AuthMethodName[];
  readonly authenticator: Authenticator | null;
  readonly dialer: Dialer;
  readonly resolver: Resolver;
  readonly socks4Limits: Socks4Limits;
  readonly handshakeMs: number;
  readonly connectMs: number;
  readonly idleMs: number;
  /** `splice` where the addon can take the sockets, else `stream`. */
  readonly relayEngine: RelayEngine;
  readonly bindMs: number;
  readonly bindCheck: PeerCheck;
  readonly udpIdleMs: number;
  readonly udpLimits: UdpLimits;
  /** Counts UDP associations per client address against the configured limit. */
  readonly udpSlots: { acquire(client: string): boolean; release(client: string): void; readonly limit: number };
  /** Request rules, decided once the request is parsed; null when none are configured. */
  readonly rules: RuleSet | null;
  readonly now: () => number;
  readonly onClose: (record: SessionRecord) => void;
}

/**
 * Whole milliseconds since `startedMono` (a performance.now() reading). A
 * session's duration and deadline are measured on the monotonic clock, so a
 * step of the wall clock (NTP at boot, an operator's `date -s`) neither
 * stretches nor shortens them; `startedAt` stays a wall-clock timestamp.
 */
export function elapsedMs(startedMono: number): number {
  return Math.max(0, Math.round(performance.now() - startedMono));
}

/**
 * Where a session picks up a connection whose handshake began elsewhere (the
 * native handshake in server/native.ts hands over whatever leaves its common
 * path): the phase, the bytes read but not yet consumed, and what is known.
 */
export interface SessionResume {
  /** `version`: nothing answered yet; `auth`: method 0x02 was chosen; `request`: negotiation done. */
  readonly phase: 'version' | 'auth' | 'request';
  readonly buffer: Buffer;
  readonly startedAt: number;
  /** performance.now() at the start (see elapsedMs). */
  readonly startedMono: number;
  /** As accepted (after a reset the socket can no longer say). */
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly authMethod: 'none' | 'userpass' | null;
  readonly user: string | null;
  /** The handshake deadline has passed: end with the timeout now. */
  readonly timedOut: boolean;
  /** The credentials in `buffer` were already checked and refused (error null), or the check failed so: not asked again. */
  readonly authRefused: { readonly error: unknown } | null;
  /** The CONNECT in `buffer` was already dialled and failed so: refuse with it. */
  readonly dialFailure: SocksError | null;
  /** Reading from the client already failed so (a reset is reported once). */
  readonly clientError: Error | null;
}

type Phase =
  | 'version' // waiting for the first byte
  | 'greeting' // SOCKS5 method offer
  | 'auth' // RFC 1929 credentials
  | 'request' // SOCKS5 request
  | 'socks4' // SOCKS4/4a request
  | 'waiting' // verifying credentials, dialing, or waiting for a BIND peer: the socket is paused
  | 'relaying'
  | 'associated' // UDP ASSOCIATE: the control connection only keeps the association alive
  | 'closing'; // a terminal reply was sent; draining until the client closes

const PHASE_NAMES: Partial<Record<Phase, string>> = {
  version: 'first byte',
  greeting: 'SOCKS5 greeting',
  // The handshake timer runs in 'waiting' only while credentials are checked
  // (a dial or a BIND wait has its own timeout).
  waiting: 'credential check',
  auth: 'username/password message',
  request: 'SOCKS5 request',
  socks4: 'SOCKS4 request',
};

/**
 * Where a handed-over handshake stood when its deadline passed, as a Node
 * session would say it: the addon hands a non-SOCKS5 first byte over at
 * once, so buffered bytes there are a SOCKS5 greeting begun; a whole
 * credentials message means they were being checked.
 */
function timedOutPhase(resume: SessionResume): Phase {
  if (resume.phase === 'version') return resume.buffer.length > 0 ? 'greeting' : 'version';
  if (resume.phase === 'auth') {
    try {
      if (decodeUserPass(resume.buffer) !== NEED_MORE) return 'waiting';
    } catch {
      // not a whole message: still reading it
    }
  }
  return resume.phase;
}

/** After a refusal, how long to wait for the client to close before closing hard. */
const LINGER_MS = 2000;
/** Bytes a client may send before its BIND peer arrives; past this, reading pauses. */
const BIND_EARLY_BYTES = 64 * 1024;
const EMPTY = Buffer.alloc(0);
const METHOD_BYTES: Record<AuthMethodName, number> = { none: Method.NONE, userpass: Method.USERPASS };
const COMMAND_NAMES: Record<number, SessionRecord['command']> = {
  [Command.CONNECT]: 'connect',
  [Command.BIND]: 'bind',
  [Command.UDP_ASSOCIATE]: 'udp',
};

export class Session {
  readonly id: number;
  readonly #socket: Socket;
  readonly #ctx: SessionContext;
  /** Cancels a dial or BIND wait; made when one starts, dropped once relaying (memory per idle session). */
  #abort: AbortController | null = null;
  readonly #startedAt: number;
  readonly #startedMono: number;
  readonly #clientAddress: string;
  readonly #clientPort: number;

  #phase: Phase = 'version';
  #buffer: Buffer = EMPTY;
  #timer: NodeJS.Timeout | undefined;
  #bindListener: BindListener | null = null;
  #udp: UdpRelay | null = null;
  /** The UDP association slot this session holds (its client's address, or /64). */
  #udpSlot: string | null = null;
  /** Between BIND's two replies: the control socket is read, not paused. */
  #bindWaiting = false;
  /**
   * The client sent its FIN during the handshake. While a credential check
   * or a dial is under way that is a half-close, not a departure: the client
   * may have sent everything it meant to (request and data) and still reads.
   */
  #clientEnded = false;
  #relay: Relay | null = null;
  #relayEnd: RelayEnd | null = null;
  #recorded = false;

  #version: 4 | 5 | null = null;
  #authMethod: SessionRecord['authMethod'] = null;
  #user: string | null = null;
  #command: SessionRecord['command'] = null;
  #requested: string | null = null;
  #connected: string | null = null;
  #reply: number | null = null;
  #reason: CloseReason | null = null;
  #error: string | null = null;
  #rule: string | null = null;
  #resume: SessionResume | null;
  /**
   * Handed over with the client's connection already failed (a reset read
   * by the relay thread): the bytes read before it are stepped through for
   * the record and for any refusal they earn, but nothing they ask for is
   * started: no password check (the relay thread's was dropped, or its
   * verdict came too late to count), no dial, BIND or association. On the
   * node engine the reset cuts those short as soon as they start.
   */
  #clientFailed = false;

  /** `client`: who connected, when the socket can no longer say (a reset before Node accepted it). */
  constructor(id: number, socket: Socket, ctx: SessionContext, resume: SessionResume | null = null, client?: { readonly address: string; readonly port: number }) {
    this.id = id;
    this.#socket = socket;
    this.#ctx = ctx;
    this.#resume = resume;
    this.#startedAt = resume?.startedAt ?? ctx.now();
    this.#startedMono = resume?.startedMono ?? performance.now();
    this.#clientAddress = resume?.clientAddress ?? client?.address ?? peerAddress(socket.remoteAddress ?? '');
    this.#clientPort = resume?.clientPort ?? client?.port ?? socket.remotePort ?? 0;
  }

  /** Starts reading the handshake (or goes on from where it was handed over). */
  start(): void {
    const socket = this.#socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onHandshakeEnd);
    socket.on('error', this.#onHandshakeError);
    socket.once('close', this.#onClose);
    const resume = this.#resume;
    if (resume === null) {
      this.#timer = setTimeout(this.#onHandshakeTimeout, this.#ctx.handshakeMs);
      return;
    }
    if (resume.phase !== 'version') this.#version = 5;
    this.#phase = resume.phase;
    this.#authMethod = resume.authMethod;
    this.#user = resume.user;
    this.#buffer = resume.buffer;
    if (resume.clientError) {
      // As the node engine, which reads the bytes that came before a reset
      // first: they are stepped through (the version, a refusal they earn,
      // the request for the record), then the reset ends the session. What
      // they ask for is not started (see #clientFailed).
      this.#clientFailed = true;
      if (this.#buffer.length > 0) this.#advance();
      this.#onHandshakeError(resume.clientError);
      this.#socket.destroy();
      return;
    }
    if (resume.timedOut) {
      this.#phase = timedOutPhase(resume);
      if (this.#phase === 'greeting') this.#version = 5;
      return this.#onHandshakeTimeout();
    }
    const left = this.#ctx.handshakeMs - elapsedMs(this.#startedMono);
    this.#timer = setTimeout(this.#onHandshakeTimeout, Math.max(0, left));
    if (this.#buffer.length > 0) this.#advance();
  }

  #noteRequest(command: number, target: Destination): void {
    this.#command = COMMAND_NAMES[command] ?? null;
    this.#requested = formatDestination(target);
  }

  /** Ends the session now, whatever its phase (server shutdown). */
  shutdown(): void {
    this.#reason ??= 'shutdown';
    this.#cancel(new SocksError('ERR_GENERAL', 'server shutting down'));
    if (this.#relay) {
      this.#relay.close();
    } else if (this.#phase === 'associated') {
      this.#socket.destroy(); // the association closes with its control connection
    } else {
      this.#refuse(null, 'shutdown', 'server shutting down');
      this.#socket.destroy();
    }
  }

  readonly #onData = (chunk: Buffer): void => {
    // After a refusal, or on a UDP control connection, bytes from the client mean nothing: discard.
    if (this.#phase === 'closing' || this.#phase === 'associated') return;
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    if (this.#bindWaiting && this.#buffer.length >= BIND_EARLY_BYTES) this.#socket.pause(); // bounded: TCP pushes back
    this.#advance();
  };

  /** Steps the handshake as far as the buffered bytes allow. */
  #advance(): void {
    try {
      while (this.#step());
    } catch (err) {
      this.#protocolError(err);
    }
    // Still reading a message that can no longer be completed.
    if (this.#clientEnded && this.#phase !== 'waiting') this.#clientGone();
  }

  /** One step; true when it consumed a message and the next phase may proceed. */
  #step(): boolean {
    switch (this.#phase) {
      case 'version':
        return this.#readVersion();
      case 'greeting':
        return this.#readGreeting();
      case 'auth':
        return this.#readCredentials();
      case 'request':
        return this.#readRequest();
      case 'socks4':
        return this.#readSocks4Request();
      default:
        return false;
    }
  }

  #readVersion(): boolean {
    if (this.#buffer.length === 0) return false;
    const version = this.#buffer[0]!;
    if (version === 5) {
      this.#version = 5;
      this.#phase = 'greeting';
      return true;
    }
    if (version === 4) {
      this.#version = 4;
      if (!this.#ctx.socks4) {
        this.#refuse(encodeSocks4Reply(Socks4Reply.REJECTED), 'not-allowed', 'SOCKS4 is disabled on this listener', Socks4Reply.REJECTED);
      } else if (!this.#ctx.methods.includes('none')) {
        this.#refuse(encodeSocks4Reply(Socks4Reply.REJECTED), 'not-allowed', 'SOCKS4 refused: this listener requires authentication', Socks4Reply.REJECTED);
      } else {
        this.#authMethod = 'none';
        this.#phase = 'socks4';
        return true;
      }
      return false;
    }
    throw new SocksError('ERR_BAD_VERSION', `not SOCKS: first byte 0x${hex(version)}`);
  }

  #readGreeting(): boolean {
    const greeting = decodeGreeting(this.#buffer);
    if (greeting === NEED_MORE) return false;
    this.#consume(greeting.bytesRead);
    const chosen = this.#ctx.methods.find((m) => greeting.value.methods.includes(METHOD_BYTES[m]));
    if (chosen === undefined) {
      const offered = greeting.value.methods.map((m) => `0x${hex(m)}`).join(',');
      this.#refuse(encodeMethodSelection(Method.NO_ACCEPTABLE), 'no-acceptable-method', `client offered methods [${offered}], none accepted`);
      return false;
    }
    this.#authMethod = chosen;
    this.#socket.write(encodeMethodSelection(METHOD_BYTES[chosen]));
    this.#phase = chosen === 'userpass' ? 'auth' : 'request';
    return true;
  }

  #readCredentials(): boolean {
    const message = decodeUserPass(this.#buffer);
    if (message === NEED_MORE) return false;
    this.#consume(message.bytesRead);
    const { username, password, wellFormed } = message.value;
    this.#user = username;
    this.#wait();
    if (!wellFormed) {
      this.#afterVerify(false, null, 'username or password is not UTF-8'); // no configured name or password can match it
      return false;
    }
    if (this.#clientFailed) return false;
    const refused = this.#resume?.authRefused;
    if (refused) {
      this.#afterVerify(false, refused.error);
      return false;
    }
    const authenticator = this.#ctx.authenticator;
    const context = { clientAddress: this.#clientAddress, signal: this.#signal() };
    const verdict = authenticator ? promiseFrom(() => authenticator.verify(username, password, context)) : Promise.resolve(false);
    verdict.then(
      (ok) => this.#afterVerify(ok === true, null), // only true accepts: a truthy string is not a yes
      (err: unknown) => this.#afterVerify(false, err ?? new Error('rejected without a reason')),
    );
    return false;
  }

  #afterVerify(ok: boolean, err: unknown, refusal?: string): void {
    if (this.#phase !== 'waiting') return; // timed out or closed meanwhile
    if (!ok) {
      const cause = refusal ?? (err ? `authenticator failed: ${toSocksError(err).message}` : `wrong credentials for user "${this.#user}"`);
      this.#refuse(encodeUserPassStatus(UserPassStatus.FAILURE), 'auth-failed', cause);
      return;
    }
    this.#socket.write(encodeUserPassStatus(UserPassStatus.SUCCESS));
    this.#phase = 'request';
    this.#socket.resume();
    this.#advance();
  }

  #readRequest(): boolean {
    const request = decodeRequest(this.#buffer);
    if (request === NEED_MORE) return false;
    this.#consume(request.bytesRead);
    const { command, destination: target } = request.value;
    this.#noteRequest(command, target);
    if (this.#command !== null && !this.#mayStart(this.#command, target)) return false;
    if (command === Command.CONNECT) this.#connect(target);
    else if (command === Command.BIND) this.#bind(target);
    else if (command === Command.UDP_ASSOCIATE) this.#associate(target);
    else {
      const what = `unknown command 0x${hex(command)}`;
      this.#refuse(encodeReply(Socks5Reply.COMMAND_NOT_SUPPORTED), 'command-not-supported', what, Socks5Reply.COMMAND_NOT_SUPPORTED);
    }
    return false;
  }

  #readSocks4Request(): boolean {
    const request = decodeSocks4Request(this.#buffer, 0, this.#ctx.socks4Limits);
    if (request === NEED_MORE) return false;
    this.#consume(request.bytesRead);
    const { command, destination: target, userId } = request.value;
    this.#user = userId === '' ? null : userId;
    this.#command = command === Socks4Command.CONNECT ? 'connect' : command === Socks4Command.BIND ? 'bind' : null;
    this.#requested = formatDestination(target);
    if (this.#command !== null && !this.#mayStart(this.#command, target)) return false;
    if (command === Socks4Command.CONNECT) this.#connect(target);
    else if (command === Socks4Command.BIND) this.#bind(target);
    else {
      const what = `unknown SOCKS4 command 0x${hex(command)}`;
      this.#refuse(encodeSocks4Reply(Socks4Reply.REJECTED), 'command-not-supported', what, Socks4Reply.REJECTED);
    }
    return false;
  }

  /**
   * Whether a known command may start: the rules allow it (else refused, see
   * #allowedByRules) and the client is still there (else the session waits
   * for the reset to be recorded, see #clientFailed).
   */
  #mayStart(command: RuleCommand, target: Destination): boolean {
    if (!this.#allowedByRules(command, target)) return false;
    if (!this.#clientFailed) return true;
    this.#wait();
    return false;
  }

  /**
   * Request rules: true to go on; false after refusing with the version's own
   * refusal (SOCKS5 0x02, SOCKS4 0x5B). Every decision names its rule in the record.
   */
  #allowedByRules(command: RuleCommand, target: Destination): boolean {
    const rules = this.#ctx.rules;
    if (rules === null) return true;
    const request = this.#ruleRequest(command, target);
    const decision = command === 'udp' ? rules.decideAssociation(request) : rules.decide(request);
    this.#rule = decision.rule;
    if (decision.allowed) return true;
    const why = decision.rule === DEFAULT_DENY ? `request denied: no rule matched (${DEFAULT_DENY})` : `request denied by rule "${decision.rule}"`;
    if (this.#version === 5) this.#refuse(encodeReply(Socks5Reply.NOT_ALLOWED), 'not-allowed', why, Socks5Reply.NOT_ALLOWED);
    else this.#refuse(encodeSocks4Reply(Socks4Reply.REJECTED), 'not-allowed', why, Socks4Reply.REJECTED);
    return false;
  }

  /**
   * The rules' say on the peer that connects to a BIND listener, decided as a
   * BIND naming that peer (at the requested port); undefined without rules.
   */
  #bindPeerRefusal(port: number): ((peer: string) => string | null) | undefined {
    const rules = this.#ctx.rules;
    if (rules === null) return undefined;
    return (peer) => {
      const decision = rules.decide(this.#ruleRequest('bind', destination(peer, port)));
      if (decision.allowed) return null;
      return decision.rule === DEFAULT_DENY ? `denied: no rule matched (${DEFAULT_DENY})` : `denied by rule "${decision.rule}"`;
    };
  }

  #ruleRequest(command: RuleCommand, target: Destination): RuleRequest {
    return {
      clientAddress: this.#clientAddress,
      clientPort: this.#clientPort,
      command,
      destination: target,
      user: this.#user,
      listener: this.#ctx.listener,
    };
  }

  /**
   * Each datagram's own decision, when the rules look at UDP destinations
   * (null when they don't: the association's decision covers them all).
   */
  #datagramRules(): UdpDestinationRules | null {
    const rules = this.#ctx.rules;
    if (rules === null || !rules.checksUdpDestinations) return null;
    const request = this.#ruleRequest('udp', { kind: 'ipv4', host: '0.0.0.0', port: 0 });
    return (target) => rules.decide({ ...request, destination: target }).allowed;
  }

  /** Dials the destination, then replies once: success and relay, or the mapped failure. */
  #connect(target: Destination): void {
    this.#wait();
    clearTimeout(this.#timer); // the connect timeout takes over
    const failure = this.#resume?.dialFailure;
    if (failure) return this.#commandFailed(failure);
    const signal = this.#signal();
    const connectMs = this.#ctx.connectMs;
    // The session's own deadline too: a dialer of the library's may ignore
    // timeoutMs and the signal, and must not hold the session for good.
    this.#timer = setTimeout(() => this.#commandFailed(connectTimeoutError(target, connectMs)), connectMs);
    const client = this.#clientAddress;
    promiseFrom(() => this.#ctx.dialer.dial(target, { timeoutMs: connectMs, signal, client })).then(
      (outbound) => this.#afterConnect(outbound),
      (err: unknown) => this.#commandFailed(toSocksError(err)),
    );
  }

  #afterConnect(outbound: unknown): void {
    if (!(outbound instanceof Socket)) {
      // A dialer of the library's that broke its contract: its failure, refused as such.
      this.#commandFailed(new SocksError('ERR_GENERAL', `the dialer gave ${outbound === null ? 'null' : typeof outbound}, not a net.Socket`));
      return;
    }
    if (this.#phase !== 'waiting' || this.#socket.destroyed) {
      outbound.destroy();
      return;
    }
    clearTimeout(this.#timer);
    const bound = destination(outbound.localAddress ?? '0.0.0.0', outbound.localPort ?? 0);
    this.#connected = formatDestination({ host: outbound.remoteAddress ?? '', port: outbound.remotePort ?? 0 });
    this.#replySuccess(bound);
    this.#startRelay(outbound);
  }

  /** Writes a success reply in the session's SOCKS version. SOCKS4 can only carry IPv4. */
  #replySuccess(bound: Destination): void {
    if (this.#version === 5) {
      this.#reply = Socks5Reply.SUCCEEDED;
      this.#socket.write(encodeReply(Socks5Reply.SUCCEEDED, bound));
    } else {
      this.#reply = Socks4Reply.GRANTED;
      const ipv4 = bound.kind === 'ipv4' ? bound.host : '0.0.0.0';
      this.#socket.write(encodeSocks4Reply(Socks4Reply.GRANTED, bound.port, ipv4));
    }
  }

  #commandFailed(err: SocksError, reason: CloseReason = 'connect-failed'): void {
    if (this.#phase !== 'waiting') return;
    if (this.#version === 5) {
      this.#refuse(encodeReply(err.socks5Reply), reason, err.message, err.socks5Reply);
    } else {
      this.#refuse(encodeSocks4Reply(err.socks4Reply), reason, err.message, err.socks4Reply);
    }
  }

  /**
   * BIND: listen on the address used toward the application server, reply
   * with it, wait for that server's connection, reply with its address, relay.
   */
  #bind(target: Destination): void {
    this.#wait();
    clearTimeout(this.#timer); // the BIND timeout takes over
    this.#runBind(target).catch((err: unknown) => {
      this.#bindListener?.close();
      this.#commandFailed(toSocksError(err), 'bind-failed');
    });
  }

  async #runBind(target: Destination): Promise<void> {
    const ctx = this.#ctx;
    const expectedPeers = await this.#bindPeers(target);
    if (this.#phase !== 'waiting' || this.#socket.destroyed) return;
    const listener = await BindListener.open(await addressToward(expectedPeers[0]!, target.port, this.#localAddress()));
    if (this.#phase !== 'waiting' || this.#socket.destroyed) return listener.close();
    this.#bindListener = listener;
    this.#replySuccess(listener.address);
    // The wait may be long: read the control connection meanwhile so a client
    // that leaves is noticed; early bytes are kept (bounded) for the relay.
    this.#bindWaiting = true;
    this.#boundWaitOfEndedClient();
    this.#socket.resume();
    const inbound = await listener.accept({
      expectedPeers,
      check: ctx.bindCheck,
      timeoutMs: ctx.bindMs,
      signal: this.#signal(),
      strayEndsWait: this.#version === 4,
      refusal: this.#bindPeerRefusal(target.port),
    });
    this.#bindWaiting = false;
    clearTimeout(this.#timer);
    if (this.#phase !== 'waiting' || this.#socket.destroyed) return void inbound.destroy();
    const peer = destination(peerAddress(inbound.remoteAddress ?? ''), inbound.remotePort ?? 0);
    this.#connected = formatDestination(peer);
    this.#replySuccess(peer);
    this.#startRelay(inbound);
  }

  /**
   * A client that has shut its side while waiting for its BIND peer has
   * nothing more to send, and is most likely gone: a close and a half-close
   * look the same. The wait goes on (a peer that comes gets the FIN passed
   * on, as a CONNECT's destination does), but no longer than
   * timeouts.handshake from then, so abandoned BINDs do not hold their
   * listeners and their clients' places (limits.sessionsPerClient) for the
   * whole of timeouts.bind.
   */
  #boundWaitOfEndedClient(): void {
    if (!this.#bindWaiting || !this.#clientEnded) return;
    const ms = Math.min(this.#ctx.handshakeMs, this.#ctx.bindMs);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#cancel(new SocksError('ERR_CONNECT_TIMEOUT', `BIND: no connection within ${ms} ms of the client shutting its side (timeouts.handshake)`));
    }, ms);
  }

  /**
   * The addresses a BIND peer may come from (an unspecified one: any), the
   * first one the way to the application server. A name is resolved once,
   * within the connect timeout as a CONNECT's is; SOCKS4 keeps its IPv4
   * addresses, the only ones its replies can carry. A failure is mapped by #bind.
   */
  async #bindPeers(target: Destination): Promise<string[]> {
    if (target.kind !== 'domain') return [canonicalAddress(target.host) ?? target.host];
    const lookup = { client: this.#clientAddress, signal: this.#signal() };
    const found = await resolveWithin(this.#ctx.resolver, target.host, this.#ctx.connectMs, lookup);
    const peers = found.map((a) => canonicalAddress(a.address)).filter((a) => a !== undefined);
    const usable = this.#version === 4 ? peers.filter((a) => isIP(a) === 4) : peers;
    if (usable.length === 0) {
      const what = this.#version === 4 ? 'no IPv4 address (a SOCKS4 reply carries no other)' : 'no address';
      throw new SocksError('ERR_HOST_NOT_FOUND', `BIND: ${target.host} has ${what}`);
    }
    return usable;
  }

  /** UDP ASSOCIATE: open the relay, reply with its address, live as long as the control connection. */
  #associate(target: Destination): void {
    this.#wait();
    clearTimeout(this.#timer);
    const ctx = this.#ctx;
    const client = this.#clientAddress;
    // Counted per address, or per /64 for IPv6: a host given a /64 has addresses to spare.
    const slot = clientBlock(client);
    if (!ctx.udpSlots.acquire(slot)) {
      const why = `too many UDP associations from ${slot} (limit ${ctx.udpSlots.limit})`;
      this.#refuse(encodeReply(Socks5Reply.GENERAL_FAILURE), 'limit-reached', why, Socks5Reply.GENERAL_FAILURE);
      return;
    }
    this.#udpSlot = slot;
    openUdpRelay(ctx.relayEngine, {
      bindAddress: this.#localAddress(),
      clientAddress: client,
      clientPort: target.port === 0 ? null : target.port,
      resolver: ctx.resolver,
      lookupMs: ctx.connectMs,
      limits: ctx.udpLimits,
      idleMs: ctx.udpIdleMs,
      allows: this.#datagramRules(),
      onIdle: () => {
        this.#reason ??= 'idle-timeout';
        this.#socket.destroy();
      },
    }).then(
      (association) => {
        if (this.#phase !== 'waiting' || this.#socket.destroyed) return association.close();
        this.#udp = association;
        this.#connected = formatDestination(association.address);
        this.#replySuccess(association.address);
        this.#phase = 'associated';
        this.#buffer = EMPTY;
        this.#socket.resume();
      },
      (err: unknown) => this.#commandFailed(toSocksError(err), 'udp-failed'),
    );
  }

  /** The address the client reached the proxy on (an IPv4-mapped one as IPv4). */
  #localAddress(): string {
    const local = this.#socket.localAddress ?? '127.0.0.1';
    return peerAddress(local);
  }

  #startRelay(outbound: Socket): void {
    const socket = this.#socket;
    this.#abort = null; // nothing left to cancel
    this.#phase = 'relaying';
    socket.off('data', this.#onData);
    socket.off('end', this.#onHandshakeEnd);
    socket.off('error', this.#onHandshakeError);
    socket.off('close', this.#onClose);
    const firstChunk = this.#buffer;
    this.#buffer = EMPTY;
    this.#relay = relay(socket, outbound, {
      idleMs: this.#ctx.idleMs,
      firstChunk,
      engine: this.#ctx.relayEngine,
      onEnd: (end) => {
        this.#relayEnd = end;
        this.#reason ??= end.reason;
        if (end.error) this.#error ??= end.error.message;
        this.#emitRecord();
      },
    });
  }

  #signal(): AbortSignal {
    this.#abort ??= new AbortController();
    return this.#abort.signal;
  }

  #cancel(reason: unknown): void {
    this.#abort?.abort(reason);
  }

  /** Pauses reading while something asynchronous decides the next step. */
  #wait(): void {
    this.#phase = 'waiting';
    this.#socket.pause();
  }

  #consume(bytes: number): void {
    this.#buffer = this.#buffer.length === bytes ? EMPTY : this.#buffer.subarray(bytes);
  }

  /**
   * The terminal step of every refusal: send the reply (if any) once, stop
   * reading, and close. The socket is drained rather than destroyed at once,
   * so the client reads the reply instead of a reset.
   */
  #refuse(reply: Buffer | null, reason: CloseReason, error: string, replyCode?: number): void {
    if (this.#phase === 'closing') return;
    this.#phase = 'closing';
    this.#reason ??= reason;
    this.#error ??= error;
    this.#cancel(new SocksError('ERR_GENERAL', error));
    clearTimeout(this.#timer);
    this.#buffer = EMPTY;
    const socket = this.#socket;
    if (socket.destroyed) return; // the client is gone (a reset during the dial): no reply reached it, none is recorded
    if (replyCode !== undefined) this.#reply = replyCode;
    if (reply) socket.end(reply);
    else socket.end();
    socket.resume();
    this.#timer = setTimeout(() => socket.destroy(), LINGER_MS);
  }

  #protocolError(err: unknown): void {
    const error = toSocksError(err);
    let reply: Buffer | null = null;
    let code: number | undefined;
    if (this.#phase === 'request') {
      code = error.socks5Reply;
      reply = encodeReply(code);
    } else if (this.#phase === 'socks4') {
      code = error.socks4Reply;
      reply = encodeSocks4Reply(code);
    }
    const label = `${PHASE_NAMES[this.#phase] ?? this.#phase}`;
    this.#refuse(reply, 'protocol-error', `bad ${label}: ${error.message}`, code);
  }

  readonly #onHandshakeTimeout = (): void => {
    const label = PHASE_NAMES[this.#phase] ?? this.#phase;
    this.#refuse(null, 'handshake-timeout', `handshake timeout after ${this.#ctx.handshakeMs} ms waiting for ${label}`);
    this.#socket.destroy();
  };

  readonly #onHandshakeEnd = (): void => {
    if (this.#bindWaiting) {
      // A half-close: as with CONNECT, the client may send its request and
      // data and shut its side. The wait goes on, bounded by
      // timeouts.handshake from now (a reset ends it at once), and the relay
      // passes the FIN on.
      this.#clientEnded = true;
      this.#boundWaitOfEndedClient();
      return;
    }
    if (this.#phase === 'associated') {
      // The client ended the control connection: the association ends with it.
      this.#reason ??= 'client-closed';
      this.#socket.end();
      return;
    }
    this.#clientEnded = true;
    // The check or dial answers; then the bytes buffered are read on (#advance).
    if (this.#phase !== 'waiting') this.#clientGone();
  };

  /** The client ended its side while the handshake needs more of its bytes. */
  #clientGone(): void {
    const label = PHASE_NAMES[this.#phase];
    if (!label) return; // a refusal is already under way, or the session is past the handshake
    const detail = this.#buffer.length > 0 ? `truncated ${label} (${this.#buffer.length} bytes)` : `before the ${label}`;
    this.#refuse(null, 'client-gone', `client closed the connection mid-handshake: ${detail}`);
  }

  readonly #onHandshakeError = (err: Error): void => {
    // A UDP association's control connection is past its handshake: its failure is the relay's kind.
    const associated = this.#phase === 'associated';
    this.#reason ??= associated ? 'client-error' : 'client-gone';
    this.#error ??= `client connection failed${associated ? '' : ' during handshake'}: ${(err as NodeJS.ErrnoException).code ?? err.message}`;
    this.#cancel(err);
  };

  readonly #onClose = (): void => {
    this.#cancel(new SocksError('ERR_GENERAL', 'client closed'));
    this.#emitRecord();
  };

  #emitRecord(): void {
    clearTimeout(this.#timer);
    if (this.#recorded) return;
    this.#recorded = true;
    this.#bindListener?.close();
    this.#udp?.close(); // first: nothing is relayed after the figures are read
    const udp = this.#udp?.counters;
    if (this.#udpSlot) this.#ctx.udpSlots.release(this.#udpSlot);
    const relayed = this.#relayEnd;
    const bytesUp = udp ? udp.bytesUp : relayed?.bytesUp ?? 0;
    const bytesDown = udp ? udp.bytesDown : relayed?.bytesDown ?? 0;
    this.#ctx.onClose({
      id: this.id,
      listener: this.#ctx.listener,
      clientAddress: this.#clientAddress,
      clientPort: this.#clientPort,
      version: this.#version,
      authMethod: this.#authMethod,
      user: this.#user,
      command: this.#command,
      requested: this.#requested,
      connected: this.#connected,
      reply: this.#reply,
      bytesUp,
      bytesDown,
      relay: relayed?.engine ?? this.#udp?.engine ?? null,
      datagramsUp: udp?.datagramsUp ?? 0,
      datagramsDown: udp?.datagramsDown ?? 0,
      datagramsDropped: udp ? udp.droppedFragments + udp.droppedForeign + udp.droppedInvalid + udp.droppedDenied + udp.droppedAtClose : 0,
      datagramsDenied: udp?.droppedDenied ?? 0,
      startedAt: this.#startedAt,
      durationMs: elapsedMs(this.#startedMono),
      reason: this.#reason ?? 'client-gone',
      // A UDP association that ended normally still names why it dropped datagrams it could not send.
      error: this.#error ?? this.#udp?.failure ?? null,
      rule: this.#rule,
    });
  }
}

/**
 * With the splice relay, the addon's relay thread carries the association's
 * datagrams too (relay/native-udp.ts); otherwise, or where the addon lacks
 * it, dgram sockets do (relay/udp.ts).
 */
async function openUdpRelay(engine: RelayEngine, options: UdpAssociationOptions): Promise<UdpRelay> {
  return (engine === 'splice' ? NativeUdpAssociation.open(options) : null) ?? UdpAssociation.open(options);
}
