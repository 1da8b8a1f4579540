/**
 * The access log and lifecycle lines: a subscriber to the server's events.
 * One JSON line per session when it ends (pino), readable when stdout is a
 * terminal.
 */
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { ReloadResult, SocksServer } from '../server/server.js';
import { formatDestination } from '../protocol/address.js';
import { type CloseReason, type ListenerInfo, type SessionRecord, sessionsOpen } from './events.js';
import { StdoutSink, doneWithin, openLogFile } from './stdout.js';
import { FileLines } from './file-lines.js';
import { JSON_NUMBER_BOUND, jsonTextBound, writeJsonNumber, writeJsonString, writeJsonText, writeNumberText, writeRaw } from './json-bytes.js';

export interface LoggerOptions {
  readonly level: string;
  readonly format: 'auto' | 'json' | 'pretty';
  /** A file for JSON lines instead of stdout (log.file): appended to, reopened by reopenLog. Opening it may throw. */
  readonly file?: string | null;
  /** Where lines go; default stdout. */
  readonly destination?: NodeJS.WritableStream;
}

export function createLogger(options: LoggerOptions): Logger {
  const usePretty = options.format === 'pretty' || (options.format === 'auto' && !options.destination && !options.file && process.stdout.isTTY === true);
  const base = { level: options.level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime };
  if (usePretty) {
    // `pid` stays: a worker's lines carry it (the base has none, so a single process shows it on `started` only).
    const destination = options.destination ?? 1;
    return pino(base, pretty({ colorize: !options.destination && process.stdout.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'hostname', destination }));
  }
  if (options.destination) return plainJson(pino(base, options.destination));
  const sink = options.file ? fileSink(options.file) : stdoutSink();
  const log = plainJson(pino(base, sink.stream));
  sink.reportTo(log);
  return log;
}

let sharedSink: StdoutSink | null = null;

/**
 * The one sink for stdout, shared by every logger made here that writes
 * there: one batch, so lines keep their order; one flush timer and one exit
 * flush, however many loggers a program makes (each used to keep its own
 * for good).
 */
function stdoutSink(): StdoutSink {
  if (sharedSink) return sharedSink;
  sharedSink = new StdoutSink();
  sinks.set(sharedSink.stream, sharedSink);
  return sharedSink;
}

/** The file sinks by path: as for stdout, loggers writing to one file share one sink (and one descriptor). */
const fileSinks = new Map<string, StdoutSink>();

function fileSink(path: string): StdoutSink {
  let sink = fileSinks.get(path);
  if (sink) return sink;
  sink = new StdoutSink({ fd: openLogFile(path), path });
  fileSinks.set(path, sink);
  sinks.set(sink.stream, sink);
  return sink;
}

/**
 * Opens log.file again, for a rotation that renamed it (SIGHUP). Returns the
 * error when it cannot be opened (the old file is kept), else null; nothing
 * to do for a logger on stdout.
 */
export function reopenLog(log: Logger): Error | null {
  try {
    sinks.get(streamOf(log))?.reopen();
    return null;
  } catch (err) {
    return err as Error;
  }
}

/** The sinks of loggers made here, by stream (child loggers share it). */
const sinks = new WeakMap<object, StdoutSink>();

/**
 * Resolves once the log's batched lines are written, or after `timeoutMs`:
 * a stop does not wait longer on a stdout that stalled or fails.
 */
export function flushLog(log: Logger, timeoutMs: number): Promise<void> {
  const sink = sinks.get(streamOf(log));
  if (sink) return sink.flush(timeoutMs);
  return doneWithin(timeoutMs, (done) => log.flush(() => done()));
}

/**
 * Logs an uncaught exception (or unhandled rejection) at fatal as the process
 * ends: the log says why socksgate stopped, and the stdout sink's exit flush
 * (stdout.ts) takes that line out with the batched access lines. Node's own
 * report on stderr and its exit code stay as they are.
 */
export function logCrashes(log: Logger): void {
  process.on('uncaughtExceptionMonitor', (error, origin) => {
    const what = origin === 'unhandledRejection' ? 'unhandled rejection' : 'uncaught exception';
    const message = error instanceof Error ? error.message : String(error);
    log.fatal({ event: 'crashed', err: error }, `${what}, exiting: ${message}`);
  });
}

/**
 * The streams of loggers made here for JSON lines: session lines for them are
 * written by `sessionLine()`, which gives the same line as pino in half the
 * time. Child loggers share their parent's stream (the CLI's workers add
 * their pid).
 */
const plainJsonStreams = new WeakSet<object>();

function plainJson(log: Logger): Logger {
  plainJsonStreams.add(streamOf(log));
  return log;
}

type PinoInternals = Record<symbol, unknown>;

function streamOf(log: Logger): { write(line: string): unknown } {
  return (log as unknown as PinoInternals)[pino.symbols.streamSym] as { write(line: string): unknown };
}

/**
 * Whether pino would write a session line for `log` exactly as sessionLine()
 * does: a logger made here, or a child of one that added only bindings. A
 * child's own serializers, redaction, log formatter, mixin or message prefix
 * (none of which createLogger sets) keep it on pino's path.
 */
function writesPlainLines(log: Logger): boolean {
  const own = log as unknown as PinoInternals;
  // msgPrefixSym is in pino.symbols but not in its type declarations
  const { serializersSym, stringifiersSym, formattersSym, mixinSym, msgPrefixSym } = pino.symbols as typeof pino.symbols & { readonly msgPrefixSym: symbol };
  return plainJsonStreams.has(streamOf(log))
    && Object.keys(own[serializersSym] as object).every((key) => key === 'err')
    && Object.keys(own[stringifiersSym] as object).length === 0
    && (own[formattersSym] as { log?: unknown }).log === undefined
    && own[mixinSym] === undefined
    && own[msgPrefixSym] === undefined;
}

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
  const stream = streamOf(log);
  const fast = writesPlainLines(log);
  // A regular file (stdout redirected, or log.file): lines are encoded straight into its batch.
  const file = fast && stream instanceof FileLines ? stream : null;
  const onListening = (info: ListenerInfo) => {
    const listener = formatDestination({ host: info.address, port: info.port });
    log.info({ event: 'listening', listener, socks4: info.socks4 }, `listening on ${listener}`);
    log.flush(); // lifecycle lines go out at once; access lines are batched
  };
  const onSession = (record: SessionRecord) => {
    const level = record.reason === 'relay-error' ? 'error' : WARN_REASONS.has(record.reason) ? 'warn' : 'info';
    if (!log.isLevelEnabled(level)) return; // don't build the line for nothing
    if (file && writeSessionLine(file, log.levels.values[level]!, chindings(log), record)) return;
    const msg = sessionMessage(record);
    if (fast) stream.write(sessionLine(log.levels.values[level]!, chindings(log), record, msg));
    else log[level]({ event: 'session', ...record }, msg);
  };
  const onListenerError = ({ listener, error }: { listener: string; error: Error }) => {
    log.error({ event: 'listener-error', listener, err: error.message }, `listener ${listener}: ${error.message}`);
    log.flush(); // rare, and an operator wants it now (at most one a second from the native listeners)
  };
  const onSessionLimit = ({ limit, sessions, refused }: { limit: number; sessions: number; refused: number }) => {
    const since = refused === 1 ? 'refusing new connections' : `${refused} connections refused since the last report`;
    log.warn({ event: 'session-limit', limit, sessions, refused }, `${sessionsOpen(sessions)}, the limit (limits.sessions: ${limit} here): ${since}`);
    log.flush();
  };
  const onDraining = ({ sessions, graceMs }: { sessions: number; graceMs: number }) => {
    log.info({ event: 'draining', sessions, graceMs }, `stopping: ${sessions} sessions may drain for ${graceMs} ms`);
    log.flush();
  };
  const onClose = () => log.info({ event: 'stopped' }, 'stopped');
  const onReload = ({ changed, needsRestart }: ReloadResult) => {
    const what = changed.length > 0 ? `new sessions use ${changed.join(', ')}` : 'nothing changed';
    const restart = needsRestart.length > 0 ? `; not applied until a restart: ${needsRestart.join(', ')}` : '';
    // A change left waiting for a restart is a warning: at log.level warn it would otherwise go unsaid.
    const level = needsRestart.length > 0 ? 'warn' : 'info';
    log[level]({ event: 'reloaded', changed, needsRestart }, `reloaded: ${what}${restart}`);
    log.flush();
    // The one logging setting a reload applies (the format needs a restart);
    // after the line above, which the old level lets through.
    if (changed.includes('log.level')) log.level = server.config.log.level;
  };

  server.on('listening', onListening);
  server.on('session-close', onSession);
  server.on('listener-error', onListenerError);
  server.on('session-limit', onSessionLimit);
  server.on('draining', onDraining);
  server.on('close', onClose);
  server.on('reload', onReload);
  return () => {
    server.off('listening', onListening);
    server.off('session-close', onSession);
    server.off('listener-error', onListenerError);
    server.off('session-limit', onSessionLimit);
    server.off('draining', onDraining);
    server.off('close', onClose);
    server.off('reload', onReload);
  };
}

/** Every field of a session record, in the order of the access line. */
const SESSION_FIELDS = [
  'id', 'listener', 'clientAddress', 'clientPort', 'version', 'authMethod', 'user', 'command', 'requested', 'connected',
  'reply', 'bytesUp', 'bytesDown', 'relay', 'datagramsUp', 'datagramsDown', 'datagramsDropped', 'datagramsDenied',
  'startedAt', 'durationMs',
  'reason', 'error', 'rule',
] as const satisfies ReadonlyArray<keyof SessionRecord>;
// A field added to SessionRecord but not above fails to compile here.
const everyField: Exclude<keyof SessionRecord, (typeof SESSION_FIELDS)[number]> extends never ? true : never = true;
void everyField;

/** The bindings of a child logger (the CLI's workers: `,"pid":N`), as pino has them serialised. */
function chindings(log: Logger): string {
  return (log as unknown as Record<symbol, string>)[pino.symbols.chindingsSym] ?? '';
}

/**
 * A session's access line, as pino would write `log[level]({ event: 'session',
 * ...record }, msg)` for a logger from createLogger(): pino walks the object
 * generically (~4 µs for these 23 fields); this knows the fields (~2 µs).
 */
export function sessionLine(level: number, bindings: string, record: SessionRecord, msg: string): string {
  let line = `{"level":${level}${isoTime()}${bindings},"event":"session"`;
  for (const field of SESSION_FIELDS) line += `,"${field}":${jsonValue(record[field])}`;
  return `${line},"msg":${JSON.stringify(msg)}}\n`;
}

/** The message of a session's access line. */
export function sessionMessage(record: SessionRecord): string {
  return `session ${record.id} ${record.reason}${record.error ? `: ${record.error}` : ''}`;
}

/** `,"id":` and so on: each field's key as the access line has it. */
const FIELD_KEYS = SESSION_FIELDS.map((field) => `,"${field}":`);
const LINE_START = '{"level":';
const EVENT = ',"event":"session"';
const MESSAGE_START = ',"msg":"session ';
const LINE_END = '"}\n';
/** Everything of a line but its variable parts: the keys and punctuation, then the level, the id and the gaps of the message. */
const FIXED_BYTES = LINE_START.length + EVENT.length + FIELD_KEYS.join('').length + MESSAGE_START.length + LINE_END.length
  + 2 * JSON_NUMBER_BOUND + ' : '.length;

/**
 * Writes the line `sessionLine(level, bindings, record, sessionMessage(record))`
 * straight into `file`'s batch, byte for byte the same but without building
 * the string (see json-bytes.ts for why). False if it cannot (the file is
 * failing, or the line may not fit a batch): write the string then.
 */
export function writeSessionLine(file: FileLines, level: number, bindings: string, record: SessionRecord): boolean {
  if (!file.makeRoom(sessionLineBound(bindings, record))) return false;
  const buf = file.batch;
  let at = writeRaw(buf, file.used, LINE_START);
  at = writeNumberText(buf, at, level);
  at = writeRaw(buf, at, isoTime());
  at = writeRaw(buf, at, bindings);
  at = writeRaw(buf, at, EVENT);
  for (let i = 0; i < SESSION_FIELDS.length; i++) {
    at = writeRaw(buf, at, FIELD_KEYS[i]!);
    const value = record[SESSION_FIELDS[i]!];
    at = typeof value === 'string' ? writeJsonString(buf, at, value) : typeof value === 'number' ? writeJsonNumber(buf, at, value) : writeRaw(buf, at, 'null');
  }
  at = writeRaw(buf, at, MESSAGE_START);
  at = writeNumberText(buf, at, record.id);
  at = writeRaw(buf, at, ' ');
  at = writeJsonText(buf, at, record.reason);
  if (record.error) {
    at = writeRaw(buf, at, ': ');
    at = writeJsonText(buf, at, record.error);
  }
  file.commit(writeRaw(buf, at, LINE_END));
  return true;
}

/** The most bytes writeSessionLine() may write for `record`. */
function sessionLineBound(bindings: string, record: SessionRecord): number {
  let bound = FIXED_BYTES + isoTime().length + 3 * bindings.length + jsonTextBound(record.reason.length) + jsonTextBound(record.error?.length ?? 0);
  for (const field of SESSION_FIELDS) {
    const value = record[field];
    bound += typeof value === 'string' ? 2 + jsonTextBound(value.length) : JSON_NUMBER_BOUND;
  }
  return bound;
}

let timeMs = NaN;
let timeField = '';

/**
 * pino's `isoTime` (`,"time":"…"`), kept for the millisecond it names: the
 * native relay reports ended sessions in batches, whose lines mostly share
 * one, and formatting a date is about a fifth of a line's cost.
 */
export function isoTime(now = Date.now()): string {
  if (now !== timeMs) {
    timeMs = now;
    timeField = `,"time":"${new Date(now).toISOString()}"`;
  }
  return timeField;
}

function jsonValue(value: string | number | null): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  return 'null'; // null, and what JSON cannot carry, as pino writes it
}
