/** fast-check building blocks shared by the generated-input tests. */
import fc from 'fast-check';

/** Mostly the valid value (four times in five), sometimes one of the others. */
export function mostly<T>(good: T, ...others: T[]): fc.Arbitrary<T> {
  return fc.oneof({ weight: 4, arbitrary: fc.constant(good) }, { weight: 1, arbitrary: fc.constantFrom(...others) });
}
