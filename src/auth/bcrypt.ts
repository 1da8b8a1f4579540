/**
 * bcrypt for the users list. A check costs tens of milliseconds of CPU by
 * design. The native binding (npm `bcrypt`, an optional dependency that ships
 * prebuilt for the common platforms) does it on libuv's thread pool, so a
 * burst of password guesses never stalls the event loop that serves every
 * other session, and it leaves nothing on the JavaScript heap. Where the
 * binding does not load, bcryptjs does the same work in JavaScript on the
 * main thread, as before.
 */
import { createRequire } from 'node:module';
import bcryptjs from 'bcryptjs';

/** What this module needs of the native binding (its own types are not a dependency). */
interface NativeBcrypt {
  compare(password: string, hash: string): Promise<boolean>;
  hash(password: string, cost: number): Promise<string>;
}

/**
 * Checks running on the thread pool at once. The pool (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise) also serves dns.lookup for CONNECT by
 * name and file I/O: a flood of guesses must leave it threads.
 */
const PARALLEL_CHECKS = 2;
/** Checks waiting for a thread; past this the check fails at once (the session logs why). */
const WAITING_LIMIT = 1024;

export type BcryptEngine = 'native' | 'bcryptjs';

export interface PasswordCheckStats {
  readonly engine: BcryptEngine;
  readonly running: number;
  readonly waiting: number;
  /** Checks and hashes begun since the process started. */
  readonly total: number;
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
let running = 0;
let total = 0;
const waiting: Array<() => void> = [];

/** Which implementation checks passwords, and how many checks are under way. */
export function passwordChecks(): PasswordCheckStats {
  return { engine: native ? 'native' : 'bcryptjs', running, waiting: waiting.length, total };
}

/** Whether `password` matches a bcrypt `hash` ($2a$, $2b$ or $2y$). */
export async function bcryptCompare(password: string, hash: string): Promise<boolean> {
  total++;
  if (!native) return bcryptjs.compare(password, hash);
  // $2y$ (PHP, htpasswd -B) is the same algorithm as $2b$; the binding knows only $2a$ and $2b$.
  const spelled = hash.startsWith('$2y$') ? `$2b$${hash.slice(4)}` : hash;
  return onThreadPool(() => native.compare(password, spelled));
}

/** A new bcrypt hash of `password` at `cost` (work factor, 4–31). */
export function bcryptHash(password: string, cost: number): Promise<string> {
  total++;
  return native ? onThreadPool(() => native.hash(password, cost)) : bcryptjs.hash(password, cost);
}

async function onThreadPool<T>(work: () => Promise<T>): Promise<T> {
  if (running >= PARALLEL_CHECKS) {
    if (waiting.length >= WAITING_LIMIT) throw new Error(`too many password checks waiting (${WAITING_LIMIT})`);
    await new Promise<void>((resolve) => waiting.push(resolve));
  }
  running++;
  try {
    return await work();
  } finally {
    running--;
    waiting.shift()?.();
  }
}
