import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  Command,
  Method,
  SOCKS5_VERSION,
  type Destination,
  type Greeting,
  type Reply,
  type Request,
  decodeGreeting,
  decodeMethodSelection,
  decodeReply,
  decodeRequest,
  encodeGreeting,
  encodeMethodSelection,
  encodeReply,
  encodeRequest,
} from '../../src/protocol/index.js';
import { Socks5Reply } from '../../src/errors.js';
import {
  type Decoder,
  type Vector,
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
  checkArbitraryBytes,
  expectDecoded,
  hex,
  validVectors,
} from './vectors.js';

// ---------------------------------------------------------------- helpers

const FRAMING = {
  junk: hex('ff 00 05'),
  trailer: hex('47 45 54 20 2f'), // pipelined payload: "GET /"
};

/** Random bytes never throw anything but SocksError; a decoded message is stable under truncation. */
function fuzz<T>(decode: Decoder<T>, firstBytes: readonly number[]): void {
  const arb = fc.oneof(
    fc.uint8Array({ maxLength: 48 }),
    fc.tuple(fc.constantFrom(...firstBytes), fc.uint8Array({ maxLength: 48 })).map(([b, rest]) => Uint8Array.of(b, ...rest)),
  );
  fc.assert(
    fc.property(arb, fc.nat(4), (bytes, offset) => {
      checkArbitraryBytes(decode, Buffer.concat([Buffer.alloc(offset, 0xab), bytes]), offset);
    }),
    { numRuns: 500 },
  );
}

const byte = fc.integer({ min: 0, max: 255 });

/** One host of each kind, to pair with a bad port. */
const BAD_PORT_HOSTS: readonly Destination[] = [
  { kind: 'ipv4', host: '1.2.3.4', port: 0 },
  { kind: 'ipv6', host: '::1', port: 0 },
  { kind: 'domain', host: 'example.com', port: 0 },
];

const LONG_NAME = 'x'.repeat(255);
const ALL_METHODS = Array.from({ length: 255 }, (_, i) => i);

// ---------------------------------------------------------------- greeting

describe('SOCKS5 greeting', () => {
  describe('valid vectors', () => {
    validVectors<Greeting>(decodeGreeting, (g) => encodeGreeting(g.methods), [
      { name: 'NO AUTH only', bytes: '05 01 00', value: { methods: [Method.NONE] } },
      { name: 'NO AUTH and USERPASS', bytes: '05 02 00 02', value: { methods: [0x00, 0x02] } },
      { name: 'GSSAPI, USERPASS, NO AUTH', bytes: '05 03 01 02 00', value: { methods: [0x01, 0x02, 0x00] } },
      { name: 'unknown and duplicate methods are kept', bytes: '05 03 80 fe 80', value: { methods: [0x80, 0xfe, 0x80] } },
      { name: '0xff offered as a method', bytes: '05 01 ff', value: { methods: [0xff] } },
      {
        name: '255 methods',
        bytes: `05 ff ${Buffer.from(ALL_METHODS).toString('hex')}`,
        value: { methods: ALL_METHODS },
      },
    ], FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(decodeGreeting, [
      { name: 'SOCKS4 version', bytes: '04 01 00', code: 'ERR_BAD_VERSION' },
      { name: 'version 0', bytes: '00 01 00', code: 'ERR_BAD_VERSION' },
      { name: 'an HTTP request', bytes: ascii('GET / HTTP/1.1\r\n'), code: 'ERR_BAD_VERSION' },
      { name: 'TLS ClientHello', bytes: '16 03 01 02 00 01', code: 'ERR_BAD_VERSION' },
      { name: 'zero methods', bytes: '05 00', code: 'ERR_NO_METHODS' },
      { name: 'zero methods with bytes after', bytes: '05 00 00 01', code: 'ERR_NO_METHODS' },
    ], FRAMING);
  });

  it('encodeGreeting refuses a method that is not an integer 0-255 (256 was written as method 0)', () => {
    for (const bad of NOT_BYTES) {
      assertSocksError(() => encodeGreeting([bad]), 'ERR_MALFORMED');
      assertSocksError(() => encodeGreeting([Method.NONE, Method.USERPASS, bad]), 'ERR_MALFORMED');
    }
  });

  it('encodeGreeting refuses 0 and 256 methods', () => {
    assertSocksError(() => encodeGreeting([]), 'ERR_MALFORMED');
    assertSocksError(() => encodeGreeting([...ALL_METHODS, 0]), 'ERR_MALFORMED');
  });

  it('property: encode → decode round trip', () => {
    fc.assert(
      fc.property(fc.array(byte, { minLength: 1, maxLength: 255 }), (methods) => {
        const bytes = encodeGreeting(methods);
        assert.equal(bytes.length, 2 + methods.length);
        const r = expectDecoded(decodeGreeting(bytes));
        assert.deepEqual(r.value.methods, methods);
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: any list of methods encodeGreeting accepts decodes back to itself; anything else is refused with a SocksError', () => {
    const methods = fc.oneof(fc.array(arbAnyByte, { maxLength: 4 }), fc.array(byte, { minLength: 250, maxLength: 260 }));
    assertAcceptedValuesRoundTrip(methods, encodeGreeting, (bytes, m) => {
      const r = expectDecoded(decodeGreeting(bytes));
      assert.deepEqual(r.value.methods, m);
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    fuzz(decodeGreeting, [SOCKS5_VERSION]);
  });
});

// ---------------------------------------------------------------- method selection

describe('SOCKS5 method selection', () => {
  describe('valid vectors', () => {
    validVectors<number>(decodeMethodSelection, encodeMethodSelection, [
      { name: 'NO AUTH', bytes: '05 00', value: Method.NONE },
      { name: 'GSSAPI', bytes: '05 01', value: Method.GSSAPI },
      { name: 'USERPASS', bytes: '05 02', value: Method.USERPASS },
      { name: 'NO ACCEPTABLE METHODS', bytes: '05 ff', value: Method.NO_ACCEPTABLE },
      { name: 'unknown method is kept', bytes: '05 80', value: 0x80 },
    ], FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(decodeMethodSelection, [
      { name: 'SOCKS4 version', bytes: '04 00', code: 'ERR_BAD_VERSION' },
      { name: 'username/password version', bytes: '01 00', code: 'ERR_BAD_VERSION' },
    ], FRAMING);
  });

  it('encodeMethodSelection refuses a method that is not an integer 0-255 (-1 was written as 0xff, NO ACCEPTABLE METHODS)', () => {
    for (const bad of NOT_BYTES) assertSocksError(() => encodeMethodSelection(bad), 'ERR_MALFORMED');
  });

  it('Method has the IANA values', () => {
    assert.deepEqual({ ...Method }, { NONE: 0x00, GSSAPI: 0x01, USERPASS: 0x02, NO_ACCEPTABLE: 0xff });
  });

  it('property: any method encodeMethodSelection accepts decodes back to itself; anything else is refused with a SocksError', () => {
    assertAcceptedValuesRoundTrip(arbAnyByte, encodeMethodSelection, (bytes, method) => {
      assert.deepEqual(expectDecoded(decodeMethodSelection(bytes)), { value: method, bytesRead: 2 });
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    fuzz(decodeMethodSelection, [SOCKS5_VERSION]);
  });
});

// ---------------------------------------------------------------- request

const REQUESTS: readonly Vector<Request>[] = [
  {
    name: 'CONNECT 127.0.0.1:80',
    bytes: '05 01 00 01 7f000001 0050',
    value: { command: Command.CONNECT, destination: { kind: 'ipv4', host: '127.0.0.1', port: 80 } },
  },
  {
    name: 'CONNECT 255.255.255.255:65535',
    bytes: '05 01 00 01 ffffffff ffff',
    value: { command: Command.CONNECT, destination: { kind: 'ipv4', host: '255.255.255.255', port: 65535 } },
  },
  {
    name: 'BIND 0.0.0.0:0',
    bytes: '05 02 00 01 00000000 0000',
    value: { command: Command.BIND, destination: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  },
  {
    name: 'UDP ASSOCIATE [::1]:443',
    bytes: '05 03 00 04 00000000000000000000000000000001 01bb',
    value: { command: Command.UDP_ASSOCIATE, destination: { kind: 'ipv6', host: '::1', port: 443 } },
  },
  {
    name: 'CONNECT [2001:db8:85a3::8a2e:370:7334]:8080',
    bytes: '05 01 00 04 20010db885a3000000008a2e03707334 1f90',
    value: {
      command: Command.CONNECT,
      destination: { kind: 'ipv6', host: '2001:db8:85a3::8a2e:370:7334', port: 8080 },
    },
  },
  {
    name: 'CONNECT [2001:db8:1:2:3:4:5:6]:22 (full, no zero group)',
    bytes: '05 01 00 04 20010db8000100020003000400050006 0016',
    value: { command: Command.CONNECT, destination: { kind: 'ipv6', host: '2001:db8:1:2:3:4:5:6', port: 22 } },
  },
  {
    name: 'CONNECT example.com:443',
    bytes: `05 01 00 03 0b ${ascii('example.com')} 01bb`,
    value: { command: Command.CONNECT, destination: { kind: 'domain', host: 'example.com', port: 443 } },
  },
  {
    name: 'CONNECT to a one-byte name',
    bytes: `05 01 00 03 01 ${ascii('a')} 0001`,
    value: { command: Command.CONNECT, destination: { kind: 'domain', host: 'a', port: 1 } },
  },
  {
    name: 'CONNECT to a 255-byte name',
    bytes: `05 01 00 03 ff ${ascii(LONG_NAME)} 0050`,
    value: { command: Command.CONNECT, destination: { kind: 'domain', host: LONG_NAME, port: 80 } },
  },
  {
    name: 'unknown command 0x04 is kept',
    bytes: '05 04 00 01 0a000001 0050',
    value: { command: 0x04, destination: { kind: 'ipv4', host: '10.0.0.1', port: 80 } },
  },
  {
    name: 'unknown command 0xff is kept',
    bytes: `05 ff 00 03 03 ${ascii('foo')} 0050`,
    value: { command: 0xff, destination: { kind: 'domain', host: 'foo', port: 80 } },
  },
  {
    name: 'command 0x00 is kept',
    bytes: '05 00 00 01 0a000001 0050',
    value: { command: 0x00, destination: { kind: 'ipv4', host: '10.0.0.1', port: 80 } },
  },
];

describe('SOCKS5 request', () => {
  describe('valid vectors', () => {
    validVectors<Request>(decodeRequest, encodeRequest, REQUESTS, FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(decodeRequest, [
      { name: 'SOCKS4 version', bytes: '04 01 00 01 7f000001 0050', code: 'ERR_BAD_VERSION' },
      { name: 'version 0', bytes: '00 01 00 01', code: 'ERR_BAD_VERSION' },
      { name: 'reserved byte 0x01', bytes: '05 01 01 01 7f000001 0050', code: 'ERR_MALFORMED' },
      { name: 'reserved byte 0xff, address not sent yet', bytes: '05 01 ff 01', code: 'ERR_MALFORMED' },
      { name: 'ATYP 0x00', bytes: '05 01 00 00 7f000001 0050', code: 'ERR_ADDRESS_TYPE' },
      { name: 'ATYP 0x02', bytes: '05 01 00 02 7f000001 0050', code: 'ERR_ADDRESS_TYPE' },
      { name: 'ATYP 0x05, nothing after it', bytes: '05 01 00 05', code: 'ERR_ADDRESS_TYPE' },
      { name: 'ATYP 0xff', bytes: '05 01 00 ff 00 00', code: 'ERR_ADDRESS_TYPE' },
      { name: 'zero-length domain', bytes: '05 01 00 03 00 0050', code: 'ERR_MALFORMED' },
      { name: 'zero-length domain, port not sent yet', bytes: '05 01 00 03 00', code: 'ERR_MALFORMED' },
      { name: 'NUL in domain', bytes: `05 01 00 03 05 ${ascii('ab')}00${ascii('cd')} 0050`, code: 'ERR_MALFORMED' },
      // The resolver would ask DNS for blocked.test: the rules must never judge another name than the one looked up.
      { name: 'backslash escape in domain', bytes: `05 01 00 03 0f ${ascii('blocked.t\\101st')} 0050`, code: 'ERR_MALFORMED' },
      { name: 'space in domain', bytes: `05 01 00 03 03 ${ascii('a b')} 0050`, code: 'ERR_MALFORMED' },
      { name: 'CR LF in domain', bytes: `05 01 00 03 04 ${ascii('a')}0d0a${ascii('b')} 0050`, code: 'ERR_MALFORMED' },
      { name: 'DEL in domain', bytes: `05 01 00 03 01 7f 0050`, code: 'ERR_MALFORMED' },
      { name: 'high byte in domain', bytes: `05 01 00 03 02 ${ascii('a')}e9 0050`, code: 'ERR_MALFORMED' },
    ], FRAMING);
  });

  it('encodeRequest refuses a domain name over 255 bytes', () => {
    const request: Request = { command: Command.CONNECT, destination: { kind: 'domain', host: 'a'.repeat(256), port: 80 } };
    assertSocksError(() => encodeRequest(request), 'ERR_TOO_LONG');
  });

  it('encodeRequest refuses a port that is not an integer 0-65535 (it threw a RangeError, or wrote 1.5 as 1 and NaN as 0)', () => {
    for (const port of [65536, -1, 1.5, NaN]) {
      for (const destination of BAD_PORT_HOSTS) {
        assertSocksError(() => encodeRequest({ command: Command.CONNECT, destination: { ...destination, port } }), 'ERR_MALFORMED');
      }
    }
  });

  it('encodeRequest refuses a command that is not an integer 0-255 (256 was written as 0)', () => {
    for (const command of NOT_BYTES) {
      assertSocksError(() => encodeRequest({ command, destination: { kind: 'ipv4', host: '1.2.3.4', port: 80 } }), 'ERR_MALFORMED');
    }
  });

  it('encodeRequest refuses a domain name decodeRequest would refuse: non-ASCII (it was written as Latin-1), NUL, space', () => {
    for (const host of ['日本.jp', 'café.com', 'a\0b', 'a b']) {
      assertSocksError(() => encodeRequest({ command: Command.CONNECT, destination: { kind: 'domain', host, port: 80 } }), 'ERR_MALFORMED');
    }
  });

  it('Command has the RFC 1928 values', () => {
    assert.deepEqual({ ...Command }, { CONNECT: 0x01, BIND: 0x02, UDP_ASSOCIATE: 0x03 });
  });

  it('property: encode → decode round trip', () => {
    fc.assert(
      fc.property(byte, arbDestination, (command, destination) => {
        const request: Request = { command, destination };
        const bytes = encodeRequest(request);
        const r = expectDecoded(decodeRequest(bytes));
        assert.deepEqual(r.value, request);
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: any request encodeRequest accepts decodes back to itself; anything else is refused with a SocksError', () => {
    const request = fc.record({ command: arbAnyByte, destination: arbAnyDestination });
    assertAcceptedValuesRoundTrip(request, encodeRequest, (bytes, req) => {
      const r = expectDecoded(decodeRequest(bytes));
      assert.equal(r.value.command, req.command);
      assertSameDestination(r.value.destination, req.destination);
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    fuzz(decodeRequest, [SOCKS5_VERSION]);
    // Mostly well-formed heads, so the address decoder gets exercised too.
    fc.assert(
      fc.property(byte, fc.constantFrom(0, 1, 2, 3, 4, 5, 0xff), fc.uint8Array({ maxLength: 40 }), (cmd, atyp, rest) => {
        const bytes = Uint8Array.of(SOCKS5_VERSION, cmd, 0x00, atyp, ...rest);
        assertThrowsOnlySocksError(() => decodeRequest(bytes));
      }),
      { numRuns: 500 },
    );
  });
});

// ---------------------------------------------------------------- reply

const REPLIES: readonly Vector<Reply>[] = [
  {
    name: 'succeeded, bound 0.0.0.0:0',
    bytes: '05 00 00 01 00000000 0000',
    value: { reply: Socks5Reply.SUCCEEDED, bound: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  },
  {
    name: 'succeeded, bound 192.168.1.1:8080',
    bytes: '05 00 00 01 c0a80101 1f90',
    value: { reply: Socks5Reply.SUCCEEDED, bound: { kind: 'ipv4', host: '192.168.1.1', port: 8080 } },
  },
  {
    name: 'succeeded, bound [::1]:1080',
    bytes: '05 00 00 04 00000000000000000000000000000001 0438',
    value: { reply: Socks5Reply.SUCCEEDED, bound: { kind: 'ipv6', host: '::1', port: 1080 } },
  },
  {
    name: 'succeeded, bound [2001:db8:85a3::8a2e:370:7334]:65535',
    bytes: '05 00 00 04 20010db885a3000000008a2e03707334 ffff',
    value: { reply: Socks5Reply.SUCCEEDED, bound: { kind: 'ipv6', host: '2001:db8:85a3::8a2e:370:7334', port: 65535 } },
  },
  {
    name: 'succeeded, bound proxy.example:1080',
    bytes: `05 00 00 03 0d ${ascii('proxy.example')} 0438`,
    value: { reply: Socks5Reply.SUCCEEDED, bound: { kind: 'domain', host: 'proxy.example', port: 1080 } },
  },
  {
    name: 'connection refused',
    bytes: '05 05 00 01 00000000 0000',
    value: { reply: Socks5Reply.CONNECTION_REFUSED, bound: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  },
  {
    name: 'unknown reply code 0x09 is kept',
    bytes: '05 09 00 01 00000000 0000',
    value: { reply: 0x09, bound: { kind: 'ipv4', host: '0.0.0.0', port: 0 } },
  },
  {
    name: 'unknown reply code 0xff is kept',
    bytes: '05 ff 00 01 01020304 0001',
    value: { reply: 0xff, bound: { kind: 'ipv4', host: '1.2.3.4', port: 1 } },
  },
];

describe('SOCKS5 reply', () => {
  describe('valid vectors', () => {
    validVectors<Reply>(decodeReply, (r) => encodeReply(r.reply, r.bound), REPLIES, FRAMING);
  });

  describe('malformed vectors', () => {
    badVectors(decodeReply, [
      { name: 'SOCKS4 reply version', bytes: '00 5a 00 50 7f000001', code: 'ERR_BAD_VERSION' },
      { name: 'version 4', bytes: '04 00 00 01 00000000 0000', code: 'ERR_BAD_VERSION' },
      { name: 'ATYP 0x02', bytes: '05 00 00 02 00000000 0000', code: 'ERR_ADDRESS_TYPE' },
      { name: 'ATYP 0x00', bytes: '05 00 00 00', code: 'ERR_ADDRESS_TYPE' },
      { name: 'zero-length domain', bytes: '05 00 00 03 00 0000', code: 'ERR_MALFORMED' },
      { name: 'non-printable byte in domain', bytes: '05 00 00 03 02 61 00 0000', code: 'ERR_MALFORMED' },
    ], FRAMING);
  });

  it('encodeReply defaults the bound address to 0.0.0.0:0', () => {
    assert.deepEqual(encodeReply(Socks5Reply.SUCCEEDED), hex('05 00 00 01 00000000 0000'));
    assert.deepEqual(encodeReply(Socks5Reply.GENERAL_FAILURE), hex('05 01 00 01 00000000 0000'));
  });

  it('encodeReply writes every RFC 1928 reply code as REP', () => {
    for (const [name, code] of Object.entries(Socks5Reply)) {
      const bytes = encodeReply(code);
      assert.equal(bytes.length, 10, name);
      assert.equal(bytes[1], code, name);
      assert.deepEqual(expectDecoded(decodeReply(bytes)).value.reply, code, name);
    }
  });

  it('encodeReply refuses a reply code that is not an integer 0-255 (0x100 was written as 0x00, SUCCEEDED)', () => {
    for (const code of NOT_BYTES) {
      assertSocksError(() => encodeReply(code), 'ERR_MALFORMED');
      assertSocksError(() => encodeReply(code, { kind: 'ipv6', host: '::1', port: 80 }), 'ERR_MALFORMED');
    }
  });

  it('encodeReply refuses a port that is not an integer 0-65535', () => {
    for (const port of [65536, -1, 1.5, NaN]) {
      for (const bound of BAD_PORT_HOSTS) assertSocksError(() => encodeReply(Socks5Reply.SUCCEEDED, { ...bound, port }), 'ERR_MALFORMED');
    }
  });

  it('property: encode → decode round trip', () => {
    fc.assert(
      fc.property(byte, arbDestination, (reply, bound) => {
        const bytes = encodeReply(reply, bound);
        const r = expectDecoded(decodeReply(bytes));
        assert.deepEqual(r.value, { reply, bound });
        assert.equal(r.bytesRead, bytes.length);
      }),
    );
  });

  it('property: any reply encodeReply accepts decodes back to itself; anything else is refused with a SocksError', () => {
    const reply = fc.record({ reply: arbAnyByte, bound: arbAnyDestination });
    assertAcceptedValuesRoundTrip(reply, (v) => encodeReply(v.reply, v.bound), (bytes, v) => {
      const r = expectDecoded(decodeReply(bytes));
      assert.equal(r.value.reply, v.reply);
      assertSameDestination(r.value.bound, v.bound);
      assert.equal(r.bytesRead, bytes.length);
    });
  });

  it('property: random bytes never throw anything but SocksError', () => {
    fuzz(decodeReply, [SOCKS5_VERSION]);
  });
});
