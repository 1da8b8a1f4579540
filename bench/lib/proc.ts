/**
 * Child processes of the benchmark: every one is tracked by PID so the driver
 * can kill them all at the end, on an error, or on a signal. Also reads what
 * the kernel knows about a process: RSS, PSS, CPU time, descendants.
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { connect, createServer } from 'node:net';

const tracked = new Set<ChildProcess>();
/** Descendants seen (Dante's children), killed by PID too. */
const seenDescendants = new Set<number>();

/** Spawns and tracks a child; `affinity` (e.g. "1") pins it and its threads/children with taskset. */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions & { affinity?: string | null } = {}): ChildProcess {
  const { affinity, ...rest } = options;
  const [cmd, argv] = affinity ? ['taskset', ['-c', affinity, command, ...args]] : [command, [...args]];
  const child = spawn(cmd, argv, rest);
  tracked.add(child);
  child.once('exit', () => tracked.delete(child));
  child.once('error', () => tracked.delete(child));
  return child;
}

export function rememberDescendants(pids: readonly number[]): void {
  for (const pid of pids) seenDescendants.add(pid);
}

/** Synchronous last resort: SIGKILL every tracked child and every descendant seen, by PID. */
export function killAllSync(): void {
  for (const child of tracked) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }
  }
  for (const pid of seenDescendants) {
    if (!isGone(pid)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
  }
  seenDescendants.clear();
}

/** Resolves when the child has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** SIGTERM, then SIGKILL after `graceMs`; then SIGKILL any listed descendant still alive. */
export async function stopChild(child: ChildProcess, descendants: readonly number[] = [], graceMs = 3000): Promise<void> {
  if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
    try { process.kill(child.pid, 'SIGTERM'); } catch { /* gone */ }
    const timer = setTimeout(() => {
      try { if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
    }, graceMs);
    await exited(child);
    clearTimeout(timer);
  }
  const deadline = Date.now() + graceMs;
  for (const pid of descendants) {
    while (!isGone(pid) && Date.now() < deadline) await sleep(20);
    if (!isGone(pid)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    seenDescendants.delete(pid);
  }
}

/** Exited (a zombie counts: nothing left to kill). */
function isGone(pid: number): boolean {
  try {
    return statFields(pid)[0] === 'Z';
  } catch {
    return true;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Fields of /proc/PID/stat after the command name: [state, ppid, ...]. */
function statFields(pid: number): string[] {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return text.slice(text.lastIndexOf(')') + 2).trim().split(' ');
}

/** Every live descendant of `root` (children, grandchildren, …), from /proc. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const ppid = Number(statFields(Number(name))[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(name));
      children.set(ppid, list);
    } catch { /* exited meanwhile */ }
  }
  const out: number[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    for (const child of children.get(pid) ?? []) {
      out.push(child);
      stack.push(child);
    }
  }
  return out;
}

function statusKb(pid: number, field: string): number {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** VmRSS in KiB, summed over the processes. */
export function rssKb(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + statusKb(pid, 'VmRSS'), 0);
}

/** Pss in KiB (shared pages divided among their users), summed over the processes. */
export function pssKb(pids: readonly number[]): number {
  let sum = 0;
  for (const pid of pids) {
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      sum += m ? Number(m[1]) : 0;
    } catch { /* exited */ }
  }
  return sum;
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/**
 * CPU seconds (user + system) used by the processes, including children they
 * have reaped; threads are included in their process's counters.
 */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = statFields(pid);
      // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch { /* exited */ }
  }
  return ticks / TICKS_PER_SECOND;
}

/** A port that was free a moment ago: bind 127.0.0.1:0, read it, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Waits until a SOCKS5 server on the port answers a greeting with the
 * expected method (0x00 none, 0x02 userpass). Fails early if `child` exits.
 */
export async function waitForSocks(port: number, method: number, child: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`server exited (${child.exitCode ?? child.signalCode}) before it answered on port ${port}`);
    }
    const answer = await probe(port, method);
    if (answer === 'ok') return;
    last = answer;
    await sleep(50);
  }
  throw new Error(`server on port ${port} not ready after ${timeoutMs} ms: ${last}`);
}

function probe(port: number, method: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => { socket.destroy(); resolve('timeout'); }, 1000);
    const done = (why: string) => { clearTimeout(timer); socket.destroy(); resolve(why); };
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    socket.once('connect', () => socket.write(Buffer.from([5, 1, method])));
    let got = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (got.length >= 2) done(got[0] === 5 && got[1] === method ? 'ok' : `unexpected reply ${got.toString('hex')}`);
    });
    socket.once('end', () => done('closed'));
  });
}
