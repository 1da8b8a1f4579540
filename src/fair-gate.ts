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
  #running = 0;
  #waiting = 0;
  #cancelled = 0;
  /** One line of waiting work per client block, each a list of starters; a Map keeps the lines in turn order. */
  readonly #lines = new Map<string, Array<() => void>>();

  constructor(limits: FairGateLimits) {
    this.#limits = limits;
  }

  stats(): FairGateStats {
    return { running: this.#running, waiting: this.#waiting, cancelled: this.#cancelled };
  }

  /** Runs `work` when its turn comes; rejects without running it when refused or abandoned. */
  async run<T>(work: () => Promise<T>, options: TurnOptions = {}): Promise<T> {
    options.signal?.throwIfAborted();
    const line = options.client ? clientBlock(options.client) : ANYONE;
    // A waiter is handed its slot by the work finishing (#startNext), so no
    // newcomer can take it in between.
    if (this.#running < this.#limits.running) this.#running++;
    else await this.#waitInLine(line, options.signal);
    try {
      return await work();
    } finally {
      this.#running--;
      this.#startNext();
    }
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

  /** Gives a freed slot to the first waiter of the line whose turn it is, and sends that line to the back. */
  #startNext(): void {
    const turn = this.#lines.entries().next();
    if (turn.done) return;
    const [line, queue] = turn.value; // never empty: an emptied line is deleted
    const start = queue.shift()!;
    this.#lines.delete(line);
    if (queue.length > 0) this.#lines.set(line, queue);
    this.#waiting--;
    this.#running++;
    start();
  }
}
