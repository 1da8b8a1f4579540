/**
 * The typed events a server emits. The core only emits; logs, metrics and any
 * library user subscribe. Nothing here is emitted per chunk of relayed data.
 */

/**
 * Why a session ended: a closed set shared by logs and metrics, saying who
 * ended it and in which phase.
 */
export type CloseReason =
  /** The client ended first after a successful relay, and the destination ended too (normal). */
  | 'client-closed'
  /** The destination ended first after a successful relay, and the client ended too (normal). */
  | 'destination-closed'
  /** The client went away during the handshake, before a request was answered. */
  | 'client-gone'
  /** The client's connection failed (reset, or a write after it closed) while relaying, a half-close before it or not. */
  | 'client-error'
  /** The destination's connection failed (reset, or a write after it closed) while relaying, a half-close before it or not. */
  | 'destination-error'
  /** The proxy itself could not go on relaying (e.g. the kernel would not let the splice relay watch the sockets); both sides are reset. */
  | 'relay-error'
  | 'idle-timeout'
  | 'handshake-timeout'
  /** The client sent bytes that are not a valid SOCKS message. */
  | 'protocol-error'
  | 'no-acceptable-method'
  | 'auth-failed'
  /** Refused by policy: client rules, request rules (`rule` names which), SOCKS4 off or not allowed with auth. */
  | 'not-allowed'
  | 'command-not-supported'
  | 'connect-failed'
  /** BIND could not listen, timed out, or saw the wrong peer (SOCKS4). */
  | 'bind-failed'
  /** UDP ASSOCIATE could not open its sockets. */
  | 'udp-failed'
  /** A configured limit (e.g. UDP associations per client) was reached. */
  | 'limit-reached'
  | 'shutdown';

/** One access-log record, emitted when a session ends. */
export interface SessionRecord {
  readonly id: number;
  /** The listener's bound `address:port`. */
  readonly listener: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  /** 4 or 5 once the first byte is read. */
  readonly version: 4 | 5 | null;
  readonly authMethod: 'none' | 'userpass' | null;
  readonly user: string | null;
  readonly command: 'connect' | 'bind' | 'udp' | null;
  /** Destination as the client asked for it, `host:port`. */
  readonly requested: string | null;
  /** The address actually connected to, `ip:port` (for BIND: the inbound peer; for UDP: the relay address). */
  readonly connected: string | null;
  /** The reply code sent (SOCKS5 REP or SOCKS4 CD), or null when none was sent. */
  readonly reply: number | null;
  /** Payload bytes from client to destination (for UDP: datagram payloads). */
  readonly bytesUp: number;
  /** Payload bytes from destination to client. */
  readonly bytesDown: number;
  /**
   * What carried the session: `splice` (the addon's relay thread: TCP in the
   * kernel, UDP datagrams in batches) or `stream` (Node streams, dgram
   * sockets); null when nothing was relayed.
   */
  readonly relay: 'splice' | 'stream' | null;
  /** UDP ASSOCIATE: datagrams relayed each way, and dropped (fragments, foreign sources, malformed, oversized, denied by the rules). */
  readonly datagramsUp: number;
  readonly datagramsDown: number;
  readonly datagramsDropped: number;
  /** Of the dropped, those the request rules refused: datagrams to a denied destination and replies from a denied sender. */
  readonly datagramsDenied: number;
  /** Epoch milliseconds. */
  readonly startedAt: number;
  readonly durationMs: number;
  readonly reason: CloseReason;
  /**
   * The cause, for every reason but the normal ones; for UDP also after a
   * normal end when datagrams were dropped for want of an outbound socket
   * (`datagrams dropped: could not open an outbound socket (EMFILE)`).
   * Never contains a password.
   */
  readonly error: string | null;
  /**
   * The request rule that decided the request, allowed or denied
   * (`default-deny` when none matched); null when no rules are configured
   * or the session ended before its request was decided.
   */
  readonly rule: string | null;
}

export interface SessionOpen {
  readonly id: number;
  readonly listener: string;
  readonly clientAddress: string;
  readonly clientPort: number;
}

export interface ListenerInfo {
  readonly address: string;
  readonly port: number;
  readonly family: 'IPv4' | 'IPv6';
  readonly socks4: boolean;
}

/** Event name → listener arguments, for `server.on(...)`. */
export interface ServerEvents {
  listening: [ListenerInfo];
  'session-open': [SessionOpen];
  'session-close': [SessionRecord];
  /**
   * Connections are being refused at `limits.sessions` (each has its
   * `limit-reached` record too): told at the first refusal, then at most
   * once a minute while refusals go on. `limit` is this process's; `refused`
   * counts the refusals since the last time, this one included.
   */
  'session-limit': [{ readonly limit: number; readonly sessions: number; readonly refused: number }];
  /** A listener failed after it was bound (accept errors and the like). */
  'listener-error': [{ readonly listener: string; readonly error: Error }];
  /** Shutdown began: listeners are closed, sessions drain. */
  draining: [{ readonly sessions: number; readonly graceMs: number }];
  close: [];
}

/** "1 session open", "2 sessions open": the session limit's wording, in records and in the log. */
export function sessionsOpen(count: number): string {
  return `${count} session${count === 1 ? '' : 's'} open`;
}
