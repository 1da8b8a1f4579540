/**
 * The checks the encoders make on the values they are given, so that what
 * one encoder writes the matching decoder reads back as the same value. Not
 * part of `socksgate/protocol` (index.ts does not export this module).
 *
 * Each check is a couple of integer comparisons: the encoders run per
 * session, and the proxy only ever passes values that pass.
 */
import { SocksError } from '../errors.js';

/** Refuses (ERR_MALFORMED) anything but an integer 0-65535, NaN and 1.5 too (they were written as 0 and 1). */
export function checkPort(port: number): void {
  if ((port >>> 0) !== port || port > 0xffff) {
    throw new SocksError('ERR_MALFORMED', `port must be an integer 0-65535, got ${String(port)}`);
  }
}

/** Refuses (ERR_MALFORMED) anything but an integer 0-255 for a one-byte field (256 was written as 0, -1 as 0xff). */
export function checkByte(value: number, field: string): void {
  if ((value >>> 0) !== value || value > 0xff) {
    throw new SocksError('ERR_MALFORMED', `${field} must be an integer 0-255, got ${String(value)}`);
  }
}

/**
 * Refuses what decodeHostname refuses, so that a name that is written reads
 * back as itself: 0 or over 255 characters (ERR_TOO_LONG: the one-byte
 * length of SOCKS5, the default limit of SOCKS4a), and any character but
 * printable ASCII, 0x21-0x7e, and the backslash (ERR_MALFORMED: NUL, space,
 * controls, and anything past ASCII, which was written as Latin-1 or cut to
 * its low byte; IDNs go as punycode; see BACKSLASH_REFUSED). Once it
 * passes, characters and bytes are one to one.
 */
export function checkHostname(host: string): void {
  const length = host.length;
  if (length === 0 || length > 255) {
    throw new SocksError('ERR_TOO_LONG', `domain name must be 1-255 bytes, got ${length}`);
  }
  for (let i = 0; i < length; i++) {
    const c = host.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) {
      throw new SocksError('ERR_MALFORMED', `domain name has a character that is not printable ASCII: U+${c.toString(16).padStart(4, '0')}`);
    }
    if (c === BACKSLASH) throw new SocksError('ERR_MALFORMED', BACKSLASH_REFUSED);
  }
}

/** `\` in a host name. */
export const BACKSLASH = 0x5c;

/**
 * Why a host name with a backslash is refused: the system resolver reads
 * `\DDD` and `\X` as escapes (`blocked.t\101st` asks DNS for
 * `blocked.test`), so the name the rules judged would not be the name looked
 * up. No host name has one.
 */
export const BACKSLASH_REFUSED = 'host name has a backslash, which the resolver would read as an escape';

/**
 * Arguments that say where to read or write, or how far, are the caller's
 * own mistake when wrong, never the peer's: they are refused with a
 * RangeError naming the argument, as Node refuses a bad argument, not with a
 * SocksError (whose code stands for what a peer sent or a connection did,
 * and is the reply the peer gets). Refuses anything but an integer >= 0
 * (-1, 1.5 and NaN read the wrong bytes or threw a TypeError).
 */
export function checkIndex(value: number, argument: string): void {
  if ((value >>> 0) !== value) {
    throw new RangeError(`${argument} must be an integer >= 0, got ${String(value)}`);
  }
}

/** Refuses (RangeError, as checkIndex) an `at` that is not an integer >= 0, or `length` bytes that do not fit in `buf` there. */
export function checkRoom(buf: Uint8Array, at: number, length: number): void {
  if ((at >>> 0) !== at || at + length > buf.length) {
    throw new RangeError(`at must be an integer >= 0 with ${length} bytes after it in a buffer of ${buf.length}, got ${String(at)}`);
  }
}

/** Refuses (RangeError, as checkIndex) a range [start, end) of `buf` that is not integers with 0 <= start <= end <= buf.length. */
export function checkRange(buf: Uint8Array, start: number, end: number): void {
  checkIndex(start, 'start');
  if ((end >>> 0) !== end || end < start || end > buf.length) {
    throw new RangeError(`end must be an integer from start (${start}) to the buffer's length (${buf.length}), got ${String(end)}`);
  }
}
