/**
 * bcrypt for the users list. A check costs tens of milliseconds of CPU by
 * design. The native binding (npm `bcrypt`, an optional dependency that ships
 * prebuilt for the common platforms) does it on libuv's thread pool, so a
 * burst of password guesses never stalls the event loop that serves every
 * other session, and it leaves nothing on the JavaScript heap. Where the
 * binding does not load, bcryptjs does the same work in JavaScript on the
 * main thread, as before. Either way checks take turns through one gate:
 * two at once, the rest waiting in a line per client, served in rotation,
 * and dropped when the session that asked is gone.
 */
import { createRequire } from 'node:module';
import bcryptjs from 'bcryptjs';
import { FairGate } from '../fair-gate.js';

/** What this module needs of the native binding (its own types are not a dependency). */
interface NativeBcrypt {
  compare(password: string, hash: string): Promise<boolean>;
  hash(password: string, cost: number): Promise<string>;
}

/**
 * Checks running at once. On the thread pool (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise) they share it with the system
 * resolver's lookups (half the pool at most, upstream/resolver.ts) and with
 * file I/O: a flood of guesses must leave it threads. With bcryptjs they
 * share the main thread, so the gate bounds that too.
 */
const PARALLEL_CHECKS = 2;
/** Checks waiting for a turn; past this a check fails at once (the session logs why). */
const WAITING_LIMIT = 1024;
/**
 * Checks one client may have waiting. Without it one address could fill the
 * whole queue, and everyone else's login would be refused until its
 * connections timed out. Generous enough for an office behind one NAT
 * address logging in at once (a success is remembered, so only first logins wait).
 */
const WAITING_PER_CLIENT = 64;

export type BcryptEngine = 'native' | 'bcryptjs';

export interface PasswordCheckStats {
  readonly engine: BcryptEngine;
  readonly running: number;
  readonly waiting: number;
  /** Checks and hashes begun since the process started. */
  readonly total: number;
  /** Checks dropped while they waited, because the session that asked had gone. */
  readonly cancelled: number;
}

/** Who a check is for, so checks are served fairly and dropped when nobody waits for them any more. */
export interface CheckOptions {
  /**
   * The client's address. Each client's checks wait in their own line, and
   * the lines take turns: one client's flood of guesses delays another
   * client's login by at most one check per waiting client, not by the
   * flood's length. IPv6 clients are grouped by /64, the block one host is
   * usually given. Checks naming no client share one line, limited only by
   * the total.
   */
  readonly client?: string;
  /** Aborted when the session that asked is gone: its check, if still waiting, is dropped. */
  readonly signal?: AbortSignal;
}

function loadNative(): NativeBcrypt | null {
  if (process.env.SOCKSGATE_BCRYPT === 'bcryptjs') return null; // tests of the fallback, and an escape hatch
  try {
    return createRequire(import.meta.url)('bcrypt') as NativeBcrypt;
  } catch {
    return null; // not installed, or no prebuilt binding for this platform
  }
}

const native = loadNative();

let total = 0;
const checks = new FairGate({ what: 'password checks', running: PARALLEL_CHECKS, waiting: WAITING_LIMIT, waitingPerClient: WAITING_PER_CLIENT });

/** Which implementation checks passwords, and how many checks are under way. */
export function passwordChecks(): PasswordCheckStats {
  return { engine: native ? 'native' : 'bcryptjs', ...checks.stats(), total };
}

/** Whether `password` matches a bcrypt `hash` ($2a$, $2b$ or $2y$). */
export async function bcryptCompare(password: string, hash: string, options: CheckOptions = {}): Promise<boolean> {
  total++;
  if (!native) return checks.run(() => bcryptjs.compare(password, hash), options);
  // $2y$ (PHP, htpasswd -B) is the same algorithm as $2b$; the binding knows only $2a$ and $2b$.
  const spelled = hash.startsWith('$2y$') ? `$2b$${hash.slice(4)}` : hash;
  return checks.run(() => native.compare(password, spelled), options);
}

/** A new bcrypt hash of `password` at `cost` (work factor, 4–31). */
export function bcryptHash(password: string, cost: number): Promise<string> {
  total++;
  return checks.run(() => (native ? native.hash(password, cost) : bcryptjs.hash(password, cost)));
}
