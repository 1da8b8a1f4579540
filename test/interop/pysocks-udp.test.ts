/**
 * UDP ASSOCIATE with an independent client: Python's PySocks (Debian
 * python3-socks, run with /usr/bin/python3) through a real socksgate to UDP
 * echo servers on IPv4 and IPv6, by address and by name. PySocks builds the
 * request and the datagram headers itself and parses the reply header, so a
 * clean run shows both ends agree on the wire format.
 *
 * PySocks opens its control connection with an IPv4 socket whatever the
 * proxy's address, so it cannot use a proxy on ::1: IPv6 is covered here as a
 * destination (the IPv6 client side is covered in test/server/udp.test.ts).
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { SessionRecord } from '../../src/index.js';
import { run } from '../helpers/run.js';
import { type RunningProxy, startProxy } from '../helpers/server.js';
import { UdpEcho } from '../helpers/udp.js';
import { CLIENT_TIMEOUT_MS, TEST_TIMEOUT_MS, cleanEnv, recordsFrom } from './helpers.js';

const opts = { timeout: TEST_TIMEOUT_MS };
const PYTHON = '/usr/bin/python3';
/** From dist/test/interop/ (where this file runs) back to the project root, then to the script in the sources. */
const SCRIPT = fileURLToPath(new URL('../../../test/interop/pysocks_udp.py', import.meta.url));

interface PySocksResult {
  readonly control_port: number;
  readonly udp_port: number;
  readonly relay: [string, number];
  readonly replies: Array<{ sent: number; data: string; from: [string, number] }>;
  readonly error?: string;
}

/** Runs the PySocks script: one association, one sendto + recvfrom per destination. */
async function pysocks(proxy: RunningProxy, sends: Array<{ host: string; port: number; payload: Buffer }>): Promise<PySocksResult> {
  const spec = {
    proxy: ['127.0.0.1', proxy.port],
    timeout: 5,
    sends: sends.map((s) => ({ host: s.host, port: s.port, payload: s.payload.toString('hex') })),
  };
  const result = await run(PYTHON, [SCRIPT, JSON.stringify(spec)], { env: cleanEnv(), timeoutMs: CLIENT_TIMEOUT_MS });
  const stdout = result.stdout.toString('utf8');
  assert.equal(result.code, 0, `pysocks_udp.py exited ${result.code ?? result.signal}: ${stdout} ${result.stderr}`);
  return JSON.parse(stdout) as PySocksResult;
}

/** The record of the association PySocks made, by its control connection's port. */
function byControlPort(port: number): (r: SessionRecord) => boolean {
  return (r) => r.command === 'udp' && r.clientPort === port;
}

describe('PySocks UDP through socksgate', opts, () => {
  let proxy: RunningProxy;
  let echo4: UdpEcho;
  let echo6: UdpEcho;
  let dual: UdpEcho;

  before(async () => {
    proxy = await startProxy();
    echo4 = await UdpEcho.start('127.0.0.1');
    echo6 = await UdpEcho.start('::1');
    dual = await UdpEcho.start('127.0.0.1', '::1');
  });

  after(async () => {
    await proxy?.close();
    await echo4?.close();
    await echo6?.close();
    await dual?.close();
  });

  it('IPv4 destination by address: the echo comes back, the header names 127.0.0.1 and the echo port', opts, async () => {
    const next = recordsFrom(proxy);
    const payload = Buffer.from('pysocks over udp, v4 \x00\xff\x10', 'latin1');
    const seen = echo4.received.length;
    const out = await pysocks(proxy, [{ host: '127.0.0.1', port: echo4.port, payload }]);
    assert.equal(out.replies.length, 1);
    const reply = out.replies[0]!;
    assert.equal(reply.sent, payload.length);
    assert.equal(reply.data, payload.toString('hex'));
    assert.deepEqual(reply.from, ['127.0.0.1', echo4.port]);
    assert.deepEqual(echo4.received.slice(seen).map((r) => r.data), [payload]);

    const rec = await next(byControlPort(out.control_port));
    assert.equal(rec.version, 5);
    assert.equal(rec.command, 'udp');
    // PySocks names its own UDP port, with "0" for the address.
    assert.equal(rec.requested, `0:${out.udp_port}`);
    assert.equal(rec.connected, `127.0.0.1:${out.relay[1]}`);
    assert.equal(rec.reply, 0);
    assert.equal(rec.datagramsUp, 1);
    assert.equal(rec.datagramsDown, 1);
    assert.equal(rec.datagramsDropped, 0);
    assert.equal(rec.bytesUp, payload.length);
    assert.equal(rec.bytesDown, payload.length);
    assert.equal(rec.reason, 'client-closed');
    assert.equal(rec.error, null);
  });

  it('IPv6 destination (::1) by address: the header names ::1', opts, async () => {
    const next = recordsFrom(proxy);
    const payload = Buffer.from('pysocks to ::1');
    const seen = echo6.received.length;
    const out = await pysocks(proxy, [{ host: '::1', port: echo6.port, payload }]);
    const reply = out.replies[0]!;
    assert.equal(reply.data, payload.toString('hex'));
    assert.deepEqual(reply.from, ['::1', echo6.port]);
    assert.deepEqual(echo6.received.slice(seen).map((r) => r.data), [payload]);
    const rec = await next(byControlPort(out.control_port));
    assert.equal(rec.datagramsUp, 1);
    assert.equal(rec.datagramsDown, 1);
    assert.equal(rec.bytesUp, payload.length);
  });

  it('by name: "localhost" to an echo on both 127.0.0.1 and ::1; the header names the address that answered', opts, async () => {
    const payload = Buffer.from('pysocks by name');
    const seen = dual.received.length;
    const out = await pysocks(proxy, [{ host: 'localhost', port: dual.port, payload }]);
    const got = dual.received.slice(seen);
    assert.equal(got.length, 1, 'exactly one of the two echo sockets got it');
    assert.deepEqual(got[0]!.data, payload);
    const reply = out.replies[0]!;
    assert.equal(reply.data, payload.toString('hex'));
    assert.deepEqual(reply.from, [got[0]!.at, dual.port]);
  });

  it('one association, three destinations (v4, v6, name) in turn: each reply names its sender; the record counts all', opts, async () => {
    const next = recordsFrom(proxy);
    const sends = [
      { host: '127.0.0.1', port: echo4.port, payload: Buffer.from('one') },
      { host: '::1', port: echo6.port, payload: Buffer.from('two, a bit longer') },
      { host: 'localhost', port: dual.port, payload: Buffer.from('three') },
    ];
    const out = await pysocks(proxy, sends);
    assert.equal(out.replies.length, 3);
    assert.deepEqual(out.replies[0]!.from, ['127.0.0.1', echo4.port]);
    assert.deepEqual(out.replies[1]!.from, ['::1', echo6.port]);
    assert.deepEqual(out.replies[2]!.from, [dual.received.at(-1)!.at, dual.port]);
    out.replies.forEach((r, i) => assert.equal(r.data, sends[i]!.payload.toString('hex')));
    const rec = await next(byControlPort(out.control_port));
    const total = sends.reduce((n, s) => n + s.payload.length, 0);
    assert.equal(rec.datagramsUp, 3);
    assert.equal(rec.datagramsDown, 3);
    assert.equal(rec.bytesUp, total);
    assert.equal(rec.bytesDown, total);
    assert.equal(rec.reason, 'client-closed');
  });
});
