/**
 * How many sessions a server holds at once (`limits.sessions`): every
 * connection from accept to its record counts, whatever its phase or
 * command. Past the limit a new connection is closed as soon as it is
 * accepted, before a byte is read, and recorded as `limit-reached`, so the
 * process keeps descriptors and memory for the sessions it has.
 */
import { readFileSync } from 'node:fs';

/**
 * Descriptors `auto` keeps for what is not a session's own two sockets:
 * listeners, the log, the splice relay's pipes (a pool of up to 64 pipes),
 * name lookups, UDP and BIND sockets. A quarter of the limit when that is
 * fewer (a small `ulimit -n`).
 */
const RESERVED_FILES = 256;

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
