/**
 * Lookups a native session made before it handed its CONNECT over to the
 * node engine: a name whose answer the relay thread does not race (more
 * than NATIVE_DIAL_ADDRESSES addresses, or an IPv6 address with a zone),
 * which the direct dialer takes. The dialer of the session
 * that takes over asks for the same name for the same client at once; it
 * gets this answer instead of a second lookup (a second DNS round trip, or a
 * second answer that differs). Each answer is taken once, and only within a
 * second; at most 256 wait, the oldest dropped first.
 */
import type { ResolveOptions, ResolvedAddress, Resolver } from './resolver.js';

const KEPT_MS = 1000;
const KEPT_AT_MOST = 256;

export class LookupHandOff {
  readonly #kept = new Map<string, { readonly addresses: readonly ResolvedAddress[]; readonly at: number }>();

  /** Keeps the answer `client`'s lookup of `host` got, for the session taking over. */
  keep(client: string, host: string, addresses: readonly ResolvedAddress[]): void {
    if (this.#kept.size >= KEPT_AT_MOST) this.#kept.delete(this.#kept.keys().next().value!);
    this.#kept.set(key(client, host), { addresses, at: performance.now() });
  }

  /** `resolver`, answering first from what was kept for the client asking. */
  resolver(resolver: Resolver): Resolver {
    return {
      resolve: (host: string, options?: ResolveOptions) => {
        const kept = options?.client === undefined ? undefined : this.#take(key(options.client, host));
        return kept ? Promise.resolve(kept) : resolver.resolve(host, options);
      },
    };
  }

  #take(k: string): readonly ResolvedAddress[] | undefined {
    const kept = this.#kept.get(k);
    if (!kept) return undefined;
    this.#kept.delete(k);
    return performance.now() - kept.at <= KEPT_MS ? kept.addresses : undefined;
  }
}

function key(client: string, host: string): string {
  return `${client} ${host}`;
}
