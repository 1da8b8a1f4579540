/** The README's library example runs as written and does what it says. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { run } from './helpers/run.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

test('examples/embed.mjs serves one request through an authenticated proxy and prints its record', async () => {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (/_proxy$/i.test(key)) delete env[key];
  const result = await run(process.execPath, [`${ROOT}examples/embed.mjs`], { env, timeoutMs: 30_000 });
  assert.equal(result.code, 0, result.stderr);
  // The record and curl's output race to stdout: compare them as a set.
  const lines = result.stdout.toString().trim().split('\n').map((l) => l.replace(/\d+/g, 'N')).sort();
  assert.deepEqual(lines, ['alice localhost:N client-closed N bytes down', 'hello through socksgate']);
});

test('examples/reuse-port.mjs: two servers on one reserved port serve four requests between them', async () => {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (/_proxy$/i.test(key)) delete env[key];
  const result = await run(process.execPath, [`${ROOT}examples/reuse-port.mjs`], { env, timeoutMs: 30_000 });
  assert.equal(result.code, 0, result.stderr.toString());
  const lines = result.stdout.toString().trim().split('\n');
  assert.equal(lines.length, 4, result.stdout.toString());
  for (const line of lines) assert.match(line, /^(first|second) served 127\.0\.0\.1:\d+$/);
});

test('examples/reload.mjs: a reload applies, two mistakes are refused naming the cause, a listen change waits for a restart; the README shows the file as it is', async () => {
  const result = await run(process.execPath, [`${ROOT}examples/reload.mjs`], { timeoutMs: 30_000 });
  assert.equal(result.code, 0, result.stderr.toString());
  assert.deepEqual(result.stdout.toString().trim().split('\n'), [
    'changed: rules; needs a restart: nothing',
    'refused: rules[0].deny.to.ports[0]: "20-10": the range starts above its end',
    'refused: cannot read users file /nonexistent/users: ENOENT',
    'changed: nothing; needs a restart: listen',
  ]);
  const readme = readFileSync(`${ROOT}README.md`, 'utf8');
  assert.ok(readme.includes(`\`\`\`js\n${readFileSync(`${ROOT}examples/reload.mjs`, 'utf8')}\`\`\``), 'README.md shows examples/reload.mjs verbatim');
});

test('examples/resolver.mjs: two requests by name through a resolver of its own make one lookup on the native engine; the README shows the file as it is', async () => {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (/_proxy$/i.test(key)) delete env[key];
  const result = await run(process.execPath, [`${ROOT}examples/resolver.mjs`], { env, timeoutMs: 30_000 });
  assert.equal(result.code, 0, result.stderr.toString());
  const lines = result.stdout.toString().trim().split('\n');
  assert.deepEqual(lines.slice(0, 2), ['hello from app.internal', 'hello from app.internal']);
  // The node engine (no addon built) asks every time.
  assert.match(lines[2] ?? '', /^(native handshakes: 2 requests, 1 lookup|node handshakes: 2 requests, 2 lookups)$/);
  const readme = readFileSync(`${ROOT}README.md`, 'utf8');
  assert.ok(readme.includes(`\`\`\`js\n${readFileSync(`${ROOT}examples/resolver.mjs`, 'utf8')}\`\`\``), 'README.md shows examples/resolver.mjs verbatim');
});
