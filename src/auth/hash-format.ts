/**
 * What a bcrypt hash looks like, for the users file and the config schema
 * alike (kept apart from users.ts so validating a config loads no bcrypt).
 */

/** $2a$, $2b$ and $2y$: what both implementations here check. */
const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;
/** $2x$ (crypt_blowfish's bug-compatible variant): neither checks it. */
const BCRYPT_2X = /^\$2x\$\d\d\$[./A-Za-z0-9]{53}$/;

/** Why a $2x$ hash is refused, for the users file and the config alike. */
export const UNSUPPORTED_2X = '$2x$ hashes are not supported; hash the password again (socksgate passwd)';

export function isBcryptHash(value: string): boolean {
  return BCRYPT.test(value);
}

/** A $2x$ hash: refused where it is written, never taken as plain text. */
export function isUnsupportedBcryptHash(value: string): boolean {
  return BCRYPT_2X.test(value);
}
