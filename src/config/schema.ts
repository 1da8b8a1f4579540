/**
 * The one configuration schema. The YAML file, the CLI flags and the library
 * options all pass through it; it holds every default and exports a JSON
 * Schema for editors (`socksgate schema`).
 */
import { BlockList, isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { UNSUPPORTED_2, bcryptHashProblem } from '../auth/hash-format.js';
import { formatDestination } from '../protocol/address.js';
import { parseHostPattern, parseListenerLabel, portRangeProblem } from '../policy/patterns.js';

/** `500ms`, `10s`, `5m`, `1h`, or a number of milliseconds. */
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS]);
}

/**
 * The longest wait a Node timer holds (2^31 - 1 ms, about 24.8 days). A
 * longer one is cut to this (a socket's) or fires at once (setTimeout), so a
 * longer duration is refused rather than obeyed wrongly.
 */
export const LONGEST_TIMER_MS = 2_147_483_647;

/**
 * A duration in milliseconds: a whole number, or a string with a unit.
 * `least` 1 where 0 would end every session at once (there is no "off").
 */
const durationAtLeast = (least: 0 | 1) => z
  .union([z.number(), z.string()], { error: 'must be a duration: milliseconds, or a string such as 500ms, 10s, 5m, 1h' })
  .transform((value, ctx) => {
    const ms = typeof value === 'number' ? value : parseDuration(value);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${value}" is not a duration (e.g. 500ms, 10s, 5m, 1h)` });
      return z.NEVER;
    }
    if (!Number.isInteger(ms)) {
      ctx.addIssue({ code: 'custom', message: `${value} is not a whole number of milliseconds` });
      return z.NEVER;
    }
    if (ms < least || ms > LONGEST_TIMER_MS) {
      const floor = least === 0 ? '0' : '1 ms (0 would end every session at once)';
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is out of range: at least ${floor}, at most ${LONGEST_TIMER_MS} ms (about 24.8 days, the longest timer Node has)` });
      return z.NEVER;
    }
    return ms;
  });
const duration = durationAtLeast(0);
const positiveDuration = durationAtLeast(1);

const ipAddress = z.string().refine((v) => isIP(v) !== 0, { message: 'must be an IPv4 or IPv6 address' });

/** An address or CIDR block, e.g. `10.0.0.0/8`, `::1`, `192.168.1.7`. */
export const network = z.string().refine((v) => parseNetwork(v) !== undefined, {
  message: 'must be an IP address or CIDR block (e.g. 10.0.0.0/8)',
});

export function parseNetwork(text: string): { address: string; prefix: number; family: 4 | 6 } | undefined {
  const [address = '', prefixText, ...rest] = text.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return undefined;
  const max = family === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!/^\d+$/.test(prefixText ?? String(max)) || prefix > max) return undefined;
  return { address, prefix, family: family as 4 | 6 };
}

const port = z.number().int().min(0).max(65535);

/**
 * A whole number from `low` to `high`, each refusal saying `message`, which
 * names what is accepted: zod's own says "expected number, received string"
 * to `--busy-poll 50us`, and only "Invalid input" to a union's mismatch.
 */
const wholeNumberFrom = (low: number, high: number, message: string) => z
  .number({ error: message })
  .int({ error: message })
  .min(low, { error: message })
  .max(high, { error: message });

const BUSY_POLL_RANGE = 'must be a whole number of microseconds from 0 to 1000 (0: off)';
const WORKERS_RANGE = 'must be auto or a whole number from 1 to 256';

export const listenerSchema = z.strictObject({
  address: ipAddress.default('127.0.0.1'),
  port: port.default(1080),
  /** SOCKS4/4a is off unless switched on; it is refused anyway when auth is required. */
  socks4: z.boolean().default(false),
  backlog: z.number().int().min(1).default(256),
});

const userSchema = z.strictObject({
  name: z.string().min(1).max(255),
  /** A bcrypt hash, or a plain password for quick starts. */
  password: z
    .string()
    .min(1)
    .max(255)
    // Taken as plain text, a $2x$, $2$, cut or mistyped hash (a trailing
    // space) would silently become the password itself: whatever begins like
    // a bcrypt hash ($2, a letter, $; or $2$) is one or is refused, naming the
    // problem. Where the value may have been meant as a password (it is no
    // well-formed hash, or it begins $2$, whose shape is not looked at), the
    // message says why it is not taken as one.
    .superRefine((value, ctx) => {
      const problem = bcryptHashProblem(value);
      if (problem === undefined) return;
      const maybePlain = problem.startsWith('not a valid') || problem === UNSUPPORTED_2;
      const plain = maybePlain ? ' (a password beginning like a bcrypt hash is not taken as plain text)' : '';
      ctx.addIssue({ code: 'custom', message: `${problem}${plain}` });
    }),
});

export const authMethod = z.enum(['none', 'userpass']);

const authSchema = z.strictObject({
  /** Methods in order of preference; `none` absent means authentication is required. */
  methods: z.array(authMethod).min(1).default(['none']),
  users: z.array(userSchema).default([]).superRefine((users, ctx) => {
    // As in the users file: with a name twice, which password counts would be a guess.
    const first = new Map<string, number>();
    users.forEach((user, i) => {
      const earlier = first.get(user.name);
      if (earlier === undefined) first.set(user.name, i);
      else ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `"${user.name}" again (first at auth.users[${earlier}]): each name may appear once` });
    });
  }),
  usersFile: z.string().min(1).optional(),
});

const timeoutsSchema = z.strictObject({
  handshake: positiveDuration.default(10_000),
  connect: positiveDuration.default(30_000),
  /** A relayed session with no traffic either way for this long is closed; 0: never. */
  idle: duration.default(3_600_000),
  /** BIND: how long to wait for the application server's inbound connection. */
  bind: positiveDuration.default(120_000),
  /** UDP ASSOCIATE: no datagram either way for this long ends the association. */
  udpIdle: positiveDuration.default(120_000),
  /** How long sessions may drain on SIGINT/SIGTERM before they are closed. */
  shutdownGrace: duration.default(10_000),
});

const clientsSchema = z.strictObject({
  /** Networks allowed to talk to the proxy at all; absent means any. */
  allow: z.array(network).min(1).optional(),
});

const SESSIONS_RANGE = 'must be auto or a whole number from 1 to 10000000';
const PER_CLIENT_RANGE = 'must be null (no limit per client) or a whole number from 1 to 10000000';
const limitsSchema = z.strictObject({
  /**
   * Sessions held at once, in any phase: past it a new connection is closed
   * as soon as it is accepted (recorded as limit-reached). A number is the
   * whole server's (workers share it); `auto`: from each process's open-files
   * limit (server/session-limit.ts).
   */
  sessions: z.union([z.literal('auto'), wholeNumberFrom(1, 10_000_000, SESSIONS_RANGE)], { error: SESSIONS_RANGE }).default('auto'),
  /**
   * Sessions one client (an address; an IPv6 client per /64) holds at once,
   * in each process; null: no limit but `sessions`. Past it the client's new
   * connection is closed as soon as it is accepted (limit-reached).
   */
  sessionsPerClient: z.union([z.null(), wholeNumberFrom(1, 10_000_000, PER_CLIENT_RANGE)], { error: PER_CLIENT_RANGE }).default(null),
  socks4UserId: z.number().int().min(0).max(4096).default(255),
  socks4Hostname: z.number().int().min(1).max(255).default(255),
});

const bindSchema = z.strictObject({
  /**
   * `requested`: accept the inbound connection only from the address the BIND
   * request named (any, if it named 0.0.0.0 or ::). `any`: from anywhere.
   */
  acceptFrom: z.enum(['requested', 'any']).default('requested'),
});

const udpSchema = z.strictObject({
  /** Largest datagram taken from a client, SOCKS header included. */
  maxDatagram: z.number().int().min(16).max(65535).default(65535),
  /** Datagrams held per association while a destination name resolves. */
  pendingDatagrams: z.number().int().min(0).max(100_000).default(64),
  /** Destination names remembered per association. */
  cachedNames: z.number().int().min(0).max(100_000).default(256),
  /** Live associations allowed per client address (per /64 for IPv6: a host given a /64 has addresses to spare). */
  maxAssociationsPerClient: z.number().int().min(1).max(100_000).default(32),
});

const relaySchema = z.strictObject({
  /**
   * How TCP payload moves once a session relays. `splice`: in the kernel with
   * splice(2), through the native addon built at install (Linux, C compiler);
   * `stream`: Node streams; `auto`: splice when the addon is built, else stream.
   */
  engine: z.enum(['auto', 'splice', 'stream']).default('auto'),
  /**
   * Microseconds the splice relay's thread keeps polling for the next event
   * before it sleeps (0: off, the default). Each message of a
   * request/response exchange otherwise waits for an idle core to wake up
   * (tens of microseconds, more in a virtual machine); polling trades CPU for
   * that latency: up to this long after each burst of traffic. Like
   * HAProxy's `busy-polling`, for latency-sensitive deployments. No effect
   * with the stream relay.
   */
  busyPollMicroseconds: wholeNumberFrom(0, 1000, BUSY_POLL_RANGE).default(0),
});

const handshakeSchema = z.strictObject({
  /**
   * Who runs the SOCKS5 exchange. `native`: the addon's relay thread accepts,
   * negotiates and connects for the common case (CONNECT to an address, with
   * or without username/password) and hands everything else to the Node
   * session; JavaScript still checks passwords, decides rules and writes every
   * record. Needs the splice relay. `node`: every connection is a Node socket.
   * `auto`: native when the splice relay runs, else node.
   */
  engine: z.enum(['auto', 'native', 'node']).default('auto'),
});

const logSchema = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** `auto`: readable when stdout is a terminal, JSON otherwise. */
  format: z.enum(['auto', 'json', 'pretty']).default('auto'),
  /**
   * A file for the log instead of stdout, opened for appending and opened
   * again at each SIGHUP, so a rotation may rename it (null: stdout).
   */
  file: z.string().min(1).nullable().default(null),
});

// Request rules (policy/rules.ts compiles them): first match wins.
const ruleList = <T extends z.ZodType>(item: T) => z.array(item).min(1, 'list at least one entry, or leave the key out');

/** `25`, `"587"` or `"1024-65535"`. */
const rulePort = z.union([z.number(), z.string()], { error: 'must be a port (1-65535) or a range "low-high"' }).superRefine((value, ctx) => {
  const problem = portRangeProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** `example.org`, `*.corp.example` (any subdomain, not the bare suffix), or an IP address. */
const hostPattern = z.string().superRefine((value, ctx) => {
  const parsed = parseHostPattern(value);
  if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
});

const ruleMatchSchema = z.strictObject({
  /** The client: its address and source port. */
  from: z.strictObject({ nets: ruleList(network).optional(), ports: ruleList(rulePort).optional() }).optional(),
  /** The destination: address (literal only, before DNS) or host name pattern, and port. */
  to: z
    .strictObject({
      nets: ruleList(network).optional(),
      hosts: ruleList(hostPattern).optional(),
      ports: ruleList(rulePort).optional(),
    })
    .optional(),
  commands: ruleList(z.enum(['connect', 'bind', 'udp'])).optional(),
  /** RFC 1929 usernames; SOCKS4 sessions match on their USERID. */
  users: ruleList(z.string().min(1).max(255)).optional(),
  /** Listener labels as in the access log, e.g. `127.0.0.1:1080`, `[::1]:1080`. */
  listeners: ruleList(
    z.string()
      .refine((v) => parseListenerLabel(v) !== undefined, { message: 'must be a listener as address:port, e.g. 127.0.0.1:1080 or [::1]:1080' })
      // A listener is named by the port it bound, never 0: such an entry could match nothing.
      .refine((v) => !/:0+$/.test(v), { message: 'port 0 matches no listener: a listener is named by the port it bound (see the listening lines)' }),
  ).optional(),
});

const ruleSchema = z.strictObject({
  name: z
    .string()
    .regex(/^[\w][\w.:@-]{0,63}$/, { message: 'must be 1-64 letters, digits or _ . : @ - (it names the rule in the log)' })
    .refine((v) => v !== 'default-deny', { message: '"default-deny" is the name of the implicit last rule' }),
  /** Exactly one of allow / deny: the matchers, all of which must match. */
  allow: ruleMatchSchema.optional(),
  deny: ruleMatchSchema.optional(),
});

const configObject = z
  .strictObject({
    listen: z.array(listenerSchema).min(1).default([listenerSchema.parse({})]),
    auth: authSchema.prefault({}),
    clients: clientsSchema.prefault({}),
    timeouts: timeoutsSchema.prefault({}),
    limits: limitsSchema.prefault({}),
    bind: bindSchema.prefault({}),
    udp: udpSchema.prefault({}),
    log: logSchema.prefault({}),
    relay: relaySchema.prefault({}),
    handshake: handshakeSchema.prefault({}),
    /** Request rules, first match wins; when any exists, a request no rule matches is denied (`default-deny`). */
    rules: z.array(ruleSchema).default([]),
    /**
     * Event loops (processes) sharing the listeners. `auto`: one per core when
     * any listener is beyond loopback (a proxy for a network), else one.
     */
    workers: z.union([z.literal('auto'), wholeNumberFrom(1, 256, WORKERS_RANGE)], { error: WORKERS_RANGE }).default('auto'),
  });

// Cross-field rules run even when a field is invalid, so one --check lists
// every problem; the value may then be partly unparsed, hence the guards.
export const configSchema = configObject
  .superRefine((config, ctx) => crossFieldChecks(config as Partial<Config>, ctx, true), { when: () => true });

/**
 * The same for a server given an authenticator of its own (the library's
 * `authenticator` option): userpass then needs no users in the configuration.
 */
export const configSchemaOwnAuthenticator = configObject
  .superRefine((config, ctx) => crossFieldChecks(config as Partial<Config>, ctx, false), { when: () => true });

/** `usersFromConfig`: passwords are checked against the configured users (no authenticator of the library's own). */
function crossFieldChecks(config: Partial<Config>, ctx: z.RefinementCtx, usersFromConfig: boolean): void {
  ruleChecks(config.rules, ctx);
  const methods = Array.isArray(config.auth?.methods) ? config.auth.methods : [];
  const users = Array.isArray(config.auth?.users) ? config.auth.users : [];
  if (usersFromConfig && methods.includes('userpass') && users.length === 0 && !config.auth?.usersFile) {
    ctx.addIssue({ code: 'custom', path: ['auth', 'methods'], message: 'userpass needs auth.users or auth.usersFile' });
  }
  if (config.log?.format === 'pretty' && typeof config.log.file === 'string') {
    ctx.addIssue({ code: 'custom', path: ['log', 'format'], message: 'pretty is for a terminal: log.file takes JSON lines (format json or auto)' });
  }
  const open = methods.includes('none') && !config.clients?.allow;
  const listeners = Array.isArray(config.listen) ? config.listen : [];
  listenerClashes(listeners, ctx);
  listeners.forEach((listener, i) => {
    const address = (listener as { address?: unknown } | undefined)?.address;
    if (open && typeof address === 'string' && isIP(address) !== 0 && !isLoopback(address)) {
      ctx.addIssue({
        code: 'custom',
        path: ['listen', i, 'address'],
        message: `${address} is not loopback and auth allows "none": set clients.allow or require userpass (refusing to run an open proxy)`,
      });
    }
  });
}

/**
 * Two listeners on one port that the kernel would not both bind: the same
 * address twice, or an address and a wildcard that takes it (0.0.0.0 takes
 * every IPv4 address; :: every address, IPv4 too, as socksgate binds it
 * dual-stack). Start-up would fail with "address already in use", blaming
 * no other program, or, with workers (SO_REUSEPORT), bind both.
 */
function listenerClashes(listeners: readonly unknown[], ctx: z.RefinementCtx): void {
  const bound: Array<{ label: string; index: number; address: ipaddr.IPv4 | ipaddr.IPv6; port: number }> = [];
  listeners.forEach((listener, i) => {
    const { address: text, port } = (listener ?? {}) as { address?: unknown; port?: unknown };
    if (typeof text !== 'string' || typeof port !== 'number' || port === 0 || !ipaddr.isValid(text)) return;
    const address = ipaddr.process(text); // an IPv4-mapped address is the IPv4 one
    const label = formatDestination({ host: address.toString(), port });
    for (const other of bound) {
      if (other.port !== port) continue;
      const why = other.address.toString() === address.toString() ? 'is listed twice'
        : takes(other.address, address) ? `is within ${other.label}, which takes ${everyAddress(other.address)}`
        : takes(address, other.address) ? `takes ${everyAddress(address)}, ${other.label} too`
        : null;
      if (why) ctx.addIssue({ code: 'custom', path: ['listen', i], message: `${label} ${why} (listen[${other.index}]): the two cannot both be bound; list one` });
    }
    bound.push({ label, index: i, address, port });
  });
}

function everyAddress(wildcard: ipaddr.IPv4 | ipaddr.IPv6): string {
  return wildcard.kind() === 'ipv4' ? 'every IPv4 address' : 'every address, IPv4 too (dual-stack)';
}

/** Whether a listener on `wildcard` also takes `address`'s connections (dual-stack for ::). */
function takes(wildcard: ipaddr.IPv4 | ipaddr.IPv6, address: ipaddr.IPv4 | ipaddr.IPv6): boolean {
  if (wildcard.range() !== 'unspecified') return false;
  return wildcard.kind() === 'ipv6' || address.kind() === 'ipv4';
}

/** Each rule has exactly one of allow/deny, and a name no other rule has. */
function ruleChecks(rules: unknown, ctx: z.RefinementCtx): void {
  if (!Array.isArray(rules)) return;
  const first = new Map<string, number>();
  rules.forEach((rule: unknown, i) => {
    if (typeof rule !== 'object' || rule === null) return;
    const { name, allow, deny } = rule as { name?: unknown; allow?: unknown; deny?: unknown };
    if ((allow === undefined) === (deny === undefined)) {
      const message = allow === undefined ? 'a rule needs allow or deny' : 'a rule has allow or deny, not both';
      ctx.addIssue({ code: 'custom', path: ['rules', i], message });
    }
    if (typeof name !== 'string') return;
    const seen = first.get(name);
    if (seen === undefined) first.set(name, i);
    else ctx.addIssue({ code: 'custom', path: ['rules', i, 'name'], message: `duplicate rule name "${name}" (first at rules[${seen}])` });
  });
}

/** The number of worker processes `workers` asks for on this machine. */
export function workerCount(config: Pick<Config, 'workers' | 'listen'>, cores: number): number {
  if (config.workers !== 'auto') return config.workers;
  return config.listen.some((l) => !isLoopback(l.address)) ? Math.max(1, cores) : 1;
}

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config['listen'][number];
export type AuthMethodName = z.output<typeof authMethod>;
export type RuleConfig = Config['rules'][number];

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

export function isLoopback(address: string): boolean {
  return LOOPBACK.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
}

/** The JSON Schema of the configuration file, for editors. */
export function configJsonSchema(): unknown {
  return z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' });
}
