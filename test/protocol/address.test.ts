import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  AddressType,
  MAX_DOMAIN_LENGTH,
  type Destination,
  decodeAddress,
  decodeHostname,
  destination,
  encodedAddressLength,
  formatDestination,
  hex as hexByte,
  ipv6ToString,
  readPort,
  unmapIPv4,
  writeAddress,
  writeIPv4,
} from '../../src/protocol/index.js';
import { boundAddressSpelling, canonicalAddress, clientBlock, unmappedAddress } from '../../src/protocol/address.js';
import {
  type BadVector,
  type Vector,
  HOST_BYTES,
  arbDestination,
  ascii,
  NOT_INDEXES,
  arbAnyDestination,
  assertAcceptedValuesRoundTrip,
  assertSameDestination,
  assertEveryStrictPrefixNeedsMore,
  assertRangeError,
  assertSocksError,
  badVectors,
  checkArbitraryBytes,
  expectDecoded,
  hex,
} from './vectors.js';
import type { SocksErrorCode } from '../../src/errors.js';

// ---------------------------------------------------------------- helpers

function encodeAddress(d: Destination): Buffer {
  const buf = Buffer.alloc(encodedAddressLength(d));
  assert.equal(writeAddress(buf, 0, d), buf.length);
  return buf;
}

// ---------------------------------------------------------------- vectors

const LONG_NAME = 'a'.repeat(MAX_DOMAIN_LENGTH);

const VECTORS: readonly Vector<Destination>[] = [
  { name: 'IPv4 127.0.0.1:80', bytes: '01 7f000001 0050', value: { kind: 'ipv4', host: '127.0.0.1', port: 80 } },
  { name: 'IPv4 0.0.0.0:0', bytes: '01 00000000 0000', value: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  {
    name: 'IPv4 255.255.255.255:65535',
    bytes: '01 ffffffff ffff',
    value: { kind: 'ipv4', host: '255.255.255.255', port: 65535 },
  },
  {
    name: 'IPv6 ::1:443',
    bytes: '04 00000000000000000000000000000001 01bb',
    value: { kind: 'ipv6', host: '::1', port: 443 },
  },
  { name: 'IPv6 :: (unspecified)', bytes: '04 00000000000000000000000000000000 0000', value: { kind: 'ipv6', host: '::', port: 0 } },
  {
    name: 'IPv6 2001:db8:85a3::8a2e:370:7334',
    bytes: '04 20010db885a3000000008a2e03707334 1f90',
    value: { kind: 'ipv6', host: '2001:db8:85a3::8a2e:370:7334', port: 8080 },
  },
  {
    name: 'IPv6 full, no zero group (2001:db8:1:2:3:4:5:6)',
    bytes: '04 20010db8000100020003000400050006 0016',
    value: { kind: 'ipv6', host: '2001:db8:1:2:3:4:5:6', port: 22 },
  },
  {
    name: 'IPv6 all ones',
    bytes: '04 ffffffffffffffffffffffffffffffff ffff',
    value: { kind: 'ipv6', host: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 },
  },
  {
    name: 'domain example.com:443',
    bytes: `03 0b ${ascii('example.com')} 01bb`,
    value: { kind: 'domain', host: 'example.com', port: 443 },
  },
  { name: 'domain of one byte', bytes: `03 01 ${ascii('a')} 0001`, value: { kind: 'domain', host: 'a', port: 1 } },
  {
    name: 'domain with printable edges ! and ~',
    bytes: `03 03 ${ascii('!x~')} 0050`,
    value: { kind: 'domain', host: '!x~', port: 80 },
  },
  {
    name: 'domain of 255 bytes',
    bytes: `03 ff ${ascii(LONG_NAME)} 0050`,
    value: { kind: 'domain', host: LONG_NAME, port: 80 },
  },
  {
    name: 'domain that looks like an IP stays a domain',
    bytes: `03 07 ${ascii('1.2.3.4')} 0050`,
    value: { kind: 'domain', host: '1.2.3.4', port: 80 },
  },
];

const MALFORMED: readonly BadVector[] = [
  { name: 'ATYP 0x00', bytes: '00 7f000001 0050', code: 'ERR_ADDRESS_TYPE' },
  { name: 'ATYP 0x02', bytes: '02 7f000001 0050', code: 'ERR_ADDRESS_TYPE' },
  { name: 'ATYP 0x05', bytes: '05 7f000001 0050', code: 'ERR_ADDRESS_TYPE' },
  { name: 'ATYP 0xff', bytes: 'ff', code: 'ERR_ADDRESS_TYPE' },
  { name: 'unknown ATYP with nothing after it', bytes: '02', code: 'ERR_ADDRESS_TYPE' },
  { name: 'zero-length domain', bytes: '03 00 0050', code: 'ERR_MALFORMED' },
  { name: 'zero-length domain, port not yet sent', bytes: '03 00', code: 'ERR_MALFORMED' },
  { name: 'domain with NUL', bytes: `03 04 ${ascii('ab')}00${ascii('c')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with space', bytes: `03 03 ${ascii('a b')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with tab', bytes: `03 03 ${ascii('a')}09${ascii('b')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with newline', bytes: `03 03 ${ascii('a')}0a${ascii('b')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with DEL', bytes: `03 03 ${ascii('a')}7f${ascii('b')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with 0x80', bytes: `03 03 ${ascii('a')}80${ascii('b')} 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with UTF-8 (é)', bytes: `03 03 ${ascii('a')}c3a9 0050`, code: 'ERR_MALFORMED' },
  { name: 'domain with 0xff', bytes: `03 01 ff 0050`, code: 'ERR_MALFORMED' },
];

// ---------------------------------------------------------------- tests

describe('decodeAddress / writeAddress: valid vectors', () => {
  for (const v of VECTORS) {
    describe(v.name, () => {
      const bytes = hex(v.bytes);

      it('decodes to the expected destination and length', () => {
        const r = expectDecoded(decodeAddress(bytes, 0));
        assert.deepEqual(r.value, v.value);
        assert.equal(r.bytesRead, bytes.length);
      });

      it('encodes to the exact bytes', () => {
        assert.equal(encodedAddressLength(v.value), bytes.length);
        assert.deepEqual(encodeAddress(v.value), bytes);
      });

      it('returns NEED_MORE for every strict prefix', () => {
        assertEveryStrictPrefixNeedsMore(decodeAddress, bytes);
      });

      it('leaves trailing bytes alone and works at an offset', () => {
        const trailing = Buffer.concat([bytes, hex('de ad be ef')]);
        const r1 = expectDecoded(decodeAddress(trailing, 0));
        assert.deepEqual(r1.value, v.value);
        assert.equal(r1.bytesRead, bytes.length);

        const shifted = Buffer.concat([hex('aa bb cc'), bytes, hex('de ad')]);
        const r2 = expectDecoded(decodeAddress(shifted, 3));
        assert.deepEqual(r2.value, v.value);
        assert.equal(r2.bytesRead, bytes.length);

        assertEveryStrictPrefixNeedsMore(decodeAddress, shifted, 3, 3 + bytes.length);
      });

      it('decodeAddress refuses an offset that is not an integer >= 0 with a RangeError naming at (-1 threw a TypeError)', () => {
        const shifted = Buffer.concat([hex('aa bb cc'), bytes, hex('de ad')]);
        for (const at of NOT_INDEXES) {
          assertRangeError(() => decodeAddress(bytes, at), 'at');
          assertRangeError(() => decodeAddress(shifted, at), 'at');
        }
      });

      it('writeAddress refuses an offset that is not an integer >= 0, or a buffer too short from it, with a RangeError naming at; nothing written', () => {
        const cases: [number, number][] = [
          [bytes.length - 1, 0], // one byte short
          [bytes.length, 1], // fits at 0, not at 1
          [0, 0],
          ...NOT_INDEXES.map((at): [number, number] => [bytes.length + 4, at]),
        ];
        for (const [size, at] of cases) {
          const buf = Buffer.alloc(size, 0xee);
          assertRangeError(() => writeAddress(buf, at, v.value), 'at');
          assert.deepEqual(buf, Buffer.alloc(size, 0xee), `nothing written (${size} bytes, at ${at})`);
          assert.equal(Object.keys(buf).length, size, 'no property set on the buffer');
        }
      });

      it('writes at an offset without touching the neighbours', () => {
        const buf = Buffer.alloc(bytes.length + 4, 0xee);
        assert.equal(writeAddress(buf, 2, v.value), 2 + bytes.length);
        assert.deepEqual(buf.subarray(2, 2 + bytes.length), bytes);
        assert.deepEqual([buf[0], buf[1], buf[buf.length - 2], buf[buf.length - 1]], [0xee, 0xee, 0xee, 0xee]);
      });
    });
  }

  it('decodes from a plain Uint8Array view at a nonzero byteOffset', () => {
    const bytes = hex(`03 0b ${ascii('example.com')} 01bb`);
    const backing = new ArrayBuffer(bytes.length + 13);
    const view = new Uint8Array(backing, 7, bytes.length + 2);
    view.set(bytes, 2);
    const r = expectDecoded(decodeAddress(view, 2));
    assert.deepEqual(r.value, { kind: 'domain', host: 'example.com', port: 443 });
    assert.equal(r.bytesRead, bytes.length);
  });

  it('AddressType has the RFC 1928 values', () => {
    assert.deepEqual({ ...AddressType }, { IPV4: 0x01, DOMAIN: 0x03, IPV6: 0x04 });
  });
});

describe('decodeAddress: malformed vectors', () => {
  badVectors(decodeAddress, MALFORMED, { junk: hex('05 01 00') });
});

describe('writeAddress: refused input', () => {
  /** writeAddress(d) into a buffer of 0xee throws `code`, having written nothing. */
  function refuses(d: Destination, code: SocksErrorCode): void {
    const buf = Buffer.alloc(300, 0xee);
    assertSocksError(() => writeAddress(buf, 0, d), code);
    assert.deepEqual(buf, Buffer.alloc(300, 0xee), 'nothing written');
  }

  const HOSTS: readonly Destination[] = [
    { kind: 'ipv4', host: '1.2.3.4', port: 0 },
    { kind: 'ipv6', host: '::1', port: 0 },
    { kind: 'domain', host: 'example.com', port: 0 },
  ];

  for (const port of [65536, -1, 1.5, NaN, Infinity, -Infinity, 2 ** 32, 2 ** 32 + 80, -0.5]) {
    it(`port ${port} → ERR_MALFORMED, for each kind of host`, () => {
      for (const d of HOSTS) refuses({ ...d, port }, 'ERR_MALFORMED');
    });
  }

  // Each of these was written (as Latin-1, or cut to its low byte) and then refused by decodeAddress, or read back as another name.
  const NOT_PRINTABLE_ASCII: readonly [string, string][] = [
    ['日本.jp', 'CJK, written as the low bytes e5 2c'],
    ['café.com', 'é, written as Latin-1 e9'],
    ['xn--caf-dma.com\u00e9', 'é after punycode'],
    ['a\0b', 'NUL'],
    ['a b', 'space'],
    ['a\tb', 'tab'],
    ['a\r\nb', 'CR LF'],
    ['a\x7fb', 'DEL'],
    ['\x80', 'C1 control'],
    ['\xff', 'ÿ'],
    ['a\u0100b', 'U+0100, written as its low byte 0x00'],
    ['a\u0161b', 'U+0161, written as its low byte 0x61 (a)'],
    ['\u{1f600}', 'an emoji (a surrogate pair)'],
    ['\ud800', 'a lone surrogate'],
  ];
  for (const [host, what] of NOT_PRINTABLE_ASCII) {
    it(`a domain name with ${what} (${JSON.stringify(host)}) → ERR_MALFORMED, nothing written`, () => {
      refuses({ kind: 'domain', host, port: 80 }, 'ERR_MALFORMED');
    });
  }

  it('a domain name is counted in characters, each one byte: 256 → ERR_TOO_LONG; 128 × é (128 Latin-1 bytes, 256 UTF-8 bytes) → ERR_MALFORMED', () => {
    refuses({ kind: 'domain', host: 'a'.repeat(256), port: 80 }, 'ERR_TOO_LONG');
    refuses({ kind: 'domain', host: '', port: 80 }, 'ERR_TOO_LONG');
    refuses({ kind: 'domain', host: 'é'.repeat(128), port: 80 }, 'ERR_MALFORMED');
  });

  it('every printable ASCII character but the backslash is written as its byte', () => {
    const printable = String.fromCharCode(...HOST_BYTES);
    const bytes = encodeAddress({ kind: 'domain', host: printable, port: 80 });
    assert.deepEqual(bytes, hex(`03 5d ${ascii(printable)} 0050`));
    assert.deepEqual(expectDecoded(decodeAddress(bytes, 0)).value, { kind: 'domain', host: printable, port: 80 });
  });

  it('a kind that is none of the three → ERR_ADDRESS_TYPE, nothing written (it was written as a domain name, read back as kind domain)', () => {
    refuses({ kind: 'name', host: 'example.com', port: 80 } as unknown as Destination, 'ERR_ADDRESS_TYPE');
  });

  it('port 65535 and 0 are written', () => {
    assert.deepEqual(encodeAddress({ kind: 'ipv4', host: '1.2.3.4', port: 65535 }), hex('01 01020304 ffff'));
    assert.deepEqual(encodeAddress({ kind: 'domain', host: 'a', port: 0 }), hex('03 01 61 0000'));
  });

  it('an empty domain name → ERR_TOO_LONG', () => {
    assertSocksError(() => writeAddress(Buffer.alloc(16), 0, { kind: 'domain', host: '', port: 80 }), 'ERR_TOO_LONG');
  });

  it('a domain name with a backslash → ERR_MALFORMED, naming the resolver\'s escapes', () => {
    assertSocksError(() => writeAddress(Buffer.alloc(32), 0, { kind: 'domain', host: 'blocked.t\\101st', port: 80 }), 'ERR_MALFORMED');
    assert.throws(() => decodeAddress(hex(`03 0d ${Buffer.from('\\blocked.test').toString('hex')} 0050`), 0), /backslash, which the resolver would read as an escape/);
  });

  it('a domain name of 256 bytes → ERR_TOO_LONG', () => {
    const d: Destination = { kind: 'domain', host: 'a'.repeat(256), port: 80 };
    assertSocksError(() => writeAddress(Buffer.alloc(300), 0, d), 'ERR_TOO_LONG');
  });

  it('an IPv4 host that is not dotted-quad → ERR_MALFORMED', () => {
    assertSocksError(() => writeAddress(Buffer.alloc(16), 0, { kind: 'ipv4', host: '1.2.3', port: 80 }), 'ERR_MALFORMED');
  });

  it('an IPv6 host that is not one → ERR_MALFORMED; one with a zone (a socket\'s link-local address) is written without it', () => {
    assertSocksError(() => writeAddress(Buffer.alloc(32), 0, { kind: 'ipv6', host: '1:2:3', port: 80 }), 'ERR_MALFORMED');
    assertSocksError(() => writeAddress(Buffer.alloc(32), 0, { kind: 'ipv6', host: '1.2.3.4', port: 80 }), 'ERR_MALFORMED');
    assert.deepEqual(encodeAddress({ kind: 'ipv6', host: 'fe80::1%eth0.5', port: 80 }), hex('04 fe800000000000000000000000000001 0050'));
  });

  it('an IPv4-mapped IPv6 host given as ipv6 is written as 16 bytes', () => {
    assert.deepEqual(
      encodeAddress({ kind: 'ipv6', host: '::ffff:1.2.3.4', port: 80 }),
      hex('04 00000000000000000000ffff01020304 0050'),
    );
  });
});

describe('destination / unmapIPv4 / formatDestination', () => {
  const CASES: readonly [string, Destination][] = [
    ['1.2.3.4', { kind: 'ipv4', host: '1.2.3.4', port: 80 }],
    ['::1', { kind: 'ipv6', host: '::1', port: 80 }],
    ['2001:db8::1', { kind: 'ipv6', host: '2001:db8::1', port: 80 }],
    ['::ffff:1.2.3.4', { kind: 'ipv4', host: '1.2.3.4', port: 80 }],
    ['::FFFF:10.0.0.1', { kind: 'ipv4', host: '10.0.0.1', port: 80 }],
    ['::ffff:102:304', { kind: 'ipv6', host: '::ffff:102:304', port: 80 }],
    ['example.com', { kind: 'domain', host: 'example.com', port: 80 }],
    ['1.2.3', { kind: 'domain', host: '1.2.3', port: 80 }],
  ];
  for (const [host, expected] of CASES) {
    it(`destination(${JSON.stringify(host)}) → ${expected.kind} ${expected.host}`, () => {
      assert.deepEqual(destination(host, 80), expected);
    });
  }

  it('unmapIPv4 only unmaps ::ffff:a.b.c.d', () => {
    assert.equal(unmapIPv4('::ffff:127.0.0.1'), '127.0.0.1');
    assert.equal(unmapIPv4('::FFFF:127.0.0.1'), '127.0.0.1');
    assert.equal(unmapIPv4('::ffff:7f00:1'), undefined);
    assert.equal(unmapIPv4('127.0.0.1'), undefined);
    assert.equal(unmapIPv4('::1'), undefined);
    assert.equal(unmapIPv4('::ffff:999.0.0.1'), undefined);
    assert.equal(unmapIPv4('64:ff9b::1.2.3.4'), undefined);
  });

  it('formatDestination brackets IPv6 only', () => {
    assert.equal(formatDestination({ host: '1.2.3.4', port: 80 }), '1.2.3.4:80');
    assert.equal(formatDestination({ host: '::1', port: 443 }), '[::1]:443');
    assert.equal(formatDestination({ host: 'example.com', port: 8080 }), 'example.com:8080');
  });
});

describe('small address helpers', () => {
  it('readPort is big-endian', () => {
    assert.equal(readPort(hex('00 50'), 0), 80);
    assert.equal(readPort(hex('ff 01 bb'), 1), 443);
    assert.equal(readPort(hex('ff ff'), 0), 65535);
  });

  it('readPort refuses (RangeError naming at) an at without two bytes after it, or one that is not an integer >= 0', () => {
    const buf = hex('01 bb 00');
    for (const at of [2, 3, 4, ...NOT_INDEXES]) assertRangeError(() => readPort(buf, at), 'at');
    // A view into a larger buffer: the bytes past its end are not its own.
    const view = hex('aa 00 50 cc dd').subarray(1, 3);
    assert.equal(readPort(view, 0), 80);
    assertRangeError(() => readPort(view, 1), 'at');
    assertRangeError(() => readPort(new Uint8Array(0), 0), 'at');
  });

  it('writeIPv4 writes four bytes and refuses other shapes', () => {
    const buf = new Uint8Array(6);
    writeIPv4(buf, 1, '192.168.1.254');
    assert.deepEqual(Array.from(buf), [0, 192, 168, 1, 254, 0]);
    assertSocksError(() => writeIPv4(buf, 0, '::1'), 'ERR_MALFORMED');
    assertSocksError(() => writeIPv4(buf, 0, '1.2.3.4.5'), 'ERR_MALFORMED');

    for (const at of [3, ...NOT_INDEXES]) {
      const untouched = new Uint8Array(6);
      assertRangeError(() => writeIPv4(untouched, at, '1.2.3.4'), 'at');
      assert.deepEqual(untouched, new Uint8Array(6), `nothing written at ${at}`);
    }
  });

  it('ipv6ToString gives the compressed lower-case form', () => {
    assert.equal(ipv6ToString(hex('00000000000000000000000000000001')), '::1');
    assert.equal(ipv6ToString(hex('fe800000000000000000000000000001')), 'fe80::1');
    assert.equal(ipv6ToString(hex('20010DB885A3000000008A2E03707334')), '2001:db8:85a3::8a2e:370:7334');
  });

  it('decodeHostname accepts 0x21-0x7e but the backslash, and refuses the rest', () => {
    const printable = Buffer.from(HOST_BYTES);
    assert.equal(decodeHostname(printable, 0, printable.length), printable.toString('latin1'));
    for (const c of [0x00, 0x01, 0x1f, 0x20, 0x5c, 0x7f, 0x80, 0xff]) {
      assertSocksError(() => decodeHostname(Buffer.of(0x61, c, 0x62), 0, 3), 'ERR_MALFORMED');
    }
    // Only the [start, end) range is looked at.
    assert.equal(decodeHostname(Buffer.of(0x00, 0x61, 0x62, 0x00), 1, 3), 'ab');
    assert.equal(decodeHostname(Buffer.of(0x61), 1, 1), '', 'an empty range at the end');
  });

  it('decodeHostname refuses (RangeError) a range that is not integers 0 <= start <= end <= the buffer\'s length', () => {
    // Bytes around the view that decodeHostname must never read: printable,
    // so a range past the view's ends would have decoded them as the name.
    const view = Buffer.from('xxabcyy', 'latin1').subarray(2, 5);
    assert.equal(decodeHostname(view, 0, 3), 'abc');
    for (const start of NOT_INDEXES) assertRangeError(() => decodeHostname(view, start, 3), 'start');
    for (const end of [4, 5, 2 ** 32 + 3, ...NOT_INDEXES]) assertRangeError(() => decodeHostname(view, 0, end), 'end');
    assertRangeError(() => decodeHostname(view, 2, 1), 'end');
    assertRangeError(() => decodeHostname(view, 4, 5), 'end');
  });

  it('hex pads to two digits', () => {
    assert.equal(hexByte(0x00), '00');
    assert.equal(hexByte(0x0a), '0a');
    assert.equal(hexByte(0xff), 'ff');
  });

  it('hex refuses (RangeError) anything but an integer 0-255', () => {
    for (const byte of [256, 0x15a, -1, 1.5, NaN, Infinity, 2 ** 32, undefined as unknown as number]) {
      assertRangeError(() => hexByte(byte), 'byte');
    }
  });
});

// ---------------------------------------------------------------- properties

describe('address properties', () => {
  it('writeAddress → decodeAddress is the identity', () => {
    fc.assert(
      fc.property(arbDestination, fc.nat(8), (d, at) => {
        const buf = Buffer.alloc(at + encodedAddressLength(d) + 3, 0x99);
        const end = writeAddress(buf, at, d);
        assert.equal(end, at + encodedAddressLength(d));
        const r = expectDecoded(decodeAddress(buf, at));
        assert.deepEqual(r.value, d);
        assert.equal(r.bytesRead, end - at);
      }),
    );
  });

  it('any destination writeAddress accepts decodes back to itself; anything else is refused with a SocksError', () => {
    assertAcceptedValuesRoundTrip(arbAnyDestination, encodeAddress, (bytes, d) => {
      const r = expectDecoded(decodeAddress(bytes, 0));
      assertSameDestination(r.value, d);
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('readPort and decodeHostname read only inside the buffer, as Node\'s own readers do, and refuse any other position with a RangeError', () => {
    // Positions around the ends of a short view into a larger buffer, and ones that are no index.
    const position = fc.oneof(fc.integer({ min: -2, max: 10 }), fc.constantFrom(...NOT_INDEXES));
    const printable = fc.uint8Array({ maxLength: 8 }).map((b) => b.map((c) => HOST_BYTES[c % HOST_BYTES.length]!));
    fc.assert(
      fc.property(printable, position, position, (bytes, start, end) => {
        const view = Buffer.concat([Buffer.from('<<'), bytes, Buffer.from('>>')]).subarray(2, 2 + bytes.length);
        const inside = (i: number) => Number.isInteger(i) && i >= 0 && i <= view.length;
        if (inside(start) && start + 2 <= view.length) assert.equal(readPort(view, start), view.readUInt16BE(start));
        else assertRangeError(() => readPort(view, start), 'at');
        if (inside(start) && inside(end) && start <= end) assert.equal(decodeHostname(view, start, end), view.toString('latin1', start, end));
        else assert.throws(() => decodeHostname(view, start, end), RangeError);
      }),
      { numRuns: 500 },
    );
  });

  it('random bytes decode, need more, or throw a SocksError; decoded bytes re-encode exactly', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 40 }), fc.tuple(fc.constantFrom(1, 3, 4), fc.uint8Array({ maxLength: 40 })).map(([t, b]) => Uint8Array.of(t, ...b))), (bytes) => {
        const r = checkArbitraryBytes(decodeAddress, bytes);
        if (r) assert.deepEqual(encodeAddress(r.value), Buffer.from(bytes.subarray(0, r.bytesRead)));
      }),
      { numRuns: 500 },
    );
  });
});

describe('clientBlock', () => {
  it('an IPv4 client (mapped too) is its address; an IPv6 client is its /64', () => {
    assert.equal(clientBlock('192.0.2.7'), '192.0.2.7');
    assert.equal(clientBlock('::ffff:192.0.2.7'), '::ffff:192.0.2.7');
    assert.equal(clientBlock('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(clientBlock('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64', 'another address of the same /64');
    assert.equal(clientBlock('2001:db8:1:3::1'), '2001:db8:1:3::/64');
    assert.equal(clientBlock('::1'), '::/64');
    assert.equal(clientBlock('fe80::1%lo'), 'fe80::/64', 'a link-local address with its zone');
    assert.equal(clientBlock('not:an:address'), 'not:an:address', 'not an address: itself');
  });

  it('canonicalAddress and boundAddressSpelling drop a zone, whatever characters it has (ipaddr.js refuses some Node accepts); unmappedAddress keeps it', () => {
    for (const text of ['fe80::1%eth0.5', 'fe80::1%a-b', 'fe80::1%a:b', 'fe80::1%lo']) {
      assert.equal(canonicalAddress(text), 'fe80::1', text);
      assert.equal(boundAddressSpelling(text), 'fe80::1', text);
      assert.equal(unmappedAddress(text), text, text);
    }
    assert.equal(unmappedAddress('::ffff:7f00:1%eth0.5'), '127.0.0.1');
  });
});
