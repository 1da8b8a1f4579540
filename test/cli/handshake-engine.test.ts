/**
 * Choosing the handshake engine from the command line: the `started` line
 * says which one runs, each relays, `native` without the addon refuses to
 * start and says why, and a daemon whose addon accepted a session stops
 * cleanly on SIGINT with that session's access line.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { RawClient, hex } from '../helpers/raw.js';
import { run } from '../helpers/run.js';
import { type Fixture, startEchoServer } from '../helpers/server.js';
import { closed, echo, envWithoutProxies, runCli, socksConnect, startDaemon } from './helpers.js';

const WITHOUT_ADDON = { ...envWithoutProxies(), SOCKSGATE_SPLICE_ADDON: 'off' };
const JSON_LOOPBACK = ['--listen', '127.0.0.1:0', '--log-format', 'json'];

describe('handshake engine', () => {
  let target: Fixture;
  before(async () => {
    target = await startEchoServer();
  });
  after(() => target.close());

  for (const [name, args, env, handshakes, relay] of [
    ['the addon built, by default: native handshakes', [], envWithoutProxies(), 'native', 'splice'],
    ['--handshake-engine node: node handshakes', ['--handshake-engine', 'node'], envWithoutProxies(), 'node', 'splice'],
    ['no addon, by default: node handshakes over the stream relay', [], WITHOUT_ADDON, 'node', 'stream'],
  ] as const) {
    it(`${name}, says so when it starts, and relays`, async () => {
      const { daemon, port } = await startDaemon([...JSON_LOOPBACK, ...args], env);
      try {
        const started = await daemon.waitFor((l) => l.event === 'started', 'the "started" line');
        assert.equal(started.handshakes, handshakes);
        assert.equal(started.relay, relay);
        assert.match(String(started.msg), new RegExp(`${handshakes} handshakes`));
        const socket = await socksConnect(port, target.port);
        assert.equal(await echo(socket, 'through the proxy'), 'through the proxy');
        socket.end();
        await closed(socket);
        const session = await daemon.waitFor((l) => l.event === 'session', 'the access line');
        assert.equal(session.reason, 'client-closed');
        assert.equal(session.relay, relay);
        assert.equal(session.bytesUp, 'through the proxy'.length);
      } finally {
        daemon.signal('SIGTERM');
        await daemon.waitExit();
      }
    });
  }

  it('--handshake-engine native without the addon exits 1 and says why', async () => {
    const result = await runCli([...JSON_LOOPBACK, '--handshake-engine', 'native'], { env: WITHOUT_ADDON });
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /handshake\.engine is native, but .*splice/);
    assert.equal(result.stdout.toString().includes('"started"'), false, 'it never started');
  });

  it('an unknown engine is a configuration error naming the key', async () => {
    const result = await runCli(['--handshake-engine', 'kernel', '--check']);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /handshake\.engine/);
  });

  it('SIGINT with a native session open: the session is closed, its access line written, exit 0', async () => {
    const { daemon, port } = await startDaemon([...JSON_LOOPBACK, '--shutdown-grace', '300ms'], envWithoutProxies());
    try {
      const started = await daemon.waitFor((l) => l.event === 'started', 'the "started" line');
      assert.equal(started.handshakes, 'native');
      const socket = await socksConnect(port, target.port);
      const clientPort = socket.localPort;
      assert.equal(await echo(socket, 'open at SIGINT'), 'open at SIGINT');
      const socketClosed = closed(socket);

      daemon.signal('SIGINT');
      const draining = await daemon.waitFor((l) => l.event === 'draining', 'the "draining" line');
      assert.equal(draining.sessions, 1, 'the native session was counted');
      assert.deepEqual(await daemon.waitExit(), { code: 0, signal: null }, daemon.describe());
      await socketClosed;

      const sessions = daemon.sessions();
      assert.equal(sessions.length, 1, daemon.describe());
      assert.equal(sessions[0]!.clientPort, clientPort);
      assert.equal(sessions[0]!.reason, 'shutdown');
      assert.equal(sessions[0]!.relay, 'splice');
      assert.equal(sessions[0]!.bytesUp, 'open at SIGINT'.length);
      assert.ok(daemon.logs.some((l) => l.event === 'stopped'), daemon.describe());
      assert.equal(daemon.stderr, '');
    } finally {
      await daemon.kill();
    }
  });

  /** Descriptors the daemon has open, and its CPU time so far (seconds). */
  const fds = (pid: number) => new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
  const cpuSeconds = (pid: number) => {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in clock ticks (100 Hz)
  };
  const setSoftLimit = async (pid: number, limit: number) => {
    const result = await run('prlimit', ['--pid', String(pid), `--nofile=${limit}:`]);
    assert.equal(result.code, 0, result.stderr);
  };

  it('out of file descriptors at accept: the next client is closed at once (the spare descriptor), and the daemon serves again', async () => {
    const { daemon, port } = await startDaemon(JSON_LOOPBACK, envWithoutProxies());
    const pid = daemon.child.pid!;
    const idle: RawClient[] = [];
    try {
      assert.equal((await daemon.waitFor((l) => l.event === 'started', 'the "started" line')).handshakes, 'native');
      // Room for a few more descriptors below the limit; idle clients take them all.
      const open = fds(pid);
      const limit = Math.max(...[...open].filter((fd) => fd < 1000)) + 5;
      await setSoftLimit(pid, limit);
      const free = limit - [...open].filter((fd) => fd < limit).length;
      for (let i = 0; i < free; i++) idle.push(await RawClient.connect(port));
      for (let tries = 0; [...fds(pid)].filter((fd) => fd < limit).length < limit && tries < 200; tries++) await delay(10);
      assert.equal([...fds(pid)].filter((fd) => fd < limit).length, limit, 'every descriptor below the limit is in use');

      const shed = await RawClient.connect(port);
      assert.ok(['end', 'reset'].includes(await shed.ended), 'accepted with the spare descriptor and closed, not left waiting');
      const failed = await daemon.waitFor((l) => l.event === 'listener-error', 'a listener-error line');
      assert.equal(failed.level, 50);
      assert.equal(failed.listener, `127.0.0.1:${port}`);
      assert.equal(failed.err, 'accept EMFILE (out of descriptors: 1 connection closed unserved, 0 pauses of 100 ms since the last report)');
      // Two more inside the same second: told together once the second is over, with no further failure to prompt it.
      for (let i = 0; i < 2; i++) {
        const more = await RawClient.connect(port);
        assert.ok(['end', 'reset'].includes(await more.ended));
      }
      const later = await daemon.waitFor((l) => l.event === 'listener-error' && /: 2 connections/.test(String(l.err)), 'the second listener-error line');
      assert.equal(later.err, 'accept EMFILE (out of descriptors: 2 connections closed unserved, 0 pauses of 100 ms since the last report)');

      for (const client of idle) client.socket.destroy();
      await setSoftLimit(pid, 20_000);
      const socket = await socksConnect(port, target.port);
      assert.equal(await echo(socket, 'after the squeeze'), 'after the squeeze');
      socket.end();
      await closed(socket);
    } finally {
      for (const client of idle) client.socket.destroy();
      await daemon.kill();
    }
  });

  it('out of file descriptors with nothing to shed with: the listener pauses instead of spinning, and the waiting client is served later', async () => {
    const { daemon, port } = await startDaemon(JSON_LOOPBACK, envWithoutProxies());
    const pid = daemon.child.pid!;
    try {
      assert.equal((await daemon.waitFor((l) => l.event === 'started', 'the "started" line')).handshakes, 'native');
      // A limit at the lowest free number: even the spare's number is past it.
      const open = fds(pid);
      let lowestFree = 0;
      while (open.has(lowestFree)) lowestFree++;
      await setSoftLimit(pid, lowestFree);
      const waiting = await RawClient.connect(port);
      waiting.write('05 01 00');
      const before = cpuSeconds(pid);
      await delay(1000);
      // A level-triggered listener accept cannot clear would burn the whole second.
      assert.ok(cpuSeconds(pid) - before < 0.5, `the daemon used ${cpuSeconds(pid) - before} s of CPU in 1 s`);
      // Told once, not once per pause: further failures wait for the next report, a second later.
      const first = await daemon.waitFor((l) => l.event === 'listener-error', 'a listener-error line');
      assert.ok(daemon.logs.filter((l) => l.event === 'listener-error').length <= 2, daemon.describe());
      assert.match(String(first.err), /^accept EMFILE \(out of descriptors: 0 connections closed unserved, 1 pause of 100 ms since the last report\)$/);

      await setSoftLimit(pid, 20_000);
      assert.deepEqual(await waiting.read(2), hex('05 00'), 'served once descriptors are back');
      waiting.socket.destroy();
    } finally {
      await daemon.kill();
    }
  });
});
