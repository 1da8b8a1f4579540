/**
 * The direct dialer: resolves a destination and opens a TCP connection to it,
 * racing its addresses Happy-Eyeballs style (RFC 8305): families interleaved,
 * a new attempt every `attemptDelayMs` or as soon as the previous one fails,
 * first success wins, the losers are destroyed.
 */
import { Socket, connect, isIP } from 'node:net';
import { promiseFrom } from '../callbacks.js';
import { SocksError, toSocksError } from '../errors.js';
import { type Destination, isUnspecifiedAddress } from '../protocol/address.js';
import { type ResolveOptions, type ResolvedAddress, type Resolver, systemResolver } from './resolver.js';

export interface DialOptions {
  /** Whole budget for resolving and connecting, in milliseconds. */
  readonly timeoutMs: number;
  /** Aborted when the client goes away or the server shuts down. */
  readonly signal?: AbortSignal;
  /** The client's address, passed to the resolver: the system resolver takes lookups in turn per client. */
  readonly client?: string;
}

/** Opens the outbound connection for a CONNECT. Rejects with a SocksError. */
export interface Dialer {
  dial(target: Destination, options: DialOptions): Promise<Socket>;
}

export interface DirectDialerOptions {
  readonly resolver?: Resolver;
  /** Delay before starting the next address while one is still pending (RFC 8305 suggests 250 ms). */
  readonly attemptDelayMs?: number;
}

/** RFC 8305's suggestion for the delay before the next address; the relay thread's races use it too. */
export const ATTEMPT_DELAY_MS = 250;

export function createDirectDialer(options: DirectDialerOptions = {}): Dialer {
  const resolver = options.resolver ?? systemResolver;
  const attemptDelayMs = options.attemptDelayMs ?? ATTEMPT_DELAY_MS;
  return {
    async dial(target, { timeoutMs, signal, client }) {
      if (target.kind !== 'domain') {
        if (isUnspecifiedAddress(target.host)) return Promise.reject(reachesThisHost(target.host));
        return connectOne(target.host, target.port, timeoutMs, signal);
      }
      const deadline = withDeadline(timeoutMs, () => connectTimeoutError(target, timeoutMs), signal);
      try {
        if (signal?.aborted) throw signal.reason;
        const addresses = await resolveDialable(resolver, target.host, { client, signal: deadline.signal });
        return await connectFirst(addresses, target.port, attemptDelayMs, deadline.signal);
      } catch (err) {
        throw toSocksError(err);
      } finally {
        deadline.done();
      }
    },
  };
}

/**
 * A name's addresses in the order a dial tries them (families interleaved),
 * as the direct dialer resolves a CONNECT's destination: rejects as it does
 * when there are none worth a connect. For the relay thread's dials too.
 */
export async function resolveDialable(resolver: Resolver, name: string, options: ResolveOptions & { readonly signal: AbortSignal }): Promise<readonly ResolvedAddress[]> {
  return interleave(dialable(await resolveAll(resolver, name, options), name));
}

/**
 * The answers worth a connect: IP literals only (a resolver of the
 * library's may answer anything, and net.connect takes no host for
 * localhost and looks a name up again), and not the unspecified address.
 * Throws when none is left.
 */
function dialable(found: readonly ResolvedAddress[], name: string): ResolvedAddress[] {
  const literals = found.filter((a) => typeof a?.address === 'string' && isIP(a.address) !== 0);
  const addresses = literals.filter((a) => !isUnspecifiedAddress(a.address));
  if (addresses.length > 0) return addresses;
  if (literals.length > 0) throw reachesThisHost(literals[0]!.address, name);
  throw new SocksError('ERR_HOST_NOT_FOUND', `${name}: the resolver gave no IP address`);
}

/**
 * The refusal of an unspecified destination (0.0.0.0, ::), given as such or
 * as a name's only answer (a "0" or a blocklist's 0.0.0.0): Linux would
 * connect it to this host, past rules that keep clients off loopback.
 */
function reachesThisHost(address: string, name?: string): SocksError {
  const what = name === undefined ? address : `${name} resolves only to ${address}, which`;
  return new SocksError('ERR_HOST_UNREACHABLE', `${what} is the unspecified address: a connection to it would reach this host`);
}

/**
 * The common case, an address literal: one socket, one timer, no
 * controllers. Kept apart from the racing path because it runs per session.
 */
function connectOne(host: string, port: number, timeoutMs: number, signal: AbortSignal | undefined): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    if (signal?.aborted) return reject(toSocksError(signal.reason));
    const socket = connect({ host, port, allowHalfOpen: true, noDelay: true });
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('error', fail);
    };
    const fail = (err: unknown) => {
      cleanup();
      socket.destroy();
      reject(toSocksError(err));
    };
    const onAbort = () => fail(signal?.reason);
    const timer = setTimeout(() => fail(connectTimeoutError({ host, port }, timeoutMs)), timeoutMs);
    socket.once('connect', () => {
      cleanup();
      resolve(socket);
    });
    socket.once('error', fail);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The resolver's answer, or the signal's reason as soon as it aborts: a
 * resolver need not heed it. The system resolver does: a lookup still
 * waiting for its turn when the deadline passes, or the session ends, never runs.
 */
async function resolveAll(resolver: Resolver, host: string, options: ResolveOptions & { readonly signal: AbortSignal }): Promise<readonly ResolvedAddress[]> {
  const found = await raceAbort(promiseFrom(() => resolver.resolve(host, options)), options.signal);
  if (found.length === 0) throw new SocksError('ERR_HOST_NOT_FOUND', `${host} has no addresses`);
  return found;
}

/**
 * A name's addresses within `timeoutMs`, as a dial resolves them: a
 * SocksError when there are none (ERR_HOST_NOT_FOUND), or none in time
 * (ERR_CONNECT_TIMEOUT). For BIND, whose peer is named but not dialed, and
 * UDP destinations. `options.signal` ends the wait early, as the deadline does.
 */
export async function resolveWithin(resolver: Resolver, host: string, timeoutMs: number, options: ResolveOptions = {}): Promise<readonly ResolvedAddress[]> {
  const { client, signal } = options;
  const timedOut = () => new SocksError('ERR_CONNECT_TIMEOUT', `resolving ${host} timed out after ${timeoutMs} ms`);
  const deadline = withDeadline(timeoutMs, timedOut, signal);
  try {
    if (signal?.aborted) throw signal.reason;
    return await resolveAll(resolver, host, { client, signal: deadline.signal });
  } catch (err) {
    throw toSocksError(err);
  } finally {
    deadline.done();
  }
}

/**
 * One signal for a deadline and the caller's abort, whichever comes first
 * (no AbortSignal.any: slow, and it retains its sources on Node 20). `done`
 * stops the timer and lets go of the caller's signal.
 */
function withDeadline(ms: number, timedOut: () => SocksError, caller: AbortSignal | undefined): { signal: AbortSignal; done(): void } {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(timedOut()), ms);
  const forward = () => abort.abort(caller?.reason);
  caller?.addEventListener('abort', forward, { once: true });
  return {
    signal: abort.signal,
    done() {
      clearTimeout(timer);
      caller?.removeEventListener('abort', forward);
    },
  };
}

/** The error of a connect that did not finish in time (the native handshake uses it too). */
export function connectTimeoutError(target: { readonly host: string; readonly port: number }, ms: number): SocksError {
  return new SocksError('ERR_CONNECT_TIMEOUT', `connect to ${target.host}:${target.port} timed out after ${ms} ms`);
}

/** Alternates families, keeping the resolver's order within each (RFC 8305 §4). */
export function interleave(addresses: readonly ResolvedAddress[]): readonly ResolvedAddress[] {
  if (addresses.length < 2) return addresses;
  const first = addresses[0]?.family;
  const preferred = addresses.filter((a) => a.family === first);
  const other = addresses.filter((a) => a.family !== first);
  const out: ResolvedAddress[] = [];
  for (let i = 0; i < Math.max(preferred.length, other.length); i++) {
    if (preferred[i]) out.push(preferred[i]!);
    if (other[i]) out.push(other[i]!);
  }
  return out;
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * Connects to the first address that answers. When every attempt fails, the
 * error kept is the most telling one: a refusal says more than an unreachable
 * network (often just a missing IPv6 route).
 */
function connectFirst(
  addresses: readonly ResolvedAddress[],
  port: number,
  attemptDelayMs: number,
  signal: AbortSignal,
): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const pending = new Set<Socket>();
    const errors: unknown[] = [];
    let next = 0;
    let settled = false;
    let staggerTimer: NodeJS.Timeout | undefined;

    const finish = (winner: Socket | undefined, err?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(staggerTimer);
      signal.removeEventListener('abort', onAbort);
      for (const s of pending) if (s !== winner) s.destroy();
      if (winner) resolve(winner);
      else reject(err);
    };
    const onAbort = () => finish(undefined, signal.reason);

    const startNext = () => {
      clearTimeout(staggerTimer);
      if (settled) return;
      if (next >= addresses.length) {
        if (pending.size === 0) finish(undefined, mostTelling(errors));
        return;
      }
      const { address } = addresses[next++]!;
      const socket = connect({ host: address, port, allowHalfOpen: true, noDelay: true });
      pending.add(socket);
      socket.once('connect', () => {
        socket.removeAllListeners('error');
        finish(socket);
      });
      socket.once('error', (err) => {
        pending.delete(socket);
        errors.push(err);
        socket.destroy();
        startNext();
      });
      if (next < addresses.length) staggerTimer = setTimeout(startNext, attemptDelayMs);
    };

    if (signal.aborted) return reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    startNext();
  });
}

const TELLING = ['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH'];

function mostTelling(errors: readonly unknown[]): unknown {
  const rank = (e: unknown) => {
    const i = TELLING.indexOf(String((e as { code?: unknown }).code));
    return i < 0 ? TELLING.length : i;
  };
  return [...errors].sort((a, b) => rank(a) - rank(b))[0] ?? new SocksError('ERR_GENERAL', 'no address to connect to');
}
