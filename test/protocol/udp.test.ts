import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  type Destination,
  type UdpHeader,
  decodeUdpHeader,
  encodeUdpDatagram,
  encodeUdpHeader,
  startsWithUdpHeader,
} from '../../src/protocol/index.js';
import {
  type BadVector,
  NOT_BYTES,
  arbAnyByte,
  arbAnyDestination,
  arbDestination,
  assertAcceptedValuesRoundTrip,
  assertSameDestination,
  ascii,
  assertSocksError,
  assertThrowsOnlySocksError,
  badVectors,
  hex,
} from './vectors.js';

// ---------------------------------------------------------------- helpers

interface Vector {
  readonly name: string;
  /** The header: RSV, FRAG, ATYP, DST.ADDR, DST.PORT. */
  readonly header: string;
  readonly frag: number;
  readonly destination: Destination;
}

const PAYLOAD = hex(ascii('hello, world'));

// ---------------------------------------------------------------- vectors

const VECTORS: readonly Vector[] = [
  { name: 'IPv4 127.0.0.1:53', header: '0000 00 01 7f000001 0035', frag: 0, destination: { kind: 'ipv4', host: '127.0.0.1', port: 53 } },
  { name: 'IPv4 0.0.0.0:0', header: '0000 00 01 00000000 0000', frag: 0, destination: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  {
    name: 'IPv6 [::1]:53',
    header: '0000 00 04 00000000000000000000000000000001 0035',
    frag: 0,
    destination: { kind: 'ipv6', host: '::1', port: 53 },
  },
  {
    name: 'IPv6 [2001:db8:85a3::8a2e:370:7334]:4433',
    header: '0000 00 04 20010db885a3000000008a2e03707334 1151',
    frag: 0,
    destination: { kind: 'ipv6', host: '2001:db8:85a3::8a2e:370:7334', port: 4433 },
  },
  {
    name: 'domain dns.example:53',
    header: `0000 00 03 0b ${ascii('dns.example')} 0035`,
    frag: 0,
    destination: { kind: 'domain', host: 'dns.example', port: 53 },
  },
  {
    name: 'fragment 1 is kept',
    header: '0000 01 01 0a000001 1f90',
    frag: 1,
    destination: { kind: 'ipv4', host: '10.0.0.1', port: 8080 },
  },
  {
    name: 'fragment 0x81 (end of sequence) is kept',
    header: '0000 81 01 0a000001 1f90',
    frag: 0x81,
    destination: { kind: 'ipv4', host: '10.0.0.1', port: 8080 },
  },
];

const MALFORMED: readonly BadVector[] = [
  { name: 'empty datagram', bytes: '', code: 'ERR_MALFORMED' },
  { name: 'one byte', bytes: '00', code: 'ERR_MALFORMED' },
  { name: 'three bytes (no ATYP)', bytes: '00 00 00', code: 'ERR_MALFORMED' },
  { name: 'RSV 0x0100', bytes: '0100 00 01 7f000001 0035', code: 'ERR_MALFORMED' },
  { name: 'RSV 0x0001', bytes: '0001 00 01 7f000001 0035', code: 'ERR_MALFORMED' },
  { name: 'RSV 0xffff', bytes: 'ffff 00 01 7f000001 0035', code: 'ERR_MALFORMED' },
  { name: 'a SOCKS5 request sent to the relay', bytes: '05 01 00 01 7f000001 0035', code: 'ERR_MALFORMED' },
  { name: 'truncated IPv4 address', bytes: '0000 00 01 7f0000', code: 'ERR_MALFORMED' },
  { name: 'IPv4 address without port', bytes: '0000 00 01 7f000001', code: 'ERR_MALFORMED' },
  { name: 'IPv4 with half a port', bytes: '0000 00 01 7f000001 00', code: 'ERR_MALFORMED' },
  { name: 'truncated IPv6 address', bytes: '0000 00 04 00000000000000000000000000', code: 'ERR_MALFORMED' },
  { name: 'domain without its length byte', bytes: '0000 00 03', code: 'ERR_MALFORMED' },
  { name: 'domain shorter than its length byte', bytes: `0000 00 03 0b ${ascii('dns')}`, code: 'ERR_MALFORMED' },
  { name: 'ATYP 0x00', bytes: '0000 00 00 7f000001 0035', code: 'ERR_ADDRESS_TYPE' },
  { name: 'ATYP 0x02', bytes: '0000 00 02 7f000001 0035', code: 'ERR_ADDRESS_TYPE' },
  { name: 'ATYP 0xff', bytes: '0000 00 ff', code: 'ERR_ADDRESS_TYPE' },
  { name: 'zero-length domain', bytes: '0000 00 03 00 0035', code: 'ERR_MALFORMED' },
  { name: 'non-printable byte in domain', bytes: `0000 00 03 03 ${ascii('a')}00${ascii('b')} 0035`, code: 'ERR_MALFORMED' },
  { name: 'space in domain', bytes: `0000 00 03 03 ${ascii('a b')} 0035`, code: 'ERR_MALFORMED' },
  { name: 'backslash in domain', bytes: `0000 00 03 0d ${ascii('\\blocked.test')} 0035`, code: 'ERR_MALFORMED' },
];

// ---------------------------------------------------------------- tests

describe('SOCKS5 UDP header: valid vectors', () => {
  for (const v of VECTORS) {
    describe(v.name, () => {
      const header = hex(v.header);
      const expected: UdpHeader = { frag: v.frag, destination: v.destination, payloadOffset: header.length };

      it('decodes a datagram with a payload; the payload starts right after the header', () => {
        const datagram = Buffer.concat([header, PAYLOAD]);
        assert.deepEqual(decodeUdpHeader(datagram), expected);
        assert.deepEqual(datagram.subarray(expected.payloadOffset), PAYLOAD);
      });

      it('decodes a datagram with an empty payload', () => {
        assert.deepEqual(decodeUdpHeader(header), expected);
      });

      it('encodes to the exact bytes', () => {
        assert.deepEqual(encodeUdpDatagram(v.destination, PAYLOAD, v.frag), Buffer.concat([header, PAYLOAD]));
        assert.deepEqual(encodeUdpDatagram(v.destination, new Uint8Array(0), v.frag), header);
      });

      it('encodeUdpHeader encodes the header alone, to the exact bytes', () => {
        assert.deepEqual(encodeUdpHeader(v.destination, v.frag), header);
      });

      it('startsWithUdpHeader: the header starts its datagrams, and itself (an empty payload)', () => {
        assert.equal(startsWithUdpHeader(Buffer.concat([header, PAYLOAD]), header), true);
        assert.equal(startsWithUdpHeader(header, header), true);
        const backing = Buffer.concat([hex('ff ff ff'), header, PAYLOAD]);
        assert.equal(startsWithUdpHeader(new Uint8Array(backing.buffer, backing.byteOffset + 3, header.length + PAYLOAD.length), header), true);
      });

      it('startsWithUdpHeader: no strict prefix of the header, and no header with one byte changed, matches', () => {
        for (let n = 0; n < header.length; n++) assert.equal(startsWithUdpHeader(header.subarray(0, n), header), false, `prefix of ${n}`);
        for (let i = 0; i < header.length; i++) {
          const changed = Buffer.concat([header, PAYLOAD]);
          changed[i] = changed[i]! ^ 0x01;
          assert.equal(startsWithUdpHeader(changed, header), false, `byte ${i} changed`);
        }
      });

      it('every strict prefix of the header is ERR_MALFORMED, never NEED_MORE', () => {
        for (let n = 0; n < header.length; n++) {
          assertSocksError(() => decodeUdpHeader(header.subarray(0, n)), 'ERR_MALFORMED');
        }
      });

      it('decodes from a view at a nonzero byteOffset', () => {
        const backing = Buffer.concat([hex('ff ff ff ff ff'), header, PAYLOAD, hex('ee ee')]);
        const view = new Uint8Array(backing.buffer, backing.byteOffset + 5, header.length + PAYLOAD.length);
        assert.deepEqual(decodeUdpHeader(view), expected);
      });
    });
  }

  it('encodeUdpDatagram defaults FRAG to 0', () => {
    assert.deepEqual(
      encodeUdpDatagram({ kind: 'ipv4', host: '1.2.3.4', port: 53 }, hex('aa bb')),
      hex('0000 00 01 01020304 0035 aabb'),
    );
  });

  it('encodeUdpDatagram refuses a domain name over 255 bytes', () => {
    assertSocksError(() => encodeUdpDatagram({ kind: 'domain', host: 'a'.repeat(256), port: 53 }, PAYLOAD), 'ERR_TOO_LONG');
  });

  it('encodeUdpHeader defaults FRAG to 0', () => {
    assert.deepEqual(encodeUdpHeader({ kind: 'ipv4', host: '1.2.3.4', port: 53 }), hex('0000 00 01 01020304 0035'));
  });

  it('encodeUdpHeader refuses an empty domain name and one over 255 bytes', () => {
    assertSocksError(() => encodeUdpHeader({ kind: 'domain', host: '', port: 53 }), 'ERR_TOO_LONG');
    assertSocksError(() => encodeUdpHeader({ kind: 'domain', host: 'a'.repeat(256), port: 53 }), 'ERR_TOO_LONG');
  });

  it('encodeUdpHeader and encodeUdpDatagram refuse a FRAG that is not an integer 0-255 (256 was written as 0, a whole datagram)', () => {
    for (const frag of NOT_BYTES) {
      assertSocksError(() => encodeUdpHeader({ kind: 'ipv4', host: '1.2.3.4', port: 53 }, frag), 'ERR_MALFORMED');
      assertSocksError(() => encodeUdpDatagram({ kind: 'ipv4', host: '1.2.3.4', port: 53 }, PAYLOAD, frag), 'ERR_MALFORMED');
    }
  });

  it('encodeUdpHeader and encodeUdpDatagram refuse a port that is not an integer 0-65535', () => {
    for (const port of [65536, -1, 1.5, NaN]) {
      for (const d of [{ kind: 'ipv4', host: '1.2.3.4' }, { kind: 'ipv6', host: '::1' }, { kind: 'domain', host: 'dns.example' }] as const) {
        assertSocksError(() => encodeUdpHeader({ ...d, port }), 'ERR_MALFORMED');
        assertSocksError(() => encodeUdpDatagram({ ...d, port }, PAYLOAD), 'ERR_MALFORMED');
      }
    }
  });

  it('encodeUdpHeader refuses a domain name decodeUdpHeader would refuse: non-ASCII (it was written as Latin-1), NUL, space', () => {
    for (const host of ['日本.jp', 'café.com', 'a\0b', 'a b']) assertSocksError(() => encodeUdpHeader({ kind: 'domain', host, port: 53 }), 'ERR_MALFORMED');
  });

  it('encodeUdpHeader refuses a malformed IPv4 address', () => {
    assertSocksError(() => encodeUdpHeader({ kind: 'ipv4', host: '1.2.3', port: 53 }), 'ERR_MALFORMED');
  });

  it('startsWithUdpHeader compares bytes only: the same address under another ATYP or port does not match', () => {
    const v4 = hex('0000 00 01 7f000001 0035');
    assert.equal(startsWithUdpHeader(hex('0000 00 01 7f000001 0036 aa'), v4), false, 'other port');
    assert.equal(startsWithUdpHeader(hex('0000 00 04 00000000000000000000ffff7f000001 0035'), v4), false, 'IPv4-mapped IPv6');
    assert.equal(startsWithUdpHeader(hex('0000 01 01 7f000001 0035 aa'), v4), false, 'FRAG 1');
  });
});

describe('SOCKS5 UDP header: malformed vectors', () => {
  badVectors(decodeUdpHeader, MALFORMED);
});

describe('SOCKS5 UDP header: properties', () => {
  it('encode → decode round trip', () => {
    fc.assert(
      fc.property(arbDestination, fc.uint8Array({ maxLength: 64 }), fc.integer({ min: 0, max: 255 }), (destination, payload, frag) => {
        const datagram = encodeUdpDatagram(destination, payload, frag);
        const header = decodeUdpHeader(datagram);
        assert.equal(header.frag, frag);
        assert.deepEqual(header.destination, destination);
        assert.deepEqual(datagram.subarray(header.payloadOffset), Buffer.from(payload));
      }),
    );
  });

  it('any destination and FRAG encodeUdpDatagram accepts decode back to themselves; anything else is refused with a SocksError', () => {
    const arb = fc.record({ destination: arbAnyDestination, frag: arbAnyByte, payload: fc.uint8Array({ maxLength: 16 }) });
    assertAcceptedValuesRoundTrip(arb, (v) => encodeUdpDatagram(v.destination, v.payload, v.frag), (datagram, v) => {
      const header = decodeUdpHeader(datagram);
      assert.equal(header.frag, v.frag);
      assertSameDestination(header.destination, v.destination);
      assert.deepEqual(datagram.subarray(header.payloadOffset), Buffer.from(v.payload));
      assert.deepEqual(encodeUdpHeader(v.destination, v.frag), datagram.subarray(0, header.payloadOffset));
    });
  });

  it('encodeUdpHeader + payload is encodeUdpDatagram, and the header starts the datagram', () => {
    fc.assert(
      fc.property(arbDestination, fc.uint8Array({ maxLength: 64 }), fc.integer({ min: 0, max: 255 }), (destination, payload, frag) => {
        const header = encodeUdpHeader(destination, frag);
        const datagram = encodeUdpDatagram(destination, payload, frag);
        assert.deepEqual(Buffer.concat([header, payload]), datagram);
        assert.equal(startsWithUdpHeader(datagram, header), true);
        assert.equal(decodeUdpHeader(datagram).payloadOffset, header.length);
      }),
    );
  });

  it('startsWithUdpHeader matches exactly when the bytes up to the header length are equal', () => {
    // Datagrams built from the header (whole, cut, or with one byte flipped), so that matches are common.
    const arb = fc.tuple(
      fc.uint8Array({ minLength: 1, maxLength: 24 }),
      fc.uint8Array({ maxLength: 8 }),
      fc.constantFrom('whole', 'cut', 'flip'),
      fc.nat(40),
    );
    fc.assert(
      fc.property(arb, ([header, rest, how, at]) => {
        let datagram = Buffer.concat([header, rest]);
        if (how === 'cut') datagram = datagram.subarray(0, at % (datagram.length + 1));
        if (how === 'flip') datagram[at % datagram.length] = datagram[at % datagram.length]! ^ 0xff;
        const expected = datagram.length >= header.length && Buffer.compare(datagram.subarray(0, header.length), header) === 0;
        assert.equal(startsWithUdpHeader(datagram, header), expected);
      }),
      { numRuns: 1000 },
    );
  });

  it('random bytes never throw anything but SocksError', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc
        .tuple(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 1, 2, 3, 4, 0xff), fc.uint8Array({ maxLength: 40 }))
        .map(([frag, atyp, rest]) => Uint8Array.of(0, 0, frag, atyp, ...rest)),
    );
    fc.assert(
      fc.property(arb, (bytes) => {
        assertThrowsOnlySocksError(() => {
          const header = decodeUdpHeader(bytes);
          assert.ok(header.payloadOffset >= 8 && header.payloadOffset <= bytes.length);
        });
      }),
      { numRuns: 1000 },
    );
  });
});
