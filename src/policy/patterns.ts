/**
 * The textual forms request rules are written in — port ranges, host name
 * patterns, listener labels — parsed once, at config time. Pure functions,
 * shared by the schema (to report problems) and the rule compiler (to build
 * matchers). Nothing here runs per session except `normalizeHostName`.
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { boundAddressSpelling } from '../protocol/address.js';

/** `25`, `"587"`, `" 1024 - 65535 "` → [low, high], or undefined unless 1 <= low <= high <= 65535. */
export function parsePortRange(value: unknown): readonly [number, number] | undefined {
  const range = portRange(value);
  return typeof range === 'string' ? undefined : range;
}

/** Why `value` is not a port or port range, or undefined when it is one. */
export function portRangeProblem(value: unknown): string | undefined {
  const range = portRange(value);
  if (typeof range !== 'string' && range !== undefined) return undefined;
  return range ?? 'must be a port (1-65535) or a range "low-high"';
}

/** A range, undefined when the value has the wrong shape, or a string saying what is wrong with its numbers. */
function portRange(value: unknown): readonly [number, number] | string | undefined {
  let low: number;
  let high: number;
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) return undefined;
    low = high = value;
  } else if (typeof value === 'string') {
    const m = /^\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?$/.exec(value);
    if (!m) return undefined;
    low = Number(m[1]);
    high = m[2] === undefined ? low : Number(m[2]);
  } else {
    return undefined;
  }
  if (low < 1 || high < 1) return `${JSON.stringify(value)}: ports are 1-65535 (0 is not a port a request can name)`;
  if (low > 65535 || high > 65535) return `${JSON.stringify(value)}: ports are 1-65535`;
  if (low > high) return `${JSON.stringify(value)}: the range starts above its end`;
  return [low, high];
}

/** A host name pattern, compiled: an exact name, any subdomain of a suffix, or an address literal. */
export type HostPattern =
  | { readonly kind: 'exact'; readonly name: string }
  /** `suffix` keeps its leading dot: `*.corp.example` → `.corp.example`. */
  | { readonly kind: 'suffix'; readonly suffix: string }
  | { readonly kind: 'address'; readonly address: string; readonly family: 'ipv4' | 'ipv6' };

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** Parses a `to.hosts` entry; returns a message when it is not a valid pattern. */
export function parseHostPattern(text: string): HostPattern | string {
  const family = isIP(text);
  if (text.includes('%')) return `"${text}": zone ids (%) are not allowed`;
  if (family !== 0) return { kind: 'address', address: text, family: family === 6 ? 'ipv6' : 'ipv4' };
  if (text.startsWith('[')) return 'write an IPv6 address without brackets';
  const name = normalizeHostName(text);
  // 10.1, 0x0a000001 …: the resolver reads these as addresses, so do we.
  const numeric = numericIPv4(name);
  if (numeric !== undefined) return { kind: 'address', address: numeric, family: 'ipv4' };
  if (name.startsWith('*.')) {
    const suffix = name.slice(2);
    if (!isHostName(suffix)) return `"${text}": after "*." must come a host name, as in *.example.com`;
    return { kind: 'suffix', suffix: `.${suffix}` };
  }
  if (name.includes('*')) return `"${text}": "*" may only be the whole first label, as in *.example.com`;
  if (!isHostName(name)) return `"${text}" is not a host name, *.suffix pattern or IP address`;
  return { kind: 'exact', name };
}

function isHostName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  for (const label of name.split('.')) if (!LABEL.test(label)) return false;
  return true;
}

/**
 * The dotted-quad form of a name that getaddrinfo reads as an IPv4 address
 * (inet_aton forms: `10.1`, `167772161`, `0x0a.0.0.1`, `012.0.0.1`), or
 * undefined for a real name. Cheap for names that do not start with a digit.
 */
export function numericIPv4(name: string): string | undefined {
  const first = name.charCodeAt(0);
  if (!(first >= 0x30 && first <= 0x39) || !ipaddr.IPv4.isValid(name)) return undefined;
  return ipaddr.IPv4.parse(name).toString();
}

/**
 * The form names are compared in: lower case, without the one trailing dot
 * of a fully qualified name (`Example.ORG.` → `example.org`). Allocates only
 * when the name changes.
 */
export function normalizeHostName(name: string): string {
  const bare = name.length > 1 && name.charCodeAt(name.length - 1) === 0x2e ? name.slice(0, -1) : name;
  return /[A-Z]/.test(bare) ? bare.toLowerCase() : bare;
}

/**
 * A listener label as sessions carry it (`127.0.0.1:1080`, `[::1]:1080`),
 * from its written form; IPv6 addresses are put in their canonical short
 * form, as the bound address is. Undefined when it is not `address:port`.
 */
export function parseListenerLabel(text: string): string | undefined {
  const bracketed = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text);
  const plain = /^([^:[\]]+):(\d{1,5})$/.exec(text);
  const m = bracketed ?? plain;
  if (!m) return undefined;
  const address = m[1]!;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  const family = isIP(address);
  if (bracketed && family === 6) return `[${boundAddressSpelling(address)!}]:${port}`;
  if (plain && family === 4) return `${address}:${port}`;
  return undefined;
}
