import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ResolvedAddress, Resolver } from '../../src/index.js';
import { LookupHandOff } from '../../src/upstream/lookup-hand-off.js';

/** A resolver that answers 192.0.2.1 and counts its lookups. */
function counting(): Resolver & { lookups: number } {
  const r = {
    lookups: 0,
    async resolve(): Promise<readonly ResolvedAddress[]> {
      r.lookups++;
      return [{ address: '192.0.2.1', family: 4 }];
    },
  };
  return r;
}

const KEPT: readonly ResolvedAddress[] = [{ address: '2001:db8::1', family: 6 }, { address: '127.0.0.1', family: 4 }];

describe('LookupHandOff', () => {
  it('answers the same client\'s lookup of the same name once from what was kept, then asks the resolver', async () => {
    const handOff = new LookupHandOff();
    const inner = counting();
    const resolver = handOff.resolver(inner);
    handOff.keep('127.0.0.1', 'two.test', KEPT);
    assert.deepEqual(await resolver.resolve('two.test', { client: '127.0.0.1' }), KEPT);
    assert.equal(inner.lookups, 0);
    assert.deepEqual(await resolver.resolve('two.test', { client: '127.0.0.1' }), [{ address: '192.0.2.1', family: 4 }]);
    assert.equal(inner.lookups, 1, 'taken once');
  });

  it('does not give one client\'s answer to another, nor to a lookup naming no client', async () => {
    const handOff = new LookupHandOff();
    const inner = counting();
    const resolver = handOff.resolver(inner);
    handOff.keep('127.0.0.1', 'two.test', KEPT);
    await resolver.resolve('two.test', { client: '127.0.0.2' });
    await resolver.resolve('two.test');
    await resolver.resolve('other.test', { client: '127.0.0.1' });
    assert.equal(inner.lookups, 3);
    assert.deepEqual(await resolver.resolve('two.test', { client: '127.0.0.1' }), KEPT, 'still kept for its own client');
  });

  it('keeps at most 256 answers, dropping the oldest', async () => {
    const handOff = new LookupHandOff();
    const inner = counting();
    const resolver = handOff.resolver(inner);
    for (let i = 0; i < 257; i++) handOff.keep(`10.0.0.${i % 250}`, `n${i}.test`, KEPT);
    await resolver.resolve('n0.test', { client: '10.0.0.0' });
    assert.equal(inner.lookups, 1, 'the oldest was dropped');
    assert.deepEqual(await resolver.resolve('n256.test', { client: '10.0.0.6' }), KEPT);
    assert.equal(inner.lookups, 1);
  });
});
