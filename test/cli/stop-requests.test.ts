/**
 * onStopRequests (src/workers.ts): a worker is asked to stop by its own
 * signal and by the primary's message; a signal sent to the whole process
 * group brings both, in either order, and must count as one request.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { onStopRequests } from '../../src/workers.js';

/** A stand-in for the process: signals and messages emitted by hand. */
function worker(isWorker = true): { source: EventEmitter; stops: NodeJS.Signals[] } {
  const source = new EventEmitter();
  const stops: NodeJS.Signals[] = [];
  onStopRequests((signal) => stops.push(signal), source, isWorker);
  return { source, stops };
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
