/**
 * Turns the run records into bench/RESULTS.md: medians, spreads, ratios,
 * the load generator's headroom, and the machine.
 */
import { PRODUCTION_RULE_COUNT, type LogSummary, type ServerId, type ServerInfo } from './servers.js';
import { type MetricDef, type RunRecord, type Settings, type Workload, HANDSHAKE_NAME, applies, describeReps, runsIn } from './workloads.js';

export interface InstanceRecord {
  readonly rep: number;
  readonly server: ServerId;
  readonly group: string;
  readonly startMs: number;
  readonly rssStartKiB: number;
  readonly rssEndKiB: number;
  readonly processesEnd: number;
  readonly log: LogSummary | null;
}

export interface Machine {
  readonly date: string;
  readonly nproc: number;
  readonly cpu: string;
  readonly kernel: string;
  readonly memory: string;
  readonly node: string;
  readonly gcc: string;
  readonly dante: string;
  readonly microsocks: string;
  readonly socksgate: string;
  /** How socksgate was started (runs before 2026-11-24's twenty-first session have none: \`node dist/src/cli.js\`). */
  readonly started?: string;
  /** Whether build/socksgate_splice.node was there, and which relay engines the variants asked for. */
  readonly relay: string;
  /** Whether the production configuration carried rules. */
  readonly rules: string;
  readonly pinning: string;
  readonly openFiles: string;
  /** What getaddrinfo gave for the by-name handshakes' name, in its order (runs before 2026-11-24's twentieth session have none). */
  readonly localhost?: string;
}

export interface Results {
  readonly machine: Machine;
  readonly settings: Settings;
  readonly servers: readonly ServerInfo[];
  readonly workloads: readonly Workload[];
  readonly runs: readonly RunRecord[];
  readonly instances: readonly InstanceRecord[];
  readonly failures: readonly string[];
  readonly elapsedSeconds: number;
  /**
   * Each workload group ran for every server before the next group, the
   * servers' order rotated each repetition (absent in runs before that:
   * each server then ran all its groups in turn, in a fixed order).
   */
  readonly rotated?: boolean;
}

export interface Stat {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
}

export function stat(values: readonly number[]): Stat | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

export function metricStat(results: Pick<Results, 'runs'>, server: ServerId, workload: string, key: string): Stat | null {
  return stat(results.runs.filter((r) => r.server === server && r.workload === workload && r.ok).map((r) => r.metrics[key] ?? NaN));
}

function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return '—';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function ratio(a: Stat | null, b: Stat | null): string {
  if (!a || !b || b.median === 0) return '—';
  return `${(a.median / b.median).toFixed(2)}×`;
}

function median(values: readonly number[]): number {
  return stat(values)?.median ?? NaN;
}

const SG: ServerId = 'socksgate';

function serverOf(results: Pick<Results, 'servers'>, id: ServerId): ServerInfo | undefined {
  return results.servers.find((s) => s.id === id);
}

/** a ÷ b for one workload and metric; "n/a" when either server does not take part in the workload. */
function ratioOf(results: Results, w: Workload, m: MetricDef, a: ServerId, b: ServerId): string {
  const sa = serverOf(results, a);
  const sb = serverOf(results, b);
  if (!sa || !sb) return '—';
  if (!applies(w, sa) || !applies(w, sb)) return 'n/a';
  return ratio(metricStat(results, a, w.id, m.key), metricStat(results, b, w.id, m.key));
}

const PEERS: readonly ServerId[] = ['dante', 'microsocks'];

/** a ÷ the best of Dante and microsocks (by the metric's own direction) for one workload; "n/a" when a does not take part. */
function ratioToBestPeer(results: Results, w: Workload, m: MetricDef, a: ServerId): string {
  const sa = serverOf(results, a);
  if (!sa) return '—';
  if (!applies(w, sa)) return 'n/a';
  const peers = PEERS.map((id) => serverOf(results, id)).filter((p): p is ServerInfo => p !== undefined && applies(w, p));
  const stats = peers.map((p) => metricStat(results, p.id, w.id, m.key)).filter((x): x is Stat => x !== null);
  if (stats.length === 0) return '—';
  const best = stats.reduce((b, x) => ((m.better === 'higher' ? x.median > b.median : x.median < b.median) ? x : b));
  return ratio(metricStat(results, a, w.id, m.key), best);
}

/** Why a server has no number for a workload it is not run against. */
function notApplicable(w: Workload, s: ServerInfo): string {
  if (w.proxyOnly && !s.proxy) return 'n/a';
  if (!runsIn(w, s)) return '—';
  return w.command === 'udp' ? 'n/a (no UDP ASSOCIATE)' : 'n/a';
}

/**
 * The backpressure bound as pass/fail lines: every run's peak RSS growth
 * (not the median) must be within it.
 */
function boundLines(results: Results): string[] {
  const w = results.workloads.find((x) => x.id === 'backpressure');
  if (!w) return [];
  const bound = results.settings.stallBoundMiB;
  const lines: string[] = [];
  for (const s of results.servers.filter((x) => applies(w, x))) {
    const runs = results.runs.filter((r) => r.server === s.id && r.workload === w.id);
    const growth = runs.filter((r) => r.ok).map((r) => r.metrics.peakGrowthMiB ?? NaN).filter(Number.isFinite);
    const failed = runs.length - growth.length;
    const max = growth.length > 0 ? Math.max(...growth) : NaN;
    const ours = s.id.startsWith('socksgate'); // the bound is socksgate's; the others are shown against it for comparison
    const verdict = growth.length === 0 ? (ours ? '**NO RESULT**' : 'no result')
      : max > bound ? (ours ? '**FAIL**' : 'over the bound')
      : failed > 0 ? (ours ? '**INCOMPLETE**' : 'incomplete')
      : ours ? '**PASS**' : 'within the bound (for comparison)';
    lines.push(`- ${s.label}: ${verdict}: peak growth at most ${fmt(max, 1)} MiB over ${growth.length} run${growth.length === 1 ? '' : 's'}` +
      `${failed > 0 ? `, ${failed} run${failed === 1 ? '' : 's'} without a result` : ''} (bound ${bound} MiB)`);
  }
  return lines;
}

export function renderMarkdown(results: Results): string {
  const { machine, settings, servers, workloads } = results;
  const present = (id: ServerId) => servers.some((s) => s.id === id);
  const out: string[] = [];
  out.push('# socksgate benchmark results', '');
  out.push(`Written by \`node dist/bench/run.js${settings.quick ? ' --quick' : ''}\` on ${machine.date}; ` +
    `${describeReps(settings)}, servers interleaved within each (a fresh instance of every server per ` +
    `repetition and workload group${results.rotated ? '; each group runs every server in turn, the order rotated by one each repetition' : ''}); ` +
    `the whole run took ${Math.round(results.elapsedSeconds)} s. ` +
    'Medians over the repetitions, with the spread (min–max). See bench/README.md for the method.', '');
  if (settings.quick) out.push('**Quick mode: tiny sizes and one repetition. These numbers are a smoke test, not a measurement.**', '');

  out.push('## Machine', '');
  out.push('| | |', '| --- | --- |');
  for (const [k, v] of Object.entries({
    date: machine.date,
    CPUs: `${machine.nproc} × ${machine.cpu}`,
    kernel: machine.kernel,
    memory: machine.memory,
    'open files limit': machine.openFiles,
    node: machine.node,
    socksgate: machine.socksgate,
    'socksgate started as': machine.started ?? '`node dist/src/cli.js` (libuv\'s 4 threads)',
    Dante: machine.dante,
    microsocks: machine.microsocks,
    'relay engine': machine.relay,
    'production rules': machine.rules,
    'load generator': `bench/sockbench.c, ${machine.gcc} -O2`,
    'CPU placement': machine.pinning,
    ...(machine.localhost === undefined ? {} : { [`${HANDSHAKE_NAME} resolves to`]: machine.localhost }),
  })) out.push(`| ${k} | ${v} |`);
  out.push('');

  out.push('## Servers', '');
  for (const s of servers) out.push(`- **${s.label}**: ${s.describe}.`);
  if (present('socksgate-prod')) {
    const rulesSeen = results.instances.filter((i) => i.server === 'socksgate-prod').flatMap((i) => Object.entries(i.log?.rules ?? {}));
    out.push(`- Rules: the production configuration carried ${PRODUCTION_RULE_COUNT} rules (\`productionRules()\` in bench/lib/servers.ts): ` +
      `${PRODUCTION_RULE_COUNT - 1} deny rules that never match this traffic, then \`allow-loopback-clients\` (allow from 127.0.0.0/8).` +
      (rulesSeen.length > 0 ? ` The access log named the deciding rule: ${summariseCounts(rulesSeen)}.` : ''));
  }
  out.push('');

  // Headline
  out.push('## Summary', '');
  out.push('Medians. "sg ÷ X" divides socksgate\'s median by X\'s: above 1 means socksgate has the larger number ' +
    '(better for MB/s, handshakes/s and datagrams/s, worse for latency and memory). "sg" is the minimal configuration with the splice relay; ' +
    '"stream ÷ splice" divides socksgate (stream relay)\'s median by socksgate\'s, "prod ÷ minimal" socksgate (production)\'s by socksgate\'s, ' +
    '"sg userpass ÷ minimal" socksgate (userpass)\'s by socksgate\'s and "microsocks userpass ÷ none" microsocks with RFC 1929 authentication by microsocks without ' +
    '(handshakes only: the price of the protocol\'s extra round trip; — elsewhere), "prod ÷ userpass" socksgate (production)\'s by socksgate (userpass)\'s ' +
    '(handshakes only: what the 50 rules and the access log cost on top of it). ' +
    (present('socksgate-poll') ? '"busy poll ÷ minimal" divides socksgate (busy poll)\'s median by socksgate\'s (handshakes and latency only). ' : '') +
    '"÷ best peer" divides by the better of Dante and microsocks on that line. ' +
    'n/a: the server does not take part in that workload (no memory for "no proxy", no UDP ASSOCIATE in microsocks).', '');
  const cols = servers.map((s) => s.label);
  const head = ['workload', 'metric', ...cols];
  const ratios: Array<[string, ServerId, ServerId]> = [];
  if (present(SG) && present('dante')) ratios.push(['sg ÷ Dante', SG, 'dante']);
  if (present(SG) && present('microsocks')) ratios.push(['sg ÷ microsocks', SG, 'microsocks']);
  if (present(SG) && present('socksgate-stream')) ratios.push(['stream ÷ splice', 'socksgate-stream', SG]);
  if (present(SG) && present('socksgate-prod')) ratios.push(['prod ÷ minimal', 'socksgate-prod', SG]);
  if (present(SG) && present('socksgate-auth')) ratios.push(['sg userpass ÷ minimal', 'socksgate-auth', SG]);
  if (present('microsocks') && present('microsocks-auth')) ratios.push(['microsocks userpass ÷ none', 'microsocks-auth', 'microsocks']);
  if (present('socksgate-auth') && present('socksgate-prod')) ratios.push(['prod ÷ userpass', 'socksgate-prod', 'socksgate-auth']);
  if (present(SG) && present('socksgate-poll')) ratios.push(['busy poll ÷ minimal', 'socksgate-poll', SG]);
  if (present(SG) && present('none')) ratios.push(['sg ÷ no proxy', SG, 'none']);
  const toBestPeer: Array<[string, ServerId]> = [];
  if (PEERS.some(present)) {
    if (present(SG)) toBestPeer.push(['sg ÷ best peer', SG]);
    if (present('socksgate-poll')) toBestPeer.push(['busy poll ÷ best peer', 'socksgate-poll']);
  }
  head.push(...ratios.map(([label]) => label), ...toBestPeer.map(([label]) => label));
  out.push(`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`);
  for (const w of workloads) {
    for (const m of w.metrics) {
      if (w.group === 'idle' && m.key === 'rssMiB') continue;
      const row = [w.title, `${m.label} (${m.better} is better)`];
      for (const s of servers) {
        const st = metricStat(results, s.id, w.id, m.key);
        row.push(st ? fmt(st.median, m.digits) : applies(w, s) ? '**missing**' : notApplicable(w, s));
      }
      for (const [, a, b] of ratios) row.push(ratioOf(results, w, m, a, b));
      for (const [, a] of toBestPeer) row.push(ratioToBestPeer(results, w, m, a));
      out.push(`| ${row.join(' | ')} |`);
    }
  }
  out.push('');
  const bound = boundLines(results);
  if (bound.length > 0) {
    out.push(`Backpressure bound: a client that stops reading may grow the server's RSS by at most ${settings.stallBoundMiB} MiB ` +
      '(peak over the whole session, every run; see the backpressure section):', '', ...bound, '');
  }

  if (results.failures.length > 0) {
    out.push('## Failures', '');
    for (const f of results.failures) out.push(`- ${f}`);
    out.push('');
  }

  out.push('## Workloads', '');
  for (const w of workloads) {
    out.push(`### ${w.title}`, '', `${w.what}.`, '');
    for (const m of w.metrics) {
      out.push(`**${m.label}** (${m.better} is better)`, '');
      out.push('| server | median | min–max | runs | socksgate ÷ server | notes |', '| --- | ---: | ---: | ---: | ---: | --- |');
      const sg = metricStat(results, SG, w.id, m.key);
      for (const s of servers) {
        if ((w.proxyOnly && !s.proxy) || !runsIn(w, s)) continue;
        if (!applies(w, s)) {
          out.push(`| ${s.label} | ${notApplicable(w, s)} | | | | |`);
          continue;
        }
        const st = metricStat(results, s.id, w.id, m.key);
        const runs = results.runs.filter((r) => r.server === s.id && r.workload === w.id);
        out.push(`| ${s.label} | ${st ? fmt(st.median, m.digits) : '—'} | ${st ? `${fmt(st.min, m.digits)}–${fmt(st.max, m.digits)}` : '—'} | ` +
          `${st?.n ?? 0}/${runs.length} | ${s.id === SG ? '1.00×' : ratio(sg, st)} | ${notes(w, m, runs)} |`);
      }
      out.push('');
    }
    if (w.id === 'backpressure') {
      out.push(`**Bound** (documented in bench/README.md and the project README): the server process's RSS may grow by at most ` +
        `${settings.stallBoundMiB} MiB over its RSS just before the session, at any moment of the session (the stall and the catch-up read ` +
        'that follows), in every run.' +
        (settings.quick ? ' In quick mode the source sends only ' + `${(settings.stallBytes / 2 ** 20).toFixed(0)} MiB, so this shows only that the check runs.` : ''), '');
      out.push(...bound, '');
    }
  }

  out.push(...headroom(results));
  out.push(...memoryNotes(results));
  return out.join('\n');
}

function notes(w: Workload, m: MetricDef, runs: readonly RunRecord[]): string {
  const parts: string[] = [];
  const failed = runs.filter((r) => !r.ok);
  if (failed.length > 0) parts.push(`**${failed.length} failed**: ${[...new Set(failed.map((r) => r.error ?? 'failed'))].join('; ').slice(0, 300)}`);
  const errors = runs.reduce((sum, r) => sum + r.errors, 0);
  if (errors > 0 && failed.length === 0) {
    const kinds: Record<string, number> = {};
    for (const r of runs) for (const [k, v] of Object.entries(r.errorKinds)) kinds[k] = (kinds[k] ?? 0) + v;
    parts.push(`${errors} client errors (${Object.entries(kinds).map(([k, v]) => `${k} ×${v}`).join(', ')})`);
  }
  if (w.command === 'upload' || w.command === 'download' || w.id === 'backpressure') {
    const exact = runs.filter((r) => r.exact).length;
    if (m === w.metrics[0]) parts.push(`byte-exact ${exact}/${runs.length}`);
  }
  if (m === w.metrics[0]) {
    const cpu = runs.filter((r) => r.cpu);
    if (cpu.length > 0) {
      const proxy = median(cpu.map((r) => r.cpu!.proxy ?? NaN));
      parts.push(`CPU${Number.isFinite(proxy) ? ` server ${proxy.toFixed(0)}%,` : ''} generator ${median(cpu.map((r) => r.cpu!.generator)).toFixed(0)}%, target ${median(cpu.map((r) => r.cpu!.target)).toFixed(0)}%`);
    }
    if (w.command === 'handshake') {
      const p50 = median(runs.map((r) => Number(r.extra.p50us)));
      const p99 = median(runs.map((r) => Number(r.extra.p99us)));
      parts.push(`handshake time p50 ${fmt(p50, 0)} µs, p99 ${fmt(p99, 0)} µs`);
    }
    if (w.command === 'latency') {
      parts.push(`${fmt(median(runs.map((r) => Number(r.extra.rate))), 0)} round trips/s, p99.9 ${fmt(median(runs.map((r) => Number(r.extra.p999us))), 0)} µs, max ${fmt(median(runs.map((r) => Number(r.extra.maxus))), 0)} µs`);
    }
    if (w.command === 'udp') {
      const sum = (key: string) => runs.reduce((n, r) => n + (Number.isFinite(Number(r.extra[key])) ? Number(r.extra[key]) : 0), 0);
      const sent = sum('sent');
      const lost = sum('lost');
      parts.push(`lost ${fmt(lost, 0)} of ${fmt(sent, 0)} sent (${sent > 0 ? fmt((100 * lost) / sent, 2) : '—'}%) over all runs` +
        `${sum('late') > 0 ? `, ${fmt(sum('late'), 0)} echoes came after their timeout` : ''}`);
      parts.push(`round trip p50 ${fmt(median(runs.map((r) => Number(r.extra.p50us))), 0)} µs, p99 ${fmt(median(runs.map((r) => Number(r.extra.p99us))), 0)} µs`);
    }
    if (w.group === 'idle') {
      parts.push(`idle RSS ${fmt(median(runs.map((r) => Number(r.extra.rssIdleKiB) / 1024)), 1)} MiB, opened in ${fmt(median(runs.map((r) => Number(r.extra.openSeconds))), 2)} s`);
      const marginal = median(runs.map((r) => Number(r.extra.marginalKiB ?? NaN)));
      if (Number.isFinite(marginal)) parts.push(`marginal ${fmt(marginal, 1)} KiB/session over the previous count`);
    }
    if (w.id === 'backpressure') {
      const ends: Record<string, number> = {};
      for (const r of runs) ends[String(r.extra.holdEnd ?? '?')] = (ends[String(r.extra.holdEnd ?? '?')] ?? 0) + 1;
      parts.push(`read nothing for ${fmt(median(runs.map((r) => Number(r.extra.holdSeconds))), 1)} s (ended by: ${Object.entries(ends).map(([k, v]) => `${k} ×${v}`).join(', ')}); ` +
        `the source had sent ${fmt(median(runs.map((r) => Number(r.extra.sentAtHoldEndMiB))), 1)} MiB by then`);
      parts.push(`growth while stalled: peak ${fmt(median(runs.map((r) => Number(r.extra.holdPeakGrowthMiB))), 1)} MiB, ${fmt(median(runs.map((r) => Number(r.extra.holdGrowthMiB))), 1)} MiB at the end; then read at ${fmt(median(runs.map((r) => Number(r.extra.readMBps))), 0)} MB/s`);
    }
  }
  return parts.join('; ');
}

function headroom(results: Results): string[] {
  const out: string[] = [];
  const { servers, workloads } = results;
  if (!servers.some((s) => s.id === 'none')) return out;
  out.push('## Is the load generator the bottleneck?', '');
  out.push('For each workload: the "no proxy" median against the best proxy\'s (how much faster the generator and target are on their own; ' +
    'the issue asks for at least 2×), and the median CPU use during the proxied runs, in % of one core (utime+stime from /proc and getrusage ' +
    'over the generator\'s wall time, which includes connection set-up).', '');
  out.push('| workload | no proxy | best proxy | headroom | generator CPU (no proxy) | generator CPU (proxied, max over servers) | target CPU (proxied, max) | server CPU (per server) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const w of workloads.filter((x) => x.command !== undefined)) { // the timed workloads
    const m = w.metrics[0]!;
    const none = metricStat(results, 'none', w.id, m.key);
    let best: { label: string; st: Stat } | null = null;
    for (const s of servers.filter((x) => x.proxy && applies(w, x))) {
      const st = metricStat(results, s.id, w.id, m.key);
      if (!st) continue;
      if (!best || (m.better === 'higher' ? st.median > best.st.median : st.median < best.st.median)) best = { label: s.label, st };
    }
    const head = none && best ? (m.better === 'higher' ? none.median / best.st.median : best.st.median / none.median) : NaN;
    const cpuOf = (id: ServerId, pick: (c: NonNullable<RunRecord['cpu']>) => number | null) =>
      median(results.runs.filter((r) => r.server === id && r.workload === w.id && r.cpu).map((r) => pick(r.cpu!) ?? NaN));
    const proxied = servers.filter((x) => x.proxy && applies(w, x));
    const genMax = Math.max(...proxied.map((s) => cpuOf(s.id, (c) => c.generator)).filter(Number.isFinite));
    const tgtMax = Math.max(...proxied.map((s) => cpuOf(s.id, (c) => c.target)).filter(Number.isFinite));
    const per = proxied.map((s) => `${s.label} ${fmt(cpuOf(s.id, (c) => c.proxy), 0)}%`).join(', ');
    out.push(`| ${w.title} (${m.label}) | ${none ? fmt(none.median, m.digits) : '—'} | ${best ? `${fmt(best.st.median, m.digits)} (${best.label})` : '—'} | ` +
      `${Number.isFinite(head) ? `${head.toFixed(2)}×` : '—'} | ${fmt(cpuOf('none', (c) => c.generator), 0)}% | ${fmt(genMax, 0)}% | ${fmt(tgtMax, 0)}% | ${per} |`);
  }
  out.push('');
  return out;
}

function memoryNotes(results: Results): string[] {
  const out: string[] = [];
  const byServer = new Map<ServerId, InstanceRecord[]>();
  for (const i of results.instances) byServer.set(i.server, [...(byServer.get(i.server) ?? []), i]);
  if (byServer.size === 0) return out;
  out.push('## Server instances', '');
  out.push('RSS of each server instance when it had just started and just before it was stopped (after its workloads), medians over ' +
    'repetitions; and what its own log said (socksgate: access-log lines by close reason; warnings and errors of any server).', '');
  out.push('| server | group | RSS at start MiB | RSS at end MiB | processes at end | log |', '| --- | --- | ---: | ---: | ---: | --- |');
  for (const [server, list] of byServer) {
    const label = results.servers.find((s) => s.id === server)?.label ?? server;
    for (const group of [...new Set(list.map((i) => i.group))]) {
      const xs = list.filter((i) => i.group === group);
      const reasons: Record<string, number> = {};
      const warnings: Record<string, number> = {};
      let sessions = 0;
      for (const i of xs) {
        if (!i.log) continue;
        sessions += i.log.sessions;
        for (const [k, v] of Object.entries(i.log.reasons)) reasons[k] = (reasons[k] ?? 0) + v;
        for (const [k, v] of Object.entries(i.log.warnings)) warnings[k] = (warnings[k] ?? 0) + v;
      }
      const rules = xs.flatMap((i) => Object.entries(i.log?.rules ?? {}));
      const parts: string[] = [];
      if (sessions > 0) parts.push(`${sessions} sessions: ${Object.entries(reasons).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      if (rules.length > 0) parts.push(`deciding rule: ${summariseCounts(rules)}`);
      const engines = [...new Set(xs.map((i) => i.log?.engine).filter((e): e is string => e !== undefined))];
      if (engines.length > 0) parts.push(`started with the ${engines.join('/')} relay`);
      const relays = xs.flatMap((i) => Object.entries(i.log?.relays ?? {}));
      if (relays.length > 0) parts.push(`sessions by relay engine: ${summariseCounts(relays)}`);
      const w = Object.entries(warnings);
      if (w.length > 0) parts.push(`warnings: ${w.slice(0, 8).map(([k, v]) => `"${k}" ×${v}`).join('; ')}${w.length > 8 ? ` (+${w.length - 8} kinds)` : ''}`);
      out.push(`| ${label} | ${group} | ${fmt(median(xs.map((i) => i.rssStartKiB / 1024)), 1)} | ${fmt(median(xs.map((i) => i.rssEndKiB / 1024)), 1)} | ` +
        `${fmt(median(xs.map((i) => i.processesEnd)), 0)} | ${parts.join('; ') || '—'} |`);
    }
  }
  out.push('');
  return out;
}

/** `[["a", 2], ["b", 1], ["a", 3]]` → "a ×5, b ×1". */
function summariseCounts(entries: ReadonlyArray<readonly [string, number]>): string {
  const total = new Map<string, number>();
  for (const [k, v] of entries) total.set(k, (total.get(k) ?? 0) + v);
  return [...total].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ×${v}`).join(', ');
}
