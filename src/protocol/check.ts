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
