/**
 * The benchmark driver: `node dist/bench/run.js [--quick] [--reps N]
 * [--only WORKLOADS] [--servers SERVERS] [--out FILE] [--json FILE] [--no-pin]`.
 *
 * Compiles the C load generator (bench/sockbench.c), then for each repetition
 * runs each workload group (bulk, handshakes, latency, UDP, idle memory,
 * backpressure) against every server in turn (socksgate with the splice
 * relay, with the stream relay, with username/password only and in its
 * production configuration, Dante, microsocks with and without
 * username/password, no proxy; the order rotated by one each repetition),
 * each against a fresh server instance and a fresh target, and writes
 * bench/RESULTS.md.
 * Every child is killed by PID at the end, on an error, or on a signal; the
 * temporary directory is removed.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync, chmodSync, constants, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism, cpus, release, tmpdir, totalmem, type } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { hashPassword } from '../src/index.js';
import { Target, compileLoadgen } from './lib/loadgen.js';
import { killAllSync, rssKb } from './lib/proc.js';
import { type InstanceRecord, type Machine, type Results, renderMarkdown } from './lib/report.js';
import {
  type Binaries, PRODUCTION_RULE_COUNT, type RunningServer, SERVERS, type ServerEnv, type ServerInfo,
  productionConfig, startServer,
} from './lib/servers.js';
import {
  FULL, HANDSHAKE_NAME, QUICK, type RunContext, type RunRecord, type Settings, type Workload, applies, describeReps, runIdle, runRelay, runStall, schedule, workloads,
} from './lib/workloads.js';

/** dist/bench/run.js → the project root. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const USAGE = `Usage: node dist/bench/run.js [options]

  --quick            about half a minute: tiny sizes, 1 repetition (a smoke test, not a measurement)
  --reps N           repetitions of every workload (default 5, and 9 for handshake and latency;
                     quick 1); medians are over these
  --only LIST        workloads, comma-separated: ids (upload-1, handshake-32, udp-8, idle-1000, backpressure…)
                     or groups (upload, download, bulk, handshake, latency, udp, idle, backpressure)
  --servers LIST     socksgate, socksgate-stream, socksgate-poll, socksgate-auth, socksgate-prod, dante,
                     microsocks, microsocks-auth, none (default: all)
  --out FILE         the Markdown report (default bench/RESULTS.md)
  --json FILE        also write every run's raw record as JSON
  --render FILE      run nothing: write the report again from a --json FILE of an earlier
                     run (with the current bench/ANALYSIS.md), e.g. after editing the analysis
  --no-pin           do not pin the server to CPU 1 and the generator/target to the other CPUs
  -h, --help         this text
`;

let tmp: string | null = null;

function cleanup(): void {
  killAllSync();
  if (tmp) {
    rmSync(tmp, { recursive: true, force: true });
    tmp = null;
  }
}

process.on('exit', cleanup);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    process.stderr.write(`bench: ${signal}: stopping every child and exiting\n`);
    cleanup();
    process.exit(130);
  });
}

function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

function which(name: string, candidates: readonly string[] = []): string | null {
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const path of [...candidates, ...dirs.map((d) => join(d, name))]) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch { /* next */ }
  }
  return null;
}

function output(command: string, args: readonly string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).trim();
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.trim();
  }
}

function selectWorkloads(all: readonly Workload[], only: string | undefined): Workload[] {
  if (!only) return [...all];
  const wanted = only.split(',').map((x) => x.trim()).filter(Boolean);
  const picked = new Set<Workload>();
  for (const pattern of wanted) {
    const matches = all.filter((w) => w.id === pattern || w.id.startsWith(`${pattern}-`) ||
      (pattern === 'bulk' && (w.command === 'upload' || w.command === 'download')));
    if (matches.length === 0) throw new UsageError(`--only: no workload "${pattern}"; known: ${all.map((w) => w.id).join(', ')}, and the groups upload, download, bulk, handshake, latency, udp, idle`);
    for (const m of matches) picked.add(m);
  }
  return all.filter((w) => picked.has(w));
}

class UsageError extends Error {}

function cpuList(n: number): { load: string; proxy: string } | null {
  if (n < 2) return null;
  const others = Array.from({ length: n }, (_, i) => i).filter((i) => i !== 1);
  return { load: others.join(','), proxy: '1' };
}

/** The native splice addon, relative to the project root (src/relay/splice.ts loads it from there). */
const ADDON = join('build', 'socksgate_splice.node');
const LAUNCHER = join('bin', 'socksgate.cjs');

/**
 * Copies dist/src, the launcher (bin/socksgate.cjs), the native addon
 * (build/*.node, when built) and package.json (with node_modules linked) into
 * the temporary directory and runs socksgate from there: others may rebuild
 * dist/ or the addon while the benchmark runs, and every instance must be the
 * same build. The layout is the project's, so the snapshot's dist/src finds
 * the addon at ../../../build. socksgate is started as operators start it,
 * through the launcher (the `socksgate` command and `npm start`), which sizes
 * libuv's thread pool (name lookups, password checks, file writes).
 */
function snapshotSocksgate(tmpDir: string): { cli: string; hash: string; addon: string | null } {
  const dir = join(tmpDir, 'socksgate');
  cpSync(join(ROOT, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  mkdirSync(join(dir, 'bin'));
  copyFileSync(join(ROOT, LAUNCHER), join(dir, LAUNCHER));
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  const hash = createHash('sha256');
  let names: string[] = [];
  try {
    names = readdirSync(join(ROOT, 'build')).filter((n) => n.endsWith('.node')).sort(); // not a build's half-written *.tmp
  } catch { /* not built */ }
  for (const name of names) {
    mkdirSync(join(dir, 'build'), { recursive: true });
    copyFileSync(join(ROOT, 'build', name), join(dir, 'build', name));
    hash.update(name).update(readFileSync(join(dir, 'build', name)));
  }
  let addon: string | null = null;
  if (existsSync(join(dir, ADDON))) {
    const st = statSync(join(ROOT, ADDON));
    addon = `${ADDON} built (${Math.round(st.size / 1024)} KiB, ${st.mtime.toISOString().replace(/\.\d+Z$/, 'Z')})`;
  }
  const walk = (d: string) => {
    for (const name of readdirSync(d, { withFileTypes: true }).map((e) => e.name).sort()) {
      const path = join(d, name);
      if (name.endsWith('.js')) hash.update(name).update(readFileSync(path));
      else if (!name.includes('.')) {
        try { walk(path); } catch { /* not a directory */ }
      }
    }
  };
  walk(join(dir, 'dist', 'src'));
  hash.update(LAUNCHER).update(readFileSync(join(dir, LAUNCHER)));
  return { cli: join(dir, LAUNCHER), hash: hash.digest('hex').slice(0, 12), addon };
}

/** Exit code and output of the snapshot's CLI (15 s at most). */
function runCli(cli: string, args: readonly string[]): { code: number; text: string } {
  try {
    const text = execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000 });
    return { code: 0, text };
  } catch (err) {
    const e = err as { status?: number | null; stdout?: string; stderr?: string };
    return { code: e.status ?? -1, text: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

function machineInfo(bin: Binaries, pinning: string, buildHash: string, addon: string | null): Machine {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const rev = output('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = output('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) !== '';
  const dpkg = (name: string) => output('dpkg-query', ['-W', '-f=${Version}', name]);
  const limits = existsSync('/proc/self/limits') ? /Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? '?' : '?';
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    kernel: `${type()} ${release()}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    node: process.version,
    gcc: output('gcc', ['--version']).split('\n')[0] ?? 'gcc',
    dante: `${output(bin.danted, ['-v']).split('\n')[0]?.replace(/\s+Copyright.*$/, '') ?? 'Dante'} (Debian dante-server ${dpkg('dante-server') || '?'})`,
    microsocks: `Debian microsocks ${dpkg('microsocks') || '?'}`,
    socksgate: `${pkg.version} (git ${rev || '?'}${dirty ? ', src/ modified' : ''}; snapshot ${buildHash} of dist/src, ${LAUNCHER} and build/*.node, taken when the run started)`,
    started: `\`node ${relative(dirname(dirname(bin.cli)), bin.cli)}\` in the snapshot (the \`socksgate\` command and \`npm start\` run the same launcher)`,
    relay: `${addon ?? `${ADDON} not built`}` +
      `${process.env.SOCKSGATE_SPLICE_ADDON ? ` (SOCKSGATE_SPLICE_ADDON=${process.env.SOCKSGATE_SPLICE_ADDON} in the environment)` : ''}; ` +
      'socksgate, socksgate (userpass) and socksgate (production) ran with `--relay-engine splice`, socksgate (stream relay) with `--relay-engine stream`',
    rules: `${PRODUCTION_RULE_COUNT} rules in socksgate (production)'s configuration`,
    pinning,
    openFiles: limits,
    localhost: resolvesTo(HANDSHAKE_NAME),
  };
}

/** The addresses getaddrinfo gives for `name`, in its order (`getent ahosts` lists each once per socket type). */
function resolvesTo(name: string): string {
  const addresses = output('getent', ['ahosts', name]).split('\n').map((line) => line.split(/\s+/)[0]).filter((a): a is string => !!a);
  return addresses.length > 0 ? [...new Set(addresses)].join(', ') + ' (getent ahosts)' : 'nothing (getent ahosts)';
}

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: process.argv.slice(2),
      options: {
        quick: { type: 'boolean' },
        reps: { type: 'string' },
        only: { type: 'string' },
        servers: { type: 'string' },
        out: { type: 'string' },
        json: { type: 'string' },
        render: { type: 'string' },
        'no-pin': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (err) {
    log(`bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.render) {
    const results = JSON.parse(readFileSync(resolve(values.render), 'utf8')) as Results;
    const outPath = resolve(values.out ?? join(ROOT, 'bench', 'RESULTS.md'));
    writeReport(outPath, results);
    log(`bench: wrote ${outPath} from ${values.render} (a run of ${Math.round(results.elapsedSeconds)} s)`);
    return 0;
  }
  const base = values.quick ? QUICK : FULL;
  const reps = values.reps === undefined ? base.reps : Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1 || reps > 50) {
    log('bench: --reps must be an integer from 1 to 50');
    return 2;
  }
  // --reps sets every group's count; the defaults give the noisiest groups more.
  const settings: Settings = values.reps === undefined ? base : { ...base, reps, groupReps: {} };
  let selected: Workload[];
  let servers: ServerInfo[];
  try {
    selected = selectWorkloads(workloads(settings), values.only);
    const ids = values.servers ? values.servers.split(',').map((x) => x.trim()) : SERVERS.map((s) => s.id);
    for (const id of ids) if (!SERVERS.some((s) => s.id === id)) throw new UsageError(`--servers: unknown server "${id}"; known: ${SERVERS.map((s) => s.id).join(', ')}`);
    servers = SERVERS.filter((s) => ids.includes(s.id));
  } catch (err) {
    if (err instanceof UsageError) {
      log(`bench: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const outPath = resolve(values.out ?? join(ROOT, 'bench', 'RESULTS.md'));

  // What the benchmark needs on this machine: fail clearly if something is missing.
  const cli = join(ROOT, 'dist', 'src', 'cli.js'); // the launcher (bin/socksgate.cjs) imports it
  const danted = which('danted', ['/usr/sbin/danted']);
  const microsocks = which('microsocks');
  const missing: string[] = [];
  if (!existsSync(cli)) missing.push(`${cli} (build with: npx tsc -p .)`);
  if (!which('gcc')) missing.push('gcc (apt-get install gcc)');
  if (servers.some((s) => s.id === 'dante') && !danted) missing.push('danted (apt-get install dante-server)');
  if (servers.some((s) => s.id.startsWith('microsocks')) && !microsocks) missing.push('microsocks (apt-get install microsocks)');
  const cpusAvailable = availableParallelism();
  const pin = values['no-pin'] ? null : cpuList(cpusAvailable);
  if (pin && !which('taskset')) missing.push('taskset (apt-get install util-linux), or run with --no-pin');
  if (missing.length > 0) {
    log(`bench: missing: ${missing.join('; ')}`);
    return 2;
  }
  tmp = mkdtempSync(join(tmpdir(), 'socksgate-bench-'));
  chmodSync(tmp, 0o755); // Dante runs as "nobody" and reads its files from here
  const snapshot = snapshotSocksgate(tmp);
  const bin: Binaries = { node: process.execPath, cli: snapshot.cli, danted: danted ?? 'danted', microsocks: microsocks ?? 'microsocks' };
  const started = Date.now();
  const binary = compileLoadgen(join(ROOT, 'bench', 'sockbench.c'), tmp);
  if (pin) output('taskset', ['-a', '-p', '-c', pin.load, String(process.pid)]); // the driver stays off the server's CPU
  const pinning = pin
    ? `server pinned to CPU ${pin.proxy} (with all its threads and child processes); generator, target and driver on CPU ${pin.load}`
    : 'not pinned (--no-pin, or a single CPU): everything shares every CPU';
  const credentials = { user: 'bench', pass: 'bench-password-0123' };
  const usersFile = join(tmp, 'users');
  writeFileSync(usersFile, `# socksgate benchmark\n${credentials.user}:${await hashPassword(credentials.pass, 10)}\n`, { mode: 0o600 });
  const env: ServerEnv = { bin, tmp, affinity: pin?.proxy ?? null, usersFile, credentials };
  const machine = machineInfo(bin, pinning, snapshot.hash, snapshot.addon);
  log(`bench: relay engine: ${machine.relay}`);
  log(`bench: production rules: ${machine.rules}`);
  if (servers.some((s) => s.id === 'socksgate-prod')) {
    // The production configuration must validate before anything is measured (the rules' syntax is the schema's to decide).
    const probe = join(tmp, 'production-check.yaml');
    writeFileSync(probe, productionConfig(1080, usersFile));
    // (Without --relay-engine: a missing addon fails each instance at start, like the minimal variant, not the whole run.)
    const check = runCli(snapshot.cli, ['--config', probe, '--check']);
    if (check.code !== 0) {
      log(`bench: the production configuration (productionConfig() in bench/lib/servers.ts) does not validate:\n${check.text.trim()}`);
      return 2;
    }
  }

  log(`bench: ${settings.quick ? 'quick, ' : ''}${describeReps(settings)}, servers ${servers.map((s) => s.id).join(', ')}, workloads ${selected.map((w) => w.id).join(', ')}`);
  log(`bench: ${pinning}`);
  const runs: RunRecord[] = [];
  const instances: InstanceRecord[] = [];
  const failures: string[] = [];

  for (const { rep, group, server } of schedule(settings, servers)) {
    const ws = selected.filter((w) => w.group === group && applies(w, server));
    if (ws.length === 0) continue;
    const failAll = (why: string) => {
      failures.push(`rep ${rep}, ${server.label}, ${ws.map((w) => w.id).join('/')}: ${why}`);
      for (const w of ws) runs.push({ rep, server: server.id, workload: w.id, ok: false, error: why, metrics: {}, errors: 0, errorKinds: {}, extra: {} });
      log(`  rep ${rep} ${server.id} ${group}: FAILED: ${why}`);
    };
    let target: Target;
    try {
      target = await Target.start(binary, pin?.load ?? null);
    } catch (err) {
      failAll((err as Error).message);
      continue;
    }
    let running: RunningServer;
    const t0 = Date.now();
    try {
      running = await startServer(server, env);
    } catch (err) {
      failAll((err as Error).message.split('\n').slice(0, 6).join(' / '));
      await target.stop();
      continue;
    }
    const startMs = Date.now() - t0;
    const rssStart = rssKb(running.pids());
    const ctx: RunContext = { binary, settings, affinity: pin?.load ?? null, target, server: running, rep };
    let rssEnd = 0;
    let processesEnd = 0;
    try {
      const attempt = async (w: Workload | readonly Workload[], fn: () => Promise<RunRecord | RunRecord[]>) => {
        const list = Array.isArray(w) ? w : [w];
        try {
          const recs = await fn();
          for (const r of Array.isArray(recs) ? recs : [recs]) {
            runs.push(r);
            if (!r.ok) failures.push(`rep ${rep}, ${server.label}, ${r.workload}: ${r.error ?? 'failed'}`);
            log(`  rep ${rep} ${server.id.padEnd(14)} ${r.workload.padEnd(13)} ${describe(r)}`);
          }
        } catch (err) {
          const why = (err as Error).message;
          for (const x of list) {
            runs.push({ rep, server: server.id, workload: x.id, ok: false, error: why, metrics: {}, errors: 0, errorKinds: {}, extra: {} });
            failures.push(`rep ${rep}, ${server.label}, ${x.id}: ${why}`);
            log(`  rep ${rep} ${server.id.padEnd(14)} ${x.id.padEnd(13)} FAILED: ${why}`);
          }
        }
      };
      if (group === 'idle') {
        await attempt(ws, () => runIdle(ctx, ws));
      } else if (group === 'stall') {
        await attempt(ws[0]!, () => runStall(ctx, ws[0]!));
      } else {
        for (const w of ws) await attempt(w, () => runRelay(ctx, w));
      }
    } finally {
      const pids = running.pids();
      rssEnd = rssKb(pids);
      processesEnd = pids.length;
      const summary = await running.stop();
      await target.stop();
      if (server.proxy) {
        instances.push({ rep, server: server.id, group, startMs, rssStartKiB: rssStart, rssEndKiB: rssEnd, processesEnd, log: summary });
      }
    }
  }

  const results: Results = {
    machine,
    settings,
    servers,
    workloads: selected,
    runs,
    instances,
    failures,
    elapsedSeconds: (Date.now() - started) / 1000,
    rotated: true,
  };
  writeReport(outPath, results);
  log(`bench: wrote ${outPath} (${Math.round(results.elapsedSeconds)} s)`);
  if (values.json) {
    writeFileSync(resolve(values.json), JSON.stringify(results, null, 2) + '\n');
    log(`bench: wrote ${resolve(values.json)}`);
  }
  if (failures.length > 0) {
    log(`bench: ${failures.length} run(s) failed:\n  ${failures.join('\n  ')}`);
    return 1;
  }
  return 0;
}

/** The report: the run's numbers, then the hand-written interpretation (targets not reached, and why). */
function writeReport(outPath: string, results: Results): void {
  const analysisPath = join(ROOT, 'bench', 'ANALYSIS.md');
  const analysis = existsSync(analysisPath) ? `\n${readFileSync(analysisPath, 'utf8')}` : '';
  writeFileSync(outPath, renderMarkdown(results) + '\n' + analysis);
}

function describe(r: RunRecord): string {
  const m = Object.entries(r.metrics).map(([k, v]) => `${k}=${v.toFixed(1)}`).join(' ');
  const cpu = r.cpu ? ` cpu server=${r.cpu.proxy ?? '-'}% gen=${r.cpu.generator}% target=${r.cpu.target}%` : '';
  const exact = r.exact === undefined ? '' : r.exact ? ' exact' : ' NOT-EXACT';
  const errors = r.errors > 0 ? ` errors=${r.errors} ${JSON.stringify(r.errorKinds)}` : '';
  return `${r.ok ? '' : 'FAILED '}${m}${exact}${cpu}${errors}${r.ok ? '' : ` (${r.error})`}`;
}

main().then(
  (code) => {
    cleanup();
    process.exit(code);
  },
  (err: unknown) => {
    log(`bench: ${(err as Error)?.stack ?? err}`);
    cleanup();
    process.exit(2);
  },
);
