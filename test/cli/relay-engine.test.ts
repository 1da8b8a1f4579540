/**
 * Choosing the relay engine from the command line, and the fallback when the
 * splice addon is missing: `auto` serves with the stream relay, `splice`
 * refuses to start, and the build script skips (or, with --require, fails)
 * without a compiler.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { run } from '../helpers/run.js';
import { type Fixture, startEchoServer } from '../helpers/server.js';
import { echo, envWithoutProxies, runCli, socksConnect, startDaemon } from './helpers.js';

const ADDON = fileURLToPath(new URL('../../../build/socksgate_splice.node', import.meta.url));
const BUILD_SCRIPT = fileURLToPath(new URL('../../../scripts/build-native.mjs', import.meta.url));
const WITHOUT_ADDON = { ...envWithoutProxies(), SOCKSGATE_SPLICE_ADDON: 'off' };

describe('relay engine', () => {
  let target: Fixture;
  before(async () => {
    target = await startEchoServer();
  });
  after(() => target.close());

  for (const [name, env, expected] of [
    ['the addon built: auto picks splice', envWithoutProxies(), 'splice'],
    ['no addon: auto falls back to the stream relay', WITHOUT_ADDON, 'stream'],
  ] as const) {
    it(`${name}, says so when it starts, and relays`, async () => {
      const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json'], env);
      try {
        const started = await daemon.waitFor((l) => l.event === 'started', 'the "started" line');
        assert.equal(started.relay, expected);
        const socket = await socksConnect(port, target.port);
        assert.equal(await echo(socket, 'through the proxy'), 'through the proxy');
        socket.destroy();
        const session = await daemon.waitFor((l) => l.event === 'session', 'the access line');
        assert.equal(session.relay, expected);
      } finally {
        daemon.signal('SIGTERM');
        await daemon.waitExit();
      }
    });
  }

  it('--relay-engine stream is honoured even when the addon is built', async () => {
    const { daemon } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--relay-engine', 'stream'], envWithoutProxies());
    try {
      const started = await daemon.waitFor((l) => l.event === 'started', 'the "started" line');
      assert.equal(started.relay, 'stream');
    } finally {
      daemon.signal('SIGTERM');
      await daemon.waitExit();
    }
  });

  it('out of file descriptors for a splice pipe: sessions carry on without one, every byte arrives each way, and the access lines count them', async () => {
    const { daemon, port } = await startDaemon(['--listen', '127.0.0.1:0', '--log-format', 'json', '--relay-engine', 'splice'], envWithoutProxies());
    const open = async () => {
      const client = await RawClient.connect(port);
      client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
      assert.equal((await client.read(12))[3], 0x00, 'CONNECT succeeded');
      return client;
    };
    try {
      // One session relays before descriptors run out, another opens after:
      // the limit leaves room for exactly its two sockets, so from then on no
      // pipe can be made, neither for splicing nor for a small read's remainder.
      const before = await open();
      before.write(Buffer.from('a small message first'));
      assert.equal((await before.read(21)).toString(), 'a small message first');
      const pid = daemon.child.pid!;
      const fds = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
      const free: number[] = [];
      for (let fd = 0; free.length < 2; fd++) if (!fds.has(fd)) free.push(fd);
      const limit = free[1]! + 1;
      const prlimit = await run('prlimit', ['--pid', String(pid), `--nofile=${limit}:${limit}`]);
      assert.equal(prlimit.code, 0, prlimit.stderr);
      const after = await open();
      // Bulk both ways (reads that fill the relay's 4 KiB buffer would be
      // spliced), enough that a destination's buffers fill now and then and
      // the relay waits for them to drain; then a FIN each way.
      const payload = Buffer.alloc(16 * 1024 * 1024);
      for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) % 251;
      for (const client of [before, after]) client.socket.end(payload);
      for (const client of [before, after]) {
        const echoed = await client.readToEnd();
        assert.equal(await client.ended, 'end', 'the relay ended the session with a FIN, not a reset');
        assert.equal(echoed.length, payload.length, 'every byte came back');
        assert.ok(echoed.equals(payload), 'bytes identical and in order');
        const session = await daemon.waitFor((l) => l.event === 'session' && l.clientPort === client.localPort, 'the access line');
        assert.deepEqual(
          { reason: session.reason, error: session.error, bytesUp: session.bytesUp, bytesDown: session.bytesDown, relay: session.relay },
          { reason: 'client-closed', error: null, bytesUp: payload.length + (client === before ? 21 : 0), bytesDown: payload.length + (client === before ? 21 : 0), relay: 'splice' },
        );
      }
    } finally {
      daemon.signal('SIGTERM');
      await daemon.waitExit();
    }
  });

  it('--relay-engine splice without the addon exits 1 and says why', async () => {
    const result = await runCli(['--listen', '127.0.0.1:0', '--relay-engine', 'splice'], { env: WITHOUT_ADDON });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /relay\.engine is splice, but the splice addon cannot be used/);
  });

  it('an addon built from other sources (SOCKSGATE_SPLICE_ADDON, a stale build/) is refused, naming why, not misread', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'socksgate-addon-'));
    try {
      for (const [file, exports, why] of [
        ['unversioned.cjs', 'module.exports = { init() {}, start() {}, udpInit() {} };', /an older build with no interface version/],
        ['other.cjs', 'module.exports = { interfaceVersion: 999, init() {} };', /interface 999; this socksgate needs interface \d+/],
      ] as const) {
        writeFileSync(join(dir, file), exports);
        const env = { ...envWithoutProxies(), SOCKSGATE_SPLICE_ADDON: join(dir, file) };
        const result = await runCli(['--listen', '127.0.0.1:0', '--relay-engine', 'splice'], { env });
        assert.equal(result.code, 1, file);
        assert.match(result.stderr, /the splice addon cannot be used/, file);
        assert.match(result.stderr, /was built from other sources/, file);
        assert.match(result.stderr, why, file);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--busy-poll: the "started" line names the window; with the stream relay a warning says it does nothing', async () => {
    for (const [engine, busyPoll] of [['splice', 50], ['stream', 0]] as const) {
      const args = ['--listen', '127.0.0.1:0', '--log-format', 'json', '--relay-engine', engine, '--busy-poll', '50'];
      const { daemon } = await startDaemon(args, envWithoutProxies());
      try {
        const started = await daemon.waitFor((l) => l.event === 'started', 'the "started" line');
        assert.equal(started.busyPoll, busyPoll, engine);
        if (engine === 'splice') assert.match(String(started.msg), /busy polling 50 µs/);
        else assert.equal((await daemon.waitFor((l) => l.event === 'busy-poll-unused', 'the warning')).level, 40);
      } finally {
        daemon.signal('SIGTERM');
        await daemon.waitExit();
      }
    }
  });

  it('--busy-poll out of range is a configuration error naming the key', async () => {
    for (const value of ['1001', 'fast']) {
      const result = await runCli(['--busy-poll', value, '--check']);
      assert.equal(result.code, 2, value);
      assert.match(result.stderr, /relay\.busyPollMicroseconds/);
    }
  });

  it('an unknown engine is a configuration error naming the key', async () => {
    const result = await runCli(['--relay-engine', 'sendfile', '--check']);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /relay\.engine/);
  });
});

describe('build-native script', () => {
  it('skips with a notice and exit 0 when there is no compiler; an existing addon is left alone', async () => {
    const before = existsSync(ADDON);
    const result = await run(process.execPath, [BUILD_SCRIPT], { env: { ...process.env, CC: '/nonexistent/cc' } });
    assert.equal(result.code, 0);
    assert.match(result.stdout.toString(), /splice addon not built \(.*no C compiler\).*stream relay/);
    assert.equal(existsSync(ADDON), before);
  });

  it('fails with --require (the test command uses it)', async () => {
    const result = await run(process.execPath, [BUILD_SCRIPT, '--require'], { env: { ...process.env, CC: '/nonexistent/cc' } });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /cannot build the splice addon/);
  });
});
