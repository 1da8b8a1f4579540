/**
 * Name resolution for CONNECT. The session gets a `Resolver` from outside so
 * tests (and later, custom DNS policies) can swap it.
 */
import { lookup } from 'node:dns/promises';

export interface ResolvedAddress {
  readonly address: string;
  readonly family: 4 | 6;
}

export interface Resolver {
  /** Every address of `hostname`, in the order they should be tried. Rejects with an errno-coded error. */
  resolve(hostname: string): Promise<readonly ResolvedAddress[]>;
}

/** The system resolver (getaddrinfo: /etc/hosts, then DNS), both families, in the system's order. */
export const systemResolver: Resolver = {
  async resolve(hostname) {
    const found = await lookup(hostname, { all: true, verbatim: true });
    return found.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
  },
};
