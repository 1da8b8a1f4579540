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
    if (fast) stream.write(sessionLine(log.levels.values[level]!, chindings(log), record));
    else log[level]({ event: 'session', ...record }, sessionMessage(record));
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
 * ...record }, sessionMessage(record))` for a logger from createLogger(), for
 * a stream that takes strings (a pipe or a terminal): encoded as a file's
 * lines are (writeSessionLine), then decoded once. pino walks the object
 * generically (~4 µs for these 23 fields); building the string a field at a
 * time took ~3 µs and made ~4.7 KB of garbage; this, ~2 µs and the string.
 */
export function sessionLine(level: number, bindings: string, record: SessionRecord): string {
  const need = sessionLineBytes(level, bindings, record);
  if (need > scratch.length) scratch = Buffer.allocUnsafeSlow(need);
  return scratch.toString('utf8', 0, encodeSessionLine(scratch, 0, level, bindings, record));
}

/** Where sessionLine() encodes; grown for a longer line. */
let scratch = Buffer.allocUnsafeSlow(4096);

/** The message of a session's access line. */
export function sessionMessage(record: SessionRecord): string {
  return `session ${record.id} ${record.reason}${record.error ? `: ${record.error}` : ''}`;
}

/** `,"id":` and so on: each field's key as the access line has it, as bytes (copying them is twice as fast as encoding them). */
const KEY = Object.fromEntries(SESSION_FIELDS.map((field) => [field, Buffer.from(`,"${field}":`)])) as Record<(typeof SESSION_FIELDS)[number], Buffer>;
const EVENT = ',"event":"session"';
const MESSAGE_START = Buffer.from(',"msg":"session ');
const LINE_END = Buffer.from('"}\n');
/** The fields whose values are strings (or null), for the bound; the others are numbers (or null). */
const TEXT_FIELDS = ['listener', 'clientAddress', 'authMethod', 'user', 'command', 'requested', 'connected', 'relay', 'reason', 'error', 'rule'] as const;
/** Everything of a line but its variable parts: the keys and punctuation, the numbers, the quotes, and the message's id and gaps. */
const FIXED_BYTES = SESSION_FIELDS.reduce((sum, field) => sum + KEY[field].length, 0)
  + (SESSION_FIELDS.length - TEXT_FIELDS.length) * JSON_NUMBER_BOUND + TEXT_FIELDS.length * 2
  + MESSAGE_START.length + LINE_END.length + JSON_NUMBER_BOUND + ' : '.length;

/** The start of the lines written last (`{"level":30,"time":"…"…,"event":"session"`): lines written in the same millisecond share it. */
const lastStart = { level: NaN, time: '', bindings: '', bytes: Buffer.alloc(0) };

function lineStart(level: number, bindings: string): Buffer {
  const time = isoTime();
  if (level !== lastStart.level || time !== lastStart.time || bindings !== lastStart.bindings) {
    lastStart.level = level;
    lastStart.time = time;
    lastStart.bindings = bindings;
    lastStart.bytes = Buffer.from(`{"level":${level}${time}${bindings}${EVENT}`);
  }
  return lastStart.bytes;
}

/**
 * Writes sessionLine()'s line straight into `file`'s batch, without making
 * the string (see json-bytes.ts for why). False if it cannot (the file is
 * failing, or the line may not fit a batch): write the string then.
 */
export function writeSessionLine(file: FileLines, level: number, bindings: string, record: SessionRecord): boolean {
  if (!file.makeRoom(sessionLineBytes(level, bindings, record))) return false;
  file.commit(encodeSessionLine(file.batch, file.used, level, bindings, record));
  return true;
}

/** The most bytes a session's access line may take. */
function sessionLineBytes(level: number, bindings: string, record: SessionRecord): number {
  return lineStart(level, bindings).length + sessionLineBound(record);
}

/**
 * Encodes a session's access line at `at`, with sessionLineBytes() of room,
 * and returns its end. The fields are read by name, in SESSION_FIELDS' order
 * (a loop over the names made each read a megamorphic lookup, a fifth of the
 * line's cost).
 */
function encodeSessionLine(buf: Buffer, at: number, level: number, bindings: string, r: SessionRecord): number {
  at = writeBytes(buf, at, lineStart(level, bindings));
  at = writeField(buf, at, KEY.id, r.id);
  at = writeField(buf, at, KEY.listener, r.listener);
  at = writeField(buf, at, KEY.clientAddress, r.clientAddress);
  at = writeField(buf, at, KEY.clientPort, r.clientPort);
  at = writeField(buf, at, KEY.version, r.version);
  at = writeField(buf, at, KEY.authMethod, r.authMethod);
  at = writeField(buf, at, KEY.user, r.user);
  at = writeField(buf, at, KEY.command, r.command);
  at = writeField(buf, at, KEY.requested, r.requested);
  at = writeField(buf, at, KEY.connected, r.connected);
  at = writeField(buf, at, KEY.reply, r.reply);
  at = writeField(buf, at, KEY.bytesUp, r.bytesUp);
  at = writeField(buf, at, KEY.bytesDown, r.bytesDown);
  at = writeField(buf, at, KEY.relay, r.relay);
  at = writeField(buf, at, KEY.datagramsUp, r.datagramsUp);
  at = writeField(buf, at, KEY.datagramsDown, r.datagramsDown);
  at = writeField(buf, at, KEY.datagramsDropped, r.datagramsDropped);
  at = writeField(buf, at, KEY.datagramsDenied, r.datagramsDenied);
  at = writeField(buf, at, KEY.startedAt, r.startedAt);
  at = writeField(buf, at, KEY.durationMs, r.durationMs);
  at = writeField(buf, at, KEY.reason, r.reason);
  at = writeField(buf, at, KEY.error, r.error);
  at = writeField(buf, at, KEY.rule, r.rule);
  at = writeBytes(buf, at, MESSAGE_START);
  at = writeNumberText(buf, at, r.id);
  at = writeRaw(buf, at, ' ');
  at = writeJsonText(buf, at, r.reason);
  if (r.error) {
    at = writeRaw(buf, at, ': ');
    at = writeJsonText(buf, at, r.error);
  }
  return writeBytes(buf, at, LINE_END);
}

function writeBytes(buf: Buffer, at: number, bytes: Buffer): number {
  buf.set(bytes, at);
  return at + bytes.length;
}

function writeField(buf: Buffer, at: number, key: Buffer, value: string | number | null): number {
  at = writeBytes(buf, at, key);
  if (typeof value === 'string') return writeJsonString(buf, at, value);
  return typeof value === 'number' ? writeJsonNumber(buf, at, value) : writeRaw(buf, at, 'null');
}

/** The most bytes writeSessionLine() may write for `r` after the line's start (exported for its test). */
export function sessionLineBound(r: SessionRecord): number {
  return FIXED_BYTES + jsonTextBound(
    r.listener.length + r.clientAddress.length + (r.authMethod?.length ?? 0) + (r.user?.length ?? 0) + (r.command?.length ?? 0)
    + (r.requested?.length ?? 0) + (r.connected?.length ?? 0) + (r.relay?.length ?? 0) + 2 * r.reason.length
    + 2 * (r.error?.length ?? 0) + (r.rule?.length ?? 0),
  );
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
