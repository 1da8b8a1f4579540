/** fast-check building blocks shared by the generated-input tests. */
import fc from 'fast-check';

/** Mostly the valid value (four times in five), sometimes one of the others. */
export function mostly<T>(good: T, ...others: T[]): fc.Arbitrary<T> {
  return fc.oneof({ weight: 4, arbitrary: fc.constant(good) }, { weight: 1, arbitrary: fc.constantFrom(...others) });
}

/**
 * A fraction in [0, 1), spread evenly: where to cut or split a message.
 * (fc.double leans to its bounds: nine in ten of its values in [0, 1] are
 * below 1e-6, so a cut or split at one of them lands on the first byte.)
 */
export const fraction: fc.Arbitrary<number> = fc.integer({ min: 0, max: 9999 }).map((n) => n / 10_000);
