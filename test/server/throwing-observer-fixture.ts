/**
 * Run by test/server/observers.test.ts in a child process, so that the
 * errors thrown by its observers can reach 'uncaughtException' without
 * failing the test runner itself. The runner also loads this file as a test
 * module: without the variable it does nothing.
 *
 * A server whose session-open, session-close and draining listeners each
 * throw once serves a burst of concurrent sessions (the native engine tells
 * JavaScript of them in batches), then a few one at a time, then closes
 * while one session is still relaying. Prints one JSON line: what the
 * clients received, the records, the session count, whether close()
 * resolved, and the errors that reached 'uncaughtException'.
 */
import net from 'node:net';
import { createServer, type SessionRecord } from '../../src/index.js';
import { connectRequest, hex } from '../helpers/raw.js';
import { receiveAll, startTcpServer } from '../helpers/server.js';

const engines = process.env.SOCKSGATE_THROWING_OBSERVER;
if (engines) await main(engines);

async function main(engines: string): Promise<void> {
  const [relay, handshake] = engines.split('/') as ['splice' | 'stream', 'native' | 'node'];
  const uncaught: string[] = [];
  process.on('uncaughtException', (error) => uncaught.push(error.message));

  const hangUp = await startTcpServer((socket) => socket.end('hi'));
  const staysOpen = await startTcpServer(() => {});
  const proxy = createServer({ listen: [{ address: '127.0.0.1', port: 0 }], relay: { engine: relay }, handshake: { engine: handshake } });
  const records: SessionRecord[] = [];
  proxy.on('session-open', throwingOnce('open observer'));
  proxy.on('session-close', (record) => records.push(record));
  proxy.on('session-close', throwingOnce('close observer'));
  proxy.on('draining', throwingOnce('draining observer'));
  const [bound] = await proxy.listen();

  const session = (port: number): net.Socket => {
    const client = net.connect(bound!.port, '127.0.0.1');
    client.write(Buffer.concat([hex('05 01 00'), connectRequest('127.0.0.1', port)]));
    return client;
  };
  // What the destination said, after the method choice and the 10-byte SOCKS5 reply.
  const answer = async (client: net.Socket) => (await receiveAll(client)).subarray(12).toString('latin1');
  const received = await Promise.all(Array.from({ length: 6 }, () => answer(session(hangUp.port))));
  for (let i = 0; i < 3; i++) received.push(await answer(session(hangUp.port)));
  await until(() => records.length === received.length);

  const held = session(staysOpen.port);
  held.on('error', () => {});
  await until(() => proxy.sessionCount === 1 && records.length === received.length);
  const closed = await Promise.race([
    proxy.close({ graceMs: 100 }).then(() => true),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 5_000)),
  ]);
  held.destroy();
  await hangUp.close();
  await staysOpen.close();
  await new Promise((resolve) => setImmediate(resolve)); // the last deferred error, if one
  console.log(JSON.stringify({ received, ids: records.map((r) => r.id), reasons: records.map((r) => r.reason), sessionCount: proxy.sessionCount, closed, uncaught }));
  process.exit(0); // a close that never resolved leaves handles behind
}

function throwingOnce(message: string): () => void {
  let thrown = false;
  return () => {
    if (thrown) return;
    thrown = true;
    throw new Error(message);
  };
}

/** Waits, a bounded while, for the server to catch up; the caller's checks say what was missing. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
}
