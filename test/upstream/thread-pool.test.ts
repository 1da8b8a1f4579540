/** How many lookups run at once follows the thread pool's size, read as libuv reads it (upstream/resolver.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { threadPoolSize } from '../../src/upstream/resolver.js';

test('threadPoolSize reads UV_THREADPOOL_SIZE as libuv does: 4 unless set, 0 or no number as 1, past 1024 or negative as 1024', () => {
  const read = (setting: string | undefined) => threadPoolSize(setting);
  assert.deepEqual(
    [undefined, '16', ' 8', '12threads', '1', '0', '', 'many', '1024', '4096', '-3'].map(read),
    [4, 16, 8, 12, 1, 1, 1, 1, 1024, 1024, 1024],
  );
});
