/**
 * How many sessions a server holds at once (`limits.sessions`): every
 * connection from accept to its record counts, whatever its phase or
 * command. Past the limit a new connection is closed as soon as it is
 * accepted, before a byte is read, and recorded as `limit-reached`, so the
 * process keeps descriptors and memory for the sessions it has.
 */
import { readFileSync } from 'node:fs';
import { spliceAddon } from '../relay/splice.js';

/**
 * Descriptors `auto` keeps for what is not a session's own two sockets:
 * listeners, the log, the splice relay's pipes (a pool of up to 64 pipes),
 * name lookups, UDP and BIND sockets. A quarter of the limit when that is
 * fewer (a small `ulimit -n`).
 */
const RESERVED_FILES = 256;

/**
 * Descriptors kept for what is neither a session's two sockets nor a relay
 * pipe: the process's own (about 25), listeners, the log, name lookups, UDP
 * and BIND sockets.
 */
const KEPT_FILES = 64;

/**
 * How many pipes (two descriptors each) the splice relay may hold open
 * besides the sessions of every server at its limit; past that a pipe takes
 * a session's place (native/splice.c, new_pipe). -1 when nothing can be
 * counted: the open-files limit unknown, or a server without a limit.
 */
export function pipeAllowance(openFiles: number | null, sessionLimits: Iterable<number>): number {
  if (openFiles === null) return -1;
  let sessionFiles = 0;
  for (const limit of sessionLimits) sessionFiles += 2 * limit;
  if (!Number.isFinite(sessionFiles)) return -1;
  return Math.min(2 ** 31 - 1, Math.max(0, Math.floor((openFiles - KEPT_FILES - sessionFiles) / 2)));
}

/** Each server's session limit in this process, by server: the descriptors its sessions are counted on for. */
const sessionLimits = new Map<object, number>();

/**
 * Tells the relay thread what the servers' session limits leave of the
 * open-files limit for its pipes (null withdraws a server's): several
 * servers in one process share the thread and the descriptors.
 */
export function reserveSessionDescriptors(owner: object, limit: number | null, openFiles: number | null): void {
  if (limit === null) sessionLimits.delete(owner);
  else sessionLimits.set(owner, limit);
  spliceAddon()?.pipeAllowance(sessionLimits.size === 0 ? -1 : pipeAllowance(openFiles, sessionLimits.values()));
}

/** How often at most `session-limit` is told while connections are refused. */
export const LIMIT_REPORT_EVERY_MS = 60_000;

/**
 * The limit one process applies. A number is the whole server's: each of
 * `sharedBy` processes serving the same listeners (the CLI's workers) takes
 * its share, rounded up. `auto` is this process's own: half of what its
 * open-files limit leaves after a reserve (a relayed session holds two
 * descriptors), so the server refuses a connection rather than accept one
 * it has no descriptor to dial for; Infinity when the limit is unknown.
 */
export function sessionLimit(setting: 'auto' | number, sharedBy: number, openFiles: number | null): number {
  if (setting !== 'auto') return Math.ceil(setting / Math.max(1, sharedBy));
  if (openFiles === null) return Infinity;
  const reserved = Math.min(RESERVED_FILES, Math.floor(openFiles / 4));
  return Math.max(1, Math.floor((openFiles - reserved) / 2));
}

/**
 * This process's soft limit on open files (`ulimit -n`, `LimitNOFILE=`, as
 * Node raised it at start-up), from /proc; null where there is none to read.
 */
export function openFilesLimit(limitsText: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | null {
  let text: string;
  try {
    text = limitsText();
  } catch {
    return null;
  }
  const soft = /^Max open files\s+(\S+)/m.exec(text)?.[1];
  const limit = soft === undefined ? NaN : Number(soft);
  return Number.isSafeInteger(limit) && limit > 0 ? limit : null;
}
