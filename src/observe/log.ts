/**
 * The access log and lifecycle lines: a subscriber to the server's events.
 * One JSON line per session when it ends (pino), readable when stdout is a
 * terminal.
 */
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { ReloadResult, SocksServer } from '../server/server.js';
import { formatDestination } from '../protocol/address.js';
import type { CloseReason, ListenerInfo, SessionRecord } from './events.js';

export interface LoggerOptions {
  readonly level: string;
  readonly format: 'auto' | 'json' | 'pretty';
  /** Where lines go; default stdout. */
  readonly destination?: NodeJS.WritableStream;
}

export function createLogger(options: LoggerOptions): Logger {
  const usePretty = options.format === 'pretty' || (options.format === 'auto' && !options.destination && process.stdout.isTTY === true);
  const base = { level: options.level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime };
  if (usePretty) {
    return pino(base, pretty({ colorize: process.stdout.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
  }
  if (options.destination) return pino(base, options.destination);
  const stream = pino.destination({ dest: 1, ...STDOUT_BATCHING });
  setInterval(() => stream.flush(), 1000).unref();
  return pino(base, stream);
}

/** POSIX: a write of at most this many bytes to a pipe is never interleaved with another's. */
const PIPE_BUF = 4096;

/**
 * How stdout lines are batched. Lines are gathered into writes of 2–4 KiB
 * (one syscall per line was ~8% of a handshake-heavy profile) and flushed at
 * least once a second, so a quiet proxy's last lines never wait long. Each
 * write holds whole lines and at most PIPE_BUF bytes: workers share one
 * stdout, and a larger write to a pipe could be interleaved with another
 * worker's, splitting lines.
 */
export const STDOUT_BATCHING = { sync: false, minLength: PIPE_BUF / 2, maxWrite: PIPE_BUF } as const;

/** Reasons that mean the client misbehaved or was refused: logged at warn. */
const WARN_REASONS: ReadonlySet<CloseReason> = new Set([
  'protocol-error',
  'handshake-timeout',
  'auth-failed',
  'no-acceptable-method',
  'not-allowed',
]);

/** Subscribes the logger to a server's events. Returns a function that unsubscribes. */
export function attachLogger(server: SocksServer, log: Logger): () => void {
  const onListening = (info: ListenerInfo) => {
    const listener = formatDestination({ host: info.address, port: info.port });
    log.info({ event: 'listening', listener, socks4: info.socks4 }, `listening on ${listener}`);
    log.flush(); // lifecycle lines go out at once; access lines are batched
  };
  const onSession = (record: SessionRecord) => {
    const level = record.reason === 'relay-error' ? 'error' : WARN_REASONS.has(record.reason) ? 'warn' : 'info';
    if (!log.isLevelEnabled(level)) return; // don't build the line for nothing
    log[level]({ event: 'session', ...record }, `session ${record.id} ${record.reason}${record.error ? `: ${record.error}` : ''}`);
  };
  const onListenerError = ({ listener, error }: { listener: string; error: Error }) =>
    log.error({ event: 'listener-error', listener, err: error.message }, `listener ${listener}: ${error.message}`);
  const onDraining = ({ sessions, graceMs }: { sessions: number; graceMs: number }) => {
    log.info({ event: 'draining', sessions, graceMs }, `stopping: ${sessions} sessions may drain for ${graceMs} ms`);
    log.flush();
  };
  const onClose = () => log.info({ event: 'stopped' }, 'stopped');
  const onReload = ({ changed, needsRestart }: ReloadResult) => {
    const what = changed.length > 0 ? `new sessions use ${changed.join(', ')}` : 'nothing changed';
    const restart = needsRestart.length > 0 ? `; not applied until a restart: ${needsRestart.join(', ')}` : '';
    log.info({ event: 'reloaded', changed, needsRestart }, `reloaded: ${what}${restart}`);
    log.flush();
  };

  server.on('listening', onListening);
  server.on('session-close', onSession);
  server.on('listener-error', onListenerError);
  server.on('draining', onDraining);
  server.on('close', onClose);
  server.on('reload', onReload);
  return () => {
    server.off('listening', onListening);
    server.off('session-close', onSession);
    server.off('listener-error', onListenerError);
    server.off('draining', onDraining);
    server.off('close', onClose);
    server.off('reload', onReload);
  };
}
