/**
 * Run by test/relay/splice.test.ts inside a network namespace of its own
 * whose TCP buffers are at most 16 KiB (`net.ipv4.tcp_wmem`/`tcp_rmem` are
 * per namespace), so a stalled destination backs up in a few dozen KiB
 * instead of the tens of MB loopback autotuning allows. The test runner also
 * loads this file as a test module: without the variable it does nothing.
 *
 * The client writes 1000 bytes a millisecond, so the splice relay reads them
 * one small read at a time (copy_small in native/splice.c) until the
 * destination's side is full; the next read cannot be sent and must wait in
 * the proxy. Prints one JSON line: what the destination received, and the
 * session's record.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { spliceStats } from '../../src/relay/splice.js';
import { RawClient, connectRequest, hex } from '../helpers/raw.js';
import { receiveAll, startProxy, startTcpServer } from '../helpers/server.js';

if (process.env.SOCKSGATE_SMALL_BUFFERS === '1') await main();

async function main(): Promise<void> {
  const proxy = await startProxy({ relay: { engine: 'splice' } });
  let atTarget: Socket | null = null;
  let received: Promise<Buffer> = new Promise(() => {});
  const target = await startTcpServer((socket) => {
    atTarget = socket;
    socket.pause(); // reads nothing until the client is held back
    received = receiveAll(socket);
  });
  const client = await RawClient.connect(proxy.port);
  client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', target.port)]));
  await client.read(12);
  const copiedBefore = spliceStats()?.bytesCopied ?? 0;
  const payload = Buffer.alloc(600 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 5) % 251;
  let heldBack = false;
  for (let at = 0; at < payload.length; at += 1000) {
    if (!client.socket.write(payload.subarray(at, at + 1000))) {
      heldBack = true;
      (atTarget as Socket | null)?.resume();
      await once(client.socket, 'drain');
    }
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  (atTarget as Socket | null)?.resume();
  client.socket.end();
  const got = await received;
  await client.readToEnd();
  const record = await proxy.record((r) => r.clientPort === client.localPort);
  const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  console.log(JSON.stringify({
    sent: payload.length,
    received: got.length,
    identical: digest(got) === digest(payload),
    heldBack,
    copied: (spliceStats()?.bytesCopied ?? 0) - copiedBefore,
    bytesUp: record.bytesUp,
    relay: record.relay,
  }));
  await proxy.close();
  await target.close();
}
