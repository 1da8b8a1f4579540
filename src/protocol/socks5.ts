/**
 * SOCKS5 messages (RFC 1928). Decoders are incremental: they return NEED_MORE
 * until the whole message is in `buf`, then the message and the number of
 * bytes it used, so bytes after it (pipelined payload) stay with the caller.
 * Both the server and client sides are here; the upstream dialer reuses them.
 * Every decoder throws a RangeError for an `at` that is not an integer >= 0:
 * the caller's mistake, not the peer's, so not a SocksError.
 */
import { SocksError } from '../errors.js';
import {
  type Decoded,
  type Destination,
  type NeedMore,
  NEED_MORE,
  decodeAddress,
  encodedAddressLength,
  hex,
  writeAddress,
} from './address.js';
import { checkByte, checkIndex } from './check.js';

export const SOCKS5_VERSION = 0x05;

/** Authentication methods (IANA registry; RFC 1928 §3). */
export const Method = {
  NONE: 0x00,
  GSSAPI: 0x01,
  USERPASS: 0x02,
  NO_ACCEPTABLE: 0xff,
} as const;

/** Commands (RFC 1928 §4). Unknown values are kept, not thrown. */
export const Command = { CONNECT: 0x01, BIND: 0x02, UDP_ASSOCIATE: 0x03 } as const;

/**
 *   +----+----------+----------+
 *   |VER | NMETHODS | METHODS  |
 *   +----+----------+----------+
 *   | 1  |    1     | 1 to 255 |
 */
export interface Greeting {
  readonly methods: readonly number[];
}

export function decodeGreeting(buf: Uint8Array, at = 0): Decoded<Greeting> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 2) return NEED_MORE;
  checkVersion(buf[at]!, 'greeting');
  const count = buf[at + 1]!;
  if (count === 0) throw new SocksError('ERR_NO_METHODS', 'SOCKS5 greeting offers zero methods');
  if (buf.length < at + 2 + count) return NEED_MORE;
  return { value: { methods: Array.from(buf.subarray(at + 2, at + 2 + count)) }, bytesRead: 2 + count };
}

/** Refuses (ERR_MALFORMED) 0 or over 255 methods, and a method that is not an integer 0-255. */
export function encodeGreeting(methods: readonly number[]): Buffer {
  if (methods.length === 0 || methods.length > 255) {
    throw new SocksError('ERR_MALFORMED', 'a greeting carries 1-255 methods');
  }
  for (const method of methods) checkByte(method, 'a method');
  return Buffer.from([SOCKS5_VERSION, methods.length, ...methods]);
}

/**
 *   +----+--------+
 *   |VER | METHOD |
 *   +----+--------+
 *   | 1  |   1    |
 *
 * encodeMethodSelection refuses (ERR_MALFORMED) a method that is not an integer 0-255.
 */
export function encodeMethodSelection(method: number): Buffer {
  checkByte(method, 'the method');
  return Buffer.from([SOCKS5_VERSION, method]);
}

export function decodeMethodSelection(buf: Uint8Array, at = 0): Decoded<number> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 2) return NEED_MORE;
  checkVersion(buf[at]!, 'method selection');
  return { value: buf[at + 1]!, bytesRead: 2 };
}

/**
 *   +----+-----+-------+------+----------+----------+
 *   |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
 *   +----+-----+-------+------+----------+----------+
 *   | 1  |  1  | X'00' |  1   | Variable |    2     |
 */
export interface Request {
  /** CONNECT, BIND, UDP ASSOCIATE, or any other byte the client sent. */
  readonly command: number;
  readonly destination: Destination;
}

export function decodeRequest(buf: Uint8Array, at = 0): Decoded<Request> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 4) return NEED_MORE;
  checkVersion(buf[at]!, 'request');
  if (buf[at + 2] !== 0x00) {
    throw new SocksError('ERR_MALFORMED', `request reserved byte is 0x${hex(buf[at + 2]!)}, not 0x00`);
  }
  const address = decodeAddress(buf, at + 3);
  if (address === NEED_MORE) return NEED_MORE;
  return { value: { command: buf[at + 1]!, destination: address.value }, bytesRead: 3 + address.bytesRead };
}

/** Refuses (SocksError) what decodeRequest would not read back: a command that is not an integer 0-255 (ERR_MALFORMED), and what writeAddress refuses. */
export function encodeRequest(request: Request): Buffer {
  checkByte(request.command, 'the command');
  const buf = Buffer.allocUnsafe(3 + encodedAddressLength(request.destination));
  buf[0] = SOCKS5_VERSION;
  buf[1] = request.command;
  buf[2] = 0x00;
  writeAddress(buf, 3, request.destination);
  return buf;
}

/**
 *   +----+-----+-------+------+----------+----------+
 *   |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
 *   +----+-----+-------+------+----------+----------+
 *   | 1  |  1  | X'00' |  1   | Variable |    2     |
 */
export interface Reply {
  /** REP; unknown codes are kept as they came. */
  readonly reply: number;
  readonly bound: Destination;
}

const UNSPECIFIED: Destination = { kind: 'ipv4', host: '0.0.0.0', port: 0 };

/**
 * Encodes a reply in one buffer, so it goes out in one write. Refuses
 * (SocksError) a reply code that is not an integer 0-255 (ERR_MALFORMED), and
 * what writeAddress refuses.
 */
export function encodeReply(reply: number, bound: Destination = UNSPECIFIED): Buffer {
  checkByte(reply, 'the reply code');
  const buf = Buffer.allocUnsafe(3 + encodedAddressLength(bound));
  buf[0] = SOCKS5_VERSION;
  buf[1] = reply;
  buf[2] = 0x00;
  writeAddress(buf, 3, bound);
  return buf;
}

export function decodeReply(buf: Uint8Array, at = 0): Decoded<Reply> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 4) return NEED_MORE;
  checkVersion(buf[at]!, 'reply');
  const address = decodeAddress(buf, at + 3);
  if (address === NEED_MORE) return NEED_MORE;
  return { value: { reply: buf[at + 1]!, bound: address.value }, bytesRead: 3 + address.bytesRead };
}

function checkVersion(version: number, what: string): void {
  if (version !== SOCKS5_VERSION) {
    throw new SocksError('ERR_BAD_VERSION', `SOCKS5 ${what} has version 0x${hex(version)}`);
  }
}
