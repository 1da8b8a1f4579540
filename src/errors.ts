/**
 * One error type for the whole gateway. A `SocksError` knows which SOCKS5
 * reply (REP) and SOCKS4 reply (CD) it stands for, so whoever catches it can
 * answer the client without a second mapping. All codes are listed here.
 */

/** SOCKS5 reply codes (RFC 1928 §6). */
export const Socks5Reply = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

/** SOCKS4 reply codes (CD field of the reply). */
export const Socks4Reply = {
  GRANTED: 0x5a,
  REJECTED: 0x5b,
  NO_IDENTD: 0x5c,
  IDENTD_MISMATCH: 0x5d,
} as const;

/**
 * The closed set of error codes. Each maps to one SOCKS5 reply; every SOCKS4
 * refusal is 0x5B because SOCKS4 has no finer code the client would act on.
 */
const CODES = {
  // Protocol errors: the client sent something we cannot parse or accept.
  ERR_BAD_VERSION: Socks5Reply.GENERAL_FAILURE,
  ERR_MALFORMED: Socks5Reply.GENERAL_FAILURE,
  ERR_TOO_LONG: Socks5Reply.GENERAL_FAILURE,
  ERR_NO_METHODS: Socks5Reply.GENERAL_FAILURE,
  ERR_ADDRESS_TYPE: Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED,
  ERR_COMMAND: Socks5Reply.COMMAND_NOT_SUPPORTED,
  // Negotiation and policy.
  ERR_NO_ACCEPTABLE_METHOD: Socks5Reply.GENERAL_FAILURE,
  ERR_AUTH_FAILED: Socks5Reply.NOT_ALLOWED,
  ERR_SOCKS4_DISABLED: Socks5Reply.NOT_ALLOWED,
  ERR_NOT_ALLOWED: Socks5Reply.NOT_ALLOWED,
  ERR_HANDSHAKE_TIMEOUT: Socks5Reply.TTL_EXPIRED,
  // Outbound connection failures.
  ERR_CONNECTION_REFUSED: Socks5Reply.CONNECTION_REFUSED,
  ERR_NETWORK_UNREACHABLE: Socks5Reply.NETWORK_UNREACHABLE,
  ERR_HOST_UNREACHABLE: Socks5Reply.HOST_UNREACHABLE,
  ERR_HOST_NOT_FOUND: Socks5Reply.HOST_UNREACHABLE,
  ERR_CONNECT_TIMEOUT: Socks5Reply.TTL_EXPIRED,
  ERR_GENERAL: Socks5Reply.GENERAL_FAILURE,
} as const;

export type SocksErrorCode = keyof typeof CODES;

/** An error that knows the reply it deserves. */
export class SocksError extends Error {
  readonly code: SocksErrorCode;

  constructor(code: SocksErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SocksError';
    this.code = code;
  }

  /** The SOCKS5 REP byte for this error. */
  get socks5Reply(): number {
    return CODES[this.code];
  }

  /** The SOCKS4 CD byte for this error. */
  get socks4Reply(): number {
    return Socks4Reply.REJECTED;
  }
}

/**
 * Node errno codes of a failed outbound connect or lookup, mapped to our codes.
 * This is the only place that knows them. ETIMEDOUT from the kernel and our
 * own connect timeout both become TTL expired (0x06): RFC 1928 has no
 * "timed out" code and 0x06 is the one clients print as a timeout.
 */
const ERRNO: Record<string, SocksErrorCode> = {
  ECONNREFUSED: 'ERR_CONNECTION_REFUSED',
  ENETUNREACH: 'ERR_NETWORK_UNREACHABLE',
  ENETDOWN: 'ERR_NETWORK_UNREACHABLE',
  EHOSTUNREACH: 'ERR_HOST_UNREACHABLE',
  EHOSTDOWN: 'ERR_HOST_UNREACHABLE',
  ENOTFOUND: 'ERR_HOST_NOT_FOUND',
  EAI_NONAME: 'ERR_HOST_NOT_FOUND',
  EAI_NODATA: 'ERR_HOST_NOT_FOUND',
  EAI_AGAIN: 'ERR_HOST_NOT_FOUND',
  EAI_FAIL: 'ERR_HOST_NOT_FOUND',
  ENODATA: 'ERR_HOST_NOT_FOUND',
  ETIMEDOUT: 'ERR_CONNECT_TIMEOUT',
};

/** Turns any error from dialing or resolving into a `SocksError`. */
export function toSocksError(err: unknown): SocksError {
  if (err instanceof SocksError) return err;
  const errno = errnoOf(err);
  // Own keys only: 'constructor', 'toString', '__proto__' are not errnos.
  const code = (errno !== undefined && Object.hasOwn(ERRNO, errno) && ERRNO[errno]) || 'ERR_GENERAL';
  const message = err instanceof Error ? err.message.replace(NO_LOCAL_ADDRESS, '') : describe(err);
  return new SocksError(code, message, { cause: err });
}

/*
 * Node names a failed connect's own address (internalConnect in lib/net.js)
 * even when the socket never got one: out of descriptors (EMFILE), it reads
 * "connect EMFILE 127.0.0.1:80 - Local (undefined:undefined)". That part
 * says nothing, so the record leaves it out.
 */
const NO_LOCAL_ADDRESS = / - Local \(undefined:undefined\)$/;

/** A message for a thrown non-Error, which may not even stringify. */
function describe(value: unknown): string {
  try {
    return String(value);
  } catch {
    return 'unknown error';
  }
}

function errnoOf(err: unknown, depth = 0): string | undefined {
  if (typeof err !== 'object' || err === null || depth > 4) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  // AggregateError from a multi-address attempt: use the first member's code.
  // The depth bound keeps a self-referencing error from overflowing the stack.
  const errors = (err as { errors?: unknown }).errors;
  if (Array.isArray(errors) && errors.length > 0) return errnoOf(errors[0], depth + 1);
  return undefined;
}

/** The SOCKS5 REP byte for any error. */
export function socks5ReplyFor(err: unknown): number {
  return toSocksError(err).socks5Reply;
}
