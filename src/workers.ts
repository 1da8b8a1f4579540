/**
 * Several event loops on one port: the primary process forks workers and only
 * supervises. With native handshakes the primary reserves each port (a
 * SO_REUSEPORT socket, bound, not listening) and every worker listens on a
 * SO_REUSEPORT socket of its own, accepted on by its addon: the kernel
 * spreads connections among the workers. Otherwise Node's cluster shares each
 * listening socket (the primary accepts and hands connections round). A
 * signal to the primary is passed to every worker, each drains its own
 * sessions, and the primary exits when all have: 0 if every worker stopped
 * cleanly (one still starting, that the signal ended before it had handlers,
 * counts as clean), else 1, naming the worker. A worker that dies
 * unexpectedly is replaced, at most once a second; a replacement that exits
 * before it listens (say the config file broke since the start) is retried
 * after 2, 4, 8… seconds, up to a minute, while the other workers keep serving.
 * SIGHUP to the primary is passed to every worker, each reloads its own
 * configuration (and logs the outcome); the primary itself reads nothing. A
 * worker takes reloads from the primary only (onReloadRequests).
 * Every worker reads the config file when it starts, but keeps the values of
 * the restart keys the primary started with (workerStartEnv), as a reload
 * does: a replacement started after the file changed serves like its siblings.
 */
import cluster, { type Worker } from 'node:cluster';
import { closeSync } from 'node:fs';
import { type RestartSettings, missingRestartKeys } from './config/restart.js';

export interface PrimaryOptions {
  readonly workers: number;
  /** One line for the operator, e.g. to stderr. */
  readonly say: (line: string) => void;
  /** Environment added to each worker's (e.g. workerPortsEnv's). */
  readonly env?: Readonly<Record<string, string>>;
  /** A SIGHUP came while this process was starting: the workers reload once they listen. */
  readonly reloadRequested?: boolean;
}

export function runPrimary(options: PrimaryOptions): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    /** A second SIGINT/SIGTERM came: each worker exits at once on its own second signal. */
    let forced = false;
    let failed = false;
    let listening = 0;
    let lastRespawn = 0;
    /** Replacements in a row that exited before listening: the backoff's exponent. */
    let failedStarts = 0;
    const live = new Set<Worker>();
    /** Workers that are listening: they take stop and reload requests as messages. */
    const ready = new Set<Worker>();
    /** Workers still starting when a SIGHUP came: they get it once listening. */
    const reloadWhenReady = new Set<Worker>();
    /** Workers this process killed with SIGKILL: it said why already. */
    const killed = new WeakSet<Worker>();
    const kill = (worker: Worker) => {
      killed.add(worker);
      worker.process.kill('SIGKILL');
    };
    /**
     * The n-th stop request, passed to a worker. One that listens gets it as
     * a message (see onStopRequests); one still starting gets the signal,
     * which ends it outright before it has handlers.
     */
    const passStop = (worker: Worker, signal: NodeJS.Signals, count: number) => {
      if (!ready.has(worker)) {
        worker.process.kill(signal);
        return;
      }
      const request: StopRequest = { socksgate: STOP, signal, count };
      // A worker exiting meanwhile cannot take it; the signal then ends it as it would have.
      worker.send(request, (err: Error | null) => { if (err) worker.process.kill(signal); });
    };

    /** A worker exiting meanwhile cannot take it, and needs no reload. */
    const passReload = (worker: Worker) => {
      const request: ReloadRequest = { socksgate: RELOAD };
      worker.send(request, () => {});
    };

    const fork = () => {
      const worker = cluster.fork(options.env);
      live.add(worker);
      let listened = false;
      worker.on('message', (message: unknown) => {
        if (listened || (message as { socksgate?: unknown } | null)?.socksgate !== LISTENING) return;
        listened = true;
        failedStarts = 0;
        listening++;
        ready.add(worker);
        if (reloadWhenReady.delete(worker)) passReload(worker);
      });
      worker.once('exit', (code, signal) => {
        live.delete(worker);
        ready.delete(worker);
        reloadWhenReady.delete(worker);
        const how = signal ?? `code ${code}`;
        if (stopping) {
          // A worker still starting has no handlers yet, so the stop signal
          // ends it outright; it had no sessions, so that is a clean stop too.
          const clean = code === 0 || (!listened && (signal === 'SIGTERM' || signal === 'SIGINT'));
          if (!clean) {
            failed = true;
            // Forced, each worker logged its own `forced` line; one killed here was explained here.
            if (!forced && !killed.has(worker)) options.say(`worker ${worker.process.pid} exited (${how}) while stopping`);
          }
          if (live.size === 0) resolve(failed ? 1 : 0);
          return;
        }
        if (listening === 0) {
          // Failed before serving (port in use, bad users file…): the worker said why; stop all.
          stop('startup failure', code ?? 1);
          return;
        }
        let wait = Math.max(0, lastRespawn + 1000 - Date.now());
        if (listened) {
          options.say(`worker ${worker.process.pid} exited (${how}); starting another`);
        } else {
          failedStarts++;
          wait = Math.min(MAX_RETRY_MS, 1000 * 2 ** failedStarts);
          options.say(`worker ${worker.process.pid} exited before listening (${how}); retrying in ${wait / 1000} s`);
        }
        lastRespawn = Date.now() + wait;
        setTimeout(() => { if (!stopping) fork(); }, wait);
      });
    };

    const stop = (why: 'SIGINT' | 'SIGTERM' | 'startup failure', exitCode = 0) => {
      if (stopping) {
        if (forced || why === 'startup failure') return;
        // A second signal: passed on, so each worker exits at once as a
        // single process does, writing its batched access lines and a
        // `forced` line (SIGKILL would lose up to a second of lines).
        forced = true;
        failed = true;
        for (const w of live) passStop(w, why, 2);
        setTimeout(() => {
          if (live.size === 0) return;
          options.say(`${why} again: ${live.size} worker${live.size === 1 ? '' : 's'} still running after ${FORCED_EXIT_MS / 1000} s; killing`);
          for (const w of live) kill(w);
        }, FORCED_EXIT_MS).unref();
        return;
      }
      stopping = true;
      if (exitCode !== 0) failed = true;
      if (live.size === 0) return resolve(failed ? 1 : 0);
      for (const w of live) {
        if (why === 'startup failure') kill(w);
        else passStop(w, why, 1);
      }
    };

    const reload = () => {
      if (stopping) {
        options.say('SIGHUP while stopping: not reloading');
        return;
      }
      options.say(`SIGHUP: asking ${live.size} worker${live.size === 1 ? '' : 's'} to reload`);
      for (const w of live) {
        if (ready.has(w)) passReload(w);
        else reloadWhenReady.add(w);
      }
    };

    const isRepeat = repeatedSignals();
    process.on('SIGINT', () => { if (!isRepeat()) stop('SIGINT'); });
    process.on('SIGTERM', () => { if (!isRepeat()) stop('SIGTERM'); });
    process.on('SIGHUP', reload);
    for (let i = 0; i < options.workers; i++) fork();
    if (options.reloadRequested) {
      options.say('SIGHUP arrived while starting: the workers reload once they listen');
      reload();
    }
  });
}

/**
 * In a worker: leaves the shared stdout and stderr as they are when this
 * process exits. Node puts back, as it exits, the flags it found on them
 * when it started, and a worker starts with them blocking (a forked child's
 * stdio is made blocking before it runs). The flag lives on the file
 * description every worker shares, so a worker exiting first would make
 * its siblings' writes blocking: with a stalled reader, a sibling's next
 * write then hangs in write(2) and its stop waits for that reader for good,
 * past the 2 s its log may take. Node leaves alone a descriptor that is no
 * longer open, so both are closed after the last line is out (the log's own
 * exit flush runs first: its listener was added when it was made).
 */
export function leaveSharedStdioAtExit(): void {
  process.on('exit', () => {
    for (const fd of [1, 2]) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  });
}

/** What the primary sends a listening worker in place of a stop signal. */
const STOP = 'stop';

interface StopRequest {
  readonly socksgate: typeof STOP;
  readonly signal: NodeJS.Signals;
  /** 1: drain; 2: exit now. */
  readonly count: number;
}

function isStopRequest(message: unknown): message is StopRequest {
  const m = message as Partial<StopRequest> | null;
  return typeof m === 'object' && m !== null && m.socksgate === STOP && typeof m.count === 'number'
    && (m.signal === 'SIGINT' || m.signal === 'SIGTERM');
}

/** Where stop requests come from: the process, or a stand-in in tests. */
export interface StopSource {
  on(event: 'SIGINT' | 'SIGTERM', listener: (signal: NodeJS.Signals) => void): unknown;
  on(event: 'message', listener: (message: unknown) => void): unknown;
}

/**
 * Calls `stop(signal)` once per stop request: the first drains, a second
 * exits at once. SIGINT and SIGTERM are requests, and in a worker so are the
 * primary's messages. A signal sent to the whole process group (Ctrl-C in a
 * terminal, coreutils `timeout`, systemd's control-group kill) reaches a
 * worker twice, from the kernel and passed on by the primary, in either
 * order: counted as two, it would end the worker's sessions without their
 * grace. So the two sources are counted apart and the larger count is what
 * was asked. And a signal that comes within REPEAT_MS of the one before is
 * that one again (see repeatedSignals).
 */
export function onStopRequests(
  stop: (signal: NodeJS.Signals) => void, source: StopSource = process, worker = isWorker(), now: () => number = () => performance.now(),
): void {
  const isRepeat = repeatedSignals(now);
  let signals = 0;
  let passedOn = 0;
  let taken = 0;
  const take = (signal: NodeJS.Signals) => {
    while (taken < Math.max(signals, passedOn)) {
      taken++;
      stop(signal);
    }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (isRepeat()) return;
    signals++;
    take(signal);
  };
  source.on('SIGINT', onSignal);
  source.on('SIGTERM', onSignal);
  if (!worker) return;
  source.on('message', (message: unknown) => {
    if (!isStopRequest(message)) return;
    passedOn = Math.max(passedOn, message.count);
    take(message.signal);
  });
}

/** What the primary sends a listening worker in place of SIGHUP. */
const RELOAD = 'reload';

interface ReloadRequest {
  readonly socksgate: typeof RELOAD;
}

function isReloadRequest(message: unknown): message is ReloadRequest {
  return (message as Partial<ReloadRequest> | null)?.socksgate === RELOAD;
}

/** Where reload requests come from: the process, or a stand-in in tests. */
export interface ReloadSource {
  on(event: 'SIGHUP', listener: () => void): unknown;
  on(event: 'message', listener: (message: unknown) => void): unknown;
}

/**
 * Calls `reload()` once per reload request: a SIGHUP in a single process,
 * the primary's message in a worker. A SIGHUP sent to the whole process
 * group (`kill -HUP -- -PGID`) reaches a worker from the kernel as well as
 * through the primary, and two reloads cannot be told from one as two stops
 * can (a second may follow an edit), so a worker leaves its own SIGHUPs to
 * `ignored` (caught all the same: the default action would kill it).
 */
export function onReloadRequests(reload: () => void, ignored: () => void, source: ReloadSource = process, worker = isWorker()): void {
  if (!worker) {
    source.on('SIGHUP', reload);
    return;
  }
  source.on('SIGHUP', ignored);
  source.on('message', (message: unknown) => {
    if (isReloadRequest(message)) reload();
  });
}

/**
 * A stop signal this soon after the last one counted repeats it: coreutils
 * `timeout` signals its child and then the child's whole process group, so
 * the child gets one request twice, microseconds apart; a person asking
 * again (a second Ctrl-C) takes longer.
 */
const REPEAT_MS = 100;

/** A function telling, at each stop signal, whether it repeats the last one counted (within REPEAT_MS). */
export function repeatedSignals(now: () => number = () => performance.now()): () => boolean {
  let last = -Infinity;
  return () => {
    const at = now();
    if (at - last < REPEAT_MS) return true;
    last = at;
    return false;
  };
}

/** After a second stop signal, how long a worker may take to exit before it is killed. */
const FORCED_EXIT_MS = 2000;

/** The longest wait between attempts to replace a worker that cannot start. */
const MAX_RETRY_MS = 60_000;

export function isWorker(): boolean {
  return cluster.isWorker;
}

/** What a worker sends the primary once all its listeners are bound. */
const LISTENING = 'listening';

/** In a worker: tells the primary that this worker serves now. */
export function tellPrimaryListening(): void {
  process.send?.({ socksgate: LISTENING });
}

/** The environment variable carrying the reserved ports to the workers. */
const PORTS_VARIABLE = 'SOCKSGATE_WORKER_PORTS';

/** The environment that hands the workers the ports the primary reserved (in `listen` order). */
export function workerPortsEnv(ports: readonly number[]): Record<string, string> {
  return { [PORTS_VARIABLE]: ports.join(',') };
}

/** The environment variable carrying the primary's restart settings (JSON) to the workers. */
const START_VARIABLE = 'SOCKSGATE_WORKER_START';

/** The environment that hands the workers the settings only a restart changes (config/restart.ts). */
export function workerStartEnv(settings: RestartSettings): Record<string, string> {
  return { [START_VARIABLE]: JSON.stringify(settings) };
}

/** A worker's start-up environment is not what the primary writes (someone changed it). */
export class WorkerStartError extends Error {
  override readonly name = 'WorkerStartError';
}

/** In a worker: the restart settings the primary started with, or null outside a worker. Throws WorkerStartError. */
export function startSettings(): RestartSettings | null {
  const text = isWorker() ? process.env[START_VARIABLE] : undefined;
  return text ? parseStartSettings(text) : null;
}

/** The restart settings in `text` (workerStartEnv's JSON). Throws WorkerStartError naming what is wrong. */
export function parseStartSettings(text: string): RestartSettings {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new WorkerStartError(`${START_VARIABLE} is not JSON (${(err as Error).message}); the primary sets it for its workers`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new WorkerStartError(`${START_VARIABLE} is not a JSON object; the primary sets it for its workers`);
  }
  const missing = missingRestartKeys(value);
  if (missing.length > 0) throw new WorkerStartError(`${START_VARIABLE} has no ${missing.join(', ')}; the primary sets it for its workers`);
  return value as RestartSettings;
}

/** In a worker: the ports the primary reserved, or null when it reserved none (Node's cluster shares the ports). */
export function reservedPorts(): number[] | null {
  const text = isWorker() ? process.env[PORTS_VARIABLE] : undefined;
  return text ? text.split(',').map(Number) : null;
}
