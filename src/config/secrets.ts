/**
 * Files holding secrets that others on the host can read: a users file of
 * bcrypt hashes (which a reader can attack offline), or a config file with
 * plain passwords. Said at start and at each reload, never refused: the
 * operator may have reasons (a group of admins), but should know.
 */
import { statSync } from 'node:fs';
import { isBcryptHash } from '../auth/hash-format.js';
import type { Config } from './schema.js';

/** One line per such file, naming it, its mode and the fix; none when the files are private (or unreadable here). */
export function readableSecrets(config: Pick<Config, 'auth'>, configFile: string | undefined): string[] {
  const usersFile = config.auth.usersFile;
  const plain = config.auth.users.some((user) => !isBcryptHash(user.password));
  return [
    usersFile ? problem(usersFile, 'users file') : null,
    configFile && plain ? problem(configFile, 'config file with plain passwords') : null,
  ].filter((line) => line !== null);
}

function problem(file: string, what: string): string | null {
  let mode: number;
  try {
    mode = statSync(file).mode & 0o777;
  } catch {
    return null; // reading it will say what is wrong
  }
  // Its group may read it (root:socksgate 0640 is how a daemon user often gets it), not write it.
  if ((mode & 0o027) === 0) return null;
  return `${what} ${file} is open to others (mode ${mode.toString(8).padStart(4, '0')}): chmod 600 (or 640, for its group to read)`;
}
