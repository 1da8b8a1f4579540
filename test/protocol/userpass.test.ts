import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  MAX_CREDENTIAL_LENGTH,
  USERPASS_VERSION,
  UserPassStatus,
  type ReceivedCredentials,
  decodeUserPass,
  decodeUserPassStatus,
  encodeUserPass,
  encodeUserPassStatus,
} from '../../src/protocol/index.js';
import {
  type Vector,
  NOT_BYTES,
  arbAnyByte,
  arbAnyText,
  assertAcceptedValuesRoundTrip,
  assertSocksError,
  badVectors,
  checkArbitraryBytes,
  expectDecoded,
  hex,
  utf8,
  validVectors,
} from './vectors.js';

// ---------------------------------------------------------------- helpers

/** One-byte length prefix and the UTF-8 bytes of `s`. */
function field(s: string): string {
  const bytes = Buffer.from(s, 'utf8');
  return bytes.length.toString(16).padStart(2, '0') + bytes.toString('hex');
}

const FRAMING = {
  junk: hex('ff 00 01'),
  trailer: hex('05 01 00 01'), // a pipelined SOCKS5 request head
};
/** Malformed vectors are checked alone and after the junk, with no trailer. */
const JUNK_ONLY = { junk: FRAMING.junk };

// ---------------------------------------------------------------- request

const U255 = 'u'.repeat(255);
const P255 = 'p'.repeat(255);

const CREDENTIALS: readonly Vector<ReceivedCredentials>[] = [
  { name: 'fred / secret', bytes: `01 04 ${utf8('fred')} 06 ${utf8('secret')}`, value: { username: 'fred', password: 'secret', wellFormed: true } },
  { name: 'one byte each', bytes: `01 01 ${utf8('a')} 01 ${utf8('b')}`, value: { username: 'a', password: 'b', wellFormed: true } },
  { name: 'empty username and password', bytes: '01 00 00', value: { username: '', password: '', wellFormed: true } },
  { name: 'empty password', bytes: `01 04 ${utf8('fred')} 00`, value: { username: 'fred', password: '', wellFormed: true } },
  { name: 'empty username', bytes: `01 00 06 ${utf8('secret')}`, value: { username: '', password: 'secret', wellFormed: true } },
  {
    name: 'UTF-8 username and password',
    bytes: `01 ${field('jürgen')} ${field('пароль🔑')}`,
    value: { username: 'jürgen', password: 'пароль🔑', wellFormed: true },
  },
  {
    name: 'password with NUL and spaces is kept as is',
    bytes: `01 01 ${utf8('u')} 05 ${utf8('a b')}00${utf8('c')}`,
    value: { username: 'u', password: 'a b\0c', wellFormed: true },
  },
  { name: '255-byte username and password', bytes: `01 ff ${utf8(U255)} ff ${utf8(P255)}`, value: { username: U255, password: P255, wellFormed: true } },
];

describe('RFC 1929 username/password request', () => {
  describe('valid vectors', () => {
    validVectors<ReceivedCredentials>(decodeUserPass, encodeUserPass, CREDENTIALS, FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(
      decodeUserPass,
      [
        { name: 'version 0x05 (a SOCKS5 request)', bytes: '05 01 00 01 7f000001 0050', code: 'ERR_BAD_VERSION' },
        { name: 'version 0x00', bytes: `00 04 ${utf8('fred')} 00`, code: 'ERR_BAD_VERSION' },
        { name: 'version 0x02', bytes: '02 00 00', code: 'ERR_BAD_VERSION' },
      ],
      JUNK_ONLY,
    );
  });

  it('decodes from a plain Uint8Array view at a nonzero byteOffset', () => {
    const bytes = hex(`01 04 ${utf8('fred')} 06 ${utf8('secret')}`);
    const backing = new ArrayBuffer(64);
    new Uint8Array(backing).fill(0x41);
    const view = new Uint8Array(backing, 5, bytes.length + 3);
    view.set(bytes, 3);
    const r = expectDecoded(decodeUserPass(view, 3));
    assert.deepEqual(r.value, { username: 'fred', password: 'secret', wellFormed: true });
    assert.equal(r.bytesRead, bytes.length);
  });

  it('bytes that are not UTF-8 decode (as U+FFFD) but are marked: "a\\xffb" and "a\\xfeb" must not pass for the same password', () => {
    for (const [bytes, value] of [
      ['01 01 ff 01 62', { username: '\uFFFD', password: 'b', wellFormed: false }],
      [`01 04 ${utf8('rose')} 03 61ff62`, { username: 'rose', password: 'a\uFFFDb', wellFormed: false }],
      [`01 04 ${utf8('rose')} 03 61fe62`, { username: 'rose', password: 'a\uFFFDb', wellFormed: false }],
      [`01 04 ${utf8('rose')} 02 c3a9`, { username: 'rose', password: 'é', wellFormed: true }],
      [`01 04 ${utf8('rose')} 01 c3`, { username: 'rose', password: '\uFFFD', wellFormed: false }], // cut in a character
      [`01 04 ${utf8('rose')} 05 61efbfbd62`, { username: 'rose', password: 'a\uFFFDb', wellFormed: true }], // U+FFFD itself, in UTF-8
    ] as const) {
      assert.deepEqual(expectDecoded(decodeUserPass(hex(bytes))).value, value, bytes);
    }
  });

  it('encodeUserPass refuses a field over 255 bytes (counted in UTF-8 bytes)', () => {
    assertSocksError(() => encodeUserPass({ username: 'u'.repeat(256), password: '' }), 'ERR_TOO_LONG');
    assertSocksError(() => encodeUserPass({ username: '', password: 'p'.repeat(256) }), 'ERR_TOO_LONG');
    // 128 × 'é' is 128 characters but 256 bytes.
    assertSocksError(() => encodeUserPass({ username: 'é'.repeat(128), password: '' }), 'ERR_TOO_LONG');
    assert.equal(encodeUserPass({ username: 'é'.repeat(127), password: '' }).length, 3 + 254);
  });

  it('encodeUserPass refuses a lone surrogate, which UTF-8 cannot carry (it was written as U+FFFD, ef bf bd)', () => {
    for (const bad of ['\ud800', 'a\udfffb', '\ud83d', 'x\ude00']) {
      assertSocksError(() => encodeUserPass({ username: bad, password: 'secret' }), 'ERR_MALFORMED');
      assertSocksError(() => encodeUserPass({ username: 'fred', password: bad }), 'ERR_MALFORMED');
    }
    assert.deepEqual(encodeUserPass({ username: '\u{1f511}', password: '' }), hex('01 04 f09f9491 00'), 'a pair is one character');
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
        assert.deepEqual(r.value, { username, password, wellFormed: true });
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: any credentials encodeUserPass accepts decode back to themselves; anything else is refused with a SocksError', () => {
    // Over 255 UTF-8 bytes, or with a lone surrogate, is refused.
    const text = fc.oneof(arbAnyText, fc.string({ unit: 'binary', minLength: 60, maxLength: 130 }));
    const credentials = fc.record({ username: text, password: text }).map((c) => ({ ...c }));
    assertAcceptedValuesRoundTrip(credentials, encodeUserPass, (bytes, credentials) => {
      const r = expectDecoded(decodeUserPass(bytes));
      assert.deepEqual(r.value, { ...credentials, wellFormed: true });
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc.uint8Array({ maxLength: 40 }).map((rest) => Uint8Array.of(USERPASS_VERSION, ...rest)),
    );
    fc.assert(
      fc.property(arb, fc.nat(4), (bytes, offset) => {
        checkArbitraryBytes(decodeUserPass, Buffer.concat([Buffer.alloc(offset, 0x01), bytes]), offset, 3);
      }),
      { numRuns: 500 },
    );
  });
});

// ---------------------------------------------------------------- status

describe('RFC 1929 status', () => {
  describe('valid vectors', () => {
    validVectors<number>(
      decodeUserPassStatus,
      encodeUserPassStatus,
      [
        { name: 'success', bytes: '01 00', value: UserPassStatus.SUCCESS },
        { name: 'failure', bytes: '01 01', value: UserPassStatus.FAILURE },
        { name: 'unknown status 0xff is kept', bytes: '01 ff', value: 0xff },
      ],
      FRAMING,
    );
  });

  it('encodeUserPassStatus refuses a status that is not an integer 0-255 (256 was written as 0x00, success)', () => {
    for (const status of NOT_BYTES) assertSocksError(() => encodeUserPassStatus(status), 'ERR_MALFORMED');
  });

  it('property: any status encodeUserPassStatus accepts decodes back to itself; anything else is refused with a SocksError', () => {
    assertAcceptedValuesRoundTrip(arbAnyByte, encodeUserPassStatus, (bytes, status) => {
      assert.deepEqual(expectDecoded(decodeUserPassStatus(bytes)), { value: status, bytesRead: 2 });
    });
  });

  describe('malformed vectors', () => {
    const versions = ['05 00', '00 00', '02 01'].map((bytes) => ({ name: bytes, bytes, code: 'ERR_BAD_VERSION' as const }));
    badVectors(decodeUserPassStatus, versions, JUNK_ONLY);
  });
});
