/**
 * A write Node makes during the splice relay's hand-over that fails at once:
 * a destination that reset as soon as it accepted (the early bytes' write
 * gets ECONNRESET), or a client that reset before its success reply was
 * written. Such a write leaves nothing queued and Node destroys the socket
 * only on the next tick, so a hand-over that looked only at what was queued
 * gave the addon a descriptor Node was about to close: the session then read
 * a clean EOF from the reset socket (destination-closed, the early bytes
 * counted as delivered) or never ended at all.
 *
 * The race is made deterministic: the relay's destination socket is paused
 * before it connects, so Node never reads it and does not notice the reset;
 * the peer resets once Node has seen the connect, and the relay starts after
 * the reset has arrived. Both engines run the same sessions and must end
 * each one with the same record, the other side reset.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { spliceStats } from '../../src/relay/splice.js';
import { type RelayEnd, relay } from '../../src/relay/tcp.js';

const SESSIONS = 20;
const EARLY = Buffer.alloc(3000, 0x5a);

function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  return once(server, 'listening').then(() => (server.address() as AddressInfo).port);
}

/** How the user's (the SOCKS client's) end of the connection ended: 'ECONNRESET', 'end' (a FIN), or 'open' if neither within `ms`. */
function userSees(user: Socket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('open'), ms);
    user.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code ?? err.message);
    });
    user.on('end', () => {
      clearTimeout(timer);
      resolve('end');
    });
    user.resume();
  });
}

/** The relay's end, or 'none' if it did not come within `ms`. */
function endOf(start: (onEnd: (end: RelayEnd) => void) => void, ms: number): Promise<RelayEnd | 'none'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('none'), ms);
    start((end) => {
      clearTimeout(timer);
      resolve(end);
    });
  });
}

describe('a write that fails during the hand-over', () => {
  /** Accepted connections by the connecting side's port, so that a session can reset its own. */
  const accepted = new Map<number, Socket>();
  const destination = createServer((socket) => {
    socket.on('error', () => {});
    accepted.set(socket.remotePort!, socket);
  });
  // The proxy's listener: it reads nothing before the relay, as the session paused it.
  const front = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  let destinationPort = 0;
  let frontPort = 0;
  before(async () => {
    destinationPort = await listen(destination);
    frontPort = await listen(front);
  });
  after(() => {
    destination.close();
    front.close();
  });

  /** A user connected to the proxy's side, and the proxy's connection to the destination, connected and unread. */
  async function pair(): Promise<{ user: Socket; client: Socket; out: Socket; peer: Socket }> {
    const user = connect(frontPort, '127.0.0.1');
    const [client] = (await once(front, 'connection')) as [Socket];
    const out = connect({ port: destinationPort, host: '127.0.0.1', allowHalfOpen: true });
    out.pause(); // Node does not start reading: the reset waits unnoticed, as it does in the hand-over's window
    await once(out, 'connect');
    for (let i = 0; i < 200 && !accepted.has(out.localPort!); i++) await sleep(5);
    const peer = accepted.get(out.localPort!);
    assert.ok(peer, 'the destination accepted');
    accepted.delete(out.localPort!);
    return { user, client, out, peer };
  }

  for (const engine of ['splice', 'stream'] as const) {
    test(`${engine}: the destination reset before the early bytes were written: destination-error, the client reset, every time`, async () => {
      for (let i = 0; i < SESSIONS; i++) {
        const { user, client, out, peer } = await pair();
        peer.resetAndDestroy();
        await once(peer, 'close');
        await sleep(10); // the RST is in the proxy's socket
        const seen = userSees(user, 2000);
        const end = await endOf((onEnd) => relay(client, out, { idleMs: 0, engine, firstChunk: EARLY, onEnd }), 2000);
        assert.notEqual(end, 'none', `session ${i}: the relay ended`);
        if (end === 'none') return;
        assert.equal(end.engine, engine);
        assert.equal(end.reason, 'destination-error', `session ${i}`);
        assert.equal(end.error?.message, 'write ECONNRESET', `session ${i}`);
        assert.equal(await seen, 'ECONNRESET', `session ${i}: the client is reset, not left open or told all went well`);
        user.destroy();
      }
      if (engine === 'splice') assert.equal(spliceStats()?.activePairs, 0, 'the relay thread holds no pair');
    });

    test(`${engine}: the client reset before its reply was written: client-error, the destination reset`, async () => {
      for (let i = 0; i < SESSIONS; i++) {
        const { user, client, out, peer } = await pair();
        const peerSees = userSees(peer, 2000);
        user.resetAndDestroy();
        await once(user, 'close');
        await sleep(10);
        client.write(Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 0])); // the success reply, as the session writes it before the relay
        // No early bytes: a reset that reaches a socket with unread bytes can read as a FIN after them in Node, so the
        // destination is seen to be reset only when it has nothing to read.
        const end = await endOf((onEnd) => relay(client, out, { idleMs: 0, engine, onEnd }), 2000);
        assert.notEqual(end, 'none', `session ${i}: the relay ended`);
        if (end === 'none') return;
        assert.equal(end.reason, 'client-error', `session ${i}`);
        assert.equal(end.error?.message, 'write ECONNRESET', `session ${i}`);
        assert.equal(await peerSees, 'ECONNRESET', `session ${i}: the destination is reset`);
        peer.destroy();
      }
      if (engine === 'splice') assert.equal(spliceStats()?.activePairs, 0, 'the relay thread holds no pair');
    });
  }
});
