#!/usr/bin/env node
/*
 * The socksgate command (and `npm start`): dist/src/cli.js with a larger
 * libuv thread pool. The pool checks passwords, looks names up and writes the
 * log, and its size is read once, when it starts: an ES module entry starts it
 * as it loads, before its first line runs, so only a CommonJS file run first
 * can set it. 16 threads instead of Node's 4 let name lookups take 8 at once
 * (4 per client; src/upstream/resolver.ts) beside the two password checks.
 * An operator's own UV_THREADPOOL_SIZE wins.
 */
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = String(16);
import('../dist/src/cli.js');
