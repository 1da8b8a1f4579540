/**
 * Turns the run records into bench/RESULTS.md: medians, spreads, ratios,
 * the load generator's headroom, and the machine.
 */
import type { LogSummary, ServerId, ServerInfo } from './servers.js';
import type { MetricDef, RunRecord, Settings, Workload } from './workloads.js';

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
  readonly pinning: string;
  readonly openFiles: string;
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

export function renderMarkdown(results: Results): string {
  const { machine, settings, servers, workloads } = results;
  const present = (id: ServerId) => servers.some((s) => s.id === id);
  const out: string[] = [];
  out.push('# socksgate benchmark results', '');
  out.push(`Written by \`node dist/bench/run.js${settings.quick ? ' --quick' : ''}\` on ${machine.date}; ` +
    `${settings.reps} repetition${settings.reps > 1 ? 's' : ''}, servers interleaved within each (a fresh instance of every server per ` +
    `repetition and workload group); the whole run took ${Math.round(results.elapsedSeconds)} s. ` +
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
    Dante: machine.dante,
    microsocks: machine.microsocks,
    'load generator': `bench/sockbench.c, ${machine.gcc} -O2`,
    'CPU placement': machine.pinning,
  })) out.push(`| ${k} | ${v} |`);
  out.push('');

  out.push('## Servers', '');
  for (const s of servers) out.push(`- **${s.label}**: ${s.describe}.`);
  out.push('- Rules: socksgate has no access rules yet, so the production configuration has none; once rules exist it should carry 50 of them ' +
    '(the issue asks for that) and this benchmark should add them to `socksgate-prod` in bench/lib/servers.ts.', '');

  // Headline
  out.push('## Summary', '');
  out.push('Medians. "sg ÷ X" divides socksgate\'s median by X\'s: above 1 means socksgate has the larger number ' +
    '(better for MB/s and handshakes/s, worse for latency and memory).', '');
  const cols = servers.map((s) => s.label);
  const head = ['workload', 'metric', ...cols];
  if (present('dante')) head.push('sg ÷ Dante');
  if (present('microsocks')) head.push('sg ÷ microsocks');
  if (present('socksgate-prod')) head.push('prod ÷ minimal');
  if (present('none')) head.push('sg ÷ no proxy');
  out.push(`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`);
  for (const w of workloads) {
    for (const m of w.metrics) {
      if (w.group === 'idle' && m.key === 'rssMiB') continue;
      const row = [w.title, `${m.label} (${m.better} is better)`];
      for (const s of servers) {
        const st = metricStat(results, s.id, w.id, m.key);
        row.push(st ? fmt(st.median, m.digits) : w.proxyOnly && !s.proxy ? 'n/a' : '**missing**');
      }
      const sg = metricStat(results, SG, w.id, m.key);
      if (present('dante')) row.push(ratio(sg, metricStat(results, 'dante', w.id, m.key)));
      if (present('microsocks')) row.push(ratio(sg, metricStat(results, 'microsocks', w.id, m.key)));
      if (present('socksgate-prod')) row.push(ratio(metricStat(results, 'socksgate-prod', w.id, m.key), sg));
      if (present('none')) row.push(w.proxyOnly ? 'n/a' : ratio(sg, metricStat(results, 'none', w.id, m.key)));
      out.push(`| ${row.join(' | ')} |`);
    }
  }
  out.push('');

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
        if (w.proxyOnly && !s.proxy) continue;
        const st = metricStat(results, s.id, w.id, m.key);
        const runs = results.runs.filter((r) => r.server === s.id && r.workload === w.id);
        out.push(`| ${s.label} | ${st ? fmt(st.median, m.digits) : '—'} | ${st ? `${fmt(st.min, m.digits)}–${fmt(st.max, m.digits)}` : '—'} | ` +
          `${st?.n ?? 0}/${runs.length} | ${s.id === SG ? '1.00×' : ratio(sg, st)} | ${notes(w, m, runs)} |`);
      }
      out.push('');
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
    if (w.group === 'idle') {
      parts.push(`idle RSS ${fmt(median(runs.map((r) => Number(r.extra.rssIdleKiB) / 1024)), 1)} MiB, opened in ${fmt(median(runs.map((r) => Number(r.extra.openSeconds))), 2)} s`);
      const marginal = median(runs.map((r) => Number(r.extra.marginalKiB ?? NaN)));
      if (Number.isFinite(marginal)) parts.push(`marginal ${fmt(marginal, 1)} KiB/session over the previous count`);
    }
    if (w.id === 'backpressure') {
      parts.push(`growth at the end of the stall ${fmt(median(runs.map((r) => Number(r.extra.holdGrowthMiB))), 1)} MiB; then read at ${fmt(median(runs.map((r) => Number(r.extra.readMBps))), 0)} MB/s`);
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
  for (const w of workloads.filter((x) => x.group === 'relay')) {
    const m = w.metrics[0]!;
    const none = metricStat(results, 'none', w.id, m.key);
    let best: { label: string; st: Stat } | null = null;
    for (const s of servers.filter((x) => x.proxy)) {
      const st = metricStat(results, s.id, w.id, m.key);
      if (!st) continue;
      if (!best || (m.better === 'higher' ? st.median > best.st.median : st.median < best.st.median)) best = { label: s.label, st };
    }
    const head = none && best ? (m.better === 'higher' ? none.median / best.st.median : best.st.median / none.median) : NaN;
    const cpuOf = (id: ServerId, pick: (c: NonNullable<RunRecord['cpu']>) => number | null) =>
      median(results.runs.filter((r) => r.server === id && r.workload === w.id && r.cpu).map((r) => pick(r.cpu!) ?? NaN));
    const proxied = servers.filter((x) => x.proxy);
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
      const parts: string[] = [];
      if (sessions > 0) parts.push(`${sessions} sessions: ${Object.entries(reasons).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      const w = Object.entries(warnings);
      if (w.length > 0) parts.push(`warnings: ${w.slice(0, 8).map(([k, v]) => `"${k}" ×${v}`).join('; ')}${w.length > 8 ? ` (+${w.length - 8} kinds)` : ''}`);
      out.push(`| ${label} | ${group} | ${fmt(median(xs.map((i) => i.rssStartKiB / 1024)), 1)} | ${fmt(median(xs.map((i) => i.rssEndKiB / 1024)), 1)} | ` +
        `${fmt(median(xs.map((i) => i.processesEnd)), 0)} | ${parts.join('; ') || '—'} |`);
    }
  }
  out.push('');
  return out;
}
