/**
 * A gate for work that shares something scarce among every session (libuv's
 * thread pool: password checks, name lookups). A few run at once; the rest
 * wait in a line per client, and the lines take turns, so one client's burst
 * delays another client by at most a turn per busy client, not by the
 * burst's length. The lines and their total are bounded, and work whose
 * caller is gone (its signal aborted: the session closed, a deadline
 * passed) leaves its line without running.
 */
import { clientBlock } from './protocol/address.js';

export interface FairGateLimits {
  /** What passes the gate, plural, for messages: "password checks". */
  readonly what: string;
  /** Work running at once. */
  readonly running: number;
  /**
   * Work one client may have running at once; by default all of `running`.
   * Below it, one client's slow work (a lookup of a name whose DNS does not
   * answer) never holds every slot, so another client's starts at once.
   */
  readonly runningPerClient?: number;
  /** Work waiting, all clients together; past this it is refused at once. */
  readonly waiting: number;
  /** Work one client may have waiting; past this that client's is refused at once. */
  readonly waitingPerClient: number;
  /** The error of work refused because a line is full; by default an Error with the reason. */
  readonly refusal?: (reason: string) => Error;
}

/** Whose work it is. */
export interface TurnOptions {
  /**
   * The client's address: its work waits in its own line. IPv6 clients are
   * grouped by /64 (clientBlock), the block one host is usually given. Work
   * naming no client shares one line, bounded only by the totals.
   */
  readonly client?: string;
  /** Aborted when nobody waits for the work any more: if it has not started, it never does. */
  readonly signal?: AbortSignal;
}

export interface FairGateStats {
  readonly running: number;
  readonly waiting: number;
  /** Work dropped while it waited, because its signal aborted. */
  readonly cancelled: number;
}

/** The line of work that names no client. */
const ANYONE = '';

export class FairGate {
  readonly #limits: FairGateLimits;
  readonly #runningPerClient: number;
  #running = 0;
  #waiting = 0;
  #cancelled = 0;
  /** Work running per client block (not for ANYONE, which has no limit of its own). */
  readonly #runningBy = new Map<string, number>();
  /** One line of waiting work per client block, each a list of starters; a Map keeps the lines in turn order. */
  readonly #lines = new Map<string, Array<() => void>>();

  constructor(limits: FairGateLimits) {
    this.#limits = limits;
    this.#runningPerClient = limits.runningPerClient ?? limits.running;
  }

  stats(): FairGateStats {
    return { running: this.#running, waiting: this.#waiting, cancelled: this.#cancelled };
  }

  /** Runs `work` when its turn comes; rejects without running it when refused or abandoned. */
  async run<T>(work: () => Promise<T>, options: TurnOptions = {}): Promise<T> {
    options.signal?.throwIfAborted();
    const line = options.client ? clientBlock(options.client) : ANYONE;
    // A waiter is handed its slot by the work finishing (#startNext), so no
    // newcomer can take it in between; a free slot with waiters is one none of them may use.
    if (this.#hasRoom(line)) this.#begin(line);
    else await this.#waitInLine(line, options.signal);
    try {
      return await work();
    } finally {
      this.#end(line);
      this.#startNext();
    }
  }

  #hasRoom(line: string): boolean {
    return this.#running < this.#limits.running && this.#clientHasRoom(line);
  }

  #clientHasRoom(line: string): boolean {
    return line === ANYONE || (this.#runningBy.get(line) ?? 0) < this.#runningPerClient;
  }

  #begin(line: string): void {
    this.#running++;
    if (line !== ANYONE) this.#runningBy.set(line, (this.#runningBy.get(line) ?? 0) + 1);
  }

  #end(line: string): void {
    this.#running--;
    if (line === ANYONE) return;
    const left = this.#runningBy.get(line)! - 1;
    if (left === 0) this.#runningBy.delete(line);
    else this.#runningBy.set(line, left);
  }

  #waitInLine(line: string, signal: AbortSignal | undefined): Promise<void> {
    const { what, waiting, waitingPerClient, refusal = (reason) => new Error(reason) } = this.#limits;
    if (this.#waiting >= waiting) throw refusal(`too many ${what} waiting (${waiting})`);
    const queue = this.#lines.get(line) ?? [];
    if (line !== ANYONE && queue.length >= waitingPerClient) {
      throw refusal(`too many ${what} waiting from ${line} (${waitingPerClient})`);
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const index = queue.indexOf(start);
        if (index < 0) return; // already started
        queue.splice(index, 1);
        if (queue.length === 0 && this.#lines.get(line) === queue) this.#lines.delete(line);
        this.#waiting--;
        this.#cancelled++;
        reject(signal?.reason);
      };
      const start = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      queue.push(start);
      if (queue.length === 1) this.#lines.set(line, queue);
      this.#waiting++;
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Gives a freed slot to the first waiter of the first line whose turn it
   * is and whose client may run one more, and sends that line to the back.
   * Lines passed over keep their place: few can be (each holds
   * runningPerClient of the slots).
   */
  #startNext(): void {
    if (this.#running >= this.#limits.running) return;
    for (const [line, queue] of this.#lines) {
      if (!this.#clientHasRoom(line)) continue;
      const start = queue.shift()!; // never empty: an emptied line is deleted
      this.#lines.delete(line);
      if (queue.length > 0) this.#lines.set(line, queue);
      this.#waiting--;
      this.#begin(line);
      start();
      return;
    }
  }
}
