/**
 * A stand-in for getaddrinfo: dns.promises.lookup, which the system resolver
 * calls, replaced for the test process. Each lookup waits until the test
 * answers or fails it. With `threads`, lookups run as on libuv's thread pool:
 * that many at once, the others waiting for a thread in order of arrival,
 * which is how one client's slow names held up everyone's.
 */
import dns from 'node:dns';
import { syncBuiltinESMExports } from 'node:module';
import { mock } from 'node:test';

export interface LookupCall {
  readonly name: string;
  /** Answers with one address (IPv4 or IPv6 by its spelling). */
  answer(address: string): void;
  /** Fails as getaddrinfo does for a name that does not exist. */
  fail(): void;
}

export interface FakeGetaddrinfo {
  /** Every name asked for, in order, whether or not it has a thread yet. */
  readonly asked: string[];
  /** Lookups that got a thread, in order; they stay until answered or failed. */
  readonly started: LookupCall[];
  /** The most lookups that ran at once. */
  readonly peak: number;
  /** The names of lookups running now. */
  running(): string[];
  /** Fails every lookup running now and each one that starts, until restored. */
  failAll(): void;
  /** Puts dns.promises.lookup back. */
  restore(): void;
}

export function fakeGetaddrinfo(threads = Infinity): FakeGetaddrinfo {
  const asked: string[] = [];
  const started: LookupCall[] = [];
  const running = new Set<LookupCall>();
  const waitingForThread: Array<() => void> = [];
  let peak = 0;
  let failing = false;

  const finished = (call: LookupCall) => {
    running.delete(call);
    waitingForThread.shift()?.();
  };
  const lookup = (name: string) => new Promise((resolve, reject) => {
    asked.push(name);
    let done = false;
    const call: LookupCall = {
      name,
      answer(address) {
        if (done) return;
        done = true;
        finished(call);
        resolve([{ address, family: address.includes(':') ? 6 : 4 }]);
      },
      fail() {
        if (done) return;
        done = true;
        finished(call);
        reject(Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND', hostname: name }));
      },
    };
    const start = () => {
      running.add(call);
      started.push(call);
      peak = Math.max(peak, running.size);
      if (failing) call.fail();
    };
    if (running.size < threads) start();
    else waitingForThread.push(start);
  });

  const replaced = mock.method(dns.promises, 'lookup', lookup as typeof dns.promises.lookup);
  syncBuiltinESMExports(); // the resolver's `import { lookup } from 'node:dns/promises'` sees it
  return {
    asked,
    started,
    get peak() { return peak; },
    running: () => [...running].map((c) => c.name),
    failAll() {
      failing = true;
      for (const call of [...running]) call.fail();
    },
    restore() {
      replaced.mock.restore();
      syncBuiltinESMExports();
    },
  };
}
