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

/**
 * One UTF-16 code unit or code point of any kind: fast-check's `binary` unit
 * gives whole code points only, never a lone surrogate, so those (and the
 * characters JSON escapes) are mixed in outright.
 */
const anyUnit = fc.oneof(
  fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff', '"', '\\', '\u0000', '\u001f', '\u007f'),
  fc.integer({ min: 0, max: 0xffff }).map((code) => String.fromCharCode(code)),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
);

/** Any string: control characters, quotes, astral planes, lone surrogates. */
export function anyText(maxLength = 64): fc.Arbitrary<string> {
  return fc.string({ unit: anyUnit, maxLength });
}
