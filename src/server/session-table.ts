/**
 * Live sessions by id (a positive whole number below 2^53), looked up on
 * every message of a native session and written twice per session.
 *
 * Why not a Map: V8's Map replaces its hash table as entries come and go
 * (a table full of deleted entries is rebuilt), and a replaced table that
 * had been promoted to the old generation still points at the young
 * sessions it held until the next full collection, so each scavenge copied
 * sessions that had long ended and then promoted them (about 300 bytes per
 * session, for sessions that live milliseconds). This table keeps its
 * arrays for as long as its size allows (open addressing with linear
 * probing; a delete clears its slot and shifts the run after it back, so no
 * tombstones build up), and a dead session is referenced from nowhere.
 * It grows when half full and shrinks when an eighth full, each by half.
 */
const EMPTY = 0;
const SMALLEST = 64;

export class SessionTable<T> {
  /** The ids, EMPTY in a free slot: no pointers for the collector to follow. */
  #ids = new Float64Array(SMALLEST);
  #sessions: (T | undefined)[] = new Array<T | undefined>(SMALLEST).fill(undefined);
  #size = 0;

  get size(): number {
    return this.#size;
  }

  get(id: number): T | undefined {
    const at = this.#find(id);
    return at < 0 ? undefined : this.#sessions[at];
  }

  /** Adds or replaces the session under `id`. */
  set(id: number, session: T): void {
    if (!(Number.isSafeInteger(id) && id > 0)) throw new RangeError(`a session id is a positive whole number, not ${id}`);
    const found = this.#find(id);
    if (found >= 0) {
      this.#sessions[found] = session;
      return;
    }
    if ((this.#size + 1) * 2 > this.#ids.length) this.#resize(this.#ids.length * 2);
    this.#place(id, session);
    this.#size++;
  }

  /** Removes `id`'s session; false when there was none. */
  delete(id: number): boolean {
    let hole = this.#find(id);
    if (hole < 0) return false;
    const ids = this.#ids;
    const mask = ids.length - 1;
    // Backward shift: an entry after the hole moves into it unless its home
    // slot lies after the hole (cyclically), where a lookup still finds it.
    for (let next = (hole + 1) & mask; ids[next] !== EMPTY; next = (next + 1) & mask) {
      const home = ids[next]! % ids.length;
      const stays = hole <= next ? hole < home && home <= next : hole < home || home <= next;
      if (stays) continue;
      ids[hole] = ids[next]!;
      this.#sessions[hole] = this.#sessions[next];
      hole = next;
    }
    ids[hole] = EMPTY;
    this.#sessions[hole] = undefined;
    this.#size--;
    if (this.#size * 8 < ids.length && ids.length > SMALLEST) this.#resize(ids.length / 2);
    return true;
  }

  /** The sessions now, as a copy: the caller may delete while it walks them. */
  values(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.#ids.length; i++) if (this.#ids[i] !== EMPTY) out.push(this.#sessions[i]!);
    return out;
  }

  #find(id: number): number {
    const ids = this.#ids;
    const mask = ids.length - 1;
    for (let at = id % ids.length; ; at = (at + 1) & mask) {
      const here = ids[at];
      if (here === id) return at;
      if (here === EMPTY) return -1;
    }
  }

  /** Puts an id known to be absent into its first free slot from home. */
  #place(id: number, session: T): void {
    const ids = this.#ids;
    const mask = ids.length - 1;
    let at = id % ids.length;
    while (ids[at] !== EMPTY) at = (at + 1) & mask;
    ids[at] = id;
    this.#sessions[at] = session;
  }

  #resize(capacity: number): void {
    const ids = this.#ids;
    const sessions = this.#sessions;
    this.#ids = new Float64Array(capacity);
    this.#sessions = new Array<T | undefined>(capacity).fill(undefined);
    for (let i = 0; i < ids.length; i++) if (ids[i] !== EMPTY) this.#place(ids[i]!, sessions[i]!);
  }
}
