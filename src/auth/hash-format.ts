/**
 * What a bcrypt hash looks like, for the users file and the config schema
 * alike (kept apart from users.ts so validating a config loads no bcrypt).
 */

/** $2a$, $2b$ and $2y$: what both implementations here check. */
const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;
/** How every bcrypt hash begins: `$2`, the variant's letter, `$`; the original bcrypt's `$2$` has no letter. */
const BCRYPT_LIKE = /^\$2[A-Za-z]?\$/;
/** The characters after the cost's `$`. */
const ALPHABET = /[./A-Za-z0-9]/;

/** Why a $2x$ hash is refused, for the users file and the config alike. */
export const UNSUPPORTED_2X = '$2x$ hashes are not supported; hash the password again (socksgate passwd)';
/** Why a $2$ hash (the original bcrypt's, before $2a$) is refused, for the users file and the config alike. */
export const UNSUPPORTED_2 = '$2$ hashes (the original bcrypt, before $2a$) are not supported; hash the password again (socksgate passwd)';

/**
 * bcrypt reads only this many bytes of a password and ignores the rest: a
 * longer password is refused when hashed, and never accepted against a hash
 * (with 80 bytes, its first 72 and any tail would pass).
 */
export const BCRYPT_MAX_PASSWORD_BYTES = 72;

/** Whether bcrypt would check only a prefix of `password` (see BCRYPT_MAX_PASSWORD_BYTES). */
export function tooLongForBcrypt(password: string): boolean {
  return Buffer.byteLength(password) > BCRYPT_MAX_PASSWORD_BYTES;
}

/** The costs bcrypt itself has: 2^4 to 2^31 rounds. */
export const MIN_BCRYPT_COST = 4;
export const MAX_BCRYPT_COST = 31;
/**
 * The highest cost socksgate reads (socksgate passwd writes at most this too).
 * A check at 14 takes about a second of a thread's time and each step up
 * doubles it, while two checks run at once for the whole process: at 16 and
 * above a client's few wrong guesses hold every login for many seconds (at
 * 20 over a minute per check, at 31 more than a day), and a login waiting
 * behind one check no longer fits the default 10 s handshake timeout. A
 * check already running also holds the process's exit (see src/cli.ts).
 */
export const MAX_COST = 15;

/** Whether `cost` is one socksgate writes and reads: an integer MIN_BCRYPT_COST to MAX_COST. */
export function isUsableCost(cost: number): boolean {
  return Number.isInteger(cost) && cost >= MIN_BCRYPT_COST && cost <= MAX_COST;
}

export function isBcryptHash(value: string): boolean {
  return BCRYPT.test(value);
}

/** The cost written in a hash (NaN if it has none). */
export function bcryptCost(hash: string): number {
  const digits = /^\$2[A-Za-z]\$(\d\d)\$/.exec(hash)?.[1];
  return digits === undefined ? NaN : Number(digits);
}

/**
 * What is wrong with a value that begins as a bcrypt hash does (`$2`, a
 * letter, `$`, or the original `$2$`): undefined when it is a hash socksgate
 * checks, or when it does not begin so at all. Such a value is a hash or
 * refused, never a plain password: taken as plain text, a mistyped, cut,
 * $2x$ or $2$ hash would silently become the password itself. The message
 * names the problem without repeating the value (it may be a secret).
 */
export function bcryptHashProblem(value: string): string | undefined {
  if (!BCRYPT_LIKE.test(value)) return undefined;
  // Refused whatever follows, without the shape checks below: neither bcrypt
  // here reads one, so well formed or not it can only be refused.
  if (value.startsWith('$2$')) return UNSUPPORTED_2;
  const invalid = (why: string): string => `not a valid bcrypt hash: ${why}`;
  const variant = value.slice(0, 4);
  if (!/^\$2[abxy]\$$/.test(variant)) return invalid(`${variant} is not a variant socksgate reads ($2a$, $2b$, $2y$)`);
  const cost = bcryptCost(value);
  if (Number.isNaN(cost)) return invalid('the cost after the variant must be two digits and a "$"');
  if (cost < MIN_BCRYPT_COST || cost > MAX_BCRYPT_COST) return invalid(`cost ${String(cost).padStart(2, '0')} is not one bcrypt has (04 to 31)`);
  const bad = [...value.slice(7)].findIndex((c) => !ALPHABET.test(c));
  if (bad >= 0) return invalid(`character ${8 + bad}${/\s/.test(value[7 + bad]!) ? ' (whitespace)' : ''} is not one of ./A-Za-z0-9`);
  if (value.length !== 60) return invalid(`it has ${value.length} characters, not 60`);
  if (variant === '$2x$') return UNSUPPORTED_2X;
  if (cost > MAX_COST) {
    return `bcrypt cost ${cost} is too slow to check (at most ${MAX_COST}): a check takes about 1 s at 14 and twice as long `
      + `per step up, so a few wrong guesses would hold every login; hash the password again at ${MAX_COST} or less (socksgate passwd --cost)`;
  }
  return undefined;
}
