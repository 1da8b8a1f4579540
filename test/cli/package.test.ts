/**
 * The package as npm would publish it: the tarball carries what its install
 * script needs to build the addon (native/ and the build script), and that
 * build works from the unpacked tarball alone, away from the checkout.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { run } from '../helpers/run.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'socksgate-pack-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** `npm pack` without lifecycle scripts (dist/ is already built): the tarball's path. */
async function pack(): Promise<string> {
  const result = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], { cwd: ROOT, timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  const [packed] = JSON.parse(result.stdout.toString()) as Array<{ filename: string }>;
  assert.ok(packed, 'npm pack names its tarball');
  return join(work, packed.filename);
}

test('the published package builds its addon at install, from the tarball alone', { timeout: 120_000 }, async () => {
  const tarball = await pack();
  const untar = await run('tar', ['-xzf', tarball, '-C', work], { timeoutMs: 30_000 });
  assert.equal(untar.code, 0, untar.stderr);
  const pkg = join(work, 'package');
  for (const file of ['native/splice.c', 'native/udp.c', 'native/relay.h', 'scripts/build-native.mjs', 'dist/src/cli.js']) {
    assert.ok(existsSync(join(pkg, file)), `${file} is in the tarball`);
  }
  const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  assert.equal(manifest.scripts.install, 'node scripts/build-native.mjs', 'a registry install runs the build (prepare does not run there)');

  // What `npm install socksgate` would run in the unpacked package.
  const build = await run(process.execPath, ['scripts/build-native.mjs', '--require'], { cwd: pkg, timeoutMs: 90_000 });
  assert.equal(build.code, 0, build.stderr);
  const addon = createRequire(import.meta.url)(join(pkg, 'build', 'socksgate_splice.node')) as Record<string, unknown>;
  for (const name of ['udpOpen', 'udpVerdict']) assert.equal(typeof addon[name], 'function', `the built addon has ${name}`);
});
