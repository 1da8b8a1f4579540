/**
 * The benchmark's running order (bench/lib/workloads.ts `schedule`): one
 * workload group at a time for every server, so that the servers' figures for
 * a workload are taken close together, and the servers' order rotated each
 * repetition, so that none always runs first after a change of group.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FULL, GROUPS, describeReps, schedule, workloads } from '../../bench/lib/workloads.js';

describe('bench schedule', () => {
  it('runs each group for every server before the next group', () => {
    const steps = [...schedule({ reps: 1 }, ['a', 'b', 'c'])];
    assert.deepEqual(
      steps.map((s) => `${s.group}:${s.server}`),
      GROUPS.flatMap((g) => [`${g}:a`, `${g}:b`, `${g}:c`]),
    );
  });

  it('rotates the servers by one each repetition, and wraps', () => {
    const firstOfBulk = (rep: number) => [...schedule({ reps: 4 }, ['a', 'b', 'c'])].filter((s) => s.rep === rep && s.group === 'bulk').map((s) => s.server);
    assert.deepEqual(firstOfBulk(1), ['a', 'b', 'c']);
    assert.deepEqual(firstOfBulk(2), ['b', 'c', 'a']);
    assert.deepEqual(firstOfBulk(3), ['c', 'a', 'b']);
    assert.deepEqual(firstOfBulk(4), ['a', 'b', 'c']);
  });

  it('runs every server in every group of every repetition exactly once', () => {
    const steps = [...schedule({ reps: 5 }, ['a', 'b', 'c', 'd'])];
    assert.equal(steps.length, 5 * GROUPS.length * 4);
    assert.equal(new Set(steps.map((s) => `${s.rep}/${s.group}/${s.server}`)).size, steps.length);
  });

  it('gives handshakes and latency groups of their own, apart from bulk transfers', () => {
    const group = (id: string) => workloads(FULL).find((w) => w.id === id)?.group;
    assert.equal(group('upload-8'), 'bulk');
    assert.equal(group('handshake-1'), 'handshake');
    assert.equal(group('latency-16'), 'latency');
    assert.equal(group('udp-1'), 'udp');
    for (const w of workloads(FULL)) assert.ok(GROUPS.includes(w.group), `${w.id}: ${w.group}`);
  });

  it('runs the groups given more repetitions that often, and the others as often as reps says', () => {
    const steps = [...schedule({ reps: 2, groupReps: { handshake: 4 } }, ['a', 'b'])];
    const count = (group: string) => steps.filter((s) => s.group === group).length;
    assert.equal(count('handshake'), 4 * 2);
    assert.equal(count('bulk'), 2 * 2);
    assert.equal(count('latency'), 2 * 2);
    assert.deepEqual(steps.filter((s) => s.rep > 2).map((s) => s.group), ['handshake', 'handshake', 'handshake', 'handshake']);
    assert.equal(describeReps({ reps: 2, groupReps: { handshake: 4 } }), '2 repetitions (4 for handshake)');
    assert.equal(describeReps({ reps: 1 }), '1 repetition');
  });

  it('gives handshakes and latency nine repetitions in a full run', () => {
    assert.equal(describeReps(FULL), '5 repetitions (9 for handshake and latency)');
  });
});
