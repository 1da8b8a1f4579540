/**
 * Name resolution for CONNECT, BIND and UDP destinations. The session gets a
 * `Resolver` from outside so tests (and custom DNS policies) can swap it.
 *
 * The system resolver's lookups (getaddrinfo) each hold one of libuv's
 * thread pool threads for as long as DNS takes to answer: seconds for a name
 * that does not exist when the DNS server is busy. The pool is the process's
 * (4 threads unless UV_THREADPOOL_SIZE says otherwise), shared with password
 * checks and file writes, so the lookups pass a FairGate: half the pool at
 * once, at most half of that for one client, the rest in a line per client.
 */
import { lookup } from 'node:dns/promises';
import { FairGate, type FairGateStats } from '../fair-gate.js';

export interface ResolvedAddress {
  readonly address: string;
  readonly family: 4 | 6;
}

/** Who a lookup is for. A resolver may ignore both: they were added later, and a resolver of one argument still is one. */
export interface ResolveOptions {
  /** The client's address (IPv4-mapped ones as IPv4). The system resolver takes lookups in turn per client. */
  readonly client?: string;
  /** Aborted when nobody waits for the answer any more: the session closed, or the lookup's deadline passed. */
  readonly signal?: AbortSignal;
}

export interface Resolver {
  /** Every address of `hostname`, in the order they should be tried. Rejects with an errno-coded error. */
  resolve(hostname: string, options?: ResolveOptions): Promise<readonly ResolvedAddress[]>;
  /**
   * How long (ms) an answer may be used again for the same CONNECT (the
   * same client, name, port and user) without asking again. Absent or 0:
   * every request asks. The native engine honours it (its relay thread
   * dials a repeated request at once); a connect that fails over a reused
   * answer looks the name up afresh, and a reload forgets every answer.
   */
  readonly reuseMs?: number;
}

/** A resolver's reuseMs as a whole number of milliseconds the addon takes (0 to 2^31-1). */
export function answerReuseMs(resolver: Resolver): number {
  const ms = resolver.reuseMs;
  return typeof ms === 'number' && ms > 0 ? Math.min(Math.floor(ms), 2_147_483_647) : 0;
}

/**
 * How long the system resolver's answer to a CONNECT is used again. getaddrinfo
 * tells no TTL; a minute is what the UDP relay keeps a name's answer for
 * (NAME_TTL_MS in src/relay/udp.ts) and Chrome's host cache its entries, and
 * a stale answer costs one failed connect, after which the name is looked up
 * again.
 */
export const SYSTEM_ANSWER_REUSE_MS = 60_000;

/**
 * libuv's thread pool size as libuv reads UV_THREADPOOL_SIZE: 4 unless set;
 * atoi's number, 0 (or none) taken as 1, above 1024 (or negative: it is
 * unsigned there) as 1024. The pool starts on first use with what the
 * environment said then: for an ES module entry, before its first line runs.
 */
export function threadPoolSize(setting = process.env.UV_THREADPOOL_SIZE): number {
  if (setting === undefined) return 4;
  const threads = Number.parseInt(setting, 10) || 0;
  if (threads === 0) return 1;
  return threads < 0 ? 1024 : Math.min(threads, 1024);
}

/**
 * Lookups under way at once: half the pool (2 of the default 4). The other
 * half is for password checks (two at once) and file writes (the log), which
 * a burst of slow lookups would otherwise queue behind.
 */
const LOOKUPS_AT_ONCE = Math.max(1, Math.floor(threadPoolSize() / 2));
/** Lookups one client may have under way: half of those, so one client's slow names leave the other half to everyone else. */
const LOOKUPS_PER_CLIENT = Math.max(1, Math.floor(LOOKUPS_AT_ONCE / 2));
/**
 * Lookups one client may have waiting: as many CONNECTs by name as an office
 * behind one NAT address opens at once, or four UDP associations' datagrams
 * to distinct names (udp.pendingDatagrams, 64 by default). One waiting
 * longer than `timeouts.connect` leaves without running.
 */
const WAITING_PER_CLIENT = 256;
/** Lookups waiting, all clients together; past this one fails at once. A waiting lookup costs a few hundred bytes. */
const WAITING_LIMIT = 4096;

const lookups = new FairGate({
  what: 'name lookups',
  running: LOOKUPS_AT_ONCE,
  runningPerClient: LOOKUPS_PER_CLIENT,
  waiting: WAITING_LIMIT,
  waitingPerClient: WAITING_PER_CLIENT,
  // EAI_AGAIN, getaddrinfo's "try again later": the lookup failed as one
  // does (REP 0x04, a dropped datagram), with the reason in the message.
  refusal: (reason) => Object.assign(new Error(reason), { code: 'EAI_AGAIN' }),
});

/** The system resolver's lookups running and waiting, and those dropped while they waited. */
export function nameLookups(): FairGateStats {
  return lookups.stats();
}

/**
 * The system resolver (getaddrinfo: /etc/hosts, then DNS), both families, in
 * the system's order; its lookups take turns per client (see above).
 */
export const systemResolver: Resolver = {
  resolve: (hostname, options) => lookups.run(() => getaddrinfo(hostname), options),
  reuseMs: SYSTEM_ANSWER_REUSE_MS,
};

async function getaddrinfo(hostname: string): Promise<readonly ResolvedAddress[]> {
  const found = await lookup(hostname, { all: true, verbatim: true });
  return found.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
}
