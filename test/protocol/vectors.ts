/**
 * Helpers shared by the codec tests in this folder: hex vectors, the
 * expectations on a decoder's result, and the checks every decoder gets
 * (each strict prefix of a message is NEED_MORE, trailing bytes are left
 * alone, a nonzero offset works, arbitrary input only ever throws a
 * SocksError). Each test file keeps the helpers only it needs.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import {
  MAX_DOMAIN_LENGTH,
  NEED_MORE,
  type Decoded,
  type Destination,
  type NeedMore,
  ipv6ToString,
} from '../../src/protocol/index.js';
import { SocksError, type SocksErrorCode } from '../../src/errors.js';

// ---------------------------------------------------------------- bytes

/** '05 01 00' → <Buffer 05 01 00>; whitespace is ignored. */
export function hex(s: string): Buffer {
  const clean = s.replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex vector: ${s}`);
  return Buffer.from(clean, 'hex');
}

/** UTF-8 text as hex, for credential and USERID vectors. */
export function utf8(s: string): string {
  return Buffer.from(s, 'utf8').toString('hex');
}

/** Latin-1 (so also ASCII) text as hex, to keep domain, USERID and host name vectors readable. */
export function ascii(s: string): string {
  return Buffer.from(s, 'latin1').toString('hex');
}

// ---------------------------------------------------------------- results

/** A codec's decoder: the message read at `at`, or NEED_MORE. */
export type Decoder<T> = (buf: Uint8Array, at: number) => Decoded<T> | NeedMore;

export function expectDecoded<T>(result: Decoded<T> | NeedMore): Decoded<T> {
  if (result === NEED_MORE) assert.fail('expected a decoded message, got NEED_MORE');
  return result;
}

export function assertSocksError(fn: () => unknown, code: SocksErrorCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SocksError, `expected a SocksError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

/** `fn` throws a RangeError (a caller's mistake, not a SocksError) whose message names `argument`. */
export function assertRangeError(fn: () => unknown, argument: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof RangeError, `expected a RangeError, got ${String(err)}`);
    assert.ok(!(err instanceof SocksError));
    assert.ok(err.message.startsWith(`${argument} `), `the message names ${argument}: ${err.message}`);
    return true;
  });
}

/** Offsets and limits every decoder refuses: -1 and 1.5 read the wrong bytes or threw a TypeError, NaN a TypeError or NEED_MORE. */
export const NOT_INDEXES: readonly number[] = [-1, -0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 32];

/** Runs `fn`; anything it throws must be a SocksError. */
export function assertThrowsOnlySocksError(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof SocksError, `non-SocksError thrown: ${String(err)}`);
  }
}

/**
 * For the message that starts at `at` in `buf` and ends at `end`: each strict
 * prefix of it (`buf` cut after `at + n` bytes, decoded at `at`) is NEED_MORE.
 */
export function assertEveryStrictPrefixNeedsMore<T>(decode: Decoder<T>, buf: Uint8Array, at = 0, end = buf.length): void {
  for (let n = 0; n < end - at; n++) {
    assert.equal(decode(buf.subarray(0, at + n), at), NEED_MORE, `prefix of ${n} bytes${at > 0 ? ` at offset ${at}` : ''}`);
  }
}

/**
 * Decodes arbitrary bytes at `offset`: a SocksError and NEED_MORE are fine,
 * anything else thrown fails. A decoded message is at least `minLength` bytes,
 * fits in `buf`, and each strict prefix of it is NEED_MORE. Returns the
 * decoded message, or undefined when there was none.
 */
export function checkArbitraryBytes<T>(decode: Decoder<T>, buf: Uint8Array, offset = 0, minLength = 1): Decoded<T> | undefined {
  let r: Decoded<T> | NeedMore;
  try {
    r = decode(buf, offset);
  } catch (err) {
    assert.ok(err instanceof SocksError, `non-SocksError thrown: ${String(err)}`);
    return undefined;
  }
  if (r === NEED_MORE) return undefined;
  assert.ok(r.bytesRead >= minLength && offset + r.bytesRead <= buf.length);
  assertEveryStrictPrefixNeedsMore(decode, buf, offset, offset + r.bytesRead);
  return r;
}

/** Values a one-byte field refuses: each was written as some other byte (256 as 0, -1 as 0xff, 1.5 as 1, NaN as 0). */
export const NOT_BYTES: readonly number[] = [256, 257, 511, -1, -256, 1.5, NaN, Infinity, 2 ** 32];

// ---------------------------------------------------------------- vector tables

export interface Vector<T> {
  readonly name: string;
  readonly bytes: string;
  readonly value: T;
  /** The encoder writes a different (canonical) form; check decoding only. */
  readonly decodeOnly?: boolean;
}

export interface BadVector {
  readonly name: string;
  readonly bytes: string;
  readonly code: SocksErrorCode;
}

/** What a message is wrapped in to test offsets: bytes before it and, where the codec allows, bytes after it. */
export interface Framing {
  readonly junk: Buffer;
  readonly trailer?: Buffer;
}

/**
 * A describe per vector: decoding, encoding (unless decodeOnly), NEED_MORE
 * for every strict prefix at 0 and after `junk`, and decoding with `trailer`
 * after it, at 0 and after `junk`.
 */
export function validVectors<T>(
  decode: Decoder<T>,
  encode: (value: T) => Buffer,
  vectors: readonly Vector<T>[],
  { junk, trailer = Buffer.alloc(0) }: Framing,
): void {
  for (const v of vectors) {
    describe(v.name, () => {
      const bytes = hex(v.bytes);

      it('decodes to the expected value and length', () => {
        const r = expectDecoded(decode(bytes, 0));
        assert.deepEqual(r.value, v.value);
        assert.equal(r.bytesRead, bytes.length);
      });

      if (!v.decodeOnly) {
        it('encodes to the exact bytes', () => {
          assert.deepEqual(encode(v.value), bytes);
        });
      }

      it('returns NEED_MORE for every strict prefix, at 0 and at an offset', () => {
        assertEveryStrictPrefixNeedsMore(decode, bytes);
        assertEveryStrictPrefixNeedsMore(decode, Buffer.concat([junk, bytes]), junk.length);
      });

      it('refuses an offset that is not an integer >= 0 with a RangeError naming at', () => {
        const framed = Buffer.concat([junk, bytes, trailer]);
        for (const at of NOT_INDEXES) {
          assertRangeError(() => decode(bytes, at), 'at');
          assertRangeError(() => decode(framed, at), 'at');
        }
      });

      it('does not consume trailing bytes, and decodes at a nonzero offset', () => {
        const r1 = expectDecoded(decode(Buffer.concat([bytes, trailer]), 0));
        assert.deepEqual(r1.value, v.value);
        assert.equal(r1.bytesRead, bytes.length);

        const r2 = expectDecoded(decode(Buffer.concat([junk, bytes, trailer]), junk.length));
        assert.deepEqual(r2.value, v.value);
        assert.equal(r2.bytesRead, bytes.length);
      });
    });
  }
}

/**
 * A test per vector, named "<name> → <code>": decoding it throws that code,
 * alone and (with `framing`) after `junk` and before `trailer`. `decode` gets
 * the vector too, for decoders that take per-vector options.
 */
export function badVectors<V extends BadVector>(
  decode: (buf: Uint8Array, at: number, v: V) => unknown,
  vectors: readonly V[],
  framing?: Framing,
): void {
  for (const v of vectors) {
    it(`${v.name} → ${v.code}`, () => {
      const bytes = hex(v.bytes);
      assertSocksError(() => decode(bytes, 0, v), v.code);
      if (framing) {
        const { junk, trailer = Buffer.alloc(0) } = framing;
        assertSocksError(() => decode(Buffer.concat([junk, bytes, trailer]), junk.length, v), v.code);
      }
    });
  }
}

// ---------------------------------------------------------------- arbitraries

/**
 * The bytes a host name may have: printable ASCII but the backslash, which
 * the resolver would read as an escape (BACKSLASH_REFUSED).
 */
export const HOST_BYTES: readonly number[] = Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => 0x21 + i).filter((c) => c !== 0x5c);
/** One character of a host name. */
export const arbHostCharacter = fc.constantFrom(...HOST_BYTES).map((c) => String.fromCharCode(c));

const printableHost = fc.string({
  unit: arbHostCharacter,
  minLength: 1,
  maxLength: MAX_DOMAIN_LENGTH,
});
const port = fc.integer({ min: 0, max: 65535 });

/** Any destination a SOCKS5 address can carry: IPv4, IPv6 (compressed form) or a printable name of 1-255 bytes. */
export const arbDestination: fc.Arbitrary<Destination> = fc.oneof(
  fc.tuple(fc.uint8Array({ minLength: 4, maxLength: 4 }), port).map(([b, p]) => ({
    kind: 'ipv4' as const,
    host: Array.from(b).join('.'),
    port: p,
  })),
  fc.tuple(fc.uint8Array({ minLength: 16, maxLength: 16 }), port).map(([b, p]) => ({
    kind: 'ipv6' as const,
    host: ipv6ToString(b),
    port: p,
  })),
  fc.tuple(printableHost, port).map(([h, p]) => ({ kind: 'domain' as const, host: h, port: p })),
);

// ---------------------------------------------------------------- arbitraries an encoder may refuse

/** -0 is left out: it is written as 0, which is -0 to === but not to deepStrictEqual. */
const anyNumber = fc.oneof(fc.double(), fc.integer({ min: -70000, max: 140000 }), fc.constantFrom(NaN, Infinity, -Infinity, 2 ** 32, 2 ** 32 + 80)).filter((n) => !Object.is(n, -0));

/** Mostly a byte, else any number: what a one-byte field is given. */
export const arbAnyByte: fc.Arbitrary<number> = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 255 }), weight: 3 },
  { arbitrary: fc.oneof(anyNumber, fc.constantFrom(-1, 256, 1.5)), weight: 1 },
);

/** Mostly a port, else any number. */
export const arbAnyPort: fc.Arbitrary<number> = fc.oneof(
  { arbitrary: port, weight: 3 },
  { arbitrary: fc.oneof(anyNumber, fc.constantFrom(-1, 65536, 1.5)), weight: 1 },
);

/** Any UTF-16 code unit, lone surrogates too. */
const anyUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
const latin1Unit = fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c));

/** Text of any kind: printable ASCII, Latin-1, any code unit, any code point; empty, short, and around 255. */
export const arbAnyText: fc.Arbitrary<string> = fc.oneof(
  printableHost,
  fc.string({ unit: latin1Unit, maxLength: 12 }),
  fc.string({ unit: anyUnit, maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.string({ unit: fc.oneof(printableHost.map((s) => s[0]!), latin1Unit, anyUnit), minLength: 250, maxLength: 260 }),
  fc.constantFrom('', ' ', 'a b', 'a\0b', '\0', 'café.com', '日本.jp', 'xn--wgv71a.jp'),
);

/** Spellings an IP host may be given in, good and bad. */
export const arbAnyIpText: fc.Arbitrary<string> = fc.oneof(
  fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Array.from(b).join('.')),
  fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => ipv6ToString(b)),
  // The full form, no compression, upper case: the same address in another spelling.
  fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b).toString('hex').toUpperCase().match(/..../g)!.join(':')),
  fc.constantFrom('0.0.0.1', '0.0.0.255', '01.2.3.4', '1.2.3', '1.2.3.4.5', '::ffff:1.2.3.4', 'fe80::1%eth0', '::1', '1:2:3', ''),
);

/** Any Destination-shaped value: each kind with any host and port, and a kind that is none of the three. */
export const arbAnyDestination: fc.Arbitrary<Destination> = fc.oneof(
  { arbitrary: arbDestination, weight: 2 },
  {
    arbitrary: fc
      .tuple(fc.constantFrom('ipv4', 'ipv6', 'domain', 'name'), fc.oneof(arbAnyIpText, arbAnyText), arbAnyPort)
      .map(([kind, host, p]) => ({ kind, host, port: p }) as Destination),
    weight: 3,
  },
);

/** The same destination: ipv4 and domain exactly, an IPv6 address as the same 16 bytes (it is read back in one spelling). */
export function assertSameDestination(actual: Destination, expected: Destination): void {
  if (expected.kind === 'ipv6' && actual.kind === 'ipv6') {
    assert.equal(actual.port, expected.port);
    assert.equal(actual.host, ipv6ToString(Uint8Array.from(ipaddr.IPv6.parse(expected.host.replace(/%.*$/, '')).toByteArray())));
    return;
  }
  assert.deepEqual(actual, expected);
}

/**
 * For the values `arb` gives: `encode` either refuses one with a SocksError,
 * or writes bytes that `check` (decoding them) finds to be the same value.
 * Both must happen often enough for the property to mean something.
 */
export function assertAcceptedValuesRoundTrip<T>(arb: fc.Arbitrary<T>, encode: (value: T) => Buffer, check: (bytes: Buffer, value: T) => void): void {
  let accepted = 0;
  let refused = 0;
  fc.assert(
    fc.property(arb, (value) => {
      let bytes: Buffer;
      try {
        bytes = encode(value);
      } catch (err) {
        assert.ok(err instanceof SocksError, `an encoder refuses with a SocksError, not ${String(err)}`);
        refused++;
        return;
      }
      accepted++;
      check(bytes, value);
    }),
    { numRuns: 2000 },
  );
  assert.ok(accepted >= 200 && refused >= 200, `accepted ${accepted}, refused ${refused}`);
}
