/**
 * cli.ts catches SIGHUP before it loads the heavy modules (a fifth of a
 * second), so a reload asked for while the daemon starts is honoured, not
 * fatal. That holds only while its static imports stay light: this walks the
 * compiled static import graph from cli.js and fails if it reaches the
 * server (or anything else cli.ts loads lazily).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../../src/', import.meta.url));
/** What cli.ts imports dynamically, after installing its SIGHUP handler. */
const LAZY = ['server/server.js', 'config/load.js', 'config/schema.js', 'auth/users.js', 'observe/log.js', 'auth/passwd.js', 'config/secrets.js'];

/** The project files `file` reaches through static `import … from './…'` statements (not `import()`). */
function staticGraph(file: string, seen = new Set<string>()): Set<string> {
  if (seen.has(file)) return seen;
  seen.add(file);
  const text = readFileSync(file, 'utf8');
  for (const match of text.matchAll(/^import\s(?:[^;]*?\sfrom\s)?'(\.[^']+)'/gms)) staticGraph(resolve(dirname(file), match[1]!), seen);
  return seen;
}

describe('cli start-up', () => {
  it('loads none of the lazily imported modules before its SIGHUP handler is installed', () => {
    const reached = [...staticGraph(resolve(SRC, 'cli.js'))].map((f) => relative(SRC, f));
    assert.ok(reached.includes('workers.js'), `the walk follows imports: ${reached.join(', ')}`);
    for (const lazy of LAZY) assert.ok(!reached.includes(lazy), `${lazy} is loaded statically through ${reached.join(', ')}`);
  });
});
