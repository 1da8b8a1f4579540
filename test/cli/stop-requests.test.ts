/**
 * onStopRequests (src/workers.ts): a worker is asked to stop by its own
 * signal and by the primary's message; a signal sent to the whole process
 * group brings both, in either order, and must count as one request, as
 * must one signal sent twice at once (coreutils timeout).
 * onReloadRequests: a worker reloads when the primary asks, never on its own SIGHUP.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { onReloadRequests, onStopRequests } from '../../src/workers.js';

/** A stand-in for the process: signals and messages emitted by hand, a second apart unless a test sets `clock.ms`. */
function worker(isWorker = true): { source: EventEmitter; stops: NodeJS.Signals[]; clock: { ms: number } } {
  const source = new EventEmitter();
  const stops: NodeJS.Signals[] = [];
  const clock = { ms: 0 };
  onStopRequests((signal) => stops.push(signal), source, isWorker, () => (clock.ms += 1000));
  return { source, stops, clock };
}

const passedOn = (count: number, signal: NodeJS.Signals = 'SIGTERM') => ({ socksgate: 'stop', signal, count });

describe('stop requests', () => {
  it('a group signal, its own first and then the primary\'s: one request; the next pair: the second', () => {
    const { source, stops } = worker();
    source.emit('SIGTERM', 'SIGTERM');
    source.emit('message', passedOn(1));
    assert.deepEqual(stops, ['SIGTERM'], 'one stop: the worker drains');
    source.emit('SIGTERM', 'SIGTERM');
    source.emit('message', passedOn(2));
    assert.deepEqual(stops, ['SIGTERM', 'SIGTERM'], 'a second: the worker exits at once');
  });

  it('a group signal, the primary\'s message first: one request', () => {
    const { source, stops } = worker();
    source.emit('message', passedOn(1, 'SIGINT'));
    source.emit('SIGINT', 'SIGINT');
    assert.deepEqual(stops, ['SIGINT']);
  });

  it('the primary alone asks twice: two requests', () => {
    const { source, stops } = worker();
    source.emit('message', passedOn(1));
    source.emit('message', passedOn(2));
    assert.deepEqual(stops, ['SIGTERM', 'SIGTERM']);
  });

  it('the worker signalled alone, twice: two requests', () => {
    const { source, stops } = worker();
    source.emit('SIGTERM', 'SIGTERM');
    source.emit('SIGINT', 'SIGINT');
    assert.deepEqual(stops, ['SIGTERM', 'SIGINT']);
  });

  it('a signal twice within 100 ms (coreutils timeout: to its child, then to the group) is one request; later, a second', () => {
    for (const isWorker of [true, false]) {
      const source = new EventEmitter();
      const stops: NodeJS.Signals[] = [];
      const times = [0, 0.05, 99, 150];
      onStopRequests((signal) => stops.push(signal), source, isWorker, () => times.shift()!);
      source.emit('SIGTERM', 'SIGTERM');
      source.emit('SIGTERM', 'SIGTERM');
      source.emit('SIGINT', 'SIGINT');
      assert.deepEqual(stops, ['SIGTERM'], 'one request, draining');
      source.emit('SIGTERM', 'SIGTERM');
      assert.deepEqual(stops, ['SIGTERM', 'SIGTERM'], '150 ms after the first: a second request');
    }
  });

  it('ignores other messages, and messages outside a worker', () => {
    const inWorker = worker();
    inWorker.source.emit('message', { socksgate: 'listening' });
    inWorker.source.emit('message', { socksgate: 'stop', signal: 'SIGKILL', count: 1 });
    inWorker.source.emit('message', 'stop');
    assert.deepEqual(inWorker.stops, []);
    const single = worker(false);
    single.source.emit('message', passedOn(1));
    assert.deepEqual(single.stops, []);
    single.source.emit('SIGTERM', 'SIGTERM');
    assert.deepEqual(single.stops, ['SIGTERM']);
  });
});

describe('reload requests', () => {
  /** The reloads and ignored SIGHUPs of a stand-in process. */
  function reloads(isWorker: boolean): { source: EventEmitter; seen: string[] } {
    const source = new EventEmitter();
    const seen: string[] = [];
    onReloadRequests(() => seen.push('reload'), () => seen.push('ignored'), source, isWorker);
    return { source, seen };
  }

  it('a single process reloads on each SIGHUP', () => {
    const { source, seen } = reloads(false);
    source.emit('SIGHUP');
    source.emit('SIGHUP');
    source.emit('message', { socksgate: 'reload' });
    assert.deepEqual(seen, ['reload', 'reload']);
  });

  it('a worker reloads on each of the primary\'s messages, and ignores its own SIGHUPs (a group signal brings both)', () => {
    const { source, seen } = reloads(true);
    source.emit('SIGHUP');
    source.emit('message', { socksgate: 'reload' });
    source.emit('message', passedOn(1));
    source.emit('message', { socksgate: 'reload' });
    assert.deepEqual(seen, ['ignored', 'reload', 'reload']);
  });
});
