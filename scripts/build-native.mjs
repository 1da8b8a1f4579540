#!/usr/bin/env node
/**
 * Builds the optional splice(2) relay addon (native/splice.c) into
 * build/socksgate_splice.node with the system C compiler and Node's own
 * headers. It runs at `npm install` (the install script, in a checkout and
 * from the registry alike) and in the test command.
 *
 * Missing pieces (not Linux, no compiler, no headers) are not an error: the
 * addon is optional and socksgate falls back to its pure stream relay. So this
 * script says why it skipped and exits 0, unless --require is given (the test
 * command uses it, because the tests cover the splice relay).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
/** The relay thread and native handshakes, and the native UDP relay on the same thread. */
const sources = ['splice.c', 'udp.c'].map((file) => join(root, 'native', file));
const output = join(root, 'build', 'socksgate_splice.node');
const required = process.argv.includes('--require');

function skip(why) {
  if (required) {
    console.error(`build-native: cannot build the splice addon: ${why}`);
    process.exit(1);
  }
  console.log(`build-native: splice addon not built (${why}); socksgate will use its stream relay`);
  process.exit(0);
}

/** Node's headers: next to this node binary (official builds, nodesource) or in /usr/include/node. */
function headerDir() {
  const candidates = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'];
  return candidates.find((dir) => existsSync(join(dir, 'node_api.h')));
}

if (process.platform !== 'linux') skip(`splice(2) is Linux-only, this is ${process.platform}`);
if (process.env.SOCKSGATE_SKIP_NATIVE === '1') skip('SOCKSGATE_SKIP_NATIVE=1');
const include = headerDir();
if (!include) skip("Node's headers (node_api.h) were not found");
const cc = process.env.CC || 'cc';

mkdirSync(dirname(output), { recursive: true });
const partial = `${output}.${process.pid}.tmp`;
try {
  execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-fPIC', '-shared', '-pthread', '-fvisibility=hidden', `-I${include}`, ...sources, '-o', partial], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  renameSync(partial, output); // never leave a half-written addon where the loader looks
} catch (err) {
  rmSync(partial, { force: true });
  skip(`${cc} failed: ${err.code === 'ENOENT' ? 'no C compiler' : err.message.split('\n')[0]}`);
}
console.log(`build-native: built ${output}`);
