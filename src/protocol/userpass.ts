/**
 * Username/password sub-negotiation (RFC 1929).
 *
 *   +----+------+----------+------+----------+
 *   |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
 *   +----+------+----------+------+----------+
 *   | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
 *
 * The one-byte lengths bound both fields at 255 bytes. Empty fields decode
 * (some clients send an empty password) and simply fail authentication.
 * Both are decoded as UTF-8; bytes that are not UTF-8 decode (as U+FFFD) but
 * are marked, for the server to refuse: "a\xffb" and "a\xfeb" would
 * otherwise read as the same password. The decoders throw a RangeError for
 * an `at` that is not an integer >= 0 (the caller's mistake, not the peer's).
 */
import { isUtf8 } from 'node:buffer';
import { SocksError } from '../errors.js';
import { type Decoded, type NeedMore, NEED_MORE, hex } from './address.js';
import { checkByte, checkIndex } from './check.js';

export const USERPASS_VERSION = 0x01;
export const MAX_CREDENTIAL_LENGTH = 255;

export const UserPassStatus = { SUCCESS: 0x00, FAILURE: 0x01 } as const;

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Credentials as read: `wellFormed` is false when either field is not UTF-8. */
export interface ReceivedCredentials extends Credentials {
  readonly wellFormed: boolean;
}

export function decodeUserPass(buf: Uint8Array, at = 0): Decoded<ReceivedCredentials> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 2) return NEED_MORE;
  if (buf[at] !== USERPASS_VERSION) {
    throw new SocksError('ERR_BAD_VERSION', `username/password version is 0x${hex(buf[at]!)}, not 0x01`);
  }
  const ulen = buf[at + 1]!;
  if (buf.length < at + 2 + ulen + 1) return NEED_MORE;
  const plen = buf[at + 2 + ulen]!;
  const end = at + 3 + ulen + plen;
  if (buf.length < end) return NEED_MORE;
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  return {
    value: {
      username: bytes.toString('utf8', at + 2, at + 2 + ulen),
      password: bytes.toString('utf8', at + 3 + ulen, end),
      wellFormed: isUtf8(bytes.subarray(at + 2, at + 2 + ulen)) && isUtf8(bytes.subarray(at + 3 + ulen, end)),
    },
    bytesRead: end - at,
  };
}

/**
 * Refuses (SocksError) what decodeUserPass would not read back as
 * `credentials`: a field over 255 bytes of UTF-8 (ERR_TOO_LONG), and one
 * that is not well-formed UTF-16, a lone surrogate (ERR_MALFORMED: UTF-8 has
 * no bytes for it, it was written as U+FFFD).
 */
export function encodeUserPass(credentials: Credentials): Buffer {
  const user = Buffer.from(credentials.username, 'utf8');
  const pass = Buffer.from(credentials.password, 'utf8');
  if (user.length > MAX_CREDENTIAL_LENGTH || pass.length > MAX_CREDENTIAL_LENGTH) {
    throw new SocksError('ERR_TOO_LONG', 'username and password are at most 255 bytes each');
  }
  // Once per upstream connection, never per session of the proxy: the plain check is enough.
  if (user.toString('utf8') !== credentials.username || pass.toString('utf8') !== credentials.password) {
    throw new SocksError('ERR_MALFORMED', 'username and password must be well-formed text (a lone surrogate has no UTF-8)');
  }
  return Buffer.concat([Buffer.from([USERPASS_VERSION, user.length]), user, Buffer.from([pass.length]), pass]);
}

/**
 *   +----+--------+
 *   |VER | STATUS |
 *   +----+--------+
 */
/** Refuses (ERR_MALFORMED) a status that is not an integer 0-255. */
export function encodeUserPassStatus(status: number): Buffer {
  checkByte(status, 'the status');
  return Buffer.from([USERPASS_VERSION, status]);
}

export function decodeUserPassStatus(buf: Uint8Array, at = 0): Decoded<number> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 2) return NEED_MORE;
  if (buf[at] !== USERPASS_VERSION) {
    throw new SocksError('ERR_BAD_VERSION', `username/password status version is 0x${hex(buf[at]!)}`);
  }
  return { value: buf[at + 1]!, bytesRead: 2 };
}
