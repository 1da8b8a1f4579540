/**
 * The workloads: what each measures, and how one run of it goes against a
 * running server. SOCKS5 CONNECT (UDP ASSOCIATE for the UDP workloads), no
 * auth (the production configuration uses username/password), on 127.0.0.1.
 */
import { type GenResult, type Target, runGenerator } from './loadgen.js';
import { cpuSeconds, pssKb, rssKb, sleep } from './proc.js';
import type { RunningServer, ServerId, ServerInfo } from './servers.js';

export interface Settings {
  readonly quick: boolean;
  readonly reps: number;
  /**
   * Groups run more often than `reps`. Handshakes and latency at one client
   * are chains of wake-ups, and on a shared machine one repetition in five
   * can come out several times slower for any server; a median of nine
   * shrugs off four such repetitions, a median of five two.
   */
  readonly groupReps?: Partial<Record<Group, number>>;
  readonly bulkSeconds: number;
  readonly batchBytes: number;
  readonly handshakeSeconds: number;
  /**
   * Uncounted handshakes, one at a time, for this long after the first
   * completes: the first pays what a server pays once (with
   * username/password, the bcrypt check the proxy then remembers).
   */
  readonly handshakeWarmupMs: number;
  readonly latencySeconds: number;
  readonly latencyWarmupMs: number;
  readonly latencySize: number;
  readonly idleStages: readonly number[];
  readonly idleSettleMs: number;
  /**
   * Sessions opened and closed before the idle ramp's baseline is read, so
   * what a server allocates once, on its first sessions (code compiled on
   * first use, a log's buffers, heap the runtime grows and keeps), is not
   * divided among the N sessions as if each held it. 0: no warm-up.
   */
  readonly idleWarmupSessions: number;
  readonly udpSeconds: number;
  readonly udpWarmupMs: number;
  /** Datagrams in flight per association. */
  readonly udpWindow: number;
  /** Payload bytes per datagram (the SOCKS header comes on top). */
  readonly udpSize: number;
  /** A datagram not echoed within this is counted lost and replaced. */
  readonly udpTimeoutMs: number;
  /** Backpressure: what the client asks the source for. */
  readonly stallBytes: number;
  /** The client reads nothing for at least this long… */
  readonly stallMinHoldMs: number;
  /** …and until the source has made no progress for this long (or has sent everything)… */
  readonly stallQuietMs: number;
  /** …but no longer than this. */
  readonly stallMaxHoldMs: number;
  /** The documented bound: peak RSS growth of the server process while a reader stalls, MiB. */
  readonly stallBoundMiB: number;
}

export const FULL: Settings = {
  quick: false,
  reps: 5,
  groupReps: { handshake: 9, latency: 9 },
  bulkSeconds: 2,
  batchBytes: 8 << 20,
  handshakeSeconds: 2,
  handshakeWarmupMs: 200,
  latencySeconds: 2,
  latencyWarmupMs: 200,
  latencySize: 64,
  idleStages: [1000, 5000, 9000],
  idleSettleMs: 1000,
  idleWarmupSessions: 64,
  udpSeconds: 2,
  udpWarmupMs: 200,
  udpWindow: 32,
  udpSize: 64,
  udpTimeoutMs: 100,
  stallBytes: 1 << 30,
  stallMinHoldMs: 2000,
  stallQuietMs: 1000,
  stallMaxHoldMs: 30_000,
  stallBoundMiB: 64,
};

export const QUICK: Settings = {
  quick: true,
  reps: 1,
  bulkSeconds: 0.2,
  batchBytes: 1 << 20,
  handshakeSeconds: 0.2,
  handshakeWarmupMs: 20,
  latencySeconds: 0.2,
  latencyWarmupMs: 20,
  latencySize: 64,
  idleStages: [100, 200, 300],
  idleSettleMs: 100,
  idleWarmupSessions: 64,
  udpSeconds: 0.2,
  udpWarmupMs: 20,
  udpWindow: 32,
  udpSize: 64,
  udpTimeoutMs: 100,
  stallBytes: 32 << 20,
  stallMinHoldMs: 300,
  stallQuietMs: 200,
  stallMaxHoldMs: 3000,
  stallBoundMiB: 64,
};

/**
 * The order of a run: every group in turn, and within a group every server
 * (each on a fresh instance); the servers' order rotated by one each
 * repetition, so that no server always runs first after a change of group
 * or always right after the same neighbour.
 */
export function* schedule<S>(settings: Pick<Settings, 'reps' | 'groupReps'>, servers: readonly S[]): Generator<{ rep: number; group: Group; server: S }> {
  const repsOf = (group: Group) => settings.groupReps?.[group] ?? settings.reps;
  const last = Math.max(...GROUPS.map(repsOf));
  for (let rep = 1; rep <= last; rep++) {
    const k = servers.length === 0 ? 0 : (rep - 1) % servers.length;
    const order = [...servers.slice(k), ...servers.slice(0, k)];
    for (const group of GROUPS) {
      if (rep > repsOf(group)) continue;
      for (const server of order) yield { rep, group, server };
    }
  }
}

/** "5 repetitions (9 for handshake and latency)". */
export function describeReps(settings: Pick<Settings, 'reps' | 'groupReps'>): string {
  const plural = (n: number) => `${n} repetition${n > 1 ? 's' : ''}`;
  const more = new Map<number, Group[]>();
  for (const [group, n] of Object.entries(settings.groupReps ?? {}) as Array<[Group, number]>) {
    if (n !== settings.reps) more.set(n, [...(more.get(n) ?? []), group]);
  }
  const extra = [...more].map(([n, groups]) => `${n} for ${groups.join(' and ')}`);
  return extra.length === 0 ? plural(settings.reps) : `${plural(settings.reps)} (${extra.join(', ')})`;
}

export interface MetricDef {
  readonly key: string;
  readonly label: string;
  readonly better: 'higher' | 'lower';
  readonly digits: number;
}

/**
 * Workloads that share a server instance. Each group runs for every server
 * before the next group starts, so that the servers' figures for one
 * workload are taken minutes apart at most, not a whole repetition apart.
 */
export type Group = 'bulk' | 'handshake' | 'latency' | 'udp' | 'idle' | 'stall';

/** The groups in the order a repetition runs them. */
export const GROUPS: readonly Group[] = ['bulk', 'handshake', 'latency', 'udp', 'idle', 'stall'];

export interface Workload {
  readonly id: string;
  readonly group: Group;
  readonly title: string;
  readonly what: string;
  readonly metrics: readonly MetricDef[];
  /** Not run for "none" (memory of a server that does not exist). */
  readonly proxyOnly: boolean;
  readonly command?: 'upload' | 'download' | 'handshake' | 'latency' | 'udp';
  /** Streams, clients, connections or UDP associations. */
  readonly parallel?: number;
  /** idle: the session count. */
  readonly sessions?: number;
  /** handshake: the name asked for (ATYP 3, resolved by the proxy) instead of 127.0.0.1. */
  readonly destName?: string;
}

/** The name the by-name handshakes ask for: every machine's hosts file has it, so no DNS server is asked. */
export const HANDSHAKE_NAME = 'localhost';

const MBPS: MetricDef = { key: 'mbps', label: 'MB/s', better: 'higher', digits: 0 };
const RATE: MetricDef = { key: 'rate', label: 'handshakes/s', better: 'higher', digits: 0 };
const DGRAMS: MetricDef = { key: 'dgps', label: 'datagrams/s', better: 'higher', digits: 0 };
const P50: MetricDef = { key: 'p50us', label: 'p50 µs', better: 'lower', digits: 1 };
const P99: MetricDef = { key: 'p99us', label: 'p99 µs', better: 'lower', digits: 1 };
const PER_SESSION: MetricDef = { key: 'kibPerSession', label: 'KiB/session (RSS)', better: 'lower', digits: 1 };
const PSS_PER_SESSION: MetricDef = { key: 'pssKibPerSession', label: 'KiB/session (PSS)', better: 'lower', digits: 1 };
const RSS_MB: MetricDef = { key: 'rssMiB', label: 'RSS MiB', better: 'lower', digits: 1 };
const PEAK_GROWTH: MetricDef = { key: 'peakGrowthMiB', label: 'peak RSS growth MiB', better: 'lower', digits: 1 };
const PEAK_RSS: MetricDef = { key: 'peakRssMiB', label: 'peak RSS MiB', better: 'lower', digits: 1 };

export function workloads(s: Settings): Workload[] {
  const mb = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
  const bulk = (command: 'upload' | 'download', parallel: number): Workload => ({
    id: `${command}-${parallel}`,
    group: 'bulk',
    title: `Bulk ${command}, ${parallel} stream${parallel > 1 ? 's' : ''}`,
    what: `${parallel} connection${parallel > 1 ? 's' : ''} ${command === 'upload' ? 'sending to a sink' : 'reading from a source'} as fast as possible for ${s.bulkSeconds} s, ` +
      `in ${mb(s.batchBytes)} batches (two in flight), every batch's byte count verified; MB/s = 10^6 bytes per second over all streams`,
    metrics: [MBPS],
    proxyOnly: false,
    command,
    parallel,
  });
  const handshake = (parallel: number, destName?: string): Workload => ({
    id: destName ? `handshake-name-${parallel}` : `handshake-${parallel}`,
    group: 'handshake',
    title: `CONNECT handshakes${destName ? ' by name' : ''}, ${parallel} concurrent client${parallel > 1 ? 's' : ''}`,
    what: `${parallel} client${parallel > 1 ? 's' : ''} in a closed loop for ${s.handshakeSeconds} s (after ${s.handshakeWarmupMs} ms of uncounted handshakes one at a time, the first of which pays a password check once), each handshake a fresh TCP connection: ` +
      'greeting, method, request, reply, then close; the destination (the target\'s "hangup" port) closes as soon as the proxy connects ' +
      '(so TIME_WAIT stays off ephemeral ports, see bench/README.md); handshake time = from connect() to the whole reply' +
      (destName ? `; the request names "${destName}" (ATYP 3), which the proxy resolves (the hosts file; see "localhost resolves to" above) for every request` : ''),
    metrics: [RATE],
    proxyOnly: false,
    command: 'handshake',
    parallel,
    ...(destName ? { destName } : {}),
  });
  const latency = (parallel: number): Workload => ({
    id: `latency-${parallel}`,
    group: 'latency',
    title: `Request/response latency, ${parallel} connection${parallel > 1 ? 's' : ''}`,
    what: `${parallel} established relay${parallel > 1 ? 's' : ''} to the echo target, each sending ${s.latencySize} bytes and waiting for the echo, ` +
      `back to back for ${s.latencySeconds} s after a ${s.latencyWarmupMs} ms warm-up; percentiles of all round trips`,
    metrics: [P50, P99],
    proxyOnly: false,
    command: 'latency',
    parallel,
  });
  const udp = (parallel: number): Workload => ({
    id: `udp-${parallel}`,
    group: 'udp',
    title: `UDP datagrams, ${parallel} association${parallel > 1 ? 's' : ''}`,
    what: `${parallel} SOCKS5 UDP ASSOCIATE${parallel > 1 ? 's' : ''} (a TCP control connection and a UDP socket each), each keeping ` +
      `${s.udpWindow} datagrams of ${s.udpSize} bytes in flight to the target's UDP echo (SOCKS5 UDP header, ATYP IPv4 127.0.0.1; bare datagrams ` +
      `for "no proxy") for ${s.udpSeconds} s after a ${s.udpWarmupMs} ms warm-up; datagrams/s = echoes received per second over all associations; ` +
      `a datagram not echoed within ${s.udpTimeoutMs} ms is counted lost and replaced (loss is reported, not an error); every echo's payload is checked`,
    metrics: [DGRAMS],
    proxyOnly: false,
    command: 'udp',
    parallel,
  });
  const idle = (n: number): Workload => ({
    id: `idle-${n}`,
    group: 'idle',
    title: `Memory with ${n.toLocaleString('en-US')} idle sessions`,
    what: `sessions opened 64 at a time (handshake plus one 8-byte echo each, so each relay is established end to end), then left idle; ` +
      `RSS sampled ${s.idleSettleMs} ms after the last one opened; KiB/session = (RSS at N − RSS at idle) / N, with the sessions of ` +
      `the smaller counts still open (one ramp per server instance: ${s.idleStages.join(' → ')}); ` +
      (s.idleWarmupSessions > 0
        ? `"RSS at idle" is read after a first wave of ${s.idleWarmupSessions} such sessions has been opened and closed, so what a server allocates once is not counted per session`
        : 'RSS at idle is read before any session'),
    metrics: [PER_SESSION, PSS_PER_SESSION, RSS_MB],
    proxyOnly: true,
    sessions: n,
  });
  return [
    bulk('upload', 1),
    bulk('upload', 8),
    bulk('download', 1),
    bulk('download', 8),
    handshake(1),
    handshake(32),
    handshake(1, HANDSHAKE_NAME),
    handshake(32, HANDSHAKE_NAME),
    latency(1),
    latency(16),
    udp(1),
    udp(8),
    ...s.idleStages.map(idle),
    {
      id: 'backpressure',
      group: 'stall',
      title: 'Backpressure: a client that stops reading',
      what: `the client asks the source for ${mb(s.stallBytes)} and then reads nothing: for at least ${s.stallMinHoldMs / 1000} s, and until the source ` +
        `has been unable to send a byte for ${s.stallQuietMs / 1000} s (the path is full and the server has stopped reading) or has sent all ` +
        `${mb(s.stallBytes)} (the server buffered everything), at most ${s.stallMaxHoldMs / 1000} s; then it reads it all (byte count verified). ` +
        'The server\'s RSS is sampled every 20 ms throughout; growth is over its RSS just before the session. ' +
        `The documented bound is ${s.stallBoundMiB} MiB of peak RSS growth for the server process`,
      metrics: [PEAK_GROWTH, PEAK_RSS],
      proxyOnly: true,
    },
  ];
}

/** Whether a workload is run against a server at all (n/a otherwise: "none" has no memory, microsocks no UDP ASSOCIATE). */
export function applies(w: Workload, s: Pick<ServerInfo, 'proxy' | 'udp' | 'groups' | 'handshakesOnly'>): boolean {
  return (s.proxy || !w.proxyOnly) && (s.udp || w.command !== 'udp') && runsIn(w, s);
}

/** Whether a reference server (one limited to some groups) is run for this workload at all. */
export function runsIn(w: Pick<Workload, 'group' | 'command'>, s: Pick<ServerInfo, 'groups' | 'handshakesOnly'>): boolean {
  if (s.groups) return s.groups.includes(w.group);
  return !s.handshakesOnly || w.command === 'handshake';
}

/** One workload run against one server: the numbers and what went wrong. */
export interface RunRecord {
  readonly rep: number;
  readonly server: ServerId;
  readonly workload: string;
  ok: boolean;
  error?: string;
  metrics: Record<string, number>;
  /** Bulk and backpressure: every byte counted on both ends. */
  exact?: boolean;
  errors: number;
  errorKinds: Record<string, number>;
  /** CPU use over the generator's wall time, % of one core. */
  cpu?: { proxy: number | null; generator: number; target: number };
  extra: Record<string, number | string | boolean>;
}

export interface RunContext {
  readonly binary: string;
  readonly settings: Settings;
  readonly affinity: string | null;
  readonly target: Target;
  readonly server: RunningServer;
  readonly rep: number;
}

function connectArgs(ctx: RunContext, targetPort: number): (string | number)[] {
  const { server } = ctx;
  if (!server.info.proxy) return ['--connect', targetPort, '--socks', 0];
  const args: (string | number)[] = ['--connect', server.port, '--dest', targetPort];
  if (server.auth) args.push('--user', server.auth.user, '--pass', server.auth.pass);
  return args;
}

function record(ctx: RunContext, w: Workload): RunRecord {
  return { rep: ctx.rep, server: ctx.server.info.id, workload: w.id, ok: false, metrics: {}, errors: 0, errorKinds: {}, extra: {} };
}

function absorb(rec: RunRecord, result: GenResult): void {
  rec.errors = result.errors;
  rec.errorKinds = result.errorKinds;
  rec.ok = result.ok;
  if (!result.ok) rec.error = `generator reported failure: ${JSON.stringify(result.errorKinds)}`;
}

/** Bulk, handshake and latency: one generator run, with CPU accounting of all three parties. */
export async function runRelay(ctx: RunContext, w: Workload): Promise<RunRecord> {
  const s = ctx.settings;
  const rec = record(ctx, w);
  const ports = ctx.target.ports;
  let args: (string | number)[];
  let seconds: number;
  switch (w.command) {
    case 'upload':
    case 'download':
      seconds = s.bulkSeconds;
      args = ['--streams', w.parallel!, '--seconds', seconds, '--batch', s.batchBytes,
        ...connectArgs(ctx, w.command === 'upload' ? ports.sink : ports.source)];
      break;
    case 'handshake':
      seconds = s.handshakeSeconds;
      args = ['--concurrency', w.parallel!, '--seconds', seconds, '--warmup-ms', s.handshakeWarmupMs,
        ...(ctx.server.info.proxy ? connectArgs(ctx, ports.hangup) : ['--connect', ports.socks, '--dest', 1]),
        ...(w.destName ? ['--dest-name', w.destName] : [])];
      break;
    case 'latency':
      seconds = s.latencySeconds;
      args = ['--conns', w.parallel!, '--seconds', seconds, '--warmup-ms', s.latencyWarmupMs, '--size', s.latencySize,
        ...connectArgs(ctx, ports.echo)];
      break;
    case 'udp':
      seconds = s.udpSeconds;
      args = ['--assocs', w.parallel!, '--seconds', seconds, '--warmup-ms', s.udpWarmupMs, '--window', s.udpWindow, '--size', s.udpSize,
        '--timeout-ms', s.udpTimeoutMs, ...connectArgs(ctx, ports.udp)];
      break;
    default:
      throw new Error(`not a relay workload: ${w.id}`);
  }
  const proxyBefore = cpuSeconds(ctx.server.pids());
  const targetBefore = ctx.target.cpuSeconds();
  const { result, wallSeconds } = await runGenerator(ctx.binary, w.command, args, {
    affinity: ctx.affinity,
    timeoutMs: (seconds + 60) * 1000,
  });
  const pct = (cpu: number) => Math.round((cpu / wallSeconds) * 1000) / 10;
  rec.cpu = {
    proxy: ctx.server.info.proxy ? pct(cpuSeconds(ctx.server.pids()) - proxyBefore) : null,
    generator: pct(result.cpuUser + result.cpuSys),
    target: pct(ctx.target.cpuSeconds() - targetBefore),
  };
  absorb(rec, result);
  const num = (key: string) => Number(result[key]);
  if (w.command === 'upload' || w.command === 'download') {
    rec.exact = result.exact === true;
    rec.extra.bytes = num('bytes');
    rec.extra.seconds = num('seconds');
    if (rec.ok && rec.exact) rec.metrics.mbps = num('mbps');
    else rec.ok = false;
  } else if (w.command === 'udp') {
    if (rec.ok) rec.metrics.dgps = num('rate');
    for (const key of ['sent', 'echoed', 'lost', 'late', 'p50us', 'p99us']) rec.extra[key] = num(key);
    rec.extra.lostPct = num('sent') > 0 ? (100 * num('lost')) / num('sent') : 0;
  } else if (w.command === 'handshake') {
    rec.metrics.rate = num('rate');
    rec.extra.handshakes = num('handshakes');
    rec.extra.p50us = num('p50us');
    rec.extra.p99us = num('p99us');
  } else {
    if (rec.ok) {
      rec.metrics.p50us = num('p50us');
      rec.metrics.p99us = num('p99us');
    }
    rec.extra.rate = num('rate');
    rec.extra.p999us = num('p999us');
    rec.extra.maxus = num('maxus');
  }
  return rec;
}

/**
 * One run of the generator's idle ramp: `onStage` measures each stage while
 * its sessions are held open; at the end the target hangs up first, so the
 * sessions close from the far end (bench/README.md, "Teardown").
 */
async function idleRamp(ctx: RunContext, counts: readonly number[], onStage: (event: Record<string, unknown>) => Promise<void>): Promise<GenResult> {
  const { result } = await runGenerator(ctx.binary, 'idle', ['--stages', counts.join(','), '--concurrency', 64, ...connectArgs(ctx, ctx.target.ports.echo)], {
    affinity: ctx.affinity,
    timeoutMs: 300_000,
    onEvent: async (event) => {
      if (event.event === 'draining') await ctx.target.hangup();
      else await onStage(event);
      return 'next\n';
    },
  });
  return result;
}

/** The idle ramp on a fresh server: one record per stage. */
export async function runIdle(ctx: RunContext, stages: readonly Workload[]): Promise<RunRecord[]> {
  const s = ctx.settings;
  await sleep(s.idleSettleMs);
  const rssFresh = rssKb(ctx.server.pids());
  const warmup = s.idleWarmupSessions > 0 ? await idleRamp(ctx, [s.idleWarmupSessions], async () => {}) : null;
  if (warmup) await sleep(s.idleSettleMs);
  const rss0 = rssKb(ctx.server.pids());
  const pss0 = pssKb(ctx.server.pids());
  const counts = stages.map((w) => w.sessions!);
  const seen: Array<{ open: number; target: number; rss: number; pss: number; seconds: number; errors: number }> = [];
  const result = await idleRamp(ctx, counts, async (event) => {
    await sleep(s.idleSettleMs);
    const pids = ctx.server.pids();
    seen.push({
      open: Number(event.open),
      target: Number(event.target),
      rss: rssKb(pids),
      pss: pssKb(pids),
      seconds: Number(event.seconds),
      errors: Number(event.errors),
    });
  });
  return stages.map((w, i) => {
    const rec = record(ctx, w);
    absorb(rec, result);
    const stage = seen[i];
    rec.extra.rssIdleKiB = rss0;
    rec.extra.rssFreshKiB = rssFresh;
    if (warmup) rec.extra.warmupSessions = s.idleWarmupSessions;
    if (warmup && !warmup.ok) {
      rec.ok = false;
      rec.error = `the warm-up wave of ${s.idleWarmupSessions} sessions failed: ${JSON.stringify(warmup.errorKinds)}`;
      return rec;
    }
    if (!stage) {
      rec.ok = false;
      rec.error ??= 'the ramp stopped before this stage';
      return rec;
    }
    rec.extra.open = stage.open;
    rec.extra.openSeconds = stage.seconds;
    rec.extra.rssKiB = stage.rss;
    if (stage.open !== stage.target) {
      rec.ok = false;
      rec.error = `only ${stage.open} of ${stage.target} sessions opened: ${JSON.stringify(result.errorKinds)}`;
      return rec;
    }
    rec.metrics.kibPerSession = (stage.rss - rss0) / stage.open;
    const previous = i > 0 ? seen[i - 1] : undefined;
    if (previous && stage.open > previous.open) rec.extra.marginalKiB = (stage.rss - previous.rss) / (stage.open - previous.open);
    rec.metrics.pssKibPerSession = (stage.pss - pss0) / stage.open;
    rec.metrics.rssMiB = stage.rss / 1024;
    rec.ok = true; // the stage itself is complete even if a later one failed
    return rec;
  });
}

/**
 * A client that stops reading while the source sends: peak RSS of the server.
 * The client holds until the source has stalled (no byte sent for
 * stallQuietMs: the server stopped reading) or has sent everything (the
 * server took it all in), at least stallMinHoldMs and at most stallMaxHoldMs,
 * so a server without backpressure shows its growth in full.
 */
export async function runStall(ctx: RunContext, w: Workload): Promise<RunRecord> {
  const s = ctx.settings;
  const rec = record(ctx, w);
  await sleep(Math.min(300, s.idleSettleMs));
  const rss0 = rssKb(ctx.server.pids());
  const sent0 = await ctx.target.sent();
  let peak = rss0;
  let atHoldEnd = 0;
  let peakWhileHolding = rss0;
  let holding = false;
  const sampler = setInterval(() => {
    const rss = rssKb(ctx.server.pids());
    peak = Math.max(peak, rss);
    if (holding) peakWhileHolding = Math.max(peakWhileHolding, rss);
  }, 20);
  let holdEnd = 'not reached';
  let holdError: string | null = null;
  let sentAtHoldEnd = NaN;
  try {
    const { result } = await runGenerator(ctx.binary, 'stall', ['--bytes', s.stallBytes, ...connectArgs(ctx, ctx.target.ports.source)], {
      affinity: ctx.affinity,
      timeoutMs: s.stallMaxHoldMs + 180_000,
      onEvent: async (event) => {
        if (event.event !== 'holding') return;
        holding = true;
        const t0 = Date.now();
        let last = -1;
        let lastChange = t0;
        for (;;) {
          await sleep(Math.min(100, s.stallQuietMs / 4));
          let sent: number;
          try {
            sent = (await ctx.target.sent()) - sent0;
          } catch (err) { // never leave the client holding: it reads, and the run fails below
            holdError = (err as Error).message;
            break;
          }
          const now = Date.now();
          if (sent !== last) {
            last = sent;
            lastChange = now;
          }
          sentAtHoldEnd = sent;
          if (now - t0 < s.stallMinHoldMs) continue;
          if (sent >= s.stallBytes) { holdEnd = 'all sent'; break; }
          if (now - lastChange >= s.stallQuietMs) { holdEnd = 'sender blocked'; break; }
          if (now - t0 >= s.stallMaxHoldMs) { holdEnd = 'longest hold'; break; }
        }
        atHoldEnd = rssKb(ctx.server.pids());
        peakWhileHolding = Math.max(peakWhileHolding, atHoldEnd);
        holding = false;
        return 'next\n'; // the client starts reading
      },
    });
    absorb(rec, result);
    rec.exact = result.exact === true;
    rec.extra.readMBps = Number(result.mbps);
    rec.extra.readSeconds = Number(result.readSeconds);
    rec.extra.holdSeconds = Number(result.holdSeconds);
  } finally {
    clearInterval(sampler);
  }
  peak = Math.max(peak, rssKb(ctx.server.pids()));
  rec.extra.rssBeforeKiB = rss0;
  rec.extra.rssAtHoldEndKiB = atHoldEnd;
  rec.extra.holdGrowthMiB = (atHoldEnd - rss0) / 1024;
  rec.extra.holdPeakGrowthMiB = (peakWhileHolding - rss0) / 1024;
  rec.extra.holdEnd = holdEnd;
  rec.extra.sentAtHoldEndMiB = sentAtHoldEnd / 2 ** 20;
  if (holdError !== null) {
    rec.ok = false;
    rec.error = `could not follow the source while holding: ${holdError}`;
  }
  if (rec.ok && rec.exact) {
    rec.metrics.peakGrowthMiB = (peak - rss0) / 1024;
    rec.metrics.peakRssMiB = peak / 1024;
  } else {
    rec.ok = false;
  }
  return rec;
}
