/**
 * SOCKS5 address encoding, shared by requests, replies and UDP headers:
 *
 *   +------+----------+----------+
 *   | ATYP | DST.ADDR | DST.PORT |
 *   +------+----------+----------+
 *   |  1   | Variable |    2     |
 *   +------+----------+----------+
 *
 * ATYP 0x01: 4 bytes IPv4; 0x03: one length byte then that many bytes of
 * name; 0x04: 16 bytes IPv6. Pure functions, no I/O.
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { SocksError } from '../errors.js';
import { BACKSLASH, BACKSLASH_REFUSED, checkHostname, checkIndex, checkPort, checkRange, checkRoom } from './check.js';

export const AddressType = { IPV4: 0x01, DOMAIN: 0x03, IPV6: 0x04 } as const;
export type AddressType = (typeof AddressType)[keyof typeof AddressType];

/** The longest name a one-byte length can carry. */
export const MAX_DOMAIN_LENGTH = 255;

/** Returned by every incremental decoder when the message is not complete yet. */
export const NEED_MORE: unique symbol = Symbol('NEED_MORE');
export type NeedMore = typeof NEED_MORE;

/** A decoded message and how many bytes of the input it used. */
export interface Decoded<T> {
  readonly value: T;
  readonly bytesRead: number;
}

export type HostKind = 'ipv4' | 'ipv6' | 'domain';

/** A host and port as SOCKS carries them. */
export interface Destination {
  readonly kind: HostKind;
  readonly host: string;
  readonly port: number;
}

/** Classifies a host string (an IP literal or a name) into a Destination. */
export function destination(host: string, port: number): Destination {
  const family = isIP(host);
  if (family === 4) return { kind: 'ipv4', host, port };
  if (family === 6) {
    const mapped = unmapIPv4(host);
    return mapped ? { kind: 'ipv4', host: mapped, port } : { kind: 'ipv6', host, port };
  }
  return { kind: 'domain', host, port };
}

/** `::ffff:1.2.3.4` → `1.2.3.4`; anything else → undefined. Node's spelling only: see unmappedAddress. */
export function unmapIPv4(host: string): string | undefined {
  if (!host.includes('.') || !host.toLowerCase().startsWith('::ffff:')) return undefined;
  const tail = host.slice(7);
  return isIP(tail) === 4 ? tail : undefined;
}

/**
 * A peer's address as socksgate names it everywhere (records, rules, the
 * authenticator's and dialer's context, a UDP reply's sender): an IPv4
 * peer reaching a dual-stack socket is its IPv4 address, as on an IPv4 one.
 */
export function peerAddress(host: string): string {
  return unmapIPv4(host) ?? host;
}

/**
 * An IPv6 literal parsed without its zone (`fe80::1%eth0.5`: a socket
 * reports its own and its peer's address without one, and SOCKS carries
 * none); undefined when ipaddr.js cannot read it, though Node's isIP can.
 */
function parseIPv6(text: string): ipaddr.IPv6 | undefined {
  const zone = text.indexOf('%');
  try {
    return ipaddr.IPv6.parse(zone < 0 ? text : text.slice(0, zone));
  } catch {
    return undefined;
  }
}

/** Every spelling of an IPv4-mapped address has these hex digits in it. */
const MAY_BE_MAPPED = /ffff/i;

/**
 * The address as its family has it: an IPv4-mapped IPv6 address in any
 * spelling (`::ffff:10.0.0.1` as Node writes it, `::ffff:a00:1` as a
 * request's 16 bytes decode, `0:0:0:0:0:ffff:a00:1`) becomes IPv4.
 */
export function unmappedAddress(text: string): string {
  // Per connection on a dual-stack listener: the common spellings without a parse.
  const dotted = unmapIPv4(text);
  if (dotted !== undefined) return dotted;
  if (!MAY_BE_MAPPED.test(text) || isIP(text) !== 6) return text;
  const address = parseIPv6(text);
  return address?.isIPv4MappedAddress() ? address.toIPv4Address().toString() : text;
}

/**
 * An IP literal as Node spells a socket's address (`::1`, never
 * `0:0:0:0:0:0:0:1`; an IPv4-mapped one as IPv4), so that addresses from a
 * resolver compare equal to those sockets report; undefined for anything
 * that is not an IP literal.
 */
export function canonicalAddress(text: string): string | undefined {
  return spelled(text, '');
}

/**
 * An IP literal as a bound socket reports its own address (`::1`, never
 * `0:0:0:0:0:0:0:1`; an IPv4-mapped one stays IPv6, `::ffff:127.0.0.1`):
 * how listeners are named for the access log and `listeners:` rules.
 * Undefined for anything that is not an IP literal.
 */
export function boundAddressSpelling(text: string): string | undefined {
  return spelled(text, '::ffff:');
}

/** An IP literal in Node's spelling, an IPv4-mapped one as `mappedPrefix` + its IPv4 address. */
function spelled(text: string, mappedPrefix: string): string | undefined {
  const family = isIP(text);
  if (family === 4) return text;
  if (family !== 6) return undefined;
  const address = parseIPv6(text);
  if (address === undefined) return undefined;
  return address.isIPv4MappedAddress() ? `${mappedPrefix}${address.toIPv4Address().toString()}` : address.toRFC5952String();
}

/** Only zeros, colons, dots and the `ffff` of a mapped address: what an unspecified address can be spelled with. */
const MAY_BE_UNSPECIFIED = /^[0:.f]+$/i;

/**
 * Whether an IP literal is the unspecified address in any spelling (`0.0.0.0`,
 * `::`, `0:0:0:0:0:0:0:0`, `::ffff:0.0.0.0`). As a destination it is not
 * "nowhere": Linux connects (and sends) it to this host.
 */
export function isUnspecifiedAddress(text: string): boolean {
  if (text === '0.0.0.0' || text === '::') return true;
  if (!MAY_BE_UNSPECIFIED.test(text)) return false;
  const canonical = canonicalAddress(text);
  return canonical === '0.0.0.0' || canonical === '::';
}

/**
 * What a client is counted as, for limits and fairness: its address, or for
 * IPv6 its /64 (`2001:db8:1:2::/64`), the block one host or site is usually
 * given, whose other addresses would otherwise be fresh clients. An
 * IPv4-mapped address stays the IPv4 client it is.
 */
export function clientBlock(address: string): string {
  if (!address.includes(':') || address.startsWith('::ffff:')) return address;
  try {
    return `${ipaddr.IPv6.networkAddressFromCIDR(`${address}/64`).toString()}/64`;
  } catch {
    return address;
  }
}

/** `host:port`, with brackets around IPv6 literals. */
export function formatDestination(d: { host: string; port: number }): string {
  return d.host.includes(':') ? `[${d.host}]:${d.port}` : `${d.host}:${d.port}`;
}

/**
 * Decodes ATYP, address and port starting at `at`.
 * Throws ERR_ADDRESS_TYPE for an unknown ATYP, ERR_MALFORMED for an empty or
 * non-printable domain name; a RangeError for an `at` that is not an integer
 * >= 0 (the caller's mistake, as for every decoder here).
 */
export function decodeAddress(buf: Uint8Array, at: number): Decoded<Destination> | NeedMore {
  checkIndex(at, 'at');
  if (buf.length < at + 1) return NEED_MORE;
  const atyp = buf[at]!;
  switch (atyp) {
    case AddressType.IPV4: {
      if (buf.length < at + 7) return NEED_MORE;
      const host = `${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}.${buf[at + 4]}`;
      return { value: { kind: 'ipv4', host, port: readPort(buf, at + 5) }, bytesRead: 7 };
    }
    case AddressType.IPV6: {
      if (buf.length < at + 19) return NEED_MORE;
      const host = ipv6ToString(buf.subarray(at + 1, at + 17));
      return { value: { kind: 'ipv6', host, port: readPort(buf, at + 17) }, bytesRead: 19 };
    }
    case AddressType.DOMAIN: {
      if (buf.length < at + 2) return NEED_MORE;
      const length = buf[at + 1]!;
      if (length === 0) throw new SocksError('ERR_MALFORMED', 'zero-length domain name');
      // The length byte bounds the name; the port after it must be there too.
      if (buf.length < at + 2 + length + 2) return NEED_MORE;
      const host = decodeHostname(buf, at + 2, at + 2 + length);
      return { value: { kind: 'domain', host, port: readPort(buf, at + 2 + length) }, bytesRead: 4 + length };
    }
    default:
      throw new SocksError('ERR_ADDRESS_TYPE', `unknown address type 0x${hex(atyp)}`);
  }
}

/** Bytes `writeAddress` will write for `d`. */
export function encodedAddressLength(d: Destination): number {
  if (d.kind === 'ipv4') return 7;
  if (d.kind === 'ipv6') return 19;
  return 4 + d.host.length; // one byte a character, in a name writeAddress accepts
}

/**
 * Writes ATYP, address and port at `at`; returns the offset after them.
 * Refuses (SocksError) what decodeAddress would not read back: a port that is
 * not an integer 0-65535 (ERR_MALFORMED), a host that is not of its kind, a
 * domain name that is empty or over 255 characters (ERR_TOO_LONG) or has a
 * character that is not printable ASCII (ERR_MALFORMED, as decodeHostname),
 * a kind that is none of the three (ERR_ADDRESS_TYPE). An `at` that is not an
 * integer >= 0, or a buffer without encodedAddressLength(d) bytes from `at`,
 * is the caller's mistake: a RangeError. Nothing is written when it throws.
 */
export function writeAddress(buf: Buffer, at: number, d: Destination): number {
  checkPort(d.port);
  if (d.kind === 'ipv4') {
    checkRoom(buf, at, 7);
    writeIPv4(buf, at + 1, d.host); // checks the host before it writes
    buf[at] = AddressType.IPV4;
    buf.writeUInt16BE(d.port, at + 5);
    return at + 7;
  }
  if (d.kind === 'ipv6') {
    const address = isIP(d.host) === 6 ? parseIPv6(d.host) : undefined;
    if (address === undefined) throw new SocksError('ERR_MALFORMED', `not an IPv6 address: ${d.host}`);
    checkRoom(buf, at, 19);
    buf[at] = AddressType.IPV6;
    buf.set(address.toByteArray(), at + 1);
    buf.writeUInt16BE(d.port, at + 17);
    return at + 19;
  }
  if (d.kind !== 'domain') throw new SocksError('ERR_ADDRESS_TYPE', `unknown kind of host: ${String(d.kind)}`);
  checkHostname(d.host);
  const length = d.host.length;
  checkRoom(buf, at, 4 + length);
  buf[at] = AddressType.DOMAIN;
  buf[at + 1] = length;
  buf.write(d.host, at + 2, 'latin1');
  buf.writeUInt16BE(d.port, at + 2 + length);
  return at + 4 + length;
}

/**
 * Writes a dotted IPv4 string as 4 bytes; refuses (ERR_MALFORMED) anything
 * else, and (RangeError) an `at` that is not an integer >= 0 with 4 bytes
 * after it in `buf`. Nothing is written when it throws.
 */
export function writeIPv4(buf: Uint8Array, at: number, host: string): void {
  const parts = host.split('.');
  if (parts.length !== 4 || isIP(host) !== 4) throw new SocksError('ERR_MALFORMED', `not an IPv4 address: ${host}`);
  checkRoom(buf, at, 4);
  for (let i = 0; i < 4; i++) buf[at + i] = Number(parts[i]);
}

/**
 * The big-endian port in the two bytes at `at`. Refuses (RangeError) an `at`
 * that is not an integer >= 0 with two bytes after it: a missing byte was
 * read as 0, so a port came back anyway (0 for NaN or 1.5, buf[0] for -1).
 */
export function readPort(buf: Uint8Array, at: number): number {
  checkRoom(buf, at, 2);
  return (buf[at]! << 8) | buf[at + 1]!;
}

export function ipv6ToString(bytes: Uint8Array): string {
  return ipaddr.fromByteArray(Array.from(bytes)).toString();
}

/**
 * Host names are printable ASCII (IDNs arrive as punycode). Anything else,
 * NUL and control bytes above all, is refused rather than passed to a resolver.
 * A range [start, end) that is not integers 0 <= start <= end <= buf.length is
 * the caller's mistake: a RangeError (checkRange). Past either end of a view,
 * a byte read as undefined passed the check below, and the name was cut from
 * the memory around the view (another message's bytes in a pooled Buffer).
 */
export function decodeHostname(buf: Uint8Array, start: number, end: number): string {
  checkRange(buf, start, end);
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (c < 0x21 || c > 0x7e) {
      throw new SocksError('ERR_MALFORMED', `host name has a non-printable byte 0x${hex(c)}`);
    }
    if (c === BACKSLASH) throw new SocksError('ERR_MALFORMED', BACKSLASH_REFUSED);
  }
  return Buffer.from(buf.buffer, buf.byteOffset + start, end - start).toString('latin1');
}

/**
 * A byte as two hex digits, for messages. Refuses (RangeError) anything but
 * an integer 0-255, which came out as other text ('100', '-1', '1.8') or threw
 * a TypeError (undefined): the byte was read by the caller, so a bad one is
 * the caller's mistake, not checkByte's ERR_MALFORMED for a value to write.
 */
export function hex(byte: number): string {
  if ((byte >>> 0) !== byte || byte > 0xff) throw new RangeError(`byte must be an integer 0-255, got ${String(byte)}`);
  return byte.toString(16).padStart(2, '0');
}
