/**
 * SessionTable: what a Map of sessions by id gives (get, set, delete, size,
 * values), checked against a Map over any sequence of operations, with ids
 * chosen to collide (equal modulo the table's sizes) and to wrap around its
 * end, through growth and shrinking.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { SessionTable } from '../../src/server/session-table.js';

type Op = { readonly kind: 'set' | 'delete' | 'get'; readonly id: number };

/** Ids that share home slots: small ones, multiples of 64 (the smallest table), ones near the end of a table and near 2^53. */
const collidingId = fc.oneof(
  fc.integer({ min: 1, max: 200 }),
  fc.integer({ min: 1, max: 40 }).map((k) => k * 64),
  fc.integer({ min: 1, max: 40 }).map((k) => k * 1024 - 1),
  fc.integer({ min: 0, max: 50 }).map((k) => Number.MAX_SAFE_INTEGER - k),
);

const op: fc.Arbitrary<Op> = fc.record({ kind: fc.constantFrom('set', 'set', 'delete', 'get'), id: collidingId });

function same(table: SessionTable<string>, model: Map<number, string>): void {
  assert.equal(table.size, model.size);
  for (const [id, value] of model) assert.equal(table.get(id), value, `id ${id}`);
  assert.deepEqual(table.values().sort(), [...model.values()].sort());
}

describe('SessionTable', () => {
  test('behaves as a Map over any sequence of sets, deletes and gets', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 600 }), (ops) => {
        const table = new SessionTable<string>();
        const model = new Map<number, string>();
        ops.forEach(({ kind, id }, step) => {
          if (kind === 'set') {
            table.set(id, `s${step}`);
            model.set(id, `s${step}`);
          } else if (kind === 'delete') {
            assert.equal(table.delete(id), model.delete(id), `delete ${id}`);
          } else {
            assert.equal(table.get(id), model.get(id), `get ${id}`);
          }
        });
        same(table, model);
      }),
      { numRuns: 300 },
    );
  });

  test('grows past its first size and shrinks back as sessions end, in any order', () => {
    fc.assert(
      fc.property(fc.integer({ min: 100, max: 3000 }), fc.integer({ min: 1, max: 1e12 }), fc.integer(), (count, first, seed) => {
        const table = new SessionTable<string>();
        const model = new Map<number, string>();
        for (let i = 0; i < count; i++) {
          table.set(first + i, `s${i}`);
          model.set(first + i, `s${i}`);
        }
        same(table, model);
        // End them in a shuffled order, checking along the way.
        const order = [...model.keys()].sort((a, b) => ((a * 2654435761 + seed) % 1013) - ((b * 2654435761 + seed) % 1013) || a - b);
        order.forEach((id, i) => {
          assert.equal(table.delete(id), true);
          model.delete(id);
          if (i % 97 === 0) same(table, model);
        });
        same(table, model);
        assert.equal(table.delete(first), false, 'already gone');
      }),
      { numRuns: 20 },
    );
  });

  test('values() is a copy: deleting while walking it reaches every session', () => {
    const table = new SessionTable<number>();
    for (let id = 1; id <= 500; id++) table.set(id * 64, id);
    const seen: number[] = [];
    for (const value of table.values()) {
      seen.push(value);
      table.delete(value * 64);
    }
    assert.equal(seen.length, 500);
    assert.equal(table.size, 0);
  });

  test('an id that is not a positive whole number below 2^53 is refused', () => {
    const table = new SessionTable<string>();
    for (const id of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
      assert.throws(() => table.set(id, 'x'), RangeError, String(id));
    }
    assert.equal(table.size, 0);
  });
});
