/**
 * The C side of the benchmark (bench/sockbench.c): compiled with the
 * machine's gcc, then run as the target (sink/source/echo/null-SOCKS/hangup
 * TCP ports and a UDP echo) and as the load generator, one process per
 * workload run.
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { cpuSeconds, exited, spawnTracked, stopChild } from './proc.js';

export function compileLoadgen(source: string, outDir: string): string {
  const binary = join(outDir, 'sockbench');
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', binary, source], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`cannot compile ${source} with gcc: ${e.stderr?.toString() || e.message}`);
  }
  return binary;
}

export interface TargetPorts {
  readonly sink: number;
  readonly source: number;
  readonly echo: number;
  /** A null SOCKS5 server (answers without dialing, then hangs up): the "no proxy" handshake reference. */
  readonly socks: number;
  /** Hangs up as soon as it accepts: the destination of the handshake workloads. */
  readonly hangup: number;
  /** A UDP echo socket: the destination of the UDP ASSOCIATE workloads. */
  readonly udp: number;
}

export class Target {
  readonly #lines: string[] = [];
  readonly #waiters: Array<() => void> = [];

  private constructor(readonly child: ChildProcess, readonly ports: TargetPorts) {}

  static async start(binary: string, affinity: string | null): Promise<Target> {
    const child = spawnTracked(binary, ['target'], { stdio: ['pipe', 'pipe', 'pipe'], affinity });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.stdin!.on('error', () => {});
    const rl = createInterface({ input: child.stdout! });
    let target: Target | null = null;
    const first = new Promise<string | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), 5000);
      rl.once('line', (line) => { clearTimeout(timer); resolve(line); });
      child.once('exit', () => { clearTimeout(timer); resolve(null); });
    });
    const line = await first;
    if (line === null) {
      await stopChild(child);
      throw new Error(`target did not start: ${stderr}`);
    }
    target = new Target(child, JSON.parse(line) as TargetPorts);
    const t = target;
    rl.on('line', (l) => {
      t.#lines.push(l);
      for (const w of t.#waiters.splice(0)) w();
    });
    return target;
  }

  cpuSeconds(): number {
    return this.child.pid === undefined ? 0 : cpuSeconds([this.child.pid]);
  }

  /** Closes every connection the target has accepted (it closes first); resolves with how many. */
  async hangup(timeoutMs = 5000): Promise<number> {
    return Number((await this.#ask('hangup', timeoutMs)).hungup ?? 0);
  }

  /** Bytes the source port has sent so far, over all its connections (backpressure: is the sender still getting anywhere?). */
  async sent(timeoutMs = 5000): Promise<number> {
    return Number((await this.#ask('sent', timeoutMs)).sent ?? NaN);
  }

  /** One command on the target's stdin, one JSON line back (commands are never concurrent: the driver awaits each). */
  async #ask(command: string, timeoutMs: number): Promise<Record<string, unknown>> {
    this.#lines.length = 0;
    this.child.stdin!.write(`${command}\n`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const line = this.#lines.shift();
      if (line !== undefined) return JSON.parse(line) as Record<string, unknown>;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
    throw new Error(`the target did not answer "${command}"`);
  }

  async stop(): Promise<void> {
    this.child.stdin!.end(); // the target exits on EOF
    await Promise.race([exited(this.child), new Promise((r) => setTimeout(r, 1000))]);
    await stopChild(this.child);
  }
}

/** What every generator run reports (plus command-specific fields). */
export interface GenResult {
  readonly ok: boolean;
  readonly errors: number;
  readonly errorKinds: Record<string, number>;
  readonly cpuUser: number;
  readonly cpuSys: number;
  readonly [key: string]: unknown;
}

export interface GenRun {
  readonly result: GenResult;
  /** Wall time of the generator process, seconds. */
  readonly wallSeconds: number;
}

/**
 * Runs one generator command. `onEvent` sees progress lines ({"event":…});
 * whatever it returns is written to the generator's stdin (idle: "next").
 * Killed after `timeoutMs`.
 */
export async function runGenerator(
  binary: string,
  command: string,
  args: readonly (string | number)[],
  options: { affinity: string | null; timeoutMs: number; onEvent?: (event: Record<string, unknown>) => Promise<string | void> },
): Promise<GenRun> {
  const started = process.hrtime.bigint();
  const child = spawnTracked(binary, [command, ...args.map(String)], { stdio: ['pipe', 'pipe', 'pipe'], affinity: options.affinity });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  child.stdin!.on('error', () => {});
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try { if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
  }, options.timeoutMs);
  let result: GenResult | null = null;
  let chain = Promise.resolve();
  const rl = createInterface({ input: child.stdout! });
  const rlClosed = new Promise<void>((resolve) => rl.once('close', () => resolve()));
  rl.on('line', (line) => {
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(line) as Record<string, unknown>;
    } catch {
      stderr += `(stdout) ${line}\n`;
      return;
    }
    if (typeof parsed.event === 'string') {
      const onEvent = options.onEvent;
      chain = chain.then(async () => {
        const reply = onEvent ? await onEvent(parsed) : undefined;
        if (!child.stdin!.destroyed) child.stdin!.write(reply ?? 'next\n');
      });
    } else {
      result = parsed as unknown as GenResult;
    }
  });
  await exited(child);
  await rlClosed;
  await chain;
  clearTimeout(timer);
  const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (timedOut) throw new Error(`sockbench ${command} timed out after ${options.timeoutMs} ms${stderr ? `: ${stderr.trim()}` : ''}`);
  if (result === null) throw new Error(`sockbench ${command} exited ${child.exitCode ?? child.signalCode} without a result${stderr ? `: ${stderr.trim()}` : ''}`);
  return { result, wallSeconds };
}
