import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  DEFAULT_SOCKS4_LIMITS,
  NEED_MORE,
  SOCKS4_REPLY_VERSION,
  SOCKS4_VERSION,
  Socks4Command,
  type Decoded,
  type NeedMore,
  type Socks4Limits,
  type Socks4Reply,
  type Socks4Request,
  decodeSocks4Reply,
  decodeSocks4Request,
  encodeSocks4Reply,
  encodeSocks4Request,
} from '../../src/protocol/index.js';
import { SocksError, type SocksErrorCode, Socks4Reply as Socks4ReplyCode } from '../../src/errors.js';
import {
  type BadVector,
  type Decoder,
  type Vector,
  NOT_BYTES,
  NOT_INDEXES,
  arbAnyByte,
  arbAnyDestination,
  arbHostCharacter,
  arbAnyIpText,
  arbAnyPort,
  arbAnyText,
  assertAcceptedValuesRoundTrip,
  assertRangeError,
  ascii,
  assertSocksError,
  assertThrowsOnlySocksError,
  badVectors,
  checkArbitraryBytes,
  expectDecoded,
  hex,
  utf8,
  validVectors,
} from './vectors.js';

// ---------------------------------------------------------------- helpers

interface BadRequest extends BadVector {
  readonly limits?: Socks4Limits;
}

const FRAMING = {
  junk: hex('ff 00 04'),
  trailer: hex('47 45 54 20 2f'), // pipelined payload: "GET /"
};

const FRED = ascii('fred');
const EXAMPLE = ascii('example.com');
const decodeRequest: Decoder<Socks4Request> = (buf, at) => decodeSocks4Request(buf, at);

// ---------------------------------------------------------------- request

const REQUESTS: readonly Vector<Socks4Request>[] = [
  {
    name: 'CONNECT 1.2.3.4:80, empty USERID',
    bytes: '04 01 0050 01020304 00',
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '1.2.3.4', port: 80 }, userId: '', socks4a: false },
  },
  {
    name: 'CONNECT 1.2.3.4:80, USERID fred',
    bytes: `04 01 0050 01020304 ${FRED} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '1.2.3.4', port: 80 }, userId: 'fred', socks4a: false },
  },
  {
    name: 'BIND 0.0.0.0:0 (0.0.0.0 is not SOCKS4a)',
    bytes: '04 02 0000 00000000 00',
    value: { command: Socks4Command.BIND, destination: { kind: 'ipv4', host: '0.0.0.0', port: 0 }, userId: '', socks4a: false },
  },
  {
    name: 'CONNECT 255.255.255.255:65535',
    bytes: '04 01 ffff ffffffff 00',
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '255.255.255.255', port: 65535 }, userId: '', socks4a: false },
  },
  {
    name: '0.1.0.1 is an IP, not SOCKS4a',
    bytes: '04 01 0050 00010001 00',
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '0.1.0.1', port: 80 }, userId: '', socks4a: false },
  },
  {
    name: 'USERID in UTF-8 (as RFC 1929 names are)',
    bytes: `04 01 0050 7f000001 ${utf8('jürgen 日本')} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '127.0.0.1', port: 80 }, userId: 'jürgen 日本', socks4a: false },
  },
  {
    name: 'USERID that is not UTF-8 reads as Latin-1 (it was U+FFFD for each stray byte if read as UTF-8)',
    bytes: `04 01 0050 7f000001 ${ascii('jürgen')} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '127.0.0.1', port: 80 }, userId: 'jürgen', socks4a: false },
    decodeOnly: true, // the encoder writes UTF-8
  },
  {
    name: 'USERID of exactly 255 bytes (the default limit)',
    bytes: `04 01 0050 7f000001 ${ascii('u'.repeat(255))} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'ipv4', host: '127.0.0.1', port: 80 }, userId: 'u'.repeat(255), socks4a: false },
  },
  {
    name: 'SOCKS4a CONNECT example.com:80, USERID fred',
    bytes: `04 01 0050 00000001 ${FRED} 00 ${EXAMPLE} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'domain', host: 'example.com', port: 80 }, userId: 'fred', socks4a: true },
  },
  {
    name: 'SOCKS4a, empty USERID',
    bytes: `04 01 01bb 00000001 00 ${EXAMPLE} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'domain', host: 'example.com', port: 443 }, userId: '', socks4a: true },
  },
  {
    name: 'SOCKS4a with DSTIP 0.0.0.255',
    bytes: `04 01 0050 000000ff 00 ${ascii('a')} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'domain', host: 'a', port: 80 }, userId: '', socks4a: true },
    decodeOnly: true,
  },
  {
    name: 'SOCKS4a host name of exactly 255 bytes (the default limit)',
    bytes: `04 01 0050 00000001 00 ${ascii('h'.repeat(255))} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'domain', host: 'h'.repeat(255), port: 80 }, userId: '', socks4a: true },
  },
  {
    name: 'SOCKS4a host name that is an IP literal stays a name',
    bytes: `04 01 0050 00000001 00 ${ascii('10.0.0.1')} 00`,
    value: { command: Socks4Command.CONNECT, destination: { kind: 'domain', host: '10.0.0.1', port: 80 }, userId: '', socks4a: true },
  },
  {
    name: 'unknown command 0x03 is kept',
    bytes: '04 03 0050 01020304 00',
    value: { command: 0x03, destination: { kind: 'ipv4', host: '1.2.3.4', port: 80 }, userId: '', socks4a: false },
  },
  {
    name: 'unknown command 0xff is kept (SOCKS4a)',
    bytes: `04 ff 0050 00000001 00 ${EXAMPLE} 00`,
    value: { command: 0xff, destination: { kind: 'domain', host: 'example.com', port: 80 }, userId: '', socks4a: true },
  },
];

const userIdOf = (n: number): string => ascii('u'.repeat(n));
const hostOf = (n: number): string => ascii('h'.repeat(n));

const BAD_REQUESTS: readonly BadRequest[] = [
  { name: 'SOCKS5 version', bytes: '05 01 00 01 7f000001 0050', code: 'ERR_BAD_VERSION' },
  { name: 'version byte alone', bytes: '05', code: 'ERR_BAD_VERSION' },
  { name: 'version 0', bytes: '00 5a 0050 01020304 00', code: 'ERR_BAD_VERSION' },
  { name: 'an HTTP request', bytes: ascii('GET / HTTP/1.1\r\n'), code: 'ERR_BAD_VERSION' },
  { name: 'USERID of 256 bytes without NUL', bytes: `04 01 0050 01020304 ${userIdOf(256)}`, code: 'ERR_TOO_LONG' },
  { name: 'USERID of 256 bytes then NUL', bytes: `04 01 0050 01020304 ${userIdOf(256)} 00`, code: 'ERR_TOO_LONG' },
  { name: 'USERID of 1000 bytes without NUL', bytes: `04 01 0050 01020304 ${userIdOf(1000)}`, code: 'ERR_TOO_LONG' },
  {
    name: 'USERID over a custom limit of 4',
    bytes: `04 01 0050 01020304 ${ascii('freda')} 00`,
    code: 'ERR_TOO_LONG',
    limits: { maxUserId: 4, maxHostname: 255 },
  },
  {
    name: 'any USERID with a limit of 0',
    bytes: `04 01 0050 01020304 ${ascii('f')}`,
    code: 'ERR_TOO_LONG',
    limits: { maxUserId: 0, maxHostname: 255 },
  },
  { name: 'SOCKS4a empty host name', bytes: '04 01 0050 00000001 00 00', code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a empty host name after a USERID', bytes: `04 01 0050 00000001 ${FRED} 00 00`, code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a host name of 256 bytes without NUL', bytes: `04 01 0050 00000001 00 ${hostOf(256)}`, code: 'ERR_TOO_LONG' },
  { name: 'SOCKS4a host name of 256 bytes then NUL', bytes: `04 01 0050 00000001 00 ${hostOf(256)} 00`, code: 'ERR_TOO_LONG' },
  {
    name: 'SOCKS4a host name over a custom limit of 3',
    bytes: `04 01 0050 00000001 00 ${ascii('abcd')} 00`,
    code: 'ERR_TOO_LONG',
    limits: { maxUserId: 255, maxHostname: 3 },
  },
  { name: 'SOCKS4a host name with a space', bytes: `04 01 0050 00000001 00 ${ascii('a b')} 00`, code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a host name with LF', bytes: `04 01 0050 00000001 00 ${ascii('a')}0a${ascii('b')} 00`, code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a host name with DEL', bytes: `04 01 0050 00000001 00 7f 00`, code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a host name with a backslash escape', bytes: `04 01 0050 00000001 00 ${ascii('www.evil.tes\\116')} 00`, code: 'ERR_MALFORMED' },
  { name: 'SOCKS4a host name with 0xff', bytes: `04 01 0050 00000001 00 ${ascii('a')}ff 00`, code: 'ERR_MALFORMED' },
];

describe('SOCKS4/4a request', () => {
  describe('valid vectors', () => {
    validVectors<Socks4Request>(decodeRequest, encodeSocks4Request, REQUESTS, FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors((buf, at, v) => decodeSocks4Request(buf, at, v.limits), BAD_REQUESTS, FRAMING);
  });

  describe('field limits', () => {
    const head = hex('04 01 0050 01020304');
    const head4a = hex('04 01 0050 00000001 00');

    /** Feeds `field` byte by byte after `prefix`; returns how many bytes were fed when it threw. */
    function throwsAfter(prefix: Buffer, field: Buffer, limits: Socks4Limits): number {
      for (let n = 0; n <= field.length; n++) {
        const buf = Buffer.concat([prefix, field.subarray(0, n)]);
        let result: Decoded<Socks4Request> | NeedMore;
        try {
          result = decodeSocks4Request(buf, 0, limits);
        } catch (err) {
          assert.ok(err instanceof SocksError && err.code === 'ERR_TOO_LONG', `unexpected error ${String(err)}`);
          return n;
        }
        assert.equal(result, NEED_MORE, `decoded unexpectedly after ${n} bytes`);
      }
      return assert.fail('never threw');
    }

    it('a USERID without NUL throws as soon as it passes the default limit', () => {
      assert.equal(throwsAfter(head, Buffer.alloc(1000, 0x75), DEFAULT_SOCKS4_LIMITS), DEFAULT_SOCKS4_LIMITS.maxUserId + 1);
    });

    it('a USERID without NUL throws as soon as it passes a custom limit', () => {
      assert.equal(throwsAfter(head, Buffer.alloc(100, 0x75), { maxUserId: 10, maxHostname: 255 }), 11);
    });

    it('a SOCKS4a host name without NUL throws as soon as it passes the default limit', () => {
      assert.equal(throwsAfter(head4a, Buffer.alloc(1000, 0x68), DEFAULT_SOCKS4_LIMITS), DEFAULT_SOCKS4_LIMITS.maxHostname + 1);
    });

    it('a SOCKS4a host name without NUL throws as soon as it passes a custom limit', () => {
      assert.equal(throwsAfter(head4a, Buffer.alloc(100, 0x68), { maxUserId: 255, maxHostname: 7 }), 8);
    });

    it('the limits apply to each field separately', () => {
      const limits: Socks4Limits = { maxUserId: 4, maxHostname: 3 };
      const bytes = hex(`04 01 0050 00000001 ${FRED} 00 ${ascii('abc')} 00`);
      const r = expectDecoded(decodeSocks4Request(bytes, 0, limits));
      assert.equal(r.value.userId, 'fred');
      assert.deepEqual(r.value.destination, { kind: 'domain', host: 'abc', port: 80 });
      assert.equal(r.bytesRead, bytes.length);
    });

    it('a limit that is not an integer >= 0 is refused with a RangeError naming it (NaN waited for good)', () => {
      const bytes = hex(`04 01 0050 00000001 ${FRED} 00 ${EXAMPLE} 00`);
      for (const bad of NOT_INDEXES) {
        assertRangeError(() => decodeSocks4Request(bytes, 0, { maxUserId: bad, maxHostname: 255 }), 'limits.maxUserId');
        assertRangeError(() => decodeSocks4Request(bytes, 0, { maxUserId: 255, maxHostname: bad }), 'limits.maxHostname');
        // Also before a byte of the field is there.
        assertRangeError(() => decodeSocks4Request(bytes.subarray(0, 8), 0, { maxUserId: bad, maxHostname: 255 }), 'limits.maxUserId');
      }
    });

    it('the default limits are 255 bytes each', () => {
      assert.deepEqual(DEFAULT_SOCKS4_LIMITS, { maxUserId: 255, maxHostname: 255 });
    });
  });

  it('encodeSocks4Request refuses a destination that is not IPv4 or a name', () => {
    const request: Socks4Request = {
      command: Socks4Command.CONNECT,
      destination: { kind: 'ipv6', host: '::1', port: 80 },
      userId: '',
      socks4a: false,
    };
    assertSocksError(() => encodeSocks4Request(request), 'ERR_MALFORMED');
  });

  describe('encodeSocks4Request refuses what the decoder would not read back as the request', () => {
    const v4 = (host: string, userId = '', socks4a = false): Socks4Request => ({
      command: Socks4Command.CONNECT,
      destination: { kind: 'ipv4', host, port: 80 },
      userId,
      socks4a,
    });
    const v4a = (host: string, userId = '', socks4a = true): Socks4Request => ({
      command: Socks4Command.CONNECT,
      destination: { kind: 'domain', host, port: 80 },
      userId,
      socks4a,
    });
    const REFUSED: readonly [string, Socks4Request, SocksErrorCode][] = [
      ['a USERID with a NUL (it was cut short there)', v4('1.2.3.4', 'a\0b'), 'ERR_MALFORMED'],
      ['a USERID that is one NUL', v4('1.2.3.4', '\0'), 'ERR_MALFORMED'],
      ['a USERID with a NUL, SOCKS4a (the rest was read as the name)', v4a('example.com', 'fred\0evil.example'), 'ERR_MALFORMED'],
      ['a USERID with a lone surrogate (UTF-8 has no bytes for it)', v4('1.2.3.4', 'a\ud800b'), 'ERR_MALFORMED'],
      ['a USERID of 256 characters (the decoder refuses over 255)', v4('1.2.3.4', 'u'.repeat(256)), 'ERR_TOO_LONG'],
      ['a USERID of 128 characters that are 256 bytes of UTF-8', v4('1.2.3.4', 'ü'.repeat(128)), 'ERR_TOO_LONG'],
      ['a SOCKS4a USERID of 256 characters', v4a('example.com', 'u'.repeat(256)), 'ERR_TOO_LONG'],
      ['an empty SOCKS4a name', v4a(''), 'ERR_TOO_LONG'],
      ['a SOCKS4a name of 256 characters (the decoder refuses over 255)', v4a('h'.repeat(256)), 'ERR_TOO_LONG'],
      ['a SOCKS4a name with a space', v4a('a b'), 'ERR_MALFORMED'],
      ['a SOCKS4a name with a NUL (it was cut short there)', v4a('a\0b'), 'ERR_MALFORMED'],
      ['a SOCKS4a name past ASCII', v4a('café.com'), 'ERR_MALFORMED'],
      ['IPv4 0.0.0.1 (it reads as SOCKS4a and waited for a name for good)', v4('0.0.0.1'), 'ERR_MALFORMED'],
      ['IPv4 0.0.0.255', v4('0.0.0.255'), 'ERR_MALFORMED'],
      ['IPv4 with socks4a: true (it decoded with socks4a: false)', v4('1.2.3.4', '', true), 'ERR_MALFORMED'],
      ['a name with socks4a: false (it decoded with socks4a: true)', v4a('example.com', '', false), 'ERR_MALFORMED'],
      [
        'an ipv6 destination spelled as IPv4 (it decoded as kind ipv4)',
        { command: 1, destination: { kind: 'ipv6', host: '1.2.3.4', port: 80 }, userId: '', socks4a: false },
        'ERR_MALFORMED',
      ],
    ];
    for (const [name, request, code] of REFUSED) {
      it(`${name} → ${code}`, () => assertSocksError(() => encodeSocks4Request(request), code));
    }

    it('the edges are written: a USERID of 255 bytes of UTF-8, IPv4 0.0.0.0 and 0.1.0.1, a name of 255', () => {
      const userId = `u${'ÿ'.repeat(127)}`;
      assert.deepEqual(encodeSocks4Request(v4('1.2.3.4', userId)), hex(`04 01 0050 01020304 75 ${'c3bf'.repeat(127)} 00`));
      assert.deepEqual(encodeSocks4Request(v4('1.2.3.4', '日本')), hex(`04 01 0050 01020304 ${utf8('日本')} 00`));
      assert.deepEqual(encodeSocks4Request(v4('0.0.0.0')), hex('04 01 0050 00000000 00'));
      assert.deepEqual(encodeSocks4Request(v4('0.1.0.1')), hex('04 01 0050 00010001 00'));
      assert.deepEqual(encodeSocks4Request(v4a('h'.repeat(255), '\x01')), hex(`04 01 0050 00000001 01 00 ${hostOf(255)} 00`));
    });
  });

  it('encodeSocks4Request refuses a command that is not an integer 0-255 (256 was written as 0)', () => {
    for (const command of NOT_BYTES) {
      const request: Socks4Request = { command, destination: { kind: 'ipv4', host: '1.2.3.4', port: 80 }, userId: '', socks4a: false };
      assertSocksError(() => encodeSocks4Request(request), 'ERR_MALFORMED');
    }
  });

  it('encodeSocks4Request refuses a port that is not an integer 0-65535 (it threw a RangeError, or wrote 1.5 as 1 and NaN as 0)', () => {
    for (const port of [65536, -1, 1.5, NaN]) {
      for (const d of [{ kind: 'ipv4', host: '1.2.3.4' }, { kind: 'domain', host: 'example.com' }] as const) {
        const request: Socks4Request = { command: Socks4Command.CONNECT, destination: { ...d, port }, userId: '', socks4a: d.kind === 'domain' };
        assertSocksError(() => encodeSocks4Request(request), 'ERR_MALFORMED');
      }
    }
  });

  /** Requests the encoder writes: IPv4 other than 0.0.0.x (x ≠ 0) or a printable name, a NUL-free USERID, each up to 255 bytes. */
  const userIdText = fc
    .string({ unit: fc.oneof(fc.integer({ min: 1, max: 255 }).map((c) => String.fromCharCode(c)), fc.constantFrom('日', '😀')), maxLength: 255 })
    .filter((t) => Buffer.byteLength(t) <= 255);
  const hostname = fc.string({
    unit: arbHostCharacter,
    minLength: 1,
    maxLength: 255,
  });
  const validPort = fc.integer({ min: 0, max: 65535 });
  const ipv4 = fc
    .uint8Array({ minLength: 4, maxLength: 4 })
    .filter((b) => !(b[0] === 0 && b[1] === 0 && b[2] === 0 && b[3] !== 0))
    .map((b) => Array.from(b).join('.'));
  const command = fc.integer({ min: 0, max: 255 });
  const validRequest: fc.Arbitrary<Socks4Request> = fc.oneof(
    fc.tuple(command, ipv4, validPort, userIdText).map(([cmd, host, p, userId]) => ({
      command: cmd,
      destination: { kind: 'ipv4' as const, host, port: p },
      userId,
      socks4a: false,
    })),
    fc.tuple(command, hostname, validPort, userIdText).map(([cmd, host, p, userId]) => ({
      command: cmd,
      destination: { kind: 'domain' as const, host, port: p },
      userId,
      socks4a: true,
    })),
  );

  it('property: encode → decode round trip', () => {
    fc.assert(
      fc.property(validRequest, (req) => {
        const bytes = encodeSocks4Request(req);
        const r = expectDecoded(decodeSocks4Request(bytes));
        assert.deepEqual(r.value, req);
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: any request encodeSocks4Request accepts decodes back to itself (default limits); anything else is refused with a SocksError', () => {
    const destination = fc.oneof(
      arbAnyDestination,
      fc.tuple(fc.nat(3), arbAnyPort).map(([x, p]) => ({ kind: 'ipv4' as const, host: `0.0.0.${x}`, port: p })),
    );
    const anyRequest = fc
      .record({ command: arbAnyByte, destination, userId: arbAnyText, flag: fc.constantFrom<'kind' | boolean>('kind', 'kind', 'kind', true, false) })
      .map(({ flag, ...r }): Socks4Request => ({ ...r, socks4a: flag === 'kind' ? r.destination.kind === 'domain' : flag }));
    const request = fc.oneof(anyRequest, validRequest);
    assertAcceptedValuesRoundTrip(request, encodeSocks4Request, (bytes, req) => {
      const r = expectDecoded(decodeSocks4Request(bytes));
      assert.deepEqual(r.value, req);
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc.tuple(fc.uint8Array({ minLength: 7, maxLength: 7 }), fc.uint8Array({ maxLength: 40 })).map(([h, rest]) =>
        Uint8Array.of(SOCKS4_VERSION, ...h, ...rest),
      ),
      // SOCKS4a head with a short USERID, so the host name path gets exercised.
      fc.tuple(fc.uint8Array({ maxLength: 40 })).map(([rest]) => Uint8Array.of(4, 1, 0, 80, 0, 0, 0, 1, 0, ...rest)),
    );
    const limits = fc.record({ maxUserId: fc.nat(20), maxHostname: fc.nat(20) });
    fc.assert(
      fc.property(arb, limits, fc.nat(4), (bytes, lim, offset) => {
        const buf = Buffer.concat([Buffer.alloc(offset, 0xab), bytes]);
        checkArbitraryBytes((b, at) => decodeSocks4Request(b, at, lim), buf, offset, 9);
      }),
      { numRuns: 1000 },
    );
  });
});

// ---------------------------------------------------------------- reply

const REPLIES: readonly Vector<Socks4Reply>[] = [
  { name: 'granted, 0.0.0.0:0', bytes: '00 5a 0000 00000000', value: { reply: Socks4ReplyCode.GRANTED, port: 0, host: '0.0.0.0' } },
  { name: 'granted, 10.1.2.3:1080', bytes: '00 5a 0438 0a010203', value: { reply: Socks4ReplyCode.GRANTED, port: 1080, host: '10.1.2.3' } },
  { name: 'rejected', bytes: '00 5b 0000 00000000', value: { reply: Socks4ReplyCode.REJECTED, port: 0, host: '0.0.0.0' } },
  { name: 'no identd', bytes: '00 5c ffff ffffffff', value: { reply: Socks4ReplyCode.NO_IDENTD, port: 65535, host: '255.255.255.255' } },
  { name: 'identd mismatch', bytes: '00 5d 0050 7f000001', value: { reply: Socks4ReplyCode.IDENTD_MISMATCH, port: 80, host: '127.0.0.1' } },
  { name: 'unknown code 0x00 is kept', bytes: '00 00 0000 00000000', value: { reply: 0x00, port: 0, host: '0.0.0.0' } },
  { name: 'unknown code 0xff is kept', bytes: '00 ff 0001 01020304', value: { reply: 0xff, port: 1, host: '1.2.3.4' } },
];

describe('SOCKS4 reply', () => {
  describe('valid vectors', () => {
    validVectors<Socks4Reply>(decodeSocks4Reply, (r) => encodeSocks4Reply(r.reply, r.port, r.host), REPLIES, FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(
      decodeSocks4Reply,
      [
        { name: 'version 4', bytes: '04 5a 0000 00000000', code: 'ERR_BAD_VERSION' },
        { name: 'version 5', bytes: '05 00 00 01 00000000 0000', code: 'ERR_BAD_VERSION' },
      ],
      FRAMING,
    );
  });

  it('encodeSocks4Reply defaults to 0.0.0.0:0 and VN 0', () => {
    assert.deepEqual(encodeSocks4Reply(Socks4ReplyCode.REJECTED), hex('00 5b 0000 00000000'));
    assert.equal(SOCKS4_REPLY_VERSION, 0);
  });

  it('encodeSocks4Reply refuses a reply code that is not an integer 0-255 (0x15a was written as 0x5a, GRANTED)', () => {
    for (const code of [...NOT_BYTES, 0x15a]) assertSocksError(() => encodeSocks4Reply(code), 'ERR_MALFORMED');
  });

  it('encodeSocks4Reply refuses a port that is not an integer 0-65535', () => {
    for (const port of [65536, -1, 1.5, NaN]) assertSocksError(() => encodeSocks4Reply(Socks4ReplyCode.GRANTED, port), 'ERR_MALFORMED');
  });

  it('encodeSocks4Reply refuses a non-IPv4 host', () => {
    assertSocksError(() => encodeSocks4Reply(Socks4ReplyCode.GRANTED, 80, '::1'), 'ERR_MALFORMED');
  });

  it('property: encode → decode round trip', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 255 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.uint8Array({ minLength: 4, maxLength: 4 }),
        (reply, port, ip) => {
          const host = Array.from(ip).join('.');
          const bytes = encodeSocks4Reply(reply, port, host);
          const r = expectDecoded(decodeSocks4Reply(bytes));
          assert.deepEqual(r.value, { reply, port, host });
          assert.equal(r.bytesRead, 8);
        },
      ),
    );
  });

  it('property: any reply encodeSocks4Reply accepts decodes back to itself; anything else is refused with a SocksError', () => {
    const validHost = fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Array.from(b).join('.'));
    const reply = fc.record({ reply: arbAnyByte, port: arbAnyPort, host: fc.oneof(validHost, arbAnyIpText, arbAnyText) }).map((r) => ({ ...r }));
    assertAcceptedValuesRoundTrip(reply, (v) => encodeSocks4Reply(v.reply, v.port, v.host), (bytes, v) => {
      assert.deepEqual(expectDecoded(decodeSocks4Reply(bytes)), { value: v, bytesRead: 8 });
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 16 }), (bytes) => {
        assertThrowsOnlySocksError(() => {
          const r = decodeSocks4Reply(bytes);
          if (r !== NEED_MORE) assert.equal(r.bytesRead, 8);
        });
      }),
    );
  });
});
