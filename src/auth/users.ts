/**
 * Users and their credentials: from the config (quick starts) and from an
 * htpasswd-style file of `name:bcrypt-hash` lines. Verification takes the same
 * time whether or not the user exists, and compares in constant time.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { bcryptCompare, bcryptHash } from './bcrypt.js';
import { BCRYPT_MAX_PASSWORD_BYTES, MAX_COST, MIN_BCRYPT_COST, bcryptCost, bcryptHashProblem, isBcryptHash, isUsableCost, tooLongForBcrypt } from './hash-format.js';

/** Decides whether a username/password pair may use the proxy. Library users may supply their own. */
export interface Authenticator {
  /** The server always passes `context`; an authenticator may leave it unread. Only `true` accepts. */
  verify(username: string, password: string, context: VerifyContext): Promise<boolean>;
}

/** What the server tells an authenticator about the check it asks for. */
export interface VerifyContext {
  /** The client's address (as Node writes it): the built-in store serves each client's checks in turn. */
  readonly clientAddress: string;
  /** Aborted when the session is gone (closed, timed out): there is no one left to answer. */
  readonly signal: AbortSignal;
}

/** A stored credential: a bcrypt hash, or (config only) a plain password. */
export type StoredSecret = { readonly kind: 'bcrypt'; readonly hash: string } | { readonly kind: 'plain'; readonly digest: Buffer };

/** Turns a configured password (plain text or a bcrypt hash) into a stored secret. */
export function storedSecret(password: string): StoredSecret {
  if (isBcryptHash(password)) return { kind: 'bcrypt', hash: password };
  return { kind: 'plain', digest: sha256(password) };
}

export class UsersFileError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsersFileError';
  }
}

/** Parses an htpasswd-style file: `name:hash` per line, `#` comments and blank lines ignored. */
export function parseUsersFile(text: string, path = 'users file'): Map<string, StoredSecret> {
  const users = new Map<string, StoredSecret>();
  const lineOf = new Map<string, number>();
  text.split(/\r?\n/).forEach((raw, index) => {
    const entry = usersFileLine(raw);
    if (!entry) return;
    const { name, hash } = entry;
    // htpasswd reads the first, a map keeps the last: which password counts would be a guess.
    const first = lineOf.get(name);
    if (first !== undefined) throw new UsersFileError(`${path}:${index + 1}: user "${name}" again (first on line ${first}): each name may appear once`);
    lineOf.set(name, index + 1);
    // A $2x$ or $2$ hash, a cut one, one with a cost bcrypt has not or one too slow to check.
    const problem = name !== '' ? bcryptHashProblem(hash) : undefined;
    if (problem !== undefined) throw new UsersFileError(`${path}:${index + 1}: ${problem}`);
    if (name === '' || !isBcryptHash(hash)) {
      throw new UsersFileError(`${path}:${index + 1}: expected "name:bcrypt-hash"`);
    }
    users.set(name, { kind: 'bcrypt', hash });
  });
  return users;
}

/**
 * How parseUsersFile reads one line (without its line end): null for a blank
 * line or a comment; else the name before the first colon ('' when there is
 * none) and what follows it. The line is trimmed first (spaces, tabs, a BOM).
 * `socksgate passwd` finds a user's line with it too.
 */
export function usersFileLine(raw: string): { readonly name: string; readonly hash: string } | null {
  const line = raw.trim();
  if (line === '' || line.startsWith('#')) return null;
  const colon = line.indexOf(':');
  if (colon <= 0) return { name: '', hash: line };
  return { name: line.slice(0, colon), hash: line.slice(colon + 1) };
}

export function readUsersFile(path: string): Map<string, StoredSecret> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new UsersFileError(`cannot read users file ${path}: ${code}`, { cause: err });
  }
  return parseUsersFile(text, path);
}

// Hashes of a random password by cost, compared against when the user is
// unknown, so a wrong name costs as much time as a wrong password. A store
// makes its own when it is built: were it made by the first unknown name
// instead, that check would take twice as long and tell the name is not there.
const dummies = new Map<number, Promise<string>>();
function dummy(cost: number): Promise<string> {
  let hash = dummies.get(cost);
  if (!hash) {
    hash = bcryptHash(randomBytes(16).toString('hex'), cost);
    hash.catch(() => dummies.delete(cost)); // the next unknown name tries again
    dummies.set(cost, hash);
  }
  return hash;
}

/**
 * The cost most of the hashes have (10 when there are none): what an unknown
 * name should cost. Never above MAX_COST: the users file and the config refuse
 * such hashes, but a store built from a map of the library's own may hold
 * anything, and a store starts this hash when it is built (at 31 it ran for
 * more than a day, held a slot of the gate and the process's exit with it).
 */
function usualCost(users: ReadonlyMap<string, StoredSecret>): number {
  const counts = new Map<number, number>();
  for (const secret of users.values()) {
    if (secret.kind === 'bcrypt') {
      const written = bcryptCost(secret.hash);
      if (Number.isNaN(written)) continue;
      const cost = Math.min(Math.max(written, MIN_BCRYPT_COST), MAX_COST);
      counts.set(cost, (counts.get(cost) ?? 0) + 1);
    }
  }
  let usual = 10;
  let most = 0;
  for (const [cost, count] of counts) {
    if (count > most) [usual, most] = [cost, count];
  }
  return usual;
}
const CACHE_LIMIT = 4096;

/**
 * Verifies against a fixed set of users. bcrypt costs tens of milliseconds,
 * so successful checks are remembered under an HMAC of the password with a
 * per-process key (never the password itself); the cache is bounded.
 */
export class UserStore implements Authenticator {
  readonly #users: ReadonlyMap<string, StoredSecret>;
  readonly #cacheKey = randomBytes(32);
  readonly #verified = new Map<string, true>();
  /** bcrypt checks under way, by cache key; bounded by the sessions in their handshake. */
  readonly #inFlight = new Map<string, SharedCheck>();

  readonly #dummyCost: number;

  constructor(users: ReadonlyMap<string, StoredSecret>) {
    this.#users = users;
    this.#dummyCost = usualCost(users);
    dummy(this.#dummyCost).catch(() => {}); // a failure here is retried by the first unknown name
  }

  get size(): number {
    return this.#users.size;
  }

  async verify(username: string, password: string, context?: VerifyContext): Promise<boolean> {
    const secret = this.#users.get(username);
    const client = context?.clientAddress;
    // Past bcrypt's 72 bytes only a prefix would be checked: refused, in the
    // unknown user's time, so the refusal does not say the user exists.
    if (!secret || (secret.kind === 'bcrypt' && tooLongForBcrypt(password))) {
      await bcryptCompare(password, await dummy(this.#dummyCost), { client, signal: context?.signal });
      return false;
    }
    if (secret.kind === 'plain') return timingSafeEqual(sha256(password), secret.digest);
    const cacheKey = this.#cacheEntry(username, password);
    if (this.#verified.has(cacheKey)) return true;
    // Many connections with the same credentials arriving at once share one
    // bcrypt run instead of each paying tens of milliseconds of CPU.
    let shared = this.#inFlight.get(cacheKey);
    if (!shared || shared.abandoned) {
      shared = new SharedCheck((signal) => bcryptCompare(password, secret.hash, { client, signal }));
      const started = shared;
      const forget = (): void => {
        if (this.#inFlight.get(cacheKey) === started) this.#inFlight.delete(cacheKey);
      };
      started.result.then(forget, forget);
      this.#inFlight.set(cacheKey, started);
    }
    const ok = await shared.join(context?.signal);
    if (ok) this.#remember(cacheKey);
    return ok;
  }

  /**
   * The name's length goes first: with a separator alone, "bob" with
   * password "p\0q" and "bob\0p" with "q" would share an entry.
   */
  #cacheEntry(username: string, password: string): string {
    return createHmac('sha256', this.#cacheKey).update(`${Buffer.byteLength(username)}:`).update(username).update(password).digest('base64');
  }

  #remember(key: string): void {
    if (this.#verified.size >= CACHE_LIMIT) {
      const oldest = this.#verified.keys().next().value;
      if (oldest !== undefined) this.#verified.delete(oldest);
    }
    this.#verified.set(key, true);
  }
}

/**
 * One bcrypt check that several sessions with the same credentials wait for.
 * It is dropped (if it has not started) only when every one of them is gone,
 * so a session that timed out does not cancel the check for the others.
 */
class SharedCheck {
  readonly result: Promise<boolean>;
  readonly #abort = new AbortController();
  #waiting = 0;

  /** Everyone who waited for it has gone: a newcomer must start its own. */
  get abandoned(): boolean {
    return this.#abort.signal.aborted;
  }

  constructor(check: (signal: AbortSignal) => Promise<boolean>) {
    this.result = check(this.#abort.signal);
    this.result.catch(() => {}); // each joiner sees the failure
  }

  /** The check's verdict; without waiting for it once `signal` aborts (rejected with its reason). */
  join(signal: AbortSignal | undefined): Promise<boolean> {
    this.#waiting++;
    if (!signal) return this.result; // someone waits for good: the check is never dropped
    return new Promise<boolean>((resolve, reject) => {
      const leave = (): void => {
        if (--this.#waiting === 0) this.#abort.abort(signal.reason);
        reject(signal.reason);
      };
      if (signal.aborted) return leave();
      signal.addEventListener('abort', leave, { once: true });
      this.result.then(resolve, reject).finally(() => signal.removeEventListener('abort', leave));
    });
  }
}

/**
 * A bcrypt hash for a users file entry. Rejects (RangeError) a cost that is
 * not an integer from MIN_BCRYPT_COST to MAX_COST, as `socksgate passwd
 * --cost` does, before any work: the users file and the config refuse a hash
 * above MAX_COST (and 31 took more than a day of CPU), and bcrypt made others
 * at a cost nobody asked for (3 and 3.5 at 4, NaN at 10) or, with the native
 * binding and -1, never finished. Rejects (RangeError) a password over 72
 * bytes of UTF-8 (BCRYPT_MAX_PASSWORD_BYTES): bcrypt would ignore the rest.
 */
export async function hashPassword(password: string, cost = 10): Promise<string> {
  if (!isUsableCost(cost)) {
    throw new RangeError(`cost must be an integer from ${MIN_BCRYPT_COST} to ${MAX_COST}, got ${String(cost)}`);
  }
  if (tooLongForBcrypt(password)) throw new RangeError(TOO_LONG_FOR_BCRYPT);
  return bcryptHash(password, cost);
}

/** Why a password is not hashed (hashPassword, `socksgate passwd`). */
export const TOO_LONG_FOR_BCRYPT = `password longer than ${BCRYPT_MAX_PASSWORD_BYTES} bytes: bcrypt would check only the first ${BCRYPT_MAX_PASSWORD_BYTES}`;

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
