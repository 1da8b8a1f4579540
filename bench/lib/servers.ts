/**
 * The servers under test, each started fresh as a child process on a free
 * loopback port: socksgate (minimal with the splice relay, minimal with the
 * stream relay, minimal with username/password for the handshakes,
 * production configuration), Dante, microsocks, and "none"
 * (the generator talks to the target directly).
 */
import { type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { descendants, freePort, rememberDescendants, spawnTracked, stopChild, waitForSocks } from './proc.js';
import type { Group } from './workloads.js';

export type ServerId = 'socksgate' | 'socksgate-stream' | 'socksgate-poll' | 'socksgate-auth' | 'socksgate-prod' | 'dante' | 'microsocks' | 'microsocks-auth' | 'none';

export interface ServerInfo {
  readonly id: ServerId;
  readonly label: string;
  /** false for "none": no process, no memory workloads. */
  readonly proxy: boolean;
  /** Serves SOCKS5 UDP ASSOCIATE (false: the UDP workloads are shown as n/a for it). */
  readonly udp: boolean;
  /** Run only in these workload groups (a reference point, not a contender); absent: every group. */
  readonly groups?: readonly Group[];
  /** Runs written before `groups` (2026-11-23 and earlier): the same as groups ['handshake']. */
  readonly handshakesOnly?: boolean;
  readonly describe: string;
}

/** socksgate (busy poll)'s window: Linux's recommended `net.core.busy_poll` for a few sockets. */
export const BUSY_POLL_MICROSECONDS = 50;

/** How many rules the production configuration carries: 49 that never match the benchmark's traffic, then the one that allows it. */
export const PRODUCTION_RULE_COUNT = 50;

export const SERVERS: readonly ServerInfo[] = [
  {
    id: 'socksgate',
    label: 'socksgate',
    proxy: true,
    udp: true,
    describe: '`node bin/socksgate.cjs --listen 127.0.0.1:P --log-level warn --log-format json --relay-engine splice` (the `socksgate` command: dist/src/cli.js with libuv\'s thread pool at 16; no auth; the access log is at info, so nothing is logged for normal sessions; the native splice(2) relay asked for explicitly, so a missing addon fails the run instead of measuring the stream relay; with it, UDP associations run on the addon\'s relay thread too)',
  },
  {
    id: 'socksgate-stream',
    label: 'socksgate (stream relay)',
    proxy: true,
    udp: true,
    describe: 'the same with `--relay-engine stream`: the pure Node stream relay, and dgram sockets for UDP',
  },
  {
    id: 'socksgate-poll',
    label: 'socksgate (busy poll)',
    proxy: true,
    udp: true,
    groups: ['handshake', 'latency'],
    describe: `the same as socksgate with \`--busy-poll ${BUSY_POLL_MICROSECONDS}\` (\`relay.busyPollMicroseconds\`, off by default: ` +
      `the relay thread polls for ${BUSY_POLL_MICROSECONDS} µs ` +
      'after each burst of events before it sleeps, trading CPU for the wake-up of an idle core), handshakes and latency only',
  },
  {
    id: 'socksgate-auth',
    label: 'socksgate (userpass)',
    proxy: true,
    udp: true,
    groups: ['handshake'],
    describe: '`node bin/socksgate.cjs --config CONFIG.yaml --relay-engine splice`, handshakes only: the production configuration\'s `listen` and `auth` ' +
      '(the same users file), `log` level warn, no rules. socksgate\'s own price for the RFC 1929 round trip (next to microsocks\'), and the base ' +
      'that shows what the rules and the access log cost the production configuration',
  },
  {
    id: 'socksgate-prod',
    label: 'socksgate (production)',
    proxy: true,
    udp: true,
    describe: '`node bin/socksgate.cjs --config CONFIG.yaml --relay-engine splice`, stdout redirected to a file; the YAML file has `listen` 127.0.0.1:P, ' +
      '`auth` methods [userpass] with usersFile (one user, bcrypt cost 10), `log` level info and format json (one JSON access-log line per session), ' +
      `and ${PRODUCTION_RULE_COUNT} \`rules\`: 49 deny rules that never match the benchmark's traffic (destination networks, host patterns, ports, ` +
      'commands, users, client networks, several of them matching in one field and failing in another) and a last one that allows clients from 127.0.0.0/8 ' +
      '(by client, not destination: socksgate matches no `to` rule against a UDP ASSOCIATE, which names no destination), ' +
      'so every request is checked against all 50',
  },
  {
    id: 'dante',
    label: 'Dante',
    proxy: true,
    udp: true,
    describe: '`danted -f CONF -p PIDFILE` in the foreground (one main process; Dante forks its negotiate/request/io children itself): internal 127.0.0.1 port P, external 127.0.0.1, socksmethod none, clientmethod none, `client pass` from 127.0.0.0/8 to 0.0.0.0/0, `socks pass` from 127.0.0.0/8 to 0.0.0.0/0 with `command: bind connect udpassociate` and from 0.0.0.0/0 to 127.0.0.0/8 with `command: bindreply udpreply` (UDP replies), user.privileged root, user.unprivileged nobody, log to a file',
  },
  {
    id: 'microsocks',
    label: 'microsocks',
    proxy: true,
    udp: false,
    describe: '`microsocks -i 127.0.0.1 -p P` (a thread per client; its per-connection log line goes to /dev/null; it has no UDP ASSOCIATE, so the UDP workloads are n/a)',
  },
  {
    id: 'microsocks-auth',
    label: 'microsocks (userpass)',
    proxy: true,
    udp: false,
    groups: ['handshake'],
    describe: '`microsocks -i 127.0.0.1 -p P -u USER -P PASS`, handshakes only: what the RFC 1929 round trip costs a proxy with nothing else to do, ' +
      'next to socksgate (userpass)',
  },
  {
    id: 'none',
    label: 'no proxy',
    proxy: false,
    udp: true,
    describe: 'the generator connects to the target directly; for handshakes it talks to a null SOCKS5 server in the target that answers without dialing; for UDP it sends bare datagrams (no SOCKS header) to the target\'s UDP echo',
  },
];

/**
 * The production configuration's rules: 49 that never match the benchmark's
 * traffic (client 127.0.0.1, user "bench", CONNECT to 127.0.0.1 on ephemeral
 * ports 32768-60999, UDP ASSOCIATE), then one that allows it. Several match
 * one field (127.0.0.0/8, the command) and fail on another, so the walk does
 * real work rather than failing on the first field every time.
 *
 * The last rule allows by client network, not by destination: a UDP
 * ASSOCIATE request names no destination, so socksgate never matches it
 * against a rule with a `to` (src/policy/rules.ts), and a `to: 127.0.0.0/8`
 * allow would leave the UDP workloads to `default-deny`.
 */
export function productionRules(): Array<Record<string, unknown>> {
  // i: the rule's number; odd: every other round of the ten templates takes a variant.
  const templates: Array<(i: number, odd: boolean) => Record<string, unknown>> = [
    (i) => ({ to: { nets: [`10.${i}.0.0/16`], ports: [25, '8000-8100'] } }),
    (i) => ({ to: { hosts: [`*.example${i}.com`] } }),
    (i) => ({ to: { nets: ['127.0.0.0/8'], ports: [22 + i, '1-1023'] } }), // loopback, but privileged ports only
    (i, odd) => (odd ? { commands: ['udp'], users: [`someone-else-${i}`] } : { commands: ['bind'], to: { nets: ['127.0.0.0/8'] } }),
    (i, odd) => ({ users: [`someone-else-${i}`], ...(odd ? {} : { to: { nets: ['127.0.0.0/8'] } }) }),
    (i) => ({ from: { nets: [`192.168.${i}.0/24`] } }),
    (i) => ({ to: { hosts: [`tracker${i}.example.net`, `ads${i}.example.org`] } }),
    (i) => ({ from: { nets: [`127.0.${i}.2/32`] }, to: { nets: ['127.0.0.0/8'] } }), // other loopback clients
    (i) => ({ to: { nets: ['172.16.0.0/12', `100.64.${i}.0/24`] } }),
    (i) => ({ to: { ports: [`${1024 + i * 10}-${1033 + i * 10}`] } }),
  ];
  const rules: Array<Record<string, unknown>> = [];
  for (let i = 1; i < PRODUCTION_RULE_COUNT; i++) {
    const round = Math.floor((i - 1) / templates.length);
    rules.push({ name: `r${String(i).padStart(2, '0')}`, deny: templates[(i - 1) % templates.length]!(i, round % 2 === 1) });
  }
  rules.push({ name: 'allow-loopback-clients', allow: { from: { nets: ['127.0.0.0/8'] } } });
  return rules;
}

/** YAML flow style for a rule's matchers: `{ to: { nets: ["10.1.0.0/16"], ports: [25, "8000-8100"] } }`. */
function flow(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(flow).join(', ')}]`;
  if (value !== null && typeof value === 'object') return `{ ${Object.entries(value).map(([k, v]) => `${k}: ${flow(v)}`).join(', ')} }`;
  return JSON.stringify(value);
}

/** The production configuration file's text for a listener on `port`. */
export function productionConfig(port: number, usersFile: string): string {
  const lines = [...userpassLines(port, usersFile, 'the production configuration'), 'log: { level: info, format: json }', 'rules:'];
  for (const { name, ...action } of productionRules()) {
    const [verb, match] = Object.entries(action)[0]!;
    lines.push(`  - name: ${String(name)}`, `    ${verb}: ${flow(match)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The production configuration without its rules and access log: username/password only. */
export function userpassConfig(port: number, usersFile: string): string {
  return `${[...userpassLines(port, usersFile, 'username/password only'), 'log: { level: warn, format: json }'].join('\n')}\n`;
}

function userpassLines(port: number, usersFile: string, what: string): string[] {
  return [
    `# socksgate benchmark: ${what} (bench/lib/servers.ts)`,
    'listen:',
    `  - { address: 127.0.0.1, port: ${port} }`,
    'auth:',
    '  methods: [userpass]',
    `  usersFile: ${JSON.stringify(usersFile)}`,
  ];
}

export interface Binaries {
  readonly node: string;
  readonly cli: string;
  readonly danted: string;
  readonly microsocks: string;
}

export interface ServerEnv {
  readonly bin: Binaries;
  readonly tmp: string;
  readonly affinity: string | null;
  readonly usersFile: string;
  readonly credentials: { readonly user: string; readonly pass: string };
}

/** What a server's own log said, summarised after it stopped. */
export interface LogSummary {
  readonly lines: number;
  /** Access-log lines (socksgate). */
  readonly sessions: number;
  /** Sessions by close reason (socksgate). */
  readonly reasons: Record<string, number>;
  /** Sessions by the rule that decided them, when the access log names one (socksgate with rules). */
  readonly rules?: Record<string, number>;
  /** Sessions by the TCP relay engine that carried them, and the engine the "started" line named (socksgate at info). */
  readonly relays?: Record<string, number>;
  readonly engine?: string;
  /** Lines at warn or above, by message kind (first 60 characters). */
  readonly warnings: Record<string, number>;
}

export interface RunningServer {
  readonly info: ServerInfo;
  /** 0 for "none". */
  readonly port: number;
  readonly auth: { readonly user: string; readonly pass: string } | null;
  /** The server's processes now: the main one and its descendants (Dante's children). */
  pids(): number[];
  stop(): Promise<LogSummary | null>;
}

let sequence = 0;

export async function startServer(info: ServerInfo, env: ServerEnv): Promise<RunningServer> {
  if (!info.proxy) {
    return { info, port: 0, auth: null, pids: () => [], stop: async () => null };
  }
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) { // a freshly freed port can be taken meanwhile
    try {
      return await startOnce(info, env, await freePort());
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnce(info: ServerInfo, env: ServerEnv, port: number): Promise<RunningServer> {
  const n = ++sequence;
  switch (info.id) {
    case 'socksgate':
    case 'socksgate-stream':
    case 'socksgate-poll':
    case 'socksgate-auth':
    case 'socksgate-prod': {
      const prod = info.id === 'socksgate-prod';
      const auth = prod || info.id === 'socksgate-auth';
      const logPath = join(env.tmp, `${info.id}-${n}.log`);
      let args: string[];
      if (auth) {
        const configPath = join(env.tmp, `${info.id}-${n}.yaml`);
        writeFileSync(configPath, (prod ? productionConfig : userpassConfig)(port, env.usersFile));
        args = [env.bin.cli, '--config', configPath];
      } else {
        args = [env.bin.cli, '--listen', `127.0.0.1:${port}`, '--log-format', 'json', '--log-level', 'warn'];
      }
      args.push('--relay-engine', info.id === 'socksgate-stream' ? 'stream' : 'splice');
      if (info.id === 'socksgate-poll') args.push('--busy-poll', String(BUSY_POLL_MICROSECONDS));
      const fd = openSync(logPath, 'w');
      const child = spawnTracked(env.bin.node, args, { stdio: ['ignore', fd, 'pipe'], affinity: env.affinity });
      closeSync(fd);
      const stderr = collect(child);
      await ready(child, port, auth ? 2 : 0, stderr, info);
      return {
        info,
        port,
        auth: auth ? env.credentials : null,
        pids: () => (child.pid === undefined ? [] : [child.pid]),
        stop: async () => {
          await stopChild(child);
          return summariseSocksgateLog(logPath, stderr());
        },
      };
    }
    case 'dante': {
      const dir = join(env.tmp, `dante-${n}`);
      mkdirSync(dir);
      chmodSync(dir, 0o777); // Dante drops to "nobody" after start
      const conf = join(dir, 'danted.conf');
      const log = join(dir, 'danted.log');
      const asRoot = process.getuid?.() === 0;
      writeFileSync(conf, [
        `logoutput: ${log}`,
        `internal: 127.0.0.1 port = ${port}`,
        'external: 127.0.0.1',
        'socksmethod: none',
        'clientmethod: none',
        ...(asRoot ? ['user.privileged: root', 'user.unprivileged: nobody'] : []),
        'client pass {',
        '  from: 127.0.0.0/8 to: 0.0.0.0/0',
        '}',
        'socks pass {',
        '  from: 127.0.0.0/8 to: 0.0.0.0/0',
        '  command: bind connect udpassociate',
        '}',
        'socks pass {', // UDP replies (and BIND's inbound connection) travel toward the client
        '  from: 0.0.0.0/0 to: 127.0.0.0/8',
        '  command: bindreply udpreply',
        '}',
        '',
      ].join('\n'));
      chmodSync(conf, 0o644);
      const child = spawnTracked(env.bin.danted, ['-f', conf, '-p', join(dir, 'danted.pid')], {
        stdio: ['ignore', 'ignore', 'pipe'],
        affinity: env.affinity,
      });
      const stderr = collect(child);
      await ready(child, port, 0, () => `${stderr()}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`, info);
      const pids = () => {
        if (child.pid === undefined) return [];
        const kids = descendants(child.pid);
        rememberDescendants(kids);
        return [child.pid, ...kids];
      };
      return {
        info,
        port,
        auth: null,
        pids,
        stop: async () => {
          const all = pids();
          await stopChild(child, all.slice(1));
          return summariseDanteLog(log, stderr());
        },
      };
    }
    case 'microsocks':
    case 'microsocks-auth': {
      const auth = info.id === 'microsocks-auth' ? env.credentials : null;
      const args = ['-i', '127.0.0.1', '-p', String(port), ...(auth ? ['-u', auth.user, '-P', auth.pass] : [])];
      const child = spawnTracked(env.bin.microsocks, args, {
        stdio: ['ignore', 'ignore', 'ignore'],
        affinity: env.affinity,
      });
      await ready(child, port, auth ? 2 : 0, () => '', info);
      return {
        info,
        port,
        auth,
        pids: () => (child.pid === undefined ? [] : [child.pid]),
        stop: async () => {
          await stopChild(child);
          return null;
        },
      };
    }
    default:
      throw new Error(`unknown server ${info.id}`);
  }
}

async function ready(child: ChildProcess, port: number, method: number, output: () => string, info: ServerInfo): Promise<void> {
  try {
    await waitForSocks(port, method, child);
  } catch (err) {
    await stopChild(child);
    throw new Error(`${info.label} did not start: ${(err as Error).message}${output() ? `\n${output().trim()}` : ''}`);
  }
}

function collect(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (c: Buffer) => {
    if (text.length < 100_000) text += c.toString();
  });
  return () => text;
}

function kind(message: string): string {
  return message.replace(/\d+/g, 'N').slice(0, 60);
}

function summariseSocksgateLog(path: string, stderr: string): LogSummary {
  const reasons: Record<string, number> = {};
  const rules: Record<string, number> = {};
  const relays: Record<string, number> = {};
  let engine: string | undefined;
  const warnings: Record<string, number> = {};
  let lines = 0;
  let sessions = 0;
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    lines++;
    let entry: { level?: number; event?: string; reason?: string; msg?: string; error?: string | null; rule?: unknown; relay?: unknown };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      warnings[`unparsable: ${kind(line)}`] = (warnings[`unparsable: ${kind(line)}`] ?? 0) + 1;
      continue;
    }
    if (entry.event === 'session') {
      sessions++;
      const reason = entry.reason ?? '?';
      reasons[reason] = (reasons[reason] ?? 0) + 1;
      // The rule that decided the session, if the access log names it (a name, or an object with one).
      const rule = typeof entry.rule === 'string' ? entry.rule
        : entry.rule && typeof entry.rule === 'object' && typeof (entry.rule as { name?: unknown }).name === 'string' ? (entry.rule as { name: string }).name
        : null;
      if (rule !== null) rules[rule] = (rules[rule] ?? 0) + 1;
      if (typeof entry.relay === 'string') relays[entry.relay] = (relays[entry.relay] ?? 0) + 1;
    }
    if (entry.event === 'started' && typeof entry.relay === 'string') engine = entry.relay;
    if ((entry.level ?? 0) >= 40) {
      const key = entry.event === 'session' ? `${entry.reason}: ${kind(entry.error ?? '')}` : kind(entry.msg ?? line);
      warnings[key] = (warnings[key] ?? 0) + 1;
    }
  }
  for (const line of stderr.split('\n')) {
    if (line.trim() !== '') warnings[`stderr: ${kind(line)}`] = (warnings[`stderr: ${kind(line)}`] ?? 0) + 1;
  }
  return {
    lines, sessions, reasons, warnings,
    ...(Object.keys(rules).length > 0 ? { rules } : {}),
    ...(Object.keys(relays).length > 0 ? { relays } : {}),
    ...(engine !== undefined ? { engine } : {}),
  };
}

function summariseDanteLog(path: string, stderr: string): LogSummary {
  const warnings: Record<string, number> = {};
  let lines = 0;
  const text = `${existsSync(path) ? readFileSync(path, 'utf8') : ''}\n${stderr}`;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    lines++;
    const m = /\]: (\w+): (.*)$/.exec(line);
    const level = m?.[1] ?? 'line';
    if (/running|exiting|terminating|shutting down/.test(m?.[2] ?? '')) continue; // start and our SIGTERM
    const key = `${level}: ${kind(m?.[2] ?? line)}`;
    warnings[key] = (warnings[key] ?? 0) + 1;
  }
  return { lines, sessions: 0, reasons: {}, warnings };
}
