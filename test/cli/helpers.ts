/**
 * Helpers for testing the compiled `socksgate` command as a child process.
 * Nothing here sleeps: waits are on log lines, process exits and socket
 * events, and every wait is bounded so a hang fails instead of blocking.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { type Socket, connect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SocksClient } from 'socks';
import { type RunOptions, type RunResult, run } from '../helpers/run.js';

/** dist/test/cli/helpers.js → dist/src/cli.js */
export const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));

export const DEFAULT_TIMEOUT_MS = 10_000;

/** Runs the CLI to completion (killed after 20 s) and captures its output. */
export function runCli(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], options);
}

/** The non-empty lines of a text. */
export function lines(text: string): string[] {
  return text.split(/\r?\n/).filter((line) => line.trim() !== '');
}

/** Rejects with a message naming `what` if `promise` has not settled within `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    promise.then(
      (value) => { clearTimeout(timer); resolve(value); },
      (err: unknown) => { clearTimeout(timer); reject(err); },
    );
  });
}

/** A temporary directory under os.tmpdir(); call `remove()` in finally/after. */
export function tempDir(): { readonly path: string; file(name: string): string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), 'socksgate-cli-'));
  return {
    path,
    file: (name) => join(path, name),
    remove: () => rmSync(path, { recursive: true, force: true }),
  };
}

/** One parsed JSON log line. */
export interface LogLine {
  readonly level: number;
  readonly event?: string;
  readonly msg?: string;
  readonly [key: string]: unknown;
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** The daemon running as a child process, with its stdout parsed line by line. */
export class Daemon {
  readonly child: ChildProcess;
  /** Every stdout line so far, raw. */
  readonly stdoutLines: string[] = [];
  /** The stdout lines that parsed as JSON objects. */
  readonly logs: LogLine[] = [];
  stderr = '';
  /** Resolves when the process has exited and its output is fully read. */
  readonly exited: Promise<Exit>;
  #exit: Exit | null = null;
  readonly #detached: boolean;
  #partial = '';
  readonly #waiters = new Set<() => void>();

  /** `detached`: the daemon leads a process group of its own (its workers join it), as under a shell's job control. */
  /** `script`: what node runs (default dist/src/cli.js). */
  /** `launcher`: a command that runs node (e.g. `['prlimit', '--nofile=512:512', '--']`). */
  constructor(
    args: readonly string[],
    env: NodeJS.ProcessEnv = process.env,
    options: { readonly detached?: boolean; readonly script?: string; readonly launcher?: readonly string[] } = {},
  ) {
    this.#detached = options.detached === true;
    const [command, ...prefix] = [...(options.launcher ?? []), process.execPath];
    this.child = spawn(command!, [...prefix, options.script ?? CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env, detached: this.#detached });
    this.child.stdout!.setEncoding('utf8');
    this.child.stderr!.setEncoding('utf8');
    this.child.stdout!.on('data', (chunk: string) => this.#onStdout(chunk));
    this.child.stderr!.on('data', (chunk: string) => { this.stderr += chunk; });
    this.exited = new Promise<Exit>((resolve, reject) => {
      this.child.once('error', reject);
      this.child.once('close', (code, signal) => {
        if (this.#partial !== '') this.#addLine(this.#partial);
        this.#partial = '';
        this.#exit = { code, signal };
        this.#notify();
        resolve(this.#exit);
      });
    });
    this.exited.catch(() => {}); // observed through waitExit / waitFor
  }

  get exitStatus(): Exit | null {
    return this.#exit;
  }

  /**
   * Resolves with the first log line (past or future) matching `match`;
   * rejects if the daemon exits first or after `timeoutMs`.
   */
  waitFor(match: (line: LogLine) => boolean, what: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<LogLine> {
    return new Promise<LogLine>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const check = () => {
        const found = this.logs.find(match);
        if (found) return finish(() => resolve(found));
        if (this.#exit) {
          return finish(() => reject(new Error(`daemon exited (${describeExit(this.#exit!)}) before ${what}\n${this.describe()}`)));
        }
      };
      const finish = (settle: () => void) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        settle();
      };
      timer = setTimeout(
        () => finish(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe()}`))),
        timeoutMs,
      );
      this.#waiters.add(check);
      check();
    });
  }

  /** Waits for the `listening` line and returns the bound port (of the first listener). */
  async port(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<number> {
    const line = await this.waitFor((l) => l.event === 'listening', 'the "listening" log line', timeoutMs);
    const listener = String(line.listener);
    const port = Number(listener.slice(listener.lastIndexOf(':') + 1));
    if (!Number.isInteger(port) || port <= 0) throw new Error(`bad listener in log line: ${JSON.stringify(line)}`);
    return port;
  }

  /** Waits for the process to exit (bounded). */
  waitExit(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Exit> {
    return withTimeout(this.exited, timeoutMs, `the daemon to exit\n${this.describe()}`);
  }

  signal(signal: NodeJS.Signals): void {
    if (!this.#exit) this.child.kill(signal);
  }

  /** Signals the daemon's whole process group, as Ctrl-C or systemd's control-group kill do (a detached daemon only). */
  signalGroup(signal: NodeJS.Signals): void {
    if (!this.#exit && this.child.pid !== undefined) process.kill(-this.child.pid, signal);
  }

  /** Kills the child if it is still running (for finally/after), and waits for it briefly. */
  async kill(): Promise<void> {
    if (this.#exit || this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.#detached) this.signalGroup('SIGKILL'); // its workers too
    else this.child.kill('SIGKILL');
    await withTimeout(this.exited, 5000, 'the killed daemon to exit').catch(() => {});
  }

  /** Session access lines so far. */
  sessions(): LogLine[] {
    return this.logs.filter((l) => l.event === 'session');
  }

  describe(): string {
    return `--- stdout ---\n${this.stdoutLines.join('\n')}\n--- stderr ---\n${this.stderr}`;
  }

  #onStdout(chunk: string): void {
    const parts = (this.#partial + chunk).split('\n');
    this.#partial = parts.pop() ?? '';
    for (const part of parts) this.#addLine(part);
    this.#notify();
  }

  #addLine(raw: string): void {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    this.stdoutLines.push(line);
    try {
      const parsed: unknown = JSON.parse(line);
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) this.logs.push(parsed as LogLine);
    } catch {
      // not JSON: kept in stdoutLines only
    }
  }

  #notify(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

function describeExit(exit: Exit): string {
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
}

/** Starts the daemon and waits for its listening line; kills it if that fails. */
export async function startDaemon(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<{ daemon: Daemon; port: number }> {
  const daemon = new Daemon(args, env);
  try {
    return { daemon, port: await daemon.port() };
  } catch (err) {
    await daemon.kill();
    throw err;
  }
}

/** A SOCKS5 CONNECT through the proxy on 127.0.0.1:`proxyPort` to 127.0.0.1:`port`. */
export async function socksConnect(
  proxyPort: number,
  port: number,
  credentials?: { readonly user: string; readonly password: string },
): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: {
      host: '127.0.0.1',
      port: proxyPort,
      type: 5,
      ...(credentials ? { userId: credentials.user, password: credentials.password } : {}),
    },
    command: 'connect',
    destination: { host: '127.0.0.1', port },
    timeout: DEFAULT_TIMEOUT_MS,
  });
  socket.on('error', () => {}); // failures show up as closes in the tests
  return socket;
}

/** Reads exactly `n` bytes from the socket (bounded). */
export function readBytes(socket: Socket, n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= n) {
        cleanup();
        const all = Buffer.concat(chunks);
        if (all.length > n) socket.unshift(all.subarray(n));
        resolve(all.subarray(0, n));
      }
    };
    const onClose = () => {
      cleanup();
      reject(new Error(`socket closed after ${length} of ${n} bytes`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms reading ${n} bytes (got ${length})`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
  });
}

/** Writes `text` and expects the echo server behind the proxy to send it back. */
export async function echo(socket: Socket, text: string): Promise<string> {
  socket.write(text);
  return (await readBytes(socket, Buffer.byteLength(text))).toString('utf8');
}

/** Resolves when the socket has closed (bounded). */
export function closed(socket: Socket, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  if (socket.destroyed && socket.closed) return Promise.resolve();
  return withTimeout(
    new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      socket.resume(); // let a pending end be read
    }),
    timeoutMs,
    'the socket to close',
  );
}

/** Tries a plain TCP connection: resolves 'connected' or the error code (bounded). */
export function tryConnect(port: number, host = '127.0.0.1', timeoutMs = DEFAULT_TIMEOUT_MS): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      const socket = connect({ host, port });
      socket.once('connect', () => {
        socket.destroy();
        resolve('connected');
      });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    }),
    timeoutMs,
    `a connection attempt to ${host}:${port}`,
  );
}

/** Whether `host:port` can be bound now (the server is closed again before resolving). */
export function canBind(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const server = createNetServer();
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** The environment without proxy variables, so curl and friends use only what the test says. */
export function envWithoutProxies(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^(https?|all|no|ftp)_proxy$/i.test(key)) env[key] = value;
  }
  return env;
}

/**
 * Sends SIGHUP as soon as the process catches it (SigCgt in /proc), that is
 * while socksgate still loads and reads its configuration: the window where
 * a reload must be deferred, not lost.
 */
export async function hupOnceCaught(daemon: Daemon): Promise<void> {
  const pid = daemon.child.pid!;
  const SIGHUP_BIT = 1n; // bit 0: signal 1
  const deadline = Date.now() + DEFAULT_TIMEOUT_MS;
  while (Date.now() < deadline) {
    let caught = 0n;
    try {
      caught = BigInt(`0x${/SigCgt:\s*([0-9a-f]+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`);
    } catch {
      // not started yet
    }
    if (caught & SIGHUP_BIT) {
      process.kill(pid, 'SIGHUP');
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  throw new Error(`socksgate never caught SIGHUP\n${daemon.describe()}`);
}

/** Resolves once the daemon's stderr matches (bounded). */
export function stderrMatches(daemon: Daemon, pattern: RegExp, what: string): Promise<void> {
  return withTimeout(new Promise<void>((resolve) => {
    const check = () => {
      if (!pattern.test(daemon.stderr)) return;
      daemon.child.stderr!.off('data', check);
      resolve();
    };
    daemon.child.stderr!.on('data', check);
    check();
  }), DEFAULT_TIMEOUT_MS, `${what}\n${daemon.describe()}`);
}
