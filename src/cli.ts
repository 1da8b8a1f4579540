#!/usr/bin/env node
/**
 * The `socksgate` command: the daemon, `--check`, and the `passwd` and
 * `schema` subcommands. Flags and the config file meet in one object that
 * the schema validates, so both report errors the same way.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { availableParallelism } from 'node:os';
import { HELP_HINT, argsProblem } from './cli-args.js';
import { CLI_OPTIONS, CLI_OPTION_VALUES, type Flags, mergeFlags } from './config/flags.js';
import type { Config, ConfigInput } from './config/schema.js';
import type { SocksServer } from './server/server.js';
import { restartSettings } from './config/restart.js';
import {
  WorkerStartError, isWorker, leaveSharedStdioAtExit, onReloadRequests, onStopRequests, reservedPorts, runPrimary, startSettings, tellPrimaryListening,
  workerPortsEnv, workerStartEnv,
} from './workers.js';

// SIGHUP asks a daemon to reload; its default action would kill it. Catch it
// before the heavy modules load (a fifth of a second): one that arrives
// while starting is honoured once the listeners are up (see run()). A worker
// takes reloads from the primary only (onReloadRequests), so it drops its own.
let hupDuringStartup = false;
const earlyHup = () => { if (!isWorker()) hupDuringStartup = true; };
if (process.argv[2] !== 'passwd' && process.argv[2] !== 'schema') process.on('SIGHUP', earlyHup);

// SIGUSR1 would open Node's inspector on 127.0.0.1:9229, where any local
// user could run code as the daemon, and SIGUSR2 would end it without
// draining; operators send both (3proxy reloads on SIGUSR1, logrotate
// scripts often send one). A listener of our own takes them from Node.
for (const signal of ['SIGUSR1', 'SIGUSR2'] as const) {
  process.on(signal, () => process.stderr.write(`socksgate: ${signal} ignored (SIGHUP reloads, SIGTERM stops)\n`));
}

const [
  { ConfigError, readConfigFile },
  { configJsonSchema, workerCount },
  { UsersFileError },
  { attachLogger, createLogger, flushLog, logCrashes, reopenLog },
  { ListenError, RelayEngineError, createServer, keepRestartSettings, reservePorts },
  { runPasswd },
  { readableSecrets },
] = await Promise.all([
  import('./config/load.js'),
  import('./config/schema.js'),
  import('./auth/users.js'),
  import('./observe/log.js'),
  import('./server/server.js'),
  import('./auth/passwd.js'),
  import('./config/secrets.js'),
]).catch(cannotLoad);

/** Loading the modules opens hundreds of files: with a very low descriptor limit it fails, which deserves a line, not a stack. */
function cannotLoad(err: NodeJS.ErrnoException): never {
  const tooFew = err?.code === 'EMFILE' || err?.code === 'ENFILE';
  const hint = tooFew ? ' (too few file descriptors: raise `ulimit -n`, or LimitNOFILE= in a systemd unit)' : '';
  process.stderr.write(`socksgate: cannot load its modules: ${err?.message ?? err}${hint}\n`);
  process.exit(1);
}

const USAGE = `Usage: socksgate [options]
       socksgate passwd FILE USER [--delete] [--cost N]
       socksgate schema

Starts a SOCKS4/4a/5 proxy. Without options: 127.0.0.1:1080, SOCKS5, no auth.

Options:
  -c, --config FILE          YAML config file (flags override it)
  -l, --listen ADDR:PORT     listen address, repeatable ([::1]:1080 for IPv6, or just PORT)
      --socks4               also serve SOCKS4/4a on every listener
  -u, --user NAME:PASSWORD   a user (password or bcrypt hash), repeatable; requires auth
      --users-file FILE      htpasswd-style file of name:bcrypt-hash lines; requires auth
      --auth METHODS         accepted methods in order: none, userpass, or userpass,none
      --allow CIDR           networks allowed to connect, repeatable (default: any)
      --handshake-timeout D  e.g. 10s   --connect-timeout D  e.g. 30s
      --idle-timeout D       e.g. 1h    --shutdown-grace D   e.g. 10s   (bare digits: ms)
      --log-level LEVEL      fatal, error, warn, info, debug, trace, silent
      --log-format FORMAT    auto (readable on a terminal), json, pretty
      --log-file PATH        the log to PATH (appended to, reopened on SIGHUP), not stdout
      --workers N|auto       event loops sharing the port (auto: one per core when
                             listening beyond loopback, else 1)
      --max-sessions N|auto  sessions at once, workers' together (auto: from the
                             open-files limit); past it, connections are closed
      --max-client-sessions N|none  sessions one client (address, IPv6 /64)
                             holds at once, in each worker (default: none)
      --relay-engine E       auto, splice (in the kernel; needs the addon built
                             at install) or stream (Node streams)
      --busy-poll US         microseconds the splice relay polls before it sleeps
                             (0-1000; default 0: off): less latency, more CPU
      --handshake-engine E   auto, native (the addon runs common SOCKS5
                             handshakes; needs the splice relay) or node
      --check                validate the configuration, print problems, and exit
  -h, --help                 this text
  -V, --version              the version
`;

/** How long a stop waits for stdout to take the last log lines (a stalled reader must not hold the exit). */
const STOP_FLUSH_WAIT_MS = 2000;
/** A second stop signal cuts the sessions: how long their access lines may take before the exit. */
const FORCED_CUT_WAIT_MS = 1000;

/** Exit codes: 0 fine, 1 could not run (port in use…), 2 bad usage or configuration. */
async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'passwd') return runPasswd(argv.slice(1));
  if (argv[0] === 'schema') {
    if (argv.length > 1) return fail(`schema takes no arguments: ${argv[1]} ${HELP_HINT}`, 2);
    process.stdout.write(JSON.stringify(configJsonSchema(), null, 2) + '\n');
    return 0;
  }
  let flags: Flags;
  try {
    flags = parseArgs({ args: argv, options: CLI_OPTIONS, allowPositionals: false, strict: true }).values;
  } catch (err) {
    return fail(`${argsProblem(err, argv, CLI_OPTIONS, CLI_OPTION_VALUES)} ${HELP_HINT}`, 2);
  }
  if (flags.help) return write(USAGE, 0);
  if (flags.version) return write(`${version()}\n`, 0);

  let server: SocksServer;
  /** A worker's restart keys whose value in the file differs from the primary's: kept as the primary started. */
  let setAside: string[] = [];
  try {
    const input = readInput(flags);
    const kept = startSettings();
    const built = kept ? keepRestartSettings(input, kept) : { input, needsRestart: [] };
    setAside = built.needsRestart;
    server = createServer(built.input);
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const problem of err.problems) process.stderr.write(`socksgate: config: ${problem}\n`);
      return 2;
    }
    if (err instanceof UsersFileError) return fail(err.message, 2);
    if (err instanceof RelayEngineError) return fail(err.message, 1);
    if (err instanceof WorkerStartError) return fail(err.message, 2);
    throw err;
  }
  if (flags.check) return write(`socksgate: configuration is valid\n`, 0);
  // Named so that `pidof socksgate` finds the daemon (the process is node's):
  // the supervisor or single process only, so a signal sent by that name is
  // sent once, as the supervisor passes it on.
  process.title = isWorker() ? 'socksgate worker' : 'socksgate';
  const workers = workerCount(server.config, availableParallelism());
  if (workers > 1 && !isWorker()) {
    process.off('SIGHUP', earlyHup); // the primary forwards SIGHUP to its workers
    let env = workerStartEnv(restartSettings(server.config));
    // Native handshakes: every worker accepts on a SO_REUSEPORT socket of its own (workers.ts).
    if (server.handshakeEngine === 'native') {
      try {
        env = { ...env, ...workerPortsEnv(reservePorts(server.config.listen)) };
      } catch (err) {
        if (err instanceof ListenError) return fail(err.message, 1);
        throw err;
      }
    }
    return runPrimary({ workers, env, reloadRequested: hupDuringStartup, say: (line) => process.stderr.write(`socksgate: ${line}\n`) });
  }
  const running = run(server, server.config, flags, setAside);
  process.off('SIGHUP', earlyHup); // run() has its own handler now
  return running;
}

/** The config file (when --config names one) with the flags laid over it, not yet validated. */
function readInput(flags: Flags): ConfigInput {
  return mergeFlags(flags.config ? readConfigFile(flags.config) : {}, flags) as ConfigInput;
}

async function run(server: SocksServer, config: Config, flags: Flags, setAside: readonly string[]): Promise<number> {
  let base: ReturnType<typeof createLogger>;
  try {
    base = createLogger(config.log);
  } catch (err) {
    return fail(`cannot open the log file: ${(err as Error).message}`, 2);
  }
  // Workers share stdout: each line says which process wrote it.
  const log = isWorker() ? base.child({ pid: process.pid }) : base;
  attachLogger(server, log);
  logCrashes(log);
  if (isWorker()) leaveSharedStdioAtExit(); // after createLogger: its exit flush comes first
  const warnReadableSecrets = () => {
    for (const problem of readableSecrets(server.config, flags.config)) log.warn({ event: 'secrets-readable' }, problem);
  };
  warnReadableSecrets();
  if (setAside.length > 0) {
    log.warn({ event: 'restart-needed', needsRestart: setAside },
      `the config file changed ${setAside.join(', ')} since socksgate started: this worker keeps the running values until socksgate restarts`);
  }

  // Signals are handled from the start: one that arrives while the listeners
  // are still binding is honoured as soon as they are bound.
  let started = false;
  let requested: NodeJS.Signals | null = null;
  let stopping = false;
  let forced = false;
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => { finish = resolve; });
  const stop = (signal: NodeJS.Signals) => {
    if (!started) {
      requested ??= signal;
      return;
    }
    if (forced) {
      finish(1); // a third signal: no more waiting (the exit flush writes what stdout will take)
      return;
    }
    if (stopping) {
      // The grace ends now: the sessions are cut, and their access lines
      // written, unless that takes longer than the operator should wait.
      forced = true;
      const sessions = server.sessionCount;
      log.warn({ event: 'forced', signal, sessions }, `${signal} again: cutting ${sessions} session${sessions === 1 ? '' : 's'} now and exiting`);
      void server.close({ graceMs: 0 });
      setTimeout(() => finish(1), FORCED_CUT_WAIT_MS);
      return;
    }
    stopping = true;
    log.info({ event: 'stopping', signal }, `${signal}: stopping`);
    server.close().then(() => flushLog(log, STOP_FLUSH_WAIT_MS)).then(() => finish(forced ? 1 : 0));
  };
  onStopRequests(stop);

  // SIGHUP: read the config file (and the users file it names) again, with
  // the same flags over it, and let new sessions use it. The `reloaded` line
  // comes from attachLogger (the server's `reload` event); a failure keeps
  // the running configuration and says why.
  const reload = () => {
    if (!started) {
      hupDuringStartup = true;
      return;
    }
    if (stopping) {
      log.warn({ event: 'reload-ignored', signal: 'SIGHUP' }, 'SIGHUP while stopping: not reloading');
      log.flush();
      return;
    }
    // First, and whatever the config file says now: a rotation renamed the log.
    const reopenFailure = reopenLog(log);
    if (reopenFailure) {
      log.error({ event: 'log-reopen-failed', problem: reopenFailure.message }, `cannot open the log file again, writing on to the one open: ${reopenFailure.message}`);
    }
    try {
      server.reload(readInput(flags));
      warnReadableSecrets();
      base.level = server.config.log.level; // attachLogger sets its own logger's (a worker's child)
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems
        : err instanceof UsersFileError ? [err.message]
        : [(err as Error)?.message ?? String(err)];
      log.error({ event: 'reload-failed', problems }, `reload failed, the running configuration stays: ${problems.join('; ')}`);
      log.flush();
    }
  };
  onReloadRequests(reload, () => {
    log.debug({ event: 'reload-ignored', signal: 'SIGHUP' }, 'SIGHUP to a worker: not reloading; the supervisor passes its SIGHUP to every worker');
  });

  try {
    const ports = reservedPorts();
    // Workers share a numeric limits.sessions (workers is a restart key: the primary's count).
    const sharedBy = isWorker() ? workerCount(server.config, availableParallelism()) : 1;
    await server.listen(ports ? { reusePort: { ports }, sharedBy } : { sharedBy });
  } catch (err) {
    if (!(err instanceof ListenError)) throw err;
    // The log (a file, often) would otherwise show only the draining and stopped lines of the cleanup.
    log.error({ event: 'start-failed', problem: err.message }, `not started: ${err.message}`);
    await flushLog(log, STOP_FLUSH_WAIT_MS);
    return fail(err.message, 1);
  }
  if (isWorker()) tellPrimaryListening();
  const relay = server.relayEngine;
  const handshakes = server.handshakeEngine;
  // A worker's logger already carries its pid.
  const pid = isWorker() ? {} : { pid: process.pid };
  const busyPoll = server.busyPollMicroseconds;
  const polling = busyPoll > 0 ? `, busy polling ${busyPoll} µs` : '';
  // JSON has no Infinity: null is "no limit" (the open-files limit unknown).
  const sessionLimit = Number.isFinite(server.sessionLimit) ? server.sessionLimit : null;
  const limited = sessionLimit === null ? '' : `, at most ${sessionLimit} sessions`;
  log.info({ event: 'started', version: version(), ...pid, worker: isWorker(), relay, handshakes, busyPoll, sessionLimit },
    `socksgate ${version()} started (${relay} relay, ${handshakes} handshakes${polling}${limited})`);
  if (relay !== 'splice' && server.config.relay.busyPollMicroseconds > 0) {
    log.warn({ event: 'busy-poll-unused' }, 'relay.busyPollMicroseconds has no effect: the stream relay has no thread of its own to poll');
  }
  log.flush();
  started = true;
  if (requested) {
    stop(requested);
  } else if (hupDuringStartup) {
    hupDuringStartup = false;
    log.info({ event: 'reload-deferred', signal: 'SIGHUP' }, 'SIGHUP arrived while starting: reloading now');
    reload();
  }
  return finished;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function write(text: string, code: number): number {
  process.stdout.write(text);
  return code;
}

function fail(message: string, code: number): number {
  process.stderr.write(`socksgate: ${message}\n`);
  return code;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`socksgate: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
