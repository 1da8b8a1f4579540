/**
 * stdout as the log's destination. The proxy never waits for its log, never
 * stops for it, and never holds more than LOG_BACKLOG_BYTES of it: when
 * stdout cannot take lines (a reader that stalls, a full disk, a pipe whose
 * reader is gone), lines wait in memory up to that bound and newer ones are
 * dropped and counted. The first failure is said on stderr; once stdout has
 * taken everything that waited, a `log-resumed` line at warn says how many
 * lines were dropped.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import type { Logger } from 'pino';
// A CommonJS module: its class is a property of the default export at run time.
import sonicBoom, { type SonicBoom, type SonicBoomOpts } from 'sonic-boom';
import { FileLines } from './file-lines.js';

/** The most log bytes held while stdout cannot take them (about 35,000 access lines). */
export const LOG_BACKLOG_BYTES = 16 * 1024 * 1024;

/**
 * EAGAIN retries in a row (100 ms apart) before a write counts as failed: a
 * stalled reader is reported after about 2 s, and an exit never waits longer.
 */
const WRITE_RETRIES = 20;

/** POSIX: a write of at most this many bytes to a pipe is never interleaved with another's. */
const PIPE_BUF = 4096;

/**
 * Whether stdout is a regular file: its lines then go through FileLines
 * (file-lines.ts: encoded into one batch, written synchronously when it is
 * full). Anything else (a pipe, a terminal, a socket, /dev/full) gets
 * sonic-boom with STDOUT_BATCHING.
 */
export function isRegularFile(fd: number): boolean {
  try {
    return fstatSync(fd).isFile();
  } catch {
    return false; // not open, or not ours to inspect: treat it as a pipe
  }
}

/**
 * A pipe (or a terminal): lines are gathered into asynchronous writes of
 * 2–4 KiB (one syscall per line was ~8% of a handshake-heavy profile). Each
 * write holds whole lines and at most PIPE_BUF bytes: workers share one
 * stdout, and a larger write to a pipe could be interleaved with another
 * worker's, splitting lines. Asynchronous, because a slow reader must not
 * stall the event loop. Lines are flushed at least once a second either way,
 * so a quiet proxy's last lines never wait long.
 */
export const STDOUT_BATCHING = { sync: false, minLength: PIPE_BUF / 2, maxWrite: PIPE_BUF } as const;

/** sonic-boom 5 takes maxWriteRetries; its bundled types predate it. */
type SinkOptions = SonicBoomOpts & { readonly maxWriteRetries: number };

export interface StdoutSinkOptions {
  /** Default 1. */
  readonly fd?: number;
  /** The path `fd` was opened at (log.file), named in messages and opened again by reopen(). */
  readonly path?: string;
  /** Default LOG_BACKLOG_BYTES. */
  readonly backlogBytes?: number;
  /** Reports a failure, once (default: a line on stderr): the log itself cannot. */
  readonly say?: (line: string) => void;
}

export class StdoutSink {
  readonly stream: SonicBoom | FileLines;
  readonly #say: (line: string) => void;
  readonly #backlogBytes: number;
  #log: Logger | null = null;
  /** Lines dropped since the last report. */
  #dropped = 0;
  /** The write error that started the current failure, or null while writes go through. */
  #failure: string | null = null;
  /** Set at exit, and when a stop gave up waiting: EAGAIN then fails at once instead of waiting. */
  #givenUp = false;

  /** log.file's path; undefined for stdout. */
  readonly #path: string | undefined;

  constructor(options: StdoutSinkOptions = {}) {
    const { fd = 1, backlogBytes = LOG_BACKLOG_BYTES } = options;
    this.#path = options.path;
    this.#say = options.say ?? ((line) => process.stderr.write(`${line}\n`));
    this.#backlogBytes = backlogBytes;
    // Node opens a pipe or socket stdout non-blocking (the flag lives on the
    // shared file description, so it holds for sonic-boom's writes too). A
    // blocking one would hold a thread-pool thread in write(2) while the
    // reader stalls, and the process could not exit: Node joins those threads.
    if (fd === 1) void process.stdout;
    this.stream = isRegularFile(fd) ? new FileLines({ fd, backlogBytes }) : this.#pipeStream(fd, backlogBytes);
    this.stream.on('drop', () => { this.#dropped++; });
    this.stream.on('error', (err: NodeJS.ErrnoException) => this.#failed(err));
    this.stream.on('drain', () => this.#caughtUp());
    setInterval(() => this.stream.flush(), 1000).unref();
    // A crash or a process.exit() would otherwise lose the lines still batched.
    process.once('exit', () => this.flushNow());
  }

  #pipeStream(fd: number, backlogBytes: number): SonicBoom {
    const boomOptions: SinkOptions = {
      fd,
      ...STDOUT_BATCHING,
      maxLength: backlogBytes,
      maxWriteRetries: WRITE_RETRIES,
      retryEAGAIN: () => !this.#givenUp,
    };
    return new sonicBoom.SonicBoom(boomOptions);
  }

  /** Where the `log-resumed` line goes (the latest logger writing to this sink). */
  reportTo(log: Logger): void {
    this.#log = log;
  }

  /**
   * Resolves once everything batched is written, or after `timeoutMs`
   * (stdout stalled, or failing): a stop never waits on its log for longer.
   */
  flush(timeoutMs: number): Promise<void> {
    // Past the wait the exit flush will not wait either.
    return doneWithin(timeoutMs, (done) => this.stream.flush(() => done()), () => { this.#givenUp = true; });
  }

  /**
   * Writes what is batched, synchronously, as the process ends; not while
   * stdout is failing. A pipe's EAGAIN now fails at once (see #givenUp), and
   * stdout is non-blocking (see the constructor): this cannot hang the exit.
   */
  flushNow(): void {
    this.#givenUp = true;
    if (this.#failure !== null) return;
    try {
      this.stream.flushSync();
    } catch {
      // stdout failed just now: nothing more can be written
    }
  }

  /**
   * For log.file: opens the path again and writes there from now on (a
   * rotation renamed the file, or removed it). Throws what opening throws;
   * the old file is then kept.
   */
  reopen(): void {
    if (this.#path === undefined || !(this.stream instanceof FileLines)) return;
    this.stream.reopen(openLogFile(this.#path));
  }

  #failed(err: NodeJS.ErrnoException): void {
    if (this.#failure !== null) return;
    this.#failure = err.code ?? err.message;
    const kib = Math.round(this.#backlogBytes / 1024);
    this.#say(`socksgate: the log cannot be written to ${this.#path ?? 'stdout'} (${err.message}); up to ${kib} KiB of lines wait, newer ones are dropped and counted`);
  }

  #caughtUp(): void {
    if (this.#failure === null && this.#dropped === 0) return;
    const dropped = this.#dropped;
    const after = this.#failure ? ` after ${this.#failure}` : '';
    this.#dropped = 0;
    this.#failure = null;
    this.#log?.warn({ event: 'log-resumed', dropped }, `the log is written again${after}: ${dropped} lines were dropped meanwhile`);
  }
}

/**
 * log.file, opened for appending (so another writer's truncation, as
 * logrotate's copytruncate does, leaves no hole), created 0640. Throws
 * when it cannot be opened, or is not a regular file (only those are
 * written as FileLines writes, and reopened).
 */
export function openLogFile(path: string): number {
  const fd = openSync(path, 'a', 0o640);
  if (!isRegularFile(fd)) {
    closeSync(fd);
    throw new Error(`${path} is not a regular file`);
  }
  return fd;
}

/** Resolves once `begin` calls `done`, or after `timeoutMs`, whichever comes first (`onTimeout` runs then). */
export function doneWithin(timeoutMs: number, begin: (done: () => void) => void, onTimeout = (): void => {}): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      onTimeout();
      resolve();
    }, timeoutMs);
    begin(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
