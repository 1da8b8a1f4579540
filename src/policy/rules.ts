/**
 * Request rules (DESIGN "Access control", second stage): what a session may
 * do, decided once per request, first match wins. Pure: no sockets, no
 * logging, no clock.
 *
 * Rules are compiled once, when the configuration is read, into matchers
 * that cost nothing to allocate per request and rule: `net.BlockList` for
 * address sets (one per family, networks.ts), sorted merged ranges for
 * ports, a Set of exact names plus a list of suffixes for host patterns, a
 * bit mask for commands. The request is prepared once (addresses unmapped
 * and turned into `SocketAddress`es, names lower-cased), then every rule is
 * tried against it in order.
 *
 * Semantics:
 * - Within a rule every matcher given must match (AND); within a list any
 *   entry (OR). A rule with no matchers matches everything.
 * - `to.nets` and `to.hosts` in one rule: the destination matches either.
 * - Decided before DNS: `to.nets` matches a destination written as an
 *   address, never a name (even one that would resolve into the network);
 *   `to.hosts` matches a name, and an address only when the pattern is that
 *   same address. A name the resolver would read as an address (`10.1`,
 *   `0x0a000001`, `::1` sent as a domain name) is treated as that address.
 * - IPv4-mapped IPv6 addresses (client or destination) match IPv4 networks,
 *   and an IPv6 network matches IPv6 addresses only (networks.ts).
 * - UDP is decided twice. The UDP ASSOCIATE request names no destination (its
 *   address is the client's own UDP source): `decideAssociation` opens the
 *   association when some destination could be allowed. Then each datagram
 *   is decided by `decide` with command `udp` and the datagram's destination
 *   (a reply: its sender, taken as a destination); the relays do that only
 *   when `checksUdpDestinations` says the answer can differ by destination.
 * - BIND's destination is the application server expected to connect back.
 * - When no rule matches (and any rule exists) the request is denied by the
 *   implicit `default-deny`; with no rules at all nothing is decided here.
 */
import { BlockList, SocketAddress, isIP } from 'node:net';
import { type RuleConfig, parseNetwork } from '../config/schema.js';
import { type Destination, unmappedAddress } from '../protocol/address.js';
import { NetworkSet } from './networks.js';
import { normalizeHostName, numericIPv4, parseHostPattern, parseListenerLabel, parsePortRange } from './patterns.js';

export type RuleCommand = 'connect' | 'bind' | 'udp';

/** What the rules look at; the session builds one per request. */
export interface RuleRequest {
  /** The client's address as the socket reports it (IPv4-mapped or not). */
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly command: RuleCommand;
  /** The destination as the client named it. */
  readonly destination: Destination;
  /** The RFC 1929 username, or the SOCKS4 USERID; null when there is none. */
  readonly user: string | null;
  /** The listener label (`127.0.0.1:1080`), as in the access record. */
  readonly listener: string;
}

/** The outcome, and the name of the rule that decided it. Shared, frozen: never allocated per request. */
export interface RuleDecision {
  readonly allowed: boolean;
  readonly rule: string;
  /** The rule's position in the list; -1 for default-deny. */
  readonly index: number;
}

/** The name of the implicit last rule when rules are configured. */
export const DEFAULT_DENY = 'default-deny';

const DEFAULT_DENY_DECISION: RuleDecision = Object.freeze({ allowed: false, rule: DEFAULT_DENY, index: -1 });

const COMMAND_BITS: Record<RuleCommand, number> = { connect: 1, bind: 2, udp: 4 };

interface CompiledRule {
  readonly decision: RuleDecision;
  /** Bit mask of COMMAND_BITS; 0 = any command. */
  readonly commands: number;
  readonly listeners: ReadonlySet<string> | null;
  readonly users: ReadonlySet<string> | null;
  readonly fromNets: NetworkSet | null;
  readonly fromPorts: Uint16Array | null;
  /** Any `to` matcher at all. */
  readonly hasTo: boolean;
  /** `to.nets` or `to.hosts` given: the destination must match one of them. */
  readonly hasToAddress: boolean;
  readonly toNets: NetworkSet | null;
  /** Address literals listed in `to.hosts`. */
  readonly toLiterals: BlockList | null;
  readonly toNames: ReadonlySet<string> | null;
  /** `*.corp.example` → `.corp.example`. */
  readonly toSuffixes: readonly string[] | null;
  readonly toPorts: Uint16Array | null;
}

/** A compiled rule list. */
export class RuleSet {
  readonly #rules: readonly CompiledRule[];
  readonly #addresses = new AddressCache(ADDRESS_CACHE_SIZE);

  private constructor(rules: readonly CompiledRule[]) {
    this.#rules = rules;
  }

  /**
   * Compiles validated rules (the schema has checked every field). Returns
   * null for none: then nothing is decided and everything is allowed.
   */
  static compile(rules: readonly RuleConfig[] | undefined): RuleSet | null {
    if (!rules || rules.length === 0) return null;
    return new RuleSet(rules.map(compileRule));
  }

  /** Number of configured rules (the implicit default-deny not counted). */
  get size(): number {
    return this.#rules.length;
  }

  /** The decision of the rule at `index` (as in RuleDecision.index); default-deny for any other. */
  decisionAt(index: number): RuleDecision {
    return this.#rules[index]?.decision ?? DEFAULT_DENY_DECISION;
  }

  /** Whether any rule looks at the client's source port (else decisions do not depend on it). */
  get usesClientPort(): boolean {
    return this.#rules.some((rule) => rule.fromPorts !== null);
  }

  /**
   * Whether a UDP datagram's fate can depend on its destination (some rule
   * that may match `udp` has a `to` matcher); when not, the association's
   * own decision covers every datagram and none is checked.
   */
  get checksUdpDestinations(): boolean {
    return this.#rules.some((rule) => rule.hasTo && (rule.commands === 0 || (rule.commands & COMMAND_BITS.udp) !== 0));
  }

  /**
   * The UDP ASSOCIATE request itself, which names no destination: the first
   * rule that matches it apart from `to` decides, except that a deny with a
   * `to` matcher only takes some destinations away, so the search goes on
   * past it. An allow with a `to` matcher opens the association; its
   * datagrams are then decided one by one (`decide`).
   */
  decideAssociation(request: RuleRequest): RuleDecision {
    const rules = this.#rules;
    let client: SocketAddress | null | undefined;
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      if (rule.hasTo && !rule.decision.allowed) continue;
      if (!matchesApartFromTo(rule, request)) continue;
      if (rule.fromNets !== null) {
        client ??= this.#addresses.get(request.clientAddress);
        if (client === null || !rule.fromNets.check(client)) continue;
      }
      return rule.decision;
    }
    return DEFAULT_DENY_DECISION;
  }

  /** The first matching rule's decision, or default-deny. For `udp`, one datagram (see decideAssociation). */
  decide(request: RuleRequest): RuleDecision {
    const rules = this.#rules;
    const destinationPort = request.destination.port;

    // Prepared once per request, and only when a rule needs it.
    let client: SocketAddress | null | undefined;
    const addresses = this.#addresses;
    let prepared = false;
    let destinationAddress: SocketAddress | null = null;
    let destinationName: string | null = null;

    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      if (!matchesApartFromTo(rule, request)) continue;
      if (rule.hasTo) {
        if (rule.toPorts !== null && !inRanges(rule.toPorts, destinationPort)) continue;
        if (rule.hasToAddress) {
          if (!prepared) {
            prepared = true;
            const target = request.destination;
            const literal = destinationLiteral(target);
            if (literal !== undefined) destinationAddress = addresses.get(literal);
            else destinationName = normalizeHostName(target.host);
          }
          if (!destinationMatches(rule, destinationAddress, destinationName)) continue;
        }
      }
      if (rule.fromNets !== null) {
        if (client === undefined) client = addresses.get(request.clientAddress);
        if (client === null || !rule.fromNets.check(client)) continue;
      }
      return rule.decision;
    }
    return DEFAULT_DENY_DECISION;
  }
}

/** The matchers that need no address parsing: command, listener, user, client port. */
function matchesApartFromTo(rule: CompiledRule, request: RuleRequest): boolean {
  if (rule.commands !== 0 && (rule.commands & COMMAND_BITS[request.command]) === 0) return false;
  if (rule.listeners !== null && !rule.listeners.has(request.listener)) return false;
  if (rule.users !== null && (request.user === null || !rule.users.has(request.user))) return false;
  return rule.fromPorts === null || inRanges(rule.fromPorts, request.clientPort);
}

function destinationMatches(rule: CompiledRule, address: SocketAddress | null, name: string | null): boolean {
  if (name !== null) {
    if (rule.toNames !== null && rule.toNames.has(name)) return true;
    const suffixes = rule.toSuffixes;
    if (suffixes !== null) {
      for (let i = 0; i < suffixes.length; i++) {
        const suffix = suffixes[i]!;
        if (name.length > suffix.length && name.endsWith(suffix)) return true;
      }
    }
    return false;
  }
  if (address === null) return false; // an address Node cannot represent (e.g. with a zone id)
  return (rule.toNets !== null && rule.toNets.check(address)) || (rule.toLiterals !== null && rule.toLiterals.check(address));
}

/**
 * The destination as an address literal when it is one; undefined for a
 * real name. A name that is an address, in any form the resolver would
 * accept as one (`10.1`, `0x0a000001`, `::1`), counts as that address.
 */
function destinationLiteral(target: Destination): string | undefined {
  if (target.kind !== 'domain' || isIP(target.host) !== 0) return target.host;
  // Not normalizeHostName: with its trailing dot (`10.0.0.1.`) getaddrinfo
  // takes it for a name and asks DNS, so it must be matched as a name.
  return numericIPv4(target.host);
}

/** How many distinct addresses (clients and destinations) a rule set remembers. */
const ADDRESS_CACHE_SIZE = 4096;

/**
 * Address text → `SocketAddress` (IPv4-mapped IPv6 unmapped), for
 * `BlockList.check`. On Node 20 building a SocketAddress costs about 3 µs
 * (checking one against a BlockList about 40 ns, and passing a string builds
 * one each time), while clients and destinations repeat: remembered,
 * bounded, the oldest forgotten first. Null for text Node cannot represent.
 */
class AddressCache {
  readonly #limit: number;
  readonly #map = new Map<string, SocketAddress | null>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  get(text: string): SocketAddress | null {
    const known = this.#map.get(text);
    if (known !== undefined) return known;
    const made = socketAddress(unmappedAddress(text));
    if (this.#map.size >= this.#limit) this.#map.delete(this.#map.keys().next().value!);
    this.#map.set(text, made);
    return made;
  }
}

function socketAddress(address: string): SocketAddress | null {
  const family = isIP(address);
  if (family === 0) return null;
  try {
    return new SocketAddress({ address, family: family === 6 ? 'ipv6' : 'ipv4' });
  } catch {
    return null;
  }
}

/** Binary search over sorted, disjoint [low, high] pairs. */
function inRanges(ranges: Uint16Array, port: number): boolean {
  let lo = 0;
  let hi = (ranges.length >> 1) - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (port < ranges[2 * mid]!) hi = mid - 1;
    else if (port > ranges[2 * mid + 1]!) lo = mid + 1;
    else return true;
  }
  return false;
}

function compileRule(rule: RuleConfig, index: number): CompiledRule {
  const allowed = rule.allow !== undefined;
  const match = rule.allow ?? rule.deny ?? {};
  const to = match.to;
  const hosts = to?.hosts ? compileHosts(to.hosts) : null;
  const toNets = to?.nets ? compileNets(to.nets) : null;
  return {
    decision: Object.freeze({ allowed, rule: rule.name, index }),
    commands: (match.commands ?? []).reduce((bits, c) => bits | COMMAND_BITS[c], 0),
    listeners: match.listeners ? new Set(match.listeners.map((l) => parseListenerLabel(l) ?? l)) : null,
    users: match.users ? new Set(match.users) : null,
    fromNets: match.from?.nets ? compileNets(match.from.nets) : null,
    fromPorts: match.from?.ports ? compilePorts(match.from.ports) : null,
    hasTo: to !== undefined && (to.nets !== undefined || to.hosts !== undefined || to.ports !== undefined),
    hasToAddress: toNets !== null || hosts !== null,
    toNets,
    toLiterals: hosts?.literals ?? null,
    toNames: hosts?.names ?? null,
    toSuffixes: hosts?.suffixes ?? null,
    toPorts: to?.ports ? compilePorts(to.ports) : null,
  };
}

export function compileNets(networks: readonly string[]): NetworkSet {
  return new NetworkSet(
    networks.map((text) => {
      const net = parseNetwork(text);
      if (!net) throw new Error(`not a network: ${text}`); // the schema refuses these first
      return net;
    }),
  );
}

/** Port lists → sorted, merged [low, high] pairs. */
export function compilePorts(ports: readonly (number | string)[]): Uint16Array {
  const ranges = ports
    .map((p) => {
      const range = parsePortRange(p);
      if (!range) throw new Error(`not a port range: ${p}`); // the schema refuses these first
      return range;
    })
    .sort((a, b) => a[0] - b[0]);
  const merged: number[] = [];
  for (const [low, high] of ranges) {
    const last = merged.length - 1;
    if (last > 0 && low <= merged[last]! + 1) merged[last] = Math.max(merged[last]!, high);
    else merged.push(low, high);
  }
  return Uint16Array.from(merged);
}

function compileHosts(patterns: readonly string[]): { literals: BlockList | null; names: Set<string> | null; suffixes: string[] | null } {
  let literals: BlockList | null = null;
  const names = new Set<string>();
  const suffixes: string[] = [];
  for (const text of patterns) {
    const pattern = parseHostPattern(text);
    if (typeof pattern === 'string') throw new Error(pattern); // the schema refuses these first
    if (pattern.kind === 'exact') names.add(pattern.name);
    else if (pattern.kind === 'suffix') suffixes.push(pattern.suffix);
    else {
      literals ??= new BlockList();
      const address = unmappedAddress(pattern.address);
      literals.addAddress(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
    }
  }
  return { literals, names: names.size > 0 ? names : null, suffixes: suffixes.length > 0 ? suffixes : null };
}

/** Compiles validated rules; null when there are none (everything is allowed). */
export function compileRules(rules: readonly RuleConfig[] | undefined): RuleSet | null {
  return RuleSet.compile(rules);
}
