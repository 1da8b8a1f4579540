/**
 * Name resolution for CONNECT, BIND and UDP destinations. The session gets a
 * `Resolver` from outside so tests (and custom DNS policies) can swap it.
 */
import { lookup } from 'node:dns/promises';

export interface ResolvedAddress {
  readonly address: string;
  readonly family: 4 | 6;
}

/** Who a lookup is for. A resolver may ignore both: they were added later, and a resolver of one argument still is one. */
export interface ResolveOptions {
  /** The client's address (IPv4-mapped ones as IPv4). */
  readonly client?: string;
  /** Aborted when nobody waits for the answer any more: the session closed, or the lookup's deadline passed. */
  readonly signal?: AbortSignal;
}

export interface Resolver {
  /** Every address of `hostname`, in the order they should be tried. Rejects with an errno-coded error. */
  resolve(hostname: string, options?: ResolveOptions): Promise<readonly ResolvedAddress[]>;
}

/** The system resolver (getaddrinfo: /etc/hosts, then DNS), both families, in the system's order. */
export const systemResolver: Resolver = {
  async resolve(hostname) {
    const found = await lookup(hostname, { all: true, verbatim: true });
    return found.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
  },
};
