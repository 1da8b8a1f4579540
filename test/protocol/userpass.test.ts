import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  MAX_CREDENTIAL_LENGTH,
  NEED_MORE,
  USERPASS_VERSION,
  UserPassStatus,
  type Credentials,
  type Decoded,
  type NeedMore,
  decodeUserPass,
  decodeUserPassStatus,
  encodeUserPass,
  encodeUserPassStatus,
} from '../../src/protocol/index.js';
import { SocksError, type SocksErrorCode } from '../../src/errors.js';

// ---------------------------------------------------------------- helpers

/** '01 00 00' → <Buffer 01 00 00>; whitespace is ignored. */
function hex(s: string): Buffer {
  const clean = s.replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex vector: ${s}`);
  return Buffer.from(clean, 'hex');
}

/** UTF-8 text as hex. */
function utf8(s: string): string {
  return Buffer.from(s, 'utf8').toString('hex');
}

/** One-byte length prefix and the UTF-8 bytes of `s`. */
function field(s: string): string {
  const bytes = Buffer.from(s, 'utf8');
  return bytes.length.toString(16).padStart(2, '0') + bytes.toString('hex');
}

type Decoder<T> = (buf: Uint8Array, at?: number) => Decoded<T> | NeedMore;

function expectDecoded<T>(result: Decoded<T> | NeedMore): Decoded<T> {
  if (result === NEED_MORE) assert.fail('expected a decoded message, got NEED_MORE');
  return result;
}

function assertSocksError(fn: () => unknown, code: SocksErrorCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SocksError, `expected a SocksError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

interface Vector<T> {
  readonly name: string;
  readonly bytes: string;
  readonly value: T;
}

const JUNK = hex('ff 00 01');
const TRAILER = hex('05 01 00 01'); // a pipelined SOCKS5 request head

function validVectors<T>(decode: Decoder<T>, encode: (value: T) => Buffer, vectors: readonly Vector<T>[]): void {
  for (const v of vectors) {
    describe(v.name, () => {
      const bytes = hex(v.bytes);

      it('decodes to the expected value and length', () => {
        const r = expectDecoded(decode(bytes));
        assert.deepEqual(r.value, v.value);
        assert.equal(r.bytesRead, bytes.length);
      });

      it('encodes to the exact bytes', () => {
        assert.deepEqual(encode(v.value), bytes);
      });

      it('returns NEED_MORE for every strict prefix, at 0 and at an offset', () => {
        for (let n = 0; n < bytes.length; n++) {
          assert.equal(decode(bytes.subarray(0, n)), NEED_MORE, `prefix of ${n} bytes`);
          const shifted = Buffer.concat([JUNK, bytes.subarray(0, n)]);
          assert.equal(decode(shifted, JUNK.length), NEED_MORE, `prefix of ${n} bytes at offset`);
        }
      });

      it('does not consume trailing bytes, and decodes at a nonzero offset', () => {
        const r1 = expectDecoded(decode(Buffer.concat([bytes, TRAILER])));
        assert.deepEqual(r1.value, v.value);
        assert.equal(r1.bytesRead, bytes.length);

        const r2 = expectDecoded(decode(Buffer.concat([JUNK, bytes, TRAILER]), JUNK.length));
        assert.deepEqual(r2.value, v.value);
        assert.equal(r2.bytesRead, bytes.length);
      });
    });
  }
}

// ---------------------------------------------------------------- request

const U255 = 'u'.repeat(255);
const P255 = 'p'.repeat(255);

const CREDENTIALS: readonly Vector<Credentials>[] = [
  { name: 'fred / secret', bytes: `01 04 ${utf8('fred')} 06 ${utf8('secret')}`, value: { username: 'fred', password: 'secret' } },
  { name: 'one byte each', bytes: `01 01 ${utf8('a')} 01 ${utf8('b')}`, value: { username: 'a', password: 'b' } },
  { name: 'empty username and password', bytes: '01 00 00', value: { username: '', password: '' } },
  { name: 'empty password', bytes: `01 04 ${utf8('fred')} 00`, value: { username: 'fred', password: '' } },
  { name: 'empty username', bytes: `01 00 06 ${utf8('secret')}`, value: { username: '', password: 'secret' } },
  {
    name: 'UTF-8 username and password',
    bytes: `01 ${field('jürgen')} ${field('пароль🔑')}`,
    value: { username: 'jürgen', password: 'пароль🔑' },
  },
  {
    name: 'password with NUL and spaces is kept as is',
    bytes: `01 01 ${utf8('u')} 05 ${utf8('a b')}00${utf8('c')}`,
    value: { username: 'u', password: 'a b\0c' },
  },
  { name: '255-byte username and password', bytes: `01 ff ${utf8(U255)} ff ${utf8(P255)}`, value: { username: U255, password: P255 } },
];

describe('RFC 1929 username/password request', () => {
  describe('valid vectors', () => {
    validVectors<Credentials>(decodeUserPass, encodeUserPass, CREDENTIALS);
  });

  describe('malformed vectors', () => {
    const BAD: readonly { name: string; bytes: string; code: SocksErrorCode }[] = [
      { name: 'version 0x05 (a SOCKS5 request)', bytes: '05 01 00 01 7f000001 0050', code: 'ERR_BAD_VERSION' },
      { name: 'version 0x00', bytes: `00 04 ${utf8('fred')} 00`, code: 'ERR_BAD_VERSION' },
      { name: 'version 0x02', bytes: '02 00 00', code: 'ERR_BAD_VERSION' },
    ];
    for (const v of BAD) {
      it(`${v.name} → ${v.code}`, () => {
        const bytes = hex(v.bytes);
        assertSocksError(() => decodeUserPass(bytes), v.code);
        assertSocksError(() => decodeUserPass(Buffer.concat([JUNK, bytes]), JUNK.length), v.code);
      });
    }
  });

  it('decodes from a plain Uint8Array view at a nonzero byteOffset', () => {
    const bytes = hex(`01 04 ${utf8('fred')} 06 ${utf8('secret')}`);
    const backing = new ArrayBuffer(64);
    new Uint8Array(backing).fill(0x41);
    const view = new Uint8Array(backing, 5, bytes.length + 3);
    view.set(bytes, 3);
    const r = expectDecoded(decodeUserPass(view, 3));
    assert.deepEqual(r.value, { username: 'fred', password: 'secret' });
    assert.equal(r.bytesRead, bytes.length);
  });

  it('encodeUserPass refuses a field over 255 bytes (counted in UTF-8 bytes)', () => {
    assertSocksError(() => encodeUserPass({ username: 'u'.repeat(256), password: '' }), 'ERR_TOO_LONG');
    assertSocksError(() => encodeUserPass({ username: '', password: 'p'.repeat(256) }), 'ERR_TOO_LONG');
    // 128 × 'é' is 128 characters but 256 bytes.
    assertSocksError(() => encodeUserPass({ username: 'é'.repeat(128), password: '' }), 'ERR_TOO_LONG');
    assert.equal(encodeUserPass({ username: 'é'.repeat(127), password: '' }).length, 3 + 254);
  });

  it('constants', () => {
    assert.equal(USERPASS_VERSION, 0x01);
    assert.equal(MAX_CREDENTIAL_LENGTH, 255);
  });

  it('property: encode → decode round trip', () => {
    const text = fc.string({ unit: 'grapheme', maxLength: 60 }).filter((s) => Buffer.byteLength(s, 'utf8') <= 255);
    fc.assert(
      fc.property(text, text, (username, password) => {
        const bytes = encodeUserPass({ username, password });
        const r = expectDecoded(decodeUserPass(bytes));
        assert.deepEqual(r.value, { username, password });
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: random bytes never throw anything but SocksError', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc.uint8Array({ maxLength: 40 }).map((rest) => Uint8Array.of(USERPASS_VERSION, ...rest)),
    );
    fc.assert(
      fc.property(arb, fc.nat(4), (bytes, offset) => {
        const buf = Buffer.concat([Buffer.alloc(offset, 0x01), bytes]);
        let r: Decoded<Credentials> | NeedMore;
        try {
          r = decodeUserPass(buf, offset);
        } catch (err) {
          assert.ok(err instanceof SocksError, `non-SocksError thrown: ${String(err)}`);
          return;
        }
        if (r === NEED_MORE) return;
        assert.ok(r.bytesRead >= 3 && offset + r.bytesRead <= buf.length);
        for (let n = 0; n < r.bytesRead; n++) assert.equal(decodeUserPass(buf.subarray(0, offset + n), offset), NEED_MORE);
      }),
      { numRuns: 500 },
    );
  });
});

// ---------------------------------------------------------------- status

describe('RFC 1929 status', () => {
  describe('valid vectors', () => {
    validVectors<number>(decodeUserPassStatus, encodeUserPassStatus, [
      { name: 'success', bytes: '01 00', value: UserPassStatus.SUCCESS },
      { name: 'failure', bytes: '01 01', value: UserPassStatus.FAILURE },
      { name: 'unknown status 0xff is kept', bytes: '01 ff', value: 0xff },
    ]);
  });

  describe('malformed vectors', () => {
    for (const bytes of ['05 00', '00 00', '02 01']) {
      it(`${bytes} → ERR_BAD_VERSION`, () => {
        assertSocksError(() => decodeUserPassStatus(hex(bytes)), 'ERR_BAD_VERSION');
        assertSocksError(() => decodeUserPassStatus(Buffer.concat([JUNK, hex(bytes)]), JUNK.length), 'ERR_BAD_VERSION');
      });
    }
  });
});
