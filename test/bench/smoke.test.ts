/**
 * The benchmark harness as CI runs it: `node dist/bench/run.js --quick` into
 * a temporary report. No timing assertions: only that it completes, that every
 * server produced a number for every workload it takes part in (UDP included,
 * microsocks shown as n/a there), and that bulk transfers were byte-exact.
 * Dante and microsocks must be installed, and the splice addon built
 * (scripts/test.sh does both): the socksgate variant asks for the splice
 * relay explicitly and fails without it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/test/bench/smoke.test.js → dist/bench/run.js */
const RUN = fileURLToPath(new URL('../../bench/run.js', import.meta.url));
const RUN_TIMEOUT_MS = 180_000;

interface Results {
  servers: Array<{ id: string; proxy: boolean; udp: boolean; groups?: string[] }>;
  workloads: Array<{ id: string; group: string; proxyOnly: boolean; command?: string; metrics: Array<{ key: string }> }>;
  runs: Array<{ server: string; workload: string; ok: boolean; error?: string; exact?: boolean; metrics: Record<string, number>; extra: Record<string, unknown> }>;
  failures: string[];
}

function runDriver(args: readonly string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('error', reject);
    // SIGTERM first: the driver then kills its own children by PID.
    const timer = setTimeout(() => child.kill('SIGTERM'), RUN_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr });
    });
  });
}

describe('benchmark harness, quick mode', () => {
  it('completes, every server has a number for every workload, bulk transfers are byte-exact', { timeout: RUN_TIMEOUT_MS + 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'socksgate-bench-smoke-'));
    try {
      const md = join(dir, 'RESULTS.md');
      const json = join(dir, 'results.json');
      const { code, signal, stderr } = await runDriver(['--quick', '--out', md, '--json', json]);
      assert.equal(signal, null, `the driver was killed (${signal}):\n${stderr}`);
      assert.equal(code, 0, `the driver failed (exit ${code}):\n${stderr}`);
      assert.ok(existsSync(md), 'the Markdown report was written to --out');
      const results = JSON.parse(readFileSync(json, 'utf8')) as Results;
      assert.deepEqual(results.failures, []);

      const ids = results.servers.map((s) => s.id);
      for (const id of ['socksgate', 'socksgate-stream', 'socksgate-poll', 'socksgate-auth', 'socksgate-prod', 'dante', 'microsocks', 'microsocks-auth', 'none']) assert.ok(ids.includes(id), `server ${id} was run`);
      for (const kind of ['upload-1', 'upload-8', 'download-1', 'download-8', 'handshake-1', 'handshake-32', 'handshake-name-1', 'handshake-name-32', 'latency-1', 'latency-16', 'udp-1', 'udp-8', 'backpressure']) {
        assert.ok(results.workloads.some((w) => w.id === kind), `workload ${kind} was run`);
      }
      assert.equal(results.workloads.filter((w) => w.id.startsWith('idle-')).length, 3, 'three idle-session counts');

      const missing: string[] = [];
      for (const w of results.workloads) {
        for (const s of results.servers) {
          if (w.proxyOnly && !s.proxy) continue;
          if (w.command === 'udp' && !s.udp) continue; // microsocks: no UDP ASSOCIATE
          if (s.groups && !s.groups.includes(w.group)) continue; // the reference variants: some groups only
          const runs = results.runs.filter((r) => r.server === s.id && r.workload === w.id);
          for (const m of w.metrics) {
            if (!runs.some((r) => r.ok && Number.isFinite(r.metrics[m.key]))) {
              missing.push(`${s.id} / ${w.id} / ${m.key}: ${runs.map((r) => r.error ?? JSON.stringify(r.metrics)).join('; ') || 'no run'}`);
            }
          }
        }
      }
      assert.deepEqual(missing, [], 'every server produced a number for every workload');

      const idle = results.runs.filter((r) => r.workload.startsWith('idle-') && r.server !== 'none');
      assert.ok(idle.length > 0 && idle.every((r) => r.extra.warmupSessions === 64 && Number(r.extra.rssFreshKiB) > 0),
        'every idle ramp starts after a warm-up wave, and keeps RSS from before it');

      const udpless = results.servers.filter((s) => !s.udp).map((s) => s.id);
      assert.deepEqual(udpless, ['microsocks', 'microsocks-auth'], 'only microsocks lacks UDP ASSOCIATE');
      assert.deepEqual(results.runs.filter((r) => r.server.startsWith('microsocks') && r.workload.startsWith('udp-')), [], 'UDP is not run against microsocks');
      const referenceRuns = results.runs.filter((r) => r.server === 'microsocks-auth').map((r) => r.workload).sort();
      assert.deepEqual(referenceRuns, ['handshake-1', 'handshake-32', 'handshake-name-1', 'handshake-name-32'], 'microsocks (userpass) runs the handshakes only');
      const pollRuns = [...new Set(results.runs.filter((r) => r.server === 'socksgate-poll').map((r) => r.workload))].sort();
      assert.deepEqual(pollRuns, ['handshake-1', 'handshake-32', 'handshake-name-1', 'handshake-name-32', 'latency-1', 'latency-16'], 'socksgate (busy poll) runs handshakes and latency only');

      const bulk = results.runs.filter((r) => /^(upload|download)-/.test(r.workload) || r.workload === 'backpressure');
      const full = results.servers.filter((s) => !s.groups);
      const proxies = full.filter((s) => s.proxy).length;
      assert.ok(bulk.length >= 4 * full.length + proxies, 'bulk and backpressure runs for every server');
      const inexact = bulk.filter((r) => r.exact !== true).map((r) => `${r.server} / ${r.workload}`);
      assert.deepEqual(inexact, [], 'every bulk transfer was byte-exact');

      const report = readFileSync(md, 'utf8');
      assert.match(report, /## Summary/);
      assert.match(report, /\| localhost resolves to \| \S/, 'the report says what the by-name handshakes\' name resolved to');
      assert.match(report, /Quick mode/);
      assert.match(report, /\| socksgate started as \| `node bin\/socksgate\.cjs`/, 'socksgate runs as operators run it, through the launcher');
      assert.doesNotMatch(report, /\*\*missing\*\*/);
      assert.match(report, /n\/a \(no UDP ASSOCIATE\)/, 'microsocks is n/a for UDP');
      assert.match(report, /stream ÷ splice/);
      assert.match(report, /microsocks userpass ÷ none/, 'the price of RFC 1929, measured on microsocks');
      assert.match(report, /busy poll ÷ best peer/, 'socksgate (busy poll) against the better peer');
      assert.match(report, /Backpressure bound/);
      assert.match(report, /\| production rules \| /, 'the report says whether the production configuration carried rules');

      // --render writes the same report again from the saved run, running nothing.
      const again = join(dir, 'again.md');
      const rendered = await runDriver(['--render', json, '--out', again]);
      assert.equal(rendered.code, 0, rendered.stderr);
      assert.equal(readFileSync(again, 'utf8'), report);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
