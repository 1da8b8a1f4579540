/**
 * SOCKS4 and SOCKS4a (the protocol notes by Ying-Da Lee).
 *
 * Request:
 *   +----+----+----+----+----+----+----+----+----+....+----+
 *   | VN | CD | DSTPORT |      DSTIP        | USERID  |NULL|
 *   +----+----+----+----+----+----+----+----+----+....+----+
 *      1    1      2              4          variable   1
 *
 * SOCKS4a: a DSTIP of 0.0.0.x (x ≠ 0) means a NUL-terminated host name
 * follows the USERID. Both NUL-terminated fields are bounded: a field that
 * runs past its limit without a NUL is an error, not a reason to keep reading.
 *
 * Reply:
 *   +----+----+----+----+----+----+----+----+
 *   | VN | CD | DSTPORT |      DSTIP        |    VN = 0
 *   +----+----+----+----+----+----+----+----+
 */
import { isUtf8 } from 'node:buffer';
import { SocksError } from '../errors.js';
import {
  type Decoded,
  type Destination,
  type NeedMore,
  NEED_MORE,
  decodeHostname,
  hex,
  readPort,
  writeIPv4,
} from './address.js';
import { checkByte, checkHostname, checkIndex, checkPort } from './check.js';

export const SOCKS4_VERSION = 0x04;
export const SOCKS4_REPLY_VERSION = 0x00;
export const Socks4Command = { CONNECT: 0x01, BIND: 0x02 } as const;

export interface Socks4Limits {
  /** Longest USERID accepted, in bytes (without the NUL). */
  readonly maxUserId: number;
  /** Longest SOCKS4a host name accepted, in bytes (without the NUL). */
  readonly maxHostname: number;
}

export const DEFAULT_SOCKS4_LIMITS: Socks4Limits = { maxUserId: 255, maxHostname: 255 };

export interface Socks4Request {
  /** CONNECT or BIND, or any other byte the client sent. */
  readonly command: number;
  readonly destination: Destination;
  readonly userId: string;
  /** True when the request used the SOCKS4a host name extension. */
  readonly socks4a: boolean;
}

/**
 * Throws a SocksError for what the client sent, and a RangeError (the
 * caller's mistake) for an `at`, `limits.maxUserId` or `limits.maxHostname`
 * that is not an integer >= 0 (a NaN limit waited for good).
 */
export function decodeSocks4Request(
  buf: Uint8Array,
  at = 0,
  limits: Socks4Limits = DEFAULT_SOCKS4_LIMITS,
): Decoded<Socks4Request> | NeedMore {
  checkIndex(at, 'at');
  checkIndex(limits.maxUserId, 'limits.maxUserId');
  checkIndex(limits.maxHostname, 'limits.maxHostname');
  if (buf.length < at + 1) return NEED_MORE;
  if (buf[at] !== SOCKS4_VERSION) {
    throw new SocksError('ERR_BAD_VERSION', `SOCKS4 request has version 0x${hex(buf[at]!)}`);
  }
  if (buf.length < at + 8) return NEED_MORE;
  const port = readPort(buf, at + 2);
  const ip = `${buf[at + 4]}.${buf[at + 5]}.${buf[at + 6]}.${buf[at + 7]}`;
  const socks4a = buf[at + 4] === 0 && buf[at + 5] === 0 && buf[at + 6] === 0 && buf[at + 7] !== 0;

  const userEnd = findNul(buf, at + 8, limits.maxUserId, 'USERID');
  if (userEnd === NEED_MORE) return NEED_MORE;
  const userId = decodeUserId(Buffer.from(buf.buffer, buf.byteOffset + at + 8, userEnd - at - 8));
  let end = userEnd + 1;
  let destination: Destination = { kind: 'ipv4', host: ip, port };

  if (socks4a) {
    const hostEnd = findNul(buf, end, limits.maxHostname, 'host name');
    if (hostEnd === NEED_MORE) return NEED_MORE;
    if (hostEnd === end) throw new SocksError('ERR_MALFORMED', 'SOCKS4a request has an empty host name');
    destination = { kind: 'domain', host: decodeHostname(buf, end, hostEnd), port };
    end = hostEnd + 1;
  }
  return { value: { command: buf[at + 1]!, destination, userId, socks4a }, bytesRead: end - at };
}

/**
 * The USERID as text: UTF-8, as RFC 1929 names are (so a `users` rule names
 * one user whichever way it arrives), or Latin-1 when the bytes are not
 * UTF-8 (an old client's local name); every byte string reads as something,
 * since no client proves its USERID anyway.
 */
function decodeUserId(field: Buffer): string {
  return field.toString(isUtf8(field) ? 'utf8' : 'latin1');
}

/** Index of the NUL ending a field that starts at `start`, within `max` bytes. */
function findNul(buf: Uint8Array, start: number, max: number, field: string): number | NeedMore {
  const limit = Math.min(buf.length, start + max + 1);
  for (let i = start; i < limit; i++) if (buf[i] === 0) return i;
  if (buf.length > start + max) {
    throw new SocksError('ERR_TOO_LONG', `SOCKS4 ${field} longer than ${max} bytes`);
  }
  return NEED_MORE;
}

/**
 * Refuses (SocksError) what decodeSocks4Request, with the default limits,
 * would not read back as `request`: a command that is not an integer 0-255,
 * a port that is not one 0-65535 (ERR_MALFORMED); a USERID with a NUL (it
 * would end there) or a lone surrogate (UTF-8 cannot carry it; ERR_MALFORMED),
 * or over 255 bytes of UTF-8 (ERR_TOO_LONG); a destination that is neither IPv4 nor a name,
 * an IPv4 address 0.0.0.x with x ≠ 0 (it reads as SOCKS4a), and `socks4a`
 * not saying which of the two it is (ERR_MALFORMED); a name as writeAddress
 * refuses one (empty or over 255 characters, ERR_TOO_LONG; not printable
 * ASCII, ERR_MALFORMED).
 */
export function encodeSocks4Request(request: Socks4Request): Buffer {
  const { destination, userId } = request;
  checkByte(request.command, 'the command');
  checkPort(destination.port);
  checkUserId(userId);
  const socks4a = destination.kind === 'domain';
  if (socks4a) checkHostname(destination.host);
  else if (destination.kind !== 'ipv4') {
    throw new SocksError('ERR_MALFORMED', `SOCKS4 carries an IPv4 address or a name, not ${destination.kind} ${destination.host}`);
  }
  if (request.socks4a !== socks4a) {
    throw new SocksError('ERR_MALFORMED', `socks4a is ${request.socks4a} for a destination of kind ${destination.kind}`);
  }
  const userEnd = 8 + Buffer.byteLength(userId);
  const buf = Buffer.alloc(userEnd + 1 + (socks4a ? destination.host.length + 1 : 0));
  buf[0] = SOCKS4_VERSION;
  buf[1] = request.command;
  buf.writeUInt16BE(destination.port, 2);
  if (socks4a) {
    buf[7] = 1; // DSTIP 0.0.0.1: a name follows the USERID
    buf.write(destination.host, userEnd + 1, 'latin1');
  } else {
    writeIPv4(buf, 4, destination.host);
    if (buf[4] === 0 && buf[5] === 0 && buf[6] === 0 && buf[7] !== 0) {
      throw new SocksError('ERR_MALFORMED', `${destination.host} cannot be sent: SOCKS4a reads DSTIP 0.0.0.x (x ≠ 0) as "a name follows"`);
    }
  }
  buf.write(userId, 8, 'utf8');
  return buf;
}

/** In a `u` pattern a pair is one code point, so only a lone half matches. */
const LONE_SURROGATE = /\p{Cs}/u;

/** A USERID the decoder reads back as itself: NUL-free UTF-8 of at most the default limit. */
function checkUserId(userId: string): void {
  if (userId.includes('\0')) throw new SocksError('ERR_MALFORMED', 'SOCKS4 USERID has a NUL, which would end it');
  if (LONE_SURROGATE.test(userId)) throw new SocksError('ERR_MALFORMED', 'SOCKS4 USERID has a lone surrogate, which UTF-8 cannot carry');
  if (Buffer.byteLength(userId) > DEFAULT_SOCKS4_LIMITS.maxUserId) {
    throw new SocksError('ERR_TOO_LONG', `SOCKS4 USERID longer than ${DEFAULT_SOCKS4_LIMITS.maxUserId} bytes`);
  }
}

export interface Socks4Reply {
  readonly reply: number;
  readonly port: number;
  readonly host: string;
}

/**
 * Encodes a reply; the address must be IPv4 (SOCKS4 has no other), the
 * reply code an integer 0-255 and the port one 0-65535 (ERR_MALFORMED).
 */
export function encodeSocks4Reply(reply: number, port = 0, host = '0.0.0.0'): Buffer {
  checkByte(reply, 'the reply code');
  checkPort(port);
  const buf = Buffer.allocUnsafe(8);
  buf[0] = SOCKS4_REPLY_VERSION;
  buf[1] = reply;
  buf.writeUInt16BE(port, 2);
  writeIPv4(buf, 4, host);
  return buf;
}

/** Throws a RangeError for an `at` that is not an integer >= 0 (the caller's mistake). */
export function decodeSocks4Reply(buf: Uint8Array, at = 0): Decoded<Socks4Reply> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 8) return NEED_MORE;
  if (buf[at] !== SOCKS4_REPLY_VERSION) {
    throw new SocksError('ERR_BAD_VERSION', `SOCKS4 reply has version 0x${hex(buf[at]!)}`);
  }
  const host = `${buf[at + 4]}.${buf[at + 5]}.${buf[at + 6]}.${buf[at + 7]}`;
  return { value: { reply: buf[at + 1]!, port: readPort(buf, at + 2), host }, bytesRead: 8 };
}
