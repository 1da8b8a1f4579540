/**
 * What the benchmark driver's --help and bench/README.md say --quick takes:
 * the same, and near what a quick run takes (about 32 s, where --help said
 * "a few seconds in all" and the README "about 25 s").
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** dist/test/bench/help.test.js → dist/bench/run.js, and the project's bench/README.md */
const RUN = fileURLToPath(new URL('../../bench/run.js', import.meta.url));
const README = fileURLToPath(new URL('../../../bench/README.md', import.meta.url));

const QUICK_TAKES = 'about half a minute';

describe('bench --quick, as documented', () => {
  it(`--help and bench/README.md both say it takes ${QUICK_TAKES}`, () => {
    const help = execFileSync(process.execPath, [RUN, '--help'], { encoding: 'utf8' });
    const helpLine = help.split('\n').find((line) => line.trimStart().startsWith('--quick'));
    assert.match(helpLine ?? '', new RegExp(`^\\s*--quick\\s+${QUICK_TAKES}:`), help);
    const readmeLine = readFileSync(README, 'utf8').split('\n').find((line) => line.startsWith('node dist/bench/run.js --quick'));
    assert.match(readmeLine ?? '', new RegExp(`# ${QUICK_TAKES}:`), readmeLine);
  });
});
