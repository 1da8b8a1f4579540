import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { SocksError, Socks4Reply, Socks5Reply, socks5ReplyFor, toSocksError, type SocksErrorCode } from '../src/errors.js';

// ---------------------------------------------------------------- helpers

/** An Error carrying a Node-style errno `code`, like the ones net and dns produce. */
function errnoError(code: unknown, message = `connect ${String(code)} 192.0.2.1:80`): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * Every code and the SOCKS5 REP byte it must produce. Typed as a Record so the
 * compiler fails here when a code is added to src/errors.ts without a test.
 */
const REPLY_OF: Record<SocksErrorCode, number> = {
  ERR_BAD_VERSION: 0x01,
  ERR_MALFORMED: 0x01,
  ERR_TOO_LONG: 0x01,
  ERR_NO_METHODS: 0x01,
  ERR_ADDRESS_TYPE: 0x08,
  ERR_COMMAND: 0x07,
  ERR_NO_ACCEPTABLE_METHOD: 0x01,
  ERR_AUTH_FAILED: 0x02,
  ERR_SOCKS4_DISABLED: 0x02,
  ERR_NOT_ALLOWED: 0x02,
  ERR_HANDSHAKE_TIMEOUT: 0x06,
  ERR_CONNECTION_REFUSED: 0x05,
  ERR_NETWORK_UNREACHABLE: 0x03,
  ERR_HOST_UNREACHABLE: 0x04,
  ERR_HOST_NOT_FOUND: 0x04,
  ERR_CONNECT_TIMEOUT: 0x06,
  ERR_GENERAL: 0x01,
};
const ALL_CODES = Object.keys(REPLY_OF) as SocksErrorCode[];

/** Node errno → our code → SOCKS5 REP. */
const ERRNO_TABLE: readonly [errno: string, code: SocksErrorCode, reply: number][] = [
  ['ECONNREFUSED', 'ERR_CONNECTION_REFUSED', 0x05],
  ['ENETUNREACH', 'ERR_NETWORK_UNREACHABLE', 0x03],
  ['ENETDOWN', 'ERR_NETWORK_UNREACHABLE', 0x03],
  ['EHOSTUNREACH', 'ERR_HOST_UNREACHABLE', 0x04],
  ['EHOSTDOWN', 'ERR_HOST_UNREACHABLE', 0x04],
  ['ENOTFOUND', 'ERR_HOST_NOT_FOUND', 0x04],
  ['EAI_NONAME', 'ERR_HOST_NOT_FOUND', 0x04],
  ['EAI_NODATA', 'ERR_HOST_NOT_FOUND', 0x04],
  ['EAI_AGAIN', 'ERR_HOST_NOT_FOUND', 0x04],
  ['EAI_FAIL', 'ERR_HOST_NOT_FOUND', 0x04],
  ['ENODATA', 'ERR_HOST_NOT_FOUND', 0x04],
  ['ETIMEDOUT', 'ERR_CONNECT_TIMEOUT', 0x06],
];

/** Codes the table does not know: all become general failure (0x01). */
const UNKNOWN_ERRNOS = [
  'ECONNRESET',
  'EPIPE',
  'EACCES',
  'EADDRINUSE',
  'ERR_SOCKET_CLOSED',
  'econnrefused', // codes are case-sensitive
  '',
  // Names on Object.prototype must not be mistaken for table entries.
  'constructor',
  'toString',
  'hasOwnProperty',
  'valueOf',
  '__proto__',
];

// ---------------------------------------------------------------- tests

describe('reply constants', () => {
  it('Socks5Reply has the RFC 1928 values', () => {
    assert.deepEqual(
      { ...Socks5Reply },
      {
        SUCCEEDED: 0x00,
        GENERAL_FAILURE: 0x01,
        NOT_ALLOWED: 0x02,
        NETWORK_UNREACHABLE: 0x03,
        HOST_UNREACHABLE: 0x04,
        CONNECTION_REFUSED: 0x05,
        TTL_EXPIRED: 0x06,
        COMMAND_NOT_SUPPORTED: 0x07,
        ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
      },
    );
  });

  it('Socks4Reply has the SOCKS4 values', () => {
    assert.deepEqual({ ...Socks4Reply }, { GRANTED: 0x5a, REJECTED: 0x5b, NO_IDENTD: 0x5c, IDENTD_MISMATCH: 0x5d });
  });
});

describe('SocksError', () => {
  for (const code of ALL_CODES) {
    it(`${code} → SOCKS5 0x${REPLY_OF[code].toString(16).padStart(2, '0')}, SOCKS4 0x5b`, () => {
      const err = new SocksError(code, 'message');
      assert.equal(err.code, code);
      assert.equal(err.socks5Reply, REPLY_OF[code]);
      assert.equal(err.socks4Reply, 0x5b);
      assert.equal(socks5ReplyFor(err), REPLY_OF[code]);
    });
  }

  it('no error ever maps to SOCKS5 success', () => {
    for (const code of ALL_CODES) assert.notEqual(new SocksError(code, '').socks5Reply, Socks5Reply.SUCCEEDED);
  });

  it('is an Error with a name, a message and an optional cause', () => {
    const cause = new Error('root');
    const err = new SocksError('ERR_GENERAL', 'wrapped', { cause });
    assert.ok(err instanceof Error);
    assert.equal(err.name, 'SocksError');
    assert.equal(err.message, 'wrapped');
    assert.equal(err.cause, cause);
    assert.equal(new SocksError('ERR_GENERAL', 'x').cause, undefined);
    assert.match(String(err), /^SocksError: wrapped$/);
  });
});

describe('toSocksError', () => {
  it('returns a SocksError unchanged (same instance)', () => {
    for (const code of ALL_CODES) {
      const err = new SocksError(code, 'x');
      assert.equal(toSocksError(err), err);
    }
  });

  describe('errno mapping', () => {
    for (const [errno, code, reply] of ERRNO_TABLE) {
      it(`${errno} → ${code} → 0x${reply.toString(16).padStart(2, '0')}`, () => {
        const original = errnoError(errno);
        const err = toSocksError(original);
        assert.ok(err instanceof SocksError);
        assert.equal(err.code, code);
        assert.equal(err.socks5Reply, reply);
        assert.equal(err.socks4Reply, 0x5b);
        assert.equal(err.message, original.message);
        assert.equal(err.cause, original);
        assert.equal(socks5ReplyFor(original), reply);
      });
    }
  });

  it("leaves out the local address Node names for a socket that never had one", () => {
    const original = errnoError('EMFILE', 'connect EMFILE 127.0.0.1:80 - Local (undefined:undefined)');
    assert.equal(toSocksError(original).message, 'connect EMFILE 127.0.0.1:80');
    const bound = 'connect ENETUNREACH 127.255.255.255:80 - Local (0.0.0.0:0)';
    assert.equal(toSocksError(errnoError('ENETUNREACH', bound)).message, bound);
  });

  describe('unknown errno codes → ERR_GENERAL (0x01)', () => {
    for (const errno of UNKNOWN_ERRNOS) {
      it(JSON.stringify(errno), () => {
        const err = toSocksError(errnoError(errno));
        assert.equal(err.code, 'ERR_GENERAL');
        assert.equal(err.socks5Reply, Socks5Reply.GENERAL_FAILURE);
        assert.equal(socks5ReplyFor(errnoError(errno)), 0x01);
      });
    }
  });

  describe('AggregateError (several addresses tried)', () => {
    it('uses errors[0].code', () => {
      const agg = new AggregateError([errnoError('ECONNREFUSED'), errnoError('ETIMEDOUT')], 'all attempts failed');
      const err = toSocksError(agg);
      assert.equal(err.code, 'ERR_CONNECTION_REFUSED');
      assert.equal(err.socks5Reply, 0x05);
      assert.equal(err.message, 'all attempts failed');
      assert.equal(err.cause, agg);
    });

    it('uses only the first member, even when it has no code', () => {
      const agg = new AggregateError([new Error('no code'), errnoError('ECONNREFUSED')]);
      assert.equal(toSocksError(agg).code, 'ERR_GENERAL');
    });

    it('an unknown first code is general failure', () => {
      const agg = new AggregateError([errnoError('ECONNRESET'), errnoError('ECONNREFUSED')]);
      assert.equal(socks5ReplyFor(agg), 0x01);
    });

    it('an own code on the AggregateError wins over its members', () => {
      const agg = Object.assign(new AggregateError([errnoError('ECONNREFUSED')]), { code: 'ETIMEDOUT' });
      assert.equal(toSocksError(agg).code, 'ERR_CONNECT_TIMEOUT');
    });

    it('no members → ERR_GENERAL', () => {
      assert.equal(toSocksError(new AggregateError([])).code, 'ERR_GENERAL');
    });

    it('nested AggregateError follows the first member down', () => {
      const inner = new AggregateError([errnoError('EHOSTUNREACH')]);
      assert.equal(socks5ReplyFor(new AggregateError([inner])), 0x04);
    });

    it('a SocksError as first member is mapped by its errno code only', () => {
      // Members are looked at for a Node errno; a SocksError code is not one.
      const agg = new AggregateError([new SocksError('ERR_CONNECTION_REFUSED', 'x')]);
      assert.equal(toSocksError(agg).code, 'ERR_GENERAL');
    });

    it('every errno in the table works through errors[0]', () => {
      for (const [errno, code, reply] of ERRNO_TABLE) {
        const agg = new AggregateError([errnoError(errno)]);
        assert.equal(toSocksError(agg).code, code, errno);
        assert.equal(socks5ReplyFor(agg), reply, errno);
      }
    });
  });

  describe('values that are not Node errors', () => {
    const CASES: readonly [string, unknown, SocksErrorCode, string][] = [
      ['a plain Error', new Error('boom'), 'ERR_GENERAL', 'boom'],
      ['a string', 'boom', 'ERR_GENERAL', 'boom'],
      ['a number', 42, 'ERR_GENERAL', '42'],
      ['null', null, 'ERR_GENERAL', 'null'],
      ['undefined', undefined, 'ERR_GENERAL', 'undefined'],
      ['an empty object', {}, 'ERR_GENERAL', '[object Object]'],
      ['a numeric code', errnoError(111, 'numeric'), 'ERR_GENERAL', 'numeric'],
      ['a plain object with an errno code', { code: 'ECONNREFUSED' }, 'ERR_CONNECTION_REFUSED', '[object Object]'],
      ['a TypeError', new TypeError('bad'), 'ERR_GENERAL', 'bad'],
    ];
    for (const [name, value, code, message] of CASES) {
      it(`${name} → ${code}`, () => {
        const err = toSocksError(value);
        assert.ok(err instanceof SocksError);
        assert.equal(err.code, code);
        assert.equal(err.message, message);
        assert.equal(err.cause, value);
        assert.equal(err.socks4Reply, 0x5b);
      });
    }
  });

  it('an AggregateError whose first member is itself gives general failure, not a stack overflow', () => {
    const loop = new AggregateError([], 'loops') as AggregateError & { errors: unknown[] };
    loop.errors = [loop];
    const err = toSocksError(loop);
    assert.equal(err.code, 'ERR_GENERAL');
    assert.equal(err.socks5Reply, 0x01);
  });

  it('property: any string code maps to a known SocksError code and a failure reply', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.constantFrom(...ERRNO_TABLE.map(([e]) => e), ...UNKNOWN_ERRNOS)), (errno) => {
        const err = toSocksError(errnoError(errno));
        assert.ok(ALL_CODES.includes(err.code), `unknown code ${String(err.code)}`);
        assert.equal(err.socks5Reply, REPLY_OF[err.code]);
        assert.ok(err.socks5Reply >= 0x01 && err.socks5Reply <= 0x08);
        assert.equal(err.socks4Reply, 0x5b);
      }),
      { numRuns: 300 },
    );
  });

  it('property: anything at all becomes a SocksError with a failure reply', () => {
    fc.assert(
      fc.property(fc.anything(), (value) => {
        const reply = socks5ReplyFor(value);
        assert.ok(Number.isInteger(reply) && reply >= 0x01 && reply <= 0x08, `reply ${String(reply)}`);
      }),
      { numRuns: 300 },
    );
  });
});
